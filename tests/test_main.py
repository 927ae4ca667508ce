"""The real `python main.py` path, end to end, in a subprocess: outputs and schema (bad flags: test_bad_inputs.py)."""

import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args, env_extra=None, timeout=900):
    """`python main.py ARGS` in a subprocess (no test kill point unless `env_extra` sets one)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env.pop("FREP_TF_TEST_KILL_AT", None)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "main.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


# `quickstart_run` (conftest.py, shared with test_algorithm.py's robustness floors): the digits quickstart
# shortened to 12 epochs, pruned to 99 % at epoch 6, every default export, Square on TFLite with 20 queries.


def test_quickstart_writes_every_output(quickstart_run):
    workdir, proc = quickstart_run
    config = json.loads((workdir / "config.json").read_text())
    assert config["data"]["dataset"] == "digits" and config["prune"]["sparsity"] == 0.99
    assert config["train"]["epochs"] == 12  # the resolved config, flags over the flagfile
    export = workdir / "export"
    for name in ("model.keras", "model.tflite", "model_sparse.tflite", "saved_model/saved_model.pb"):
        assert (export / name).is_file(), name
    assert not [n for n in os.listdir(export) if n.startswith(".")]  # no leftovers of atomic writes
    events = [f for _, _, fs in os.walk(workdir / "tb") for f in fs if f.startswith("events.out")]
    assert len(events) >= 2  # Keras' TensorBoard and our own summaries
    results = json.loads((workdir / "results.json").read_text())
    assert results["schema_version"] == 2 and results["mode"] == "train"
    ev = results["evaluation"]
    for attack in ("clean", "fgsm", "pgd"):
        assert 0.0 <= ev[attack]["accuracy"] <= 1.0 and ev[attack]["samples"] == 360
    assert ev["pgd"]["accuracy"] <= ev["fgsm"]["accuracy"] <= ev["clean"]["accuracy"]
    assert results["sparsity"]["kernels"] >= 0.99 - 1e-6
    assert results["params"]["deployed_nonzero"] < results["params"]["deployed"]
    assert {e["format"] for e in results["exports"]} == {"keras", "saved_model", "tflite", "tflite_sparse"}
    for stage in ("data", "build", "train", "export", "evaluate", "total"):
        assert results["timings"][stage] >= 0
    assert results["model"]["evaluated"] == "ensemble" and results["model"]["evaluated_path"] == "export/model.keras"
    # Every exported TFLite file is evaluated on the interpreter: clean, transfer PGD, Square.
    assert set(results["evaluation_tflite"]) == {"tflite", "tflite_sparse"}
    for fmt, entry in results["evaluation_tflite"].items():
        tfl = entry["transfer_pgd"]
        assert entry["path"] == f"export/{'model.tflite' if fmt == 'tflite' else 'model_sparse.tflite'}"
        assert tfl["samples"] == 360 and tfl["accuracy"] <= tfl["clean_accuracy"]
        assert entry["square"]["samples"] == 360 and entry["square"]["accuracy"] <= entry["clean"]["accuracy"]
        # The deployed float TFLite model computes what the Keras model does: same clean accuracy.
        assert entry["clean"]["accuracy"] == tfl["clean_accuracy"]
        assert abs(tfl["clean_accuracy"] - ev["clean"]["accuracy"]) < 0.01
    assert "| Model | Clean | FGSM | PGD | MIM | Square | AA |" in proc.stdout
    assert "| small_cnn hadamard (99 % sparse) |" in proc.stdout


def test_tensorboard_gets_the_frep_summaries(quickstart_run):
    import tensorflow as tf

    workdir, _ = quickstart_run
    tags = set()
    for root, _, files in os.walk(workdir / "tb"):
        for name in files:
            if name.startswith("events.out"):
                for event in tf.compat.v1.train.summary_iterator(os.path.join(root, name)):
                    tags.update(v.tag for v in event.summary.value)
    expected = {
        "val_pgd_acc",
        "val_ensemble_pgd_acc",
        "ensemble_delta",
        "sparsity",
        "learning_rate",
        "ensemble_interval",
        "epoch_loss",
        "epoch_clean_acc",
        "epoch_adv_acc",
    }
    assert expected <= tags, expected - tags
    assert any(t.startswith("fused_kernel/") for t in tags)


def test_exported_kernels_really_are_sparse(quickstart_run):
    import keras

    workdir, _ = quickstart_run
    model = keras.models.load_model(workdir / "export" / "model.keras")
    kernels = [layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")]
    zeros = sum(int(np.sum(k == 0)) for k in kernels) / sum(k.size for k in kernels)
    assert zeros >= 0.99 - 1e-6


def test_results_carry_the_exported_weight_histogram(quickstart_run):
    import keras

    workdir, _ = quickstart_run
    h = json.loads((workdir / "results.json").read_text())["weight_histogram"]
    model = keras.models.load_model(workdir / "export" / "model.keras")
    kernels = [layer.kernel.numpy().ravel() for layer in model.layers if hasattr(layer, "kernel")]
    w = np.concatenate(kernels)
    expected, _ = np.histogram(np.log10(np.abs(w[w != 0])), bins=np.asarray(h["edges"]))
    assert h["counts"] == expected.tolist()
    assert (h["zeros"], h["total"]) == (int(np.sum(w == 0)), w.size)
    assert sum(h["counts"]) + h["below"] + h["above"] + h["zeros"] == h["total"]


def test_report_of_a_real_run(quickstart_run, tmp_path):
    """The report reads what a real run writes: results.json and EpochMonitor's TensorBoard scalars."""
    from frep_tf.experiments import report

    workdir, _ = quickstart_run
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "quickstart").symlink_to(workdir, target_is_directory=True)
    summary = report.write_report(str(tmp_path))
    assert summary["cells"] == {"total": 1, "finished": 1, "failed": 0, "pending": 0}
    # A real run records the sparsity measures, the input-gradient L1 and the kept fraction of each layer:
    # the fourth and fifth figures are drawn too.
    assert set(summary["figures"]) == {"fig8", "fig7", "fig5", "lipschitz", "layers"}, summary["problems"]
    assert "## Sparsity measures and robustness" in (tmp_path / "report.md").read_text()
    results = json.loads((workdir / "results.json").read_text())
    (row,) = summary["rows"]
    assert row["method"] == "FReP" and row["n"] == 1
    assert row["accuracy"]["pgd"]["mean"] == results["evaluation"]["pgd"]["accuracy"]
    scalars = report.read_scalars(str(workdir / "tb" / "frep"))
    assert sorted(scalars["val_ensemble_pgd_acc"]) == list(range(12))
    final = results["training"]["final_epoch"]
    assert abs(scalars["val_ensemble_pgd_acc"][11] - final["val_ensemble_pgd_acc"]) < 1e-6
    assert abs(scalars["ensemble_delta"][11] - final["ensemble_delta"]) < 1e-6


def test_evaluate_mode_on_the_exported_model(quickstart_run, tmp_path):
    workdir, _ = quickstart_run
    proc = run_main(
        "--mode=evaluate",
        f"--model={workdir / 'export' / 'saved_model'}",
        "--dataset=digits",
        "--epsilon=0.1",
        "--eval_attacks=clean,pgd",
        "--eval_pgd_steps=5",
        f"--workdir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["mode"] == "evaluate" and results["evaluation"]["clean"]["samples"] == 360


def test_evaluate_mode_on_the_sparse_tflite_file(quickstart_run, tmp_path):
    workdir, _ = quickstart_run
    export = workdir / "export"
    proc = run_main(
        "--mode=evaluate",
        f"--model={export / 'model_sparse.tflite'}",
        f"--transfer_from={export / 'model.keras'}",
        "--dataset=digits",
        "--epsilon=0.1",
        "--eval_attacks=clean",
        "--eval_pgd_steps=5",
        "--eval_samples=64",
        f"--workdir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ev = json.loads((tmp_path / "results.json").read_text())["evaluation"]
    assert ev["clean"]["samples"] == 64
    assert ev["transfer_pgd"]["accuracy"] <= ev["transfer_pgd"]["clean_accuracy"]
