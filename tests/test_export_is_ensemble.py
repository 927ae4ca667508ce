"""The exported model is the temporal ensemble, and results.json says so because it is.

One short real run (`python main.py`, digits, a quarter-width small_cnn, 3 epochs, pruned to 50 %)
serves every test here. The run is stopped by the test kill point right after results.json is
written (FREP_TF_TEST_KILL_AT=results, frep_tf/kill_points.py), before the finished run deletes its
checkpoint: that checkpoint holds the network and the ensemble exactly as they were when the export
was made (the last epoch's; nothing trains after it), so the exported weights can be compared with
both. Everything else (the export, the evaluation, results.json) is what an uninterrupted run writes.
"""

import json

import numpy as np
import pytest

from tests.test_main import run_main

RUN = [
    "--dataset=digits",
    "--arch=small_cnn",
    "--width=0.25",
    "--epochs=3",
    "--prune_epoch=1",
    "--sparsity=0.5",
    "--epsilon=0.1",
    "--batch_size=64",
    # An ensemble update every 5 steps, x10 at each learning-rate decay: 9 updates in the 66 steps, the
    # last in the second epoch, and the network trains on after it.
    "--ensemble_interval=5",
    "--val_pgd_steps=1",
    "--val_samples=32",
    "--eval_attacks=clean",
    "--export=keras,tflite_sparse",
    "--noeval_tflite",  # the TFLite file is evaluated below, in --mode=evaluate
    "--verbose=2",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(workdir, results.json, the network fused, the ensemble, test images, test labels)."""
    from frep_tf.config import Config
    from frep_tf.data.splits import dataset_arrays
    from frep_tf.fuse import fuse
    from frep_tf.run.setup import load_data
    from frep_tf.training import checkpoint
    from tests.helpers import build_and_compile

    workdir = tmp_path_factory.mktemp("export_is_ensemble")
    proc = run_main(*RUN, f"--workdir={workdir}", env_extra={"FREP_TF_TEST_KILL_AT": "results"})
    assert proc.returncode == -9 and "SIGKILL at results" in proc.stdout, proc.stderr[-4000:]
    results = json.loads((workdir / "results.json").read_text())

    # The run's own resolved configuration rebuilds its model; the checkpoint fills in every variable.
    sections = json.loads((workdir / "config.json").read_text())
    cfg = Config.from_flat({k: v for section in sections.values() for k, v in section.items()})
    splits = load_data(cfg)
    model, _ = build_and_compile(cfg, splits.info, splits.info.num_train // cfg.data.batch_size)
    restored = checkpoint.restore(model, checkpoint.latest(str(workdir / "checkpoint")))
    assert restored.epoch == 3
    x_test, y_test = dataset_arrays(splits.test)
    return workdir, results, fuse(model.network), model.ensemble, x_test, y_test


def _weights(model):
    """{layer/weight path: value} of every layer that has weights."""
    return {v.path: np.asarray(v) for layer in model.layers for v in layer.weights}


def test_every_exported_weight_is_the_ensembles_not_the_networks(run):
    import keras

    workdir, _, network, ensemble, _, _ = run
    exported = _weights(keras.models.load_model(workdir / "export" / "model.keras"))
    ens, net = _weights(ensemble), _weights(network)
    assert set(exported) == set(ens) == set(net)
    kernels = [name for name in exported if name.endswith("/kernel")]
    assert len(kernels) == 4  # conv1-3 and the head
    for name, value in exported.items():
        np.testing.assert_array_equal(value, ens[name], err_msg=name)
    # The ensemble differs from the network in every kernel (else this test could not tell them
    # apart): by far more than float rounding.
    for name in kernels:
        assert np.abs(exported[name] - net[name]).max() > 1e-3, name


def test_the_sparse_tflite_file_computes_the_ensemble(run):
    from frep_tf.model_io import load_classifier

    workdir, _, network, ensemble, x, _ = run
    tflite = load_classifier(str(workdir / "export" / "model_sparse.tflite"))
    logits = np.asarray(tflite(x))
    want = np.asarray(ensemble(x, training=False))
    other = np.asarray(network(x, training=False))
    # float32 TFLite vs Keras: the same function up to the order of float operations.
    np.testing.assert_allclose(logits, want, atol=1e-4, rtol=1e-4)
    assert np.abs(logits - other).max() > 100 * np.abs(logits - want).max()


def test_results_say_the_ensemble_was_exported_and_evaluated(run):
    _, results, _, ensemble, x, y = run
    assert results["model"]["evaluated"] == "ensemble"
    assert results["model"]["evaluated_path"] == "export/model.keras"
    clean = results["evaluation"]["clean"]
    assert clean["samples"] == len(y) == 360
    predicted = np.argmax(np.asarray(ensemble(x, training=False)), -1)
    assert clean["accuracy"] == float(np.mean(predicted == y))


@pytest.mark.parametrize("name", ["model.keras", "model_sparse.tflite"])
def test_evaluate_mode_reproduces_the_runs_clean_accuracy(name, run):
    """`--mode=evaluate --model=export/<name>` in process, from the same argv main.py would parse."""
    from absl import flags as absl_flags

    import flags
    import frep_tf.run
    from frep_tf.validation import validate

    workdir, results, _, _, _, _ = run
    fv = absl_flags.FlagValues()
    flags.define_all(fv)
    # --workdir= : what main.py does for an evaluation without --workdir (nothing is written).
    model = workdir / "export" / name
    fv(["main.py", "--mode=evaluate", f"--model={model}", "--dataset=digits", "--eval_attacks=clean", "--workdir="])
    evaluated = frep_tf.run.run(validate(flags.config_from_flags(fv)))
    # The training run's test split (digits, the default seed): the same 360 images, the same answer.
    want = results["evaluation"]["clean"]
    got = evaluated["evaluation"]["clean"]
    assert (got["samples"], got["accuracy"]) == (want["samples"], want["accuracy"])
