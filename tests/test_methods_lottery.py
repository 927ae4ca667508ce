"""Lottery tickets and inverse weights inheritance: rewind, iterative rounds, the controls, the IWI
mappings (in process), and both methods end to end through `python main.py` with a kill between stages."""

import json

import keras
import numpy as np
import pytest

from frep_tf.data.splits import DatasetInfo
from frep_tf.fuse import fuse
from frep_tf.methods import lottery, stages
from frep_tf.models import build_model
from frep_tf.run.setup import build_robust_model
from tests.test_methods_pipeline import TINY, _exported, _strip, cfg_of, check_run, run_main

INFO = DatasetInfo("tiny", (8, 8, 1), 10, num_train=64, num_val=0, num_test=0, augmentation="none")


def _lottery_model(**flat):
    keras.utils.set_random_seed(0)
    settings = {
        "method": "lottery",
        "arch": "small_cnn",
        "width": 0.25,
        "sparsity": 0.9,
        "parameterization": "plain",
        "objective": "pgd",
        "ensemble": False,
        "epsilon": 0.1,
        "pgd_steps": 1,
    }
    cfg = cfg_of(**(settings | flat))
    return cfg, build_robust_model(cfg, INFO)


def _train(model, cfg, stage):
    stages.configure(stage, model, cfg)
    stages.compile_stage(stage, model, steps_per_epoch=4, cfg=cfg)
    rng = np.random.default_rng(stage.start)
    x, y = rng.random((64, 8, 8, 1)).astype("float32"), rng.integers(0, 10, 64).astype("int32")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)


def test_round_sparsities_remove_the_same_fraction_of_what_is_left():
    s = lottery.round_sparsities(0.99, 3)
    kept = [1 - x for x in s]
    assert kept[-1] == pytest.approx(0.01) and kept[0] == pytest.approx(0.01 ** (1 / 3))
    assert kept[1] / kept[0] == pytest.approx(kept[2] / kept[1])


def test_rewind_restores_exactly_the_initial_weights_under_the_mask():
    cfg, model = _lottery_model(epochs=1)
    dense, round1 = stages.plan(cfg)
    stages.begin(dense, model, cfg)  # rewind_epoch 0: the copy of the initialisation
    init = {v.path: np.asarray(v).copy() for v in model.network.weights}
    _train(model, cfg, dense)
    stages.configure(round1, model, cfg)
    stages.compile_stage(round1, model, steps_per_epoch=4, cfg=cfg)
    stages.begin(round1, model, cfg)
    for layer in model.reparam:
        mask = np.asarray(layer.mask)
        kernel = np.asarray(layer.kernel)
        w0 = init[layer.kernel.path]
        np.testing.assert_array_equal(kernel[mask == 1], w0[mask == 1])  # inherited exactly
        assert np.all(kernel[mask == 0] == 0)
    for v in model.network.weights:
        if not v.path.endswith(("/mask", "/kernel")):
            np.testing.assert_array_equal(np.asarray(v), init[v.path], err_msg=v.path)  # BN, biases rewound too


def test_iterative_pruning_reaches_the_target_sparsity_to_the_weight_ranked_on_trained_weights():
    cfg, model = _lottery_model(epochs=1, lottery_rounds=3, sparsity=0.95)
    plan = stages.plan(cfg)
    assert [s.name for s in plan] == ["dense", "round1", "round2", "round3"]
    stages.begin(plan[0], model, cfg)
    _train(model, cfg, plan[0])
    total = sum(int(np.prod(layer.mask.shape)) for layer in model.reparam)
    previous = None
    for k, stage in enumerate(plan[1:], start=1):
        kernels = [np.abs(np.asarray(layer.fused_kernel())) for layer in model.reparam]
        stages.configure(stage, model, cfg)
        stages.compile_stage(stage, model, steps_per_epoch=4, cfg=cfg)
        stages.begin(stage, model, cfg)
        masks = [np.asarray(layer.mask) for layer in model.reparam]
        target = lottery.round_sparsities(0.95, 3)[k - 1]
        assert sum(int(m.sum()) for m in masks) == round((1 - target) * total)  # to the weight
        flat_w, flat_m = np.concatenate([w.ravel() for w in kernels]), np.concatenate([m.ravel() for m in masks])
        assert flat_w[flat_m == 1].min() >= flat_w[flat_m == 0].max()  # one global magnitude threshold
        if previous is not None:
            assert np.all(flat_m <= previous)  # masks only shrink
        previous = flat_m
        _train(model, cfg, stage)
    final = sum(int(np.asarray(layer.mask).sum()) for layer in model.reparam)
    assert final == round(0.05 * total)


def test_the_reinit_control_keeps_the_masks_and_changes_only_the_kernels():
    results = []
    for reinit in (False, True):
        cfg, model = _lottery_model(epochs=1, lottery_reinit=reinit)
        dense, round1 = stages.plan(cfg)
        stages.begin(dense, model, cfg)
        _train(model, cfg, dense)
        stages.configure(round1, model, cfg)
        stages.compile_stage(round1, model, steps_per_epoch=4, cfg=cfg)
        stages.begin(round1, model, cfg)
        results.append({v.path: np.asarray(v).copy() for v in model.network.weights})
    ticket, control = results
    for path in ticket:
        if path.endswith("/kernel"):
            mask = ticket[path.replace("/kernel", "/mask")]
            assert not np.array_equal(ticket[path][mask == 1], control[path][mask == 1]), path
            assert np.all(control[path][mask == 0] == 0)
        else:
            np.testing.assert_array_equal(ticket[path], control[path], err_msg=path)  # masks, BN, biases


