"""--method: stage plans, flags, and every method end to end through the real `python main.py` path.

Each method runs on digits with tiny stages and exports standard layers only; its pruned weights are
exactly zero in the exported model (the masks the fine-tuning stages kept fixed); a multi-stage method
killed inside its second stage (and one killed between stages) resumes to the uninterrupted run's
results and weights (--deterministic).
"""

import json
import os
import signal

import numpy as np
import pytest

from frep_tf.config import Config, ConfigError
from frep_tf.methods import admm, base, stages
from frep_tf.validation import validate
from tests.test_main import run_main  # noqa: F401 (also used by test_methods_lottery)

TINY = [
    "--dataset=digits",
    "--arch=small_cnn",
    "--width=0.25",
    "--sparsity=0.9",
    "--epsilon=0.1",
    "--pgd_steps=2",
    "--pgd_step_size=0.05",
    "--batch_size=64",
    "--val_pgd_steps=1",
    "--val_samples=32",
    "--eval_attacks=clean",  # these tests are about the methods' stages; the attacks have their own tests
    "--eval_samples=100",
    "--export=keras",
    "--verbose=2",
]
STAGE_EPOCHS = {
    "lwm": {"epochs": 3, "prune_epoch": 1},
    "posthoc": {"epochs": 2, "parameterization": "plain", "sparse_init": True},  # Sparse-Init rides along
    "admm": {"pretrain_epochs": 1, "admm_epochs": 2, "admm_interval": 1, "finetune_epochs": 1},
    "hydra": {"pretrain_epochs": 1, "score_epochs": 2, "finetune_epochs": 1},
    "mad": {"pretrain_epochs": 1, "mad_batches": 3, "mad_mask_steps": 2, "finetune_epochs": 1},
}


def _args(values: dict) -> list[str]:
    return [f"--{k}={v}" for k, v in values.items()]


def cfg_of(**flat):
    return validate(Config.from_flat({**Config().flat(), "workdir": "", "mode": "evaluate", "model": __file__, **flat}))


# -- plans -------------------------------------------------------------------------------------------
def test_epochs_is_every_methods_main_stage_and_the_plan_is_said_in_one_line():
    # --method=lottery --epochs=10 trains 10 dense epochs and 10 per round (it once trained 100 + 100).
    cfg = cfg_of(
        method="lottery", epochs=10, lottery_rounds=2, parameterization="plain", objective="pgd", ensemble=False
    )
    assert [(s.name, s.epochs) for s in stages.plan(cfg)] == [("dense", 10), ("round1", 10), ("round2", 10)]
    line = stages.describe(cfg, stages.plan(cfg))
    assert line == (
        "--method=lottery: plain layers, objective pgd, no ensemble, 0.99 sparse; "
        "epochs dense 10 + round1 10 + round2 10 = 30"
    )
    hydra = cfg_of(method="hydra", epoch_scale=0.1, parameterization="plain", objective="pgd", ensemble=False)
    assert stages.describe(hydra, stages.plan(hydra)).endswith("epochs pretrain 10 + score 2 + finetune 10 = 22")


@pytest.mark.parametrize(
    "method, names, total",
    [
        ("admm", ["pretrain", "admm", "retrain"], 300),
        ("hydra", ["pretrain", "score", "finetune"], 220),
        ("mad", ["pretrain", "saliency", "finetune"], 240),
        ("lwm", ["train"], 100),
        ("lottery", ["dense", "round1"], 200),
        ("frep", ["train"], 100),
    ],
)
def test_default_stage_epochs_are_table_v(method, names, total):
    plan = stages.plan(cfg_of(method=method))
    assert [s.name for s in plan] == names
    assert stages.total_epochs(plan) == total
    assert [s.start for s in plan] == [sum(p.epochs for p in plan[:i]) for i in range(len(plan))]
    assert plan[-1].ensemble == Config().ensemble.ensemble and not any(s.ensemble for s in plan[:-1])


