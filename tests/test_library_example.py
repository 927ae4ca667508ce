"""examples/prune_your_model.py and the example of docs/library.md run end to end (in this process, which
has TensorFlow imported already). The example runs its Sequential CNN only here: MobileNetV2's robust
train step takes minutes to build on one CPU core; `--model mobilenetv2` runs it."""

import importlib.util
import os
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_prune_your_model_quick(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("prune_your_model", ROOT / "examples" / "prune_your_model.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.chdir(tmp_path)
    example.main(["--quick", "--model=sequential", f"--out={tmp_path}"])
    out = capsys.readouterr().out
    assert re.search(r"^sequential: 95\.0 % of the Conv2D/Dense weights are zero", out, re.MULTILINE), out
    sizes = dict(
        re.findall(
            r"^  \S*?(model\.keras|saved_model|model\.tflite|model_sparse\.tflite): ([\d.]+) KiB$", out, re.MULTILINE
        )
    )
    assert set(sizes) == {"model.keras", "saved_model", "model.tflite", "model_sparse.tflite"}, out
    assert float(sizes["model_sparse.tflite"]) * 3 < float(sizes["model.tflite"])
    assert sorted(os.listdir(tmp_path / "sequential")) == sorted(sizes)


def test_the_example_of_docs_library_md_runs(tmp_path, monkeypatch, capsys):
    text = (ROOT / "docs" / "library.md").read_text(encoding="utf-8")
    code = re.search(r"## A complete example\n\n```python\n(.*?)```", text, re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/library.md", "exec"), {"__name__": "__main__"})
    assert sorted(os.listdir(tmp_path / "out")) == ["model.keras", "model.tflite", "model_sparse.tflite", "saved_model"]
    assert os.listdir(tmp_path / "logs")
    clean, robust, sanity = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert float(clean) >= float(robust) and sanity in ("True", "False")