def _source(width, sparsity=0.8, seed=3):
    """A trained-looking small exported model: random weights, BN statistics, and sparse kernels."""
    keras.utils.set_random_seed(seed)
    net = build_model("small_cnn", num_classes=10, input_shape=(8, 8, 1), parameterization="plain", width=width)
    rng = np.random.default_rng(seed)
    for v in net.weights:
        if v.path.endswith("/mask"):
            v.assign((rng.random(v.shape) > sparsity).astype("float32"))
        elif v.path.endswith("moving_variance"):
            v.assign(rng.uniform(0.5, 2.0, v.shape).astype("float32"))
        elif not v.path.endswith("/kernel"):
            v.assign(rng.normal(0, 0.3, v.shape).astype("float32"))
    return fuse(net)


@pytest.mark.parametrize("mapping, small, large", [("sparse", 0.5, 0.5), ("narrow", 0.25, 0.5)])
def test_iwi_large_network_starts_with_the_small_networks_logits(mapping, small, large):
    source = _source(small)
    keras.utils.set_random_seed(1)
    network = build_model("small_cnn", num_classes=10, input_shape=(8, 8, 1), parameterization="plain", width=large)
    done = lottery.inherit(network, source, fill="zero")
    assert ("embedded" in done.values()) == (mapping == "narrow")
    x = np.random.default_rng(0).random((32, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(network(x, training=False), source(x, training=False), rtol=1e-5, atol=1e-5)
    if mapping == "sparse":  # the sparse weights where they survive, zero elsewhere
        for layer in network.layers:
            if hasattr(layer, "prunable_weights"):
                src = np.asarray(source.get_layer(layer.name).kernel)
                np.testing.assert_array_equal(np.asarray(layer.kernel), src)
                assert np.all(np.asarray(layer.mask) == 1)  # dense from here on
    tiny = build_model("small_cnn", num_classes=10, input_shape=(8, 8, 1), parameterization="plain", width=large)
    lottery.inherit(tiny, source, fill="tiny", tiny=1e-3)
    diff = np.abs(np.asarray(tiny(x, training=False)) - np.asarray(source(x, training=False))).max()
    assert 0 < diff < 0.05  # tiny values where there was nothing: nearly, not exactly, the same function


def test_iwi_and_its_control_differ_only_in_the_initialisation():
    common = {"parameterization": "plain", "objective": "pgd", "ensemble": False, "epochs": 7}
    iwi = stages.plan(cfg_of(method="iwi", **common))
    scratch = stages.plan(cfg_of(method="frep", sparsity=0.0, **common))
    assert iwi == scratch  # the same stage: epochs, learning rate, objective; only `begin` inherits


# -- end to end, killed between stages -----------------------------------------------------------------
LOTTERY = [*TINY, "--method=lottery", "--epochs=2", "--deterministic"]
IWI = [*TINY, "--method=iwi", "--epochs=1", "--deterministic"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, kill_at, resumed_note",
    [
        # Killed writing round1's checkpoint: resumes from the end of dense training, round1 begins afresh.
        (LOTTERY, "checkpoint:3", "(dense stage)"),
        # Killed after stage 1 (the source run) wrote its results: the rerun finds it finished.
        (IWI, "results:1", "holds a finished run"),
    ],
    ids=["lottery", "iwi"],
)
def test_killed_between_stages_ends_as_the_uninterrupted_run(tmp_path, args, kill_at, resumed_note):
    ref = tmp_path / "reference"
    proc = run_main(*args, f"--workdir={ref}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    method = "lottery" if args is LOTTERY else "iwi"
    if method == "lottery":
        results = check_run(ref, "lottery", {"epochs": 2})
        assert [s["epochs"] for s in results["method"]["stages"]] == [2, 2]  # dense and its round: --epochs each
        # Said before training starts, in one line.
        assert (
            "--method=lottery: plain layers, objective pgd, no ensemble, 0.9 sparse; epochs dense 2 + round1 2 = 4"
            in proc.stdout
        )
    else:
        results = json.loads((ref / "results.json").read_text())
        assert results["method"]["source"]["method"] == "lottery"
        assert results["sparsity"]["kernels"] < 0.5  # the large network trained densely from the sparse one
        assert (ref / "source" / "results.json").is_file()
    killed = tmp_path / "killed"
    proc = run_main(*args, f"--workdir={killed}", env_extra={"FREP_TF_TEST_KILL_AT": kill_at})
    assert proc.returncode == -9, proc.stdout[-2000:]
    proc = run_main(*args, f"--workdir={killed}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert resumed_note in proc.stdout, proc.stdout[-2000:]
    got = json.loads((killed / "results.json").read_text())
    paths = ("path",)
    assert _strip(_drop(got, paths)) == _strip(_drop(results, paths))
    for a, b in zip(_exported(killed).weights, _exported(ref).weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def _drop(results, keys):
    if isinstance(results, dict):
        return {k: _drop(v, keys) for k, v in results.items() if k not in keys}
    if isinstance(results, list):
        return [_drop(v, keys) for v in results]
    return results
