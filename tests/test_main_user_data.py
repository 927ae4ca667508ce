"""User data (`folder:` and `npz:` datasets) trains end to end through the real main.py."""

import json

import numpy as np
from PIL import Image
from test_main import run_main

TINY = [
    "--arch=small_cnn",
    "--epochs=2",
    "--prune_epoch=1",
    "--sparsity=0.5",
    "--batch_size=16",
    "--epsilon=0.05",
    "--ensemble_interval=2",
    "--val_size=0.1",
    "--val_pgd_steps=2",
    "--eval_attacks=clean,pgd",
    "--eval_pgd_steps=3",
    "--export=keras",
]


def _check(workdir, classes, shape, num_test):
    results = json.loads((workdir / "results.json").read_text())
    assert results["dataset"]["num_classes"] == classes
    assert results["dataset"]["image_shape"] == list(shape)
    assert results["evaluation"]["clean"]["samples"] == num_test
    assert results["sparsity"]["kernels"] >= 0.5 - 1e-6
    assert (workdir / "export" / "model.keras").is_file()


def test_npz_dataset_trains_through_main(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (96, 12, 12, 3), dtype=np.uint8),
        y_train=rng.integers(0, 4, 96),
        x_test=rng.integers(0, 256, (20, 12, 12, 3), dtype=np.uint8),
        y_test=rng.integers(0, 4, 20),
    )
    workdir = tmp_path / "run"
    proc = run_main(f"--dataset=npz:{path}", f"--workdir={workdir}", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check(workdir, 4, (12, 12, 3), 20)


def test_folder_dataset_trains_through_main(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "images"
    for c, name in enumerate(["cat", "dog", "owl"]):
        (root / name).mkdir(parents=True)
        for i in range(20):
            pixels = rng.integers(0, 256, (10 + c, 10 + c, 3), dtype=np.uint8)  # mixed sizes: --image_size
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    workdir = tmp_path / "run"
    proc = run_main(f"--dataset=folder:{root}", "--image_size=8", f"--workdir={workdir}", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check(workdir, 3, (8, 8, 3), 12)  # 20 % of each class held out as test
