"""examples/prune_your_model.py and the example of docs/library.md run end to end (in this process, which
has TensorFlow imported already). The example runs its Sequential CNN only here (`--quick`: a few hundred
Fashion-MNIST images, 2 epochs); `--model mobilenetv2` runs the other, whose robust train step alone takes
tens of seconds to build on one CPU core."""

import importlib.util
import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _example():
    spec = importlib.util.spec_from_file_location("prune_your_model", ROOT / "examples" / "prune_your_model.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


def test_prune_your_model_quick(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _example().main(["--quick", "--model=sequential", f"--out={tmp_path}"])
    out = capsys.readouterr().out
    assert re.search(r"^sequential: 90\.0 % of the Conv2D/Dense weights are zero", out, re.MULTILINE), out
    clean, pgd, lite, images = re.search(
        r"model\.keras: clean accuracy ([\d.]+), PGD-10 accuracy ([\d.]+) at eps 0\.1; "
        r"model_sparse\.tflite: clean accuracy ([\d.]+) \((\d+) fashion_mnist validation images",
        out,
    ).groups()
    assert clean == lite and float(clean) >= float(pgd) and images == "200", out
    assert float(clean) > 0.3, out  # trained, not the initial weights (chance is 0.1)
    sizes = dict(
        re.findall(
            r"^  \S*?(model\.keras|saved_model|model\.tflite|model_sparse\.tflite): ([\d.]+) KiB$", out, re.MULTILINE
        )
    )
    assert set(sizes) == {"model.keras", "saved_model", "model.tflite", "model_sparse.tflite"}, out
    assert float(sizes["model_sparse.tflite"]) * 3 < float(sizes["model.tflite"])
    assert sorted(os.listdir(tmp_path / "sequential")) == sorted(sizes)


def test_prune_your_model_says_in_one_line_where_fashion_mnist_is_missing(tmp_path):
    with pytest.raises(SystemExit) as info:
        _example().main(["--quick", f"--data_dir={tmp_path}", f"--out={tmp_path}"])
    message = str(info.value.code)
    assert f"no Fashion-MNIST IDX files in {tmp_path}" in message and "--data digits" in message, message
    assert "\n" not in message and not os.listdir(tmp_path)


def test_the_example_of_docs_library_md_runs(tmp_path, monkeypatch, capsys):
    text = (ROOT / "docs" / "library.md").read_text(encoding="utf-8")
    code = re.search(r"## A complete example\n\n```python\n(.*?)```", text, re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/library.md", "exec"), {"__name__": "__main__"})
    assert sorted(os.listdir(tmp_path / "out")) == ["model.keras", "model.tflite", "model_sparse.tflite", "saved_model"]
    assert os.listdir(tmp_path / "logs")
    clean, robust, sanity = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert float(clean) >= float(robust) and sanity in ("True", "False")