def test_epoch_scale_scales_every_stage_and_the_prune_epoch_rounded_at_least_one():
    plan = stages.plan(cfg_of(method="hydra", epoch_scale=0.01))
    assert [s.epochs for s in plan] == [1, 1, 1]  # 100, 20, 100 -> round, at least 1
    cfg = cfg_of(method="admm", epoch_scale=0.1)
    assert [s.epochs for s in stages.plan(cfg)] == [10, 10, 10]
    assert admm.update_interval(cfg) == 1  # 10 x 0.1: still 9 updates in the 10-epoch ADMM stage
    plan = stages.plan(cfg_of(method="mad", epoch_scale=0.1))
    assert [s.epochs for s in plan] == [10, 1, 14]  # the saliency pass is one pass of the data
    cfg = cfg_of(method="frep", epoch_scale=0.1)
    assert (cfg.epochs, cfg.prune_epoch) == (10, 3)
    assert cfg_of(method="frep", epochs=1000, epoch_scale=0.004).prune_epoch == 1  # round(0.12) -> 1


def test_stage_learning_rates_and_objectives():
    cfg = cfg_of(method="mad", lr=0.05, finetune_lr=0.02, objective="pgd")
    pre, sal, fine = stages.plan(cfg)
    assert (pre.lr, pre.schedule, pre.objective) == (0.05, "step", "pgd")
    assert sal.kind == "saliency"
    assert (fine.lr, fine.schedule, fine.objective, fine.trades_beta) == (0.02, "cosine", "mart", 0.5)
    score = stages.plan(cfg_of(method="hydra", lr=0.05))[1]
    assert (score.step, score.lr, score.schedule) == ("score", 0.05, "cosine")
    assert stages.plan(cfg_of(method="admm"))[1].step == "admm"


def test_a_stage_of_zero_epochs_is_left_out_and_locate_finds_the_stage_of_a_checkpoint():
    # No flag asks for a stage of 0 epochs any more (0 is refused), but the plan's rule still holds.
    specs = [dict(name="pretrain", epochs=0), dict(name="score", epochs=3), dict(name="finetune", epochs=2)]
    plan = base.sequence(cfg_of(method="hydra"), specs)
    assert [(s.name, s.start, s.epochs) for s in plan] == [("score", 0, 3), ("finetune", 3, 2)]
    assert [stages.locate(plan, e) for e in (0, 1, 3, 4, 5)] == [0, 0, 0, 1, 1]


@pytest.mark.parametrize(
    "flat, flag",
    [
        ({"method": "admm", "sparsity": 0.0}, "--sparsity=0.0"),
        ({"method": "hydra", "structured": True}, "--structured=True"),
        ({"method": "mad", "parameterization": "channel"}, "--parameterization=channel"),
        ({"method": "admm", "admm_epochs": 0}, "--admm_epochs=0"),
        ({"method": "hydra", "score_epochs": 0}, "--score_epochs=0"),
        ({"epoch_scale": 0.0}, "--epoch_scale=0.0"),
        ({"finetune_epochs": -1}, "--finetune_epochs=-1"),
        ({"sparse_init": True}, "--sparse_init=True"),
        ({"method": "sgd"}, "--method=sgd"),
        ({"method": "hydra", "distribution": "mirrored"}, "--distribution=mirrored"),
        ({"method": "lottery", "rewind_epoch": 100}, "--rewind_epoch=100"),
        ({"method": "lottery", "lottery_rounds": 0}, "--lottery_rounds=0"),
        ({"method": "iwi", "parameterization": "hadamard"}, "--parameterization=hadamard"),
        (
            {"method": "iwi", "parameterization": "plain", "iwi_mapping": "narrow", "iwi_source_width": 1.0},
            "--iwi_source_width=1.0",
        ),
        (
            {"method": "iwi", "parameterization": "plain", "iwi_mapping": "narrow", "iwi_source_width": 0.25},
            "--iwi_fill=zero",
        ),
        ({"iwi_from": "/nonexistent.keras"}, "--iwi_from=/nonexistent.keras"),
        ({"method": "frep", "epochs": 10, "prune_epoch": 30, "epoch_scale": 0.5}, "--prune_epoch=30"),
    ],
)
def test_bad_method_settings_are_one_line_naming_the_flag(flat, flag):
    with pytest.raises(ConfigError) as err:
        cfg_of(**flat)
    assert str(err.value).startswith(flag) and "\n" not in str(err.value)


