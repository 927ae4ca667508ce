"""Global masks (pure numpy), and pruning applied during training: exact zeros that never move."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from frep_tf.models import build_model
from frep_tf.training.pruning import (
    GlobalPruning,
    PruningError,
    check_layer_densities,
    global_unstructured_masks,
    kernel_sparsity,
    make_schedule,
)
from frep_tf.training.robust_model import RobustModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    main = os.path.join(ROOT, "main.py")
    return subprocess.run([sys.executable, main, *args], cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)


def test_unstructured_masks_keep_the_global_top_k():
    rng = np.random.default_rng(0)
    kernels = [rng.normal(size=(3, 3, 2, 4)), rng.normal(size=(8, 5)) * 3]
    masks = global_unstructured_masks(kernels, sparsity=0.9)
    flat = np.concatenate([np.abs(k).ravel() for k in kernels])
    keep = round(0.1 * flat.size)
    assert sum(int(m.sum()) for m in masks) == keep
    threshold = np.sort(flat)[-keep]
    for k, m in zip(kernels, masks, strict=True):
        assert np.all((np.abs(k) >= threshold) == (m == 1))
    # Global, not per layer: the larger-scale layer keeps a larger share.
    assert masks[1].mean() > masks[0].mean()


@pytest.mark.parametrize("parameterization", ["hadamard", "channel", "plain"])
@pytest.mark.parametrize("structured", [False, True])
def test_pruned_weights_are_exact_zeros_and_never_updated(parameterization, structured):
    keras.utils.set_random_seed(0)
    net = build_model("small_cnn", input_shape=(8, 8, 1), parameterization=parameterization, width=0.25)
    model = RobustModel(net, objective="sre", epsilon=0.1, weight_decay=5e-4)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    x = np.random.default_rng(0).random((64, 8, 8, 1)).astype("float32")
    y = np.random.default_rng(1).integers(0, 10, 64)
    pruning = GlobalPruning(make_schedule("oneshot", 0.8, begin_step=2, end_step=0, frequency=1), structured=structured)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[pruning])  # 4 steps, prunes before step 3
    assert bool(model.pruned.numpy())
    masks = [layer.mask.numpy().copy() for layer in model.reparam]
    before = [np.asarray(layer.fused_kernel()) for layer in model.reparam]
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    for layer, mask, old in zip(model.reparam, masks, before, strict=True):
        new = np.asarray(layer.fused_kernel())
        np.testing.assert_array_equal(layer.mask.numpy(), mask)
        assert np.all(new[mask == 0] == 0)
        assert not np.allclose(new[mask == 1], old[mask == 1])  # the kept weights did train
        if parameterization != "channel":
            for factor in layer.prunable_weights():
                assert np.all(factor.numpy()[mask == 0] == 0)
    ens = {layer.name: layer for layer in model.ensemble.layers}
    for layer, mask in zip(model.reparam, masks, strict=True):
        assert np.all(ens[layer.name].kernel.numpy()[mask == 0] == 0)
    if structured:
        kept = [m.reshape(-1, m.shape[-1])[0] for m in masks[:-1]]
        assert 0.15 <= 1 - np.mean(np.concatenate(kept)) <= 0.85
    else:
        assert kernel_sparsity(model.ensemble)["kernels"] >= 0.8 - 1e-6


def test_gradual_schedule_only_grows_masks():
    schedule = make_schedule("gradual", 0.9, begin_step=0, end_step=4, frequency=2)
    assert [round(float(schedule(s)[1]), 3) for s in (0, 2, 4)] == [0.0, 0.787, 0.9]
    assert [bool(schedule(s)[0]) for s in (0, 1, 2, 3, 4, 5)] == [True, False, True, False, True, False]


def test_min_layer_density_keeps_a_floor_in_every_layer_from_the_global_budget():
    rng = np.random.default_rng(2)
    # Small fan-in, large weights (like conv1) next to large fan-in, small weights (like conv3).
    kernels = [rng.normal(size=(3, 3, 1, 16)), rng.normal(size=(3, 3, 16, 32)) * 0.01, rng.normal(size=(64, 10))]
    total = sum(k.size for k in kernels)
    plain = global_unstructured_masks(kernels, sparsity=0.95)
    assert plain[1].sum() == 0  # pure global ranking cuts the middle layer off
    masks = global_unstructured_masks(kernels, sparsity=0.95, min_density=0.02)
    assert sum(int(m.sum()) for m in masks) == round(0.05 * total)  # the floors come out of the budget
    for k, m in zip(kernels, masks, strict=True):
        assert m.sum() >= np.ceil(0.02 * k.size)
        # Within a layer the largest entries are the ones kept.
        assert np.abs(k[m == 1]).min() >= np.abs(k[m == 0]).max()
    np.testing.assert_array_equal(global_unstructured_masks(kernels, 0.95, min_density=0.0)[0], plain[0])


def test_layer_check_names_cut_and_starved_layers():
    kept = lambda k, n: {"kept": k, "total": n, "fraction": k / n}  # noqa: E731
    check_layer_densities({"conv1": kept(82, 144), "conv2": kept(40, 4608), "head": kept(156, 640)}, 0.99)
    with pytest.raises(PruningError, match=r"disconnect the network: conv3 keeps 0 of 18,432") as info:
        check_layer_densities({"conv1": kept(82, 144), "conv3": kept(0, 18432), "head": kept(156, 640)}, 0.99)
    assert "conv1" not in str(info.value) and "--min_layer_density=" in str(info.value)
    # Below 1/50 of the overall density (0.02 % at 99 % sparsity) counts too: the quickstart's "Ori" (12 of
    # conv3's 73,728) is refused, its FReP (88) is not.
    with pytest.raises(PruningError, match=r"nearly cut layers off: conv3 keeps 12 of 73,728"):
        check_layer_densities({"conv3": kept(12, 73728), "head": kept(300, 640)}, 0.99)
    check_layer_densities({"conv3": kept(88, 73728), "head": kept(300, 640)}, 0.99)
    # An explicit --min_layer_density is the floor instead.
    check_layer_densities({"conv3": kept(11, 73728), "head": kept(300, 640)}, 0.99, min_density=1e-4)


@pytest.fixture(scope="module")
def digits_half_width_99(tmp_path_factory):
    """The issue's case at a tiny size: small_cnn --width=0.5 (conv 144 / 4,608 / 18,432, head 640), FReP, 99 %."""
    flags = [
        "--dataset=digits",
        "--arch=small_cnn",
        "--width=0.5",
        "--sparsity=0.99",
        "--epochs=6",
        "--prune_epoch=2",
        "--epsilon=0.1",
        "--batch_size=32",
        "--lr=0.05",
        "--ensemble_interval=10",
        "--eval_attacks=clean",
        "--export=keras",
        "--val_pgd_steps=2",
        "--verbose=0",
    ]
    return tmp_path_factory.mktemp("half_width"), flags, run_main


