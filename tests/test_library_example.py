"""examples/prune_your_model.py runs end to end (quick mode). Only its Sequential CNN here: MobileNetV2's
robust train step takes minutes to compile on one CPU core; `--model mobilenetv2` runs it."""

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_prune_your_model_quick(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "prune_your_model.py"),
            "--quick",
            "--model=sequential",
            f"--out={tmp_path}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"^sequential: 95\.0 % of the Conv2D/Dense weights are zero", out, re.MULTILINE), out
    sizes = dict(
        re.findall(
            r"^  \S*?(model\.keras|saved_model|model\.tflite|model_sparse\.tflite): ([\d.]+) KiB$", out, re.MULTILINE
        )
    )
    assert set(sizes) == {"model.keras", "saved_model", "model.tflite", "model_sparse.tflite"}, out
    assert float(sizes["model_sparse.tflite"]) * 3 < float(sizes["model.tflite"])
    assert sorted(os.listdir(tmp_path / "sequential")) == sorted(
        ["model.keras", "saved_model", "model.tflite", "model_sparse.tflite"]
    )