def test_baselines_default_to_plain_pgd_without_ensemble_unless_the_flags_are_given():
    from absl import flags as absl_flags

    import flags

    fv = absl_flags.FlagValues()
    flags.define_all(fv)
    fv(["prog", "--method=hydra"])
    cfg = flags.config_from_flags(fv)
    assert (cfg.model.parameterization, cfg.train.objective, cfg.ensemble.ensemble) == ("plain", "pgd", False)
    fv = absl_flags.FlagValues()
    flags.define_all(fv)
    variant = ["--method=hydra", "--objective=trades", "--ensemble", "--parameterization=hadamard"]
    fv(["prog", *variant, "--baseline_variant"])
    cfg = flags.config_from_flags(fv)
    assert (cfg.model.parameterization, cfg.train.objective, cfg.ensemble.ensemble) == ("hadamard", "trades", True)
    # Without the opt-in, a value that turns HYDRA into something else is refused in one line naming it.
    with pytest.raises(ConfigError, match=r"^--method=hydra trains --parameterization=plain --objective=pgd "):
        flags.parse_args(variant)
    # The paper's own values, written out (as experiment files do), are not a variant.
    assert flags.parse_args(["--method=hydra", "--parameterization=plain", "--objective=pgd", "--noensemble"])
    fv = absl_flags.FlagValues()
    flags.define_all(fv)
    fv(["prog"])
    cfg = flags.config_from_flags(fv)
    assert (cfg.model.parameterization, cfg.train.objective, cfg.ensemble.ensemble) == ("hadamard", "sre", True)


def test_mad_min_density_reserves_each_layer_then_ranks_globally():
    from frep_tf.methods import mad

    rng = np.random.default_rng(0)
    body = [rng.normal(size=(3, 3, 2, 4)), rng.normal(size=(3, 3, 4, 8)) - 10.0]  # layer 2 always loses
    head = rng.normal(size=(8, 3))
    plain = mad.saliency_masks(body + [head], 0.9)
    assert plain[1].sum() == 0 and plain[0].sum() + plain[1].sum() == round(0.1 * (72 + 288))
    floored = mad.saliency_masks(body + [head], 0.9, min_density=0.05)
    assert floored[1].sum() == np.ceil(0.05 * 288)  # reserved: its top 15
    assert floored[0].sum() + floored[1].sum() == round(0.1 * (72 + 288))  # same global budget
    top = np.argsort(-body[1].ravel(), kind="stable")[:15]
    assert set(np.flatnonzero(floored[1].ravel())) == set(top)


# -- end to end ---------------------------------------------------------------------------------------
def _exported(workdir):
    import keras

    return keras.models.load_model(os.path.join(workdir, "export", "model.keras"), compile=False)