def test_pruning_during_training_that_cuts_the_network_is_refused_and_changes_nothing():
    """The refusal where training meets it: GlobalPruning's one-shot prune inside fit raises PruningError
    naming the cut layer and --min_layer_density, before any mask, factor or flag is changed (so the last
    checkpoint stays a consistent unpruned state). Through main.py: test_pruning_that_cuts_the_network_is_refused."""
    keras.utils.set_random_seed(0)
    net = build_model("small_cnn", input_shape=(8, 8, 1), parameterization="hadamard", width=0.25)
    model = RobustModel(net, objective="sre", epsilon=0.1)
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    x = np.random.default_rng(0).random((64, 8, 8, 1)).astype("float32")
    y = np.random.default_rng(1).integers(0, 10, 64)
    pruning = GlobalPruning(make_schedule("oneshot", 0.99, begin_step=2, end_step=0, frequency=1))
    seen = {}

    class Snapshot(keras.callbacks.Callback):  # the state the prune before step 3 starts from
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                seen["factors"] = [np.asarray(v).copy() for layer in model.reparam for v in layer.prunable_weights()]

    with pytest.raises(PruningError) as info:
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[Snapshot(), pruning])
    message = str(info.value)
    assert message.startswith("global pruning to --sparsity=0.99 would disconnect the network: "), message
    assert "conv3 keeps 0 of 4,608" in message and "--min_layer_density=" in message and "\n" not in message
    assert not bool(model.pruned.numpy())
    assert all(np.all(np.asarray(layer.mask) == 1) for layer in model.reparam)
    after = [np.asarray(v) for layer in model.reparam for v in layer.prunable_weights()]
    for old, new in zip(seen["factors"], after, strict=True):
        np.testing.assert_array_equal(old, new)


def test_pruning_that_cuts_the_network_is_refused(digits_half_width_99):
    root, flags, run_main = digits_half_width_99
    proc = run_main(*flags, f"--workdir={root / 'refused'}")
    assert proc.returncode == 3, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: global pruning"), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "conv3 keeps 0 of 18,432" in errors[0] and "--min_layer_density=" in errors[0]
    assert "epoch-00002, is kept" in errors[0]
    assert (root / "refused" / "checkpoint" / "epoch-00002").is_dir()
    assert not (root / "refused" / "results.json").exists()


def test_min_layer_density_prunes_that_far_and_trains_above_chance(digits_half_width_99):
    import json

    import tensorflow as tf

    root, flags, run_main = digits_half_width_99
    workdir = root / "floored"
    proc = run_main(*flags, "--min_layer_density=0.005", f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    layers = results["pruning"]["layers"]
    assert [layers[n]["total"] for n in ("conv1", "conv2", "conv3", "head_dense")] == [144, 4608, 18432, 640]
    for name, d in layers.items():
        assert d["kept"] >= np.ceil(0.005 * d["total"]) and d["fraction"] == d["kept"] / d["total"], name
    assert sum(d["kept"] for d in layers.values()) == round(0.01 * 23824)
    # A cut network outputs a constant: 0.1 on digits' balanced test split. Measured here: 0.30 (238 weights).
    assert results["evaluation"]["clean"]["accuracy"] > 0.2, results["training"]["final_epoch"]
    tags = set()
    for dirpath, _, files in os.walk(workdir / "tb"):
        for name in files:
            if name.startswith("events.out"):
                for event in tf.compat.v1.train.summary_iterator(os.path.join(dirpath, name)):
                    tags.update(v.tag for v in event.summary.value)
    assert {f"kept_fraction/{n}" for n in layers} <= tags
