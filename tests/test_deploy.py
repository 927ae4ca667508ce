"""Deployment end to end through `python main.py`: a structured FReP-CH run exports every format
(compact and int8 included), evaluates every TFLite file, and `--mode=predict` reads each of them."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from frep_tf.run import predict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFLITE_FILES = {
    "tflite": "model.tflite",
    "tflite_sparse": "model_sparse.tflite",
    "tflite_int8": "model_int8_sparse.tflite",
    "tflite_int8_dense": "model_int8.tflite",
    "compact_tflite": "model_compact.tflite",
    "compact_tflite_int8": "model_compact_int8.tflite",
}
FLOAT_MODELS = ("model.keras", "saved_model", "model_compact.keras", "saved_model_compact")


def run_main(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)


@pytest.fixture
def structured_run(frep_ch_structured_run):
    """The structured FReP-CH run of conftest.py (shared with test_algorithm.py): every format exported."""
    return frep_ch_structured_run


def test_every_tflite_file_is_evaluated_and_compact_is_smaller(structured_run):
    results = json.loads((structured_run / "results.json").read_text())
    assert set(results["evaluation_tflite"]) == set(TFLITE_FILES)
    for fmt, entry in results["evaluation_tflite"].items():
        assert entry["path"] == f"export/{TFLITE_FILES[fmt]}"
        for key in ("clean", "square"):
            assert entry[key]["samples"] == 60 and 0 <= entry[key]["accuracy"] <= 1
        assert entry["square"]["queries"] == 20 and entry["square"]["accuracy"] <= entry["clean"]["accuracy"]
        assert entry["transfer_pgd"]["accuracy"] <= entry["transfer_pgd"]["clean_accuracy"]
        assert entry["transfer_pgd"]["clean_accuracy"] == entry["clean"]["accuracy"]
    assert results["int8_calibration"] == {"split": "train", "images": 256}
    agreement = {e["format"]: e.get("int8_top1_agreement") for e in results["exports"]}
    assert all(agreement[f] >= 0.9 for f in ("tflite_int8", "tflite_int8_dense", "compact_tflite_int8"))
    c = results["compact"]
    assert c["params_after"] < 0.25 * c["params_before"] and c["macs_after"] < 0.25 * c["macs_before"]
    assert c["bytes"]["compact_tflite"]["after"] * 4 < c["bytes"]["compact_tflite"]["before"]


def test_predict_reads_every_exported_format(structured_run, tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[:20] / 16 * 255).astype(np.uint8)[..., None]
    np.savez(tmp_path / "digits.npz", x=x)
    export = structured_run / "export"
    rows = {}
    for name in (*FLOAT_MODELS, *TFLITE_FILES.values()):
        rows[name] = predict.predict(str(export / name), str(tmp_path / "digits.npz"))
        assert [r[0] for r in rows[name]] == [f"x[{i}]" for i in range(20)]
        assert all(0 < r[2] <= 1 for r in rows[name])
    reference = [r[1] for r in rows["model.keras"]]
    for name in (*FLOAT_MODELS, "model.tflite", "model_sparse.tflite", "model_compact.tflite"):
        assert [r[1] for r in rows[name]] == reference, name
        np.testing.assert_allclose([r[2] for r in rows[name]], [r[2] for r in rows["model.keras"]], atol=1e-4)
    for name in ("model_int8.tflite", "model_int8_sparse.tflite", "model_compact_int8.tflite"):
        assert np.mean(np.array([r[1] for r in rows[name]]) == reference) >= 0.8, name


def test_predict_cli_writes_csv_and_refuses_bad_input(structured_run, tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / f"img{i}.png")
    model = structured_run / "export" / "model_compact_int8.tflite"
    out = tmp_path / "pred.csv"
    proc = run_main("--mode=predict", f"--model={model}", f"--images={folder}", f"--predictions={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = out.read_text().splitlines()
    assert lines[0] == "image,class,probability" and [line.split(",")[0] for line in lines[1:]] == [
        "img0.png",
        "img1.png",
        "img2.png",
    ]
    np.savez(tmp_path / "wrong.npz", x=np.zeros((2, 9, 9, 1), np.uint8))
    for images, message in (
        (tmp_path / "missing", "no such file or directory"),
        (tmp_path / "wrong.npz", "images are 9x9x1, the model takes 8x8x1"),
    ):
        proc = run_main("--mode=predict", f"--model={model}", f"--images={images}")
        assert proc.returncode == 2
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"--images={images}: {message}" in errors[0], proc.stderr[-2000:]