def check_run(workdir, method, stage_epochs, sparsity=0.9):
    """A finished run of `method`: its stages in results.json, standard layers only in the export, and
    exactly as many non-zero weights per layer as the masks keep."""
    results = json.loads((workdir / "results.json").read_text())
    m = results["method"]
    assert m["name"] == method
    names = [s["name"] for s in m["stages"]]
    assert names == [s.name for s in stages.plan(cfg_of(method=method, **stage_epochs))]
    assert results["training"]["epochs"] == sum(s["epochs"] for s in m["stages"])
    for s in m["stages"]:
        assert s["seconds"] > 0 and s["peak_rss_mb"] > 100, s
    assert m["seconds"] == pytest.approx(sum(s["seconds"] for s in m["stages"]), abs=0.01)
    model = _exported(workdir)
    kinds = {type(layer).__module__.split(".")[0] for layer in model.layers}
    assert kinds == {"keras"}, kinds  # standard layers only
    layers = results["pruning"]["layers"]
    by_name = {layer.name: layer for layer in model.layers}
    for name, d in layers.items():
        assert np.count_nonzero(np.asarray(by_name[name].kernel)) <= d["kept"], name
    kept = sum(d["kept"] for d in layers.values())
    total = sum(d["total"] for d in layers.values())
    if method == "admm":  # ADMM prunes every kernel (the classifier too) by the same ratio
        assert all(d["kept"] == round((1 - sparsity) * d["total"]) for d in layers.values())
    # Every method meets the same global budget over the same kernels (rounding: one weight per layer).
    assert kept == pytest.approx((1 - sparsity) * total, abs=len(layers))
    if len(names) > 1:
        assert all((workdir / "tb" / n).is_dir() for n in names if n != "saliency")
    measures = results["sparsity_measures"]
    assert measures["overall"]["zero"] == pytest.approx(results["sparsity"]["kernels"], abs=1e-6)
    assert results["evaluation"]["input_gradient_l1"]["mean"] > 0
    return results


@pytest.mark.parametrize("method", ["lwm", "admm", "mad", "posthoc"])
def test_every_method_runs_end_to_end_and_exports_standard_layers(method, tmp_path):
    workdir = tmp_path / method
    proc = run_main(*TINY, f"--method={method}", *_args(STAGE_EPOCHS[method]), f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_run(workdir, method, STAGE_EPOCHS[method])
    if method == "posthoc":  # plain kernels drawn as products of two draws (Table VI), then pruned after training
        assert json.loads((workdir / "config.json").read_text())["method"]["sparse_init"] is True
        assert "prune" in json.loads((workdir / "results.json").read_text())["timings"]


# -- kills inside and between stages --------------------------------------------------------------
RESUME = [*TINY, "--method=hydra", "--pretrain_epochs=1", "--score_epochs=3", "--finetune_epochs=1", "--deterministic"]


def _strip(results):
    if isinstance(results, dict):
        return {k: _strip(v) for k, v in results.items() if k not in ("timings", "seconds", "peak_rss_mb")}
    if isinstance(results, list):
        return [_strip(v) for v in results]
    return results


@pytest.fixture(scope="module")
def hydra_reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hydra_reference")
    proc = run_main(*RESUME, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_run(workdir, "hydra", {"pretrain_epochs": 1, "score_epochs": 3, "finetune_epochs": 1})  # hydra end to end
    return workdir


@pytest.mark.slow
def test_hydra_killed_in_its_second_stage_ends_as_the_uninterrupted_run(hydra_reference, tmp_path):
    # The 3rd checkpoint is the score stage's 2nd epoch: killed while writing it, inside stage 2; the run
    # resumes from the score stage's 1st epoch with the score stage's optimizer.
    kill_at, resumed_in = "checkpoint:3", "score"
    workdir = tmp_path / "killed"
    proc = run_main(*RESUME, f"--workdir={workdir}", env_extra={"FREP_TF_TEST_KILL_AT": kill_at})
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:]
    proc = run_main(*RESUME, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"({resumed_in} stage)" in proc.stdout, proc.stdout[-2000:]
    ref = json.loads((hydra_reference / "results.json").read_text())
    got = json.loads((workdir / "results.json").read_text())
    assert _strip(got) == _strip(ref)
    for a, b in zip(_exported(workdir).weights, _exported(hydra_reference).weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


# -- pruned weights stay exactly zero while a fine-tuning stage trains (in process) -----------------------
@pytest.mark.parametrize("parameterization", ["plain", "hadamard"])
@pytest.mark.parametrize("method, stage_name", [("admm", "retrain"), ("hydra", "finetune"), ("mad", "finetune")])
def test_pruned_weights_stay_exactly_zero_in_the_fine_tuning_stage(method, stage_name, parameterization):
    import keras

    from frep_tf.data.splits import DatasetInfo
    from frep_tf.run.setup import build_robust_model

    keras.utils.set_random_seed(0)
    cfg = cfg_of(
        method=method,
        arch="small_cnn",
        width=0.25,
        sparsity=0.8,
        epsilon=0.1,
        pgd_steps=2,
        weight_decay=0.01,
        parameterization=parameterization,
        objective="pgd",
        ensemble=False,
    )
    info = DatasetInfo("tiny", (8, 8, 1), 10, num_train=64, num_val=0, num_test=0, augmentation="none")
    model = build_robust_model(cfg, info)
    plan = stages.plan(cfg)
    stage = next(s for s in plan if s.name == stage_name)
    if method == "hydra":
        model.method_state["hydra_scores"].initialize([layer.fused_kernel() for layer in model.reparam])
    if method == "mad":
        rng = np.random.default_rng(0)
        for total in model.method_state["saliency"].sums:
            total.assign(rng.random(total.shape).astype("float32"))
        model.method_state["saliency"].batches.assign(1)
    stages.configure(stage, model, cfg)
    stages.compile_stage(stage, model, steps_per_epoch=4, cfg=cfg)
    stages.begin(stage, model, cfg)
    layers = model.reparam  # every method masks every prunable layer (ADMM the classifier too)
    masks = [np.asarray(layer.mask).copy() for layer in layers]
    assert all(0 < m.sum() < m.size for m in masks)
    rng = np.random.default_rng(1)
    x, y = rng.random((64, 8, 8, 1)).astype("float32"), rng.integers(0, 10, 64).astype("int32")
    before = [[np.asarray(v).copy() for v in layer.prunable_weights()] for layer in layers]
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    for layer, mask, old in zip(layers, masks, before, strict=True):
        np.testing.assert_array_equal(np.asarray(layer.mask), mask)  # the mask stayed fixed
        for v, o in zip(layer.prunable_weights(), old, strict=True):
            v = np.asarray(v)
            assert np.all(v[mask == 0] == 0), layer.name  # exactly zero, weight decay and momentum included
            assert np.any(v[mask == 1] != o[mask == 1]), layer.name  # and the kept weights did train


def test_report_names_methods_and_marks_their_stages():
    from frep_tf.experiments.report import Cell, epoch_marks, method_name

    def cell(config, results=None):
        return Cell("c", "/nonexistent", {}, config=config, results=results)

    hydra = cell(
        {"method": "hydra", "parameterization": "plain", "objective": "pgd"},
        {"method": {"stages": [{"name": "pretrain", "first_epoch": 0}, {"name": "score", "first_epoch": 10},
                               {"name": "finetune", "first_epoch": 12}]}},
    )  # fmt: skip
    assert method_name(hydra) == "HYDRA"
    assert epoch_marks(hydra, 0.99) == [(10, "score"), (12, "finetune")]
    frep = cell(
        {"method": "frep", "parameterization": "hadamard", "objective": "sre", "prune_epoch": 30, "epoch_scale": 0.1}
    )
    assert method_name(frep) == "FReP" and epoch_marks(frep, 0.99) == [(3, "prune")]
    dense = cell({"method": "frep", "parameterization": "plain", "objective": "pgd", "prune_epoch": 30})
    assert method_name(dense) == "Ori (pgd)" and epoch_marks(dense, 0.0) == []


def test_a_flagfile_written_for_frep_does_not_silently_turn_a_baseline_into_frep(tmp_path):
    # configs/quickstart.cfg sets --parameterization=hadamard --objective=sre: HYDRA with those is not HYDRA.
    proc = run_main("--flagfile=configs/quickstart.cfg", "--method=hydra", f"--workdir={tmp_path / 'w'}")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert "--parameterization=hadamard --objective=sre" in errors[0] and "--baseline_variant" in errors[0]
    assert not (tmp_path / "w").exists()
