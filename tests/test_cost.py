"""`--mode=cost` (frep_tf.experiments.cost) and what the report makes of its cost.json.

End to end through main.py on a tiny digits experiment (a one-stage FReP row, timed before and after its
prune, and a three-stage ADMM row): cost.json's structure, each round's total against the sum over the
stages of epochs x steps per epoch x seconds per step, the ratio to FReP per round; then --mode=report
shows the side-by-side table and judges a train_cost claim on the rounds. Without TensorFlow: the
arithmetic, a train_cost claim on a fabricated cost.json (holds, inside the spread over rounds, a row
missing, no cost.json at all), and bad input refused in one line with nothing written."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import pytest

from frep_tf.experiments.report import write_report
from frep_tf.experiments.report.stats import round_totals
from tests.test_report_claims import _claim, _sel, make_workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, ROUNDS = 2, 2
TINY = """# FReP (one stage, pruned inside) against ADMM (three stages) on digits, two seeds each
--dataset=digits
--arch=mlp
--width=0.125
--batch_size=64
--epsilon=0.1
--sparsity=0.9
--epochs=3
--prune_epoch=1
--pgd_steps=2
--pretrain_epochs=2
--admm_epochs=2
--admm_interval=1
--finetune_epochs=1
--ensemble_interval=5
--eval_attacks=clean
axis method parameterization objective ensemble = frep hadamard sre true | admm plain pgd false
axis seed = 1 | 0
claim FReP trains cheaper = train_cost: method=frep < method=admm
"""


def _main(*args, timeout=900):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def _verdict(a: list[float], b: list[float], op: str) -> str:
    """The claim rule over rounds, computed here from the totals."""
    d = statistics.mean(a) - statistics.mean(b)
    if abs(d) <= statistics.stdev(a) + statistics.stdev(b):
        return "inside the spread over rounds"
    return "holds" if (d > 0) == (op == ">") else "does not hold"


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """The tiny experiment measured by `main.py --mode=cost`, then reported: (cost.json, stdout, report.md)."""
    base = tmp_path_factory.mktemp("cost")
    experiment, workdir = base / "tiny_cost.cfg", base / "out"
    experiment.write_text(TINY)
    proc = _main(
        "--mode=cost",
        f"--experiment={experiment}",
        f"--workdir={workdir}",
        f"--cost_steps={STEPS}",
        f"--cost_rounds={ROUNDS}",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cost = json.loads((workdir / "cost.json").read_text())
    report = _main("--mode=report", f"--workdir={workdir}", f"--experiment={experiment}")
    assert report.returncode == 0, report.stdout + report.stderr
    return cost, proc.stdout, (workdir / "report.md").read_text()


def test_cost_json_holds_every_row_and_stage_and_the_totals_are_their_sum(measured):
    cost, stdout, _ = measured
    assert (cost["steps"], cost["rounds"]) == (STEPS, ROUNDS)
    assert cost["experiment"]["name"] == "tiny_cost"
    for key in ("date", "commit", "tensorflow", "measured", "left_out"):
        assert cost[key], key
    assert cost["machine"]["cpu"] and cost["machine"]["cores"] >= 1
    assert "validation" in cost["left_out"]
    rows = {row["settings"]["method"]: row for row in cost["rows"]}
    assert set(rows) == {"frep", "admm"}
    for method, row in rows.items():
        assert len(row["cells"]) == 2  # the two seeds are one row
        assert row["flags"]["seed"] == "0" and row["cell"] in row["cells"]  # the lowest seed is measured
        assert row["settings"]["seed"] == 0 and row["settings"]["method"] == method
        assert row["steps_per_epoch"] > 0
    frep, admm = rows["frep"], rows["admm"]
    assert [(s["name"], s["epochs"]) for s in admm["stages"]] == [("pretrain", 2), ("admm", 2), ("retrain", 1)]
    assert [(s["name"], s["epochs"]) for s in frep["stages"]] == [
        ("train (before prune)", 1),
        ("train (after prune)", 2),
    ]
    for row in (frep, admm):
        spe = row["steps_per_epoch"]
        for stage in row["stages"]:
            assert len(stage["seconds_per_step"]) == ROUNDS  # the warm-up is not a round
            assert all(0 < s < 10 for s in stage["seconds_per_step"])
        # Each round: the sum over the stages of epochs x steps per epoch x that round's seconds per step.
        expected = [sum(s["epochs"] * spe * s["seconds_per_step"][r] for s in row["stages"]) for r in range(ROUNDS)]
        assert row["totals"] == pytest.approx(expected, rel=1e-9)
        assert row["mean"] == pytest.approx(statistics.mean(expected))
        assert row["std"] == pytest.approx(statistics.stdev(expected))
    ratio = admm["ratio_to_frep"]
    assert ratio["per_round"] == pytest.approx([a / f for a, f in zip(admm["totals"], frep["totals"], strict=True)])
    for number in range(1, ROUNDS + 1):
        assert f"[cost] round {number}/{ROUNDS}" in stdout
    assert "| Row | Stages (epochs) | ms per step | Est. train (s) | Train / FReP |" in stdout


def test_the_report_shows_the_table_and_judges_train_cost_over_rounds(measured):
    cost, _, report = measured
    section = report.split("### Training cost measured side by side\n", 1)[1]
    assert "| Row | Stages (epochs) | ms per step | Est. train (s) | Train / FReP |" in section
    assert "pretrain 2 + admm 2 + retrain 1" in section
    assert f"{ROUNDS} rounds; in each, every row's every stage in turn ran {STEPS} optimizer steps" in section
    rows = {row["settings"]["method"]: row for row in cost["rows"]}
    (line,) = [x for x in report.splitlines() if x.startswith("- **FReP trains cheaper**")]
    assert f"(n = {ROUNDS} rounds)" in line
    assert line.endswith(f": {_verdict(rows['frep']['totals'], rows['admm']['totals'], '<')}.")
    assert "n counts rounds, not seeds" in report


# -- without TensorFlow ---------------------------------------------------------------------------------------
def test_round_totals_sum_steps_times_seconds_per_step_over_every_stage():
    stages = [
        {"name": "pretrain", "epochs": 3, "steps": 30, "seconds_per_step": [0.1, 0.2]},
        {"name": "saliency", "epochs": 1, "steps": 7, "seconds_per_step": [1.0, 2.0]},  # a pass: its batches
        {"name": "finetune", "epochs": 2, "steps": 20, "seconds_per_step": [0.5, 0.25]},
    ]
    assert round_totals(stages) == pytest.approx([30 * 0.1 + 7 * 1.0 + 20 * 0.5, 30 * 0.2 + 7 * 2.0 + 20 * 0.25])


# Per-round totals of the fabricated cost.json, by (parameterization, sparsity) of test_report_claims' grid.
TOTALS = {
    ("hadamard", 0.99): [100.0, 110.0, 120.0],
    ("plain", 0.99): [200.0, 210.0, 190.0],
    # difference -10 s: less than the two stds added (30 + 10)
    ("hadamard", 0.9): [100.0, 130.0, 70.0],
    ("plain", 0.9): [110.0, 100.0, 120.0],
}
COST_CLAIMS = [
    _claim("FReP is cheaper at 99 %", "train_cost", _sel("hadamard", 0.99), "<", _sel("plain", 0.99)),
    _claim("FReP is cheaper at 90 %", "train_cost", _sel("hadamard", 0.9), "<", _sel("plain", 0.9)),
    _claim("FReP is cheaper at 99.5 %", "train_cost", _sel("hadamard", 0.995), "<", _sel("plain", 0.99)),
]


def _fabricated_cost(workdir, name="grid"):
    rows = []
    for (p, s), totals in TOTALS.items():
        cell = f"parameterization={p},sparsity={s},seed=0"
        stage = {"name": "train", "epochs": 10, "steps": 100, "seconds_per_step": [t / 100 for t in totals]}
        rows.append(
            {
                "cell": cell,
                "cells": [cell, f"parameterization={p},sparsity={s},seed=1"],
                "flags": {"parameterization": p, "sparsity": str(s), "seed": "0"},
                "settings": {"method": "frep", "parameterization": p, "sparsity": s, "objective": "sre", "seed": 0},
                "steps_per_epoch": 10,
                "stages": [stage],
                "totals": totals,
            }
        )
    axes = [
        {"flag": "parameterization", "values": ["hadamard", "plain"]},
        {"flag": "sparsity", "values": ["0.9", "0.99"]},
    ]
    cost = {"experiment": {"name": name}, "steps": 20, "rounds": 3, "axes": axes, "rows": rows}
    cost |= {"date": "2026-01-01", "commit": "abc", "machine": {"cpu": "a CPU", "cores": 2}, "tensorflow": "2.21.0"}
    with open(os.path.join(workdir, "cost.json"), "w") as fh:
        json.dump(cost, fh)


def _verdicts(summary) -> dict:
    return {j["label"]: j for j in summary["claims"]}


def test_a_train_cost_claim_is_judged_on_the_rounds_of_cost_json(tmp_path):
    workdir = make_workdir(str(tmp_path), claims=COST_CLAIMS)
    _fabricated_cost(workdir)
    summary = write_report(workdir)
    judged = _verdicts(summary)
    cheaper = judged["FReP is cheaper at 99 %"]
    assert cheaper["verdict"] == "holds"
    assert cheaper["a"]["n"] == 3 and cheaper["b"]["n"] == 3  # rounds, not the grid's three seeds of times
    assert cheaper["a"]["mean"] == pytest.approx(statistics.mean(TOTALS[("hadamard", 0.99)]))
    assert cheaper["a"]["std"] == pytest.approx(statistics.stdev(TOTALS[("hadamard", 0.99)]))
    assert cheaper["difference"] == pytest.approx(110.0 - 200.0)
    assert judged["FReP is cheaper at 90 %"]["verdict"] == "inside the spread over rounds"
    missing = judged["FReP is cheaper at 99.5 %"]
    assert missing["verdict"] == "not measured yet" and "no row of cost.json" in missing["text"]
    report = open(summary["report"]).read()
    assert "(n = 3 rounds)" in cheaper["text"] and cheaper["text"] in report
    section = report.split("### Training cost measured side by side\n", 1)[1].split("Measured by", 1)[0]
    (plain,) = [line for line in section.splitlines() if line.startswith("| Ori, 99 % |")]
    ratios = [a / b for a, b in zip(TOTALS[("plain", 0.99)], TOTALS[("hadamard", 0.99)], strict=True)]
    assert plain.endswith(f"| 200 ± 10 | {statistics.mean(ratios):.2f} ± {statistics.stdev(ratios):.2f} |")
    assert "train 2000.0 ± 100.0" in plain  # ms per step of its one stage


def test_without_cost_json_a_train_cost_claim_is_not_measured_yet(tmp_path):
    workdir = make_workdir(str(tmp_path), claims=COST_CLAIMS)
    summary = write_report(workdir)
    for judged in summary["claims"]:
        assert judged["verdict"] == "not measured yet"
        assert "no cost.json" in judged["text"]
    assert "side by side" not in open(summary["report"]).read().split("## Cost", 1)[1].split("\n## ", 1)[0]


def test_another_experiments_cost_json_is_left_out_with_a_note(tmp_path):
    workdir = make_workdir(str(tmp_path), claims=COST_CLAIMS)
    _fabricated_cost(workdir, name="another")
    summary = write_report(workdir)
    assert all(j["verdict"] == "not measured yet" for j in summary["claims"])
    assert any("cost.json measured experiment 'another'" in p for p in summary["problems"])


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "--experiment='': --mode=cost needs --experiment=FILE"),
        (["--experiment={cfg}", "--cost_steps=0"], "--cost_steps=0: must be an integer >= 1"),
        (["--experiment={cfg}", "--cost_rounds=0"], "--cost_rounds=0: must be an integer >= 1"),
        (["--experiment={missing}"], "no such file"),
    ],
)
def test_bad_input_is_refused_in_one_line_and_nothing_is_written(tmp_path, args, message):
    cfg = tmp_path / "tiny_cost.cfg"
    cfg.write_text(TINY)
    workdir = tmp_path / "out"
    args = [a.format(cfg=cfg, missing=tmp_path / "missing.cfg") for a in args]
    proc = _main("--mode=cost", f"--workdir={workdir}", *args, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert not workdir.exists()


ONE_ROW = """--dataset=digits
--arch=mlp
--width=0.125
--batch_size=64
--epsilon=0.1
--sparsity=0.9
--epochs=2
--prune_epoch=1
--ensemble_interval=5
"""


def test_models_rebuilt_every_round_are_warmed_up_before_they_are_timed(tmp_path):
    """The mode for models too large to keep alive: every round builds, warms up and times each part."""
    import flags
    from frep_tf.experiments import cost

    experiment = tmp_path / "one_row.cfg"
    experiment.write_text(ONE_ROW)
    result = cost.run(
        str(experiment), str(tmp_path / "out"), parse_args=flags.parse_args, steps=1, rounds=2, keep_alive=False
    )
    assert result["models"] == "rebuilt and warmed up every round"
    (row,) = result["rows"]
    assert [s["name"] for s in row["stages"]] == ["train (before prune)", "train (after prune)"]
    assert all(len(s["seconds_per_step"]) == 2 for s in row["stages"])
    assert row["totals"] == pytest.approx(round_totals(row["stages"]))
    assert json.loads((tmp_path / "out" / "cost.json").read_text())["rows"][0]["totals"] == row["totals"]


def test_the_ensemble_keeps_its_update_function_across_fits_of_one_model():
    """Another `fit` of the same model reuses the traced update (else every timed round of --mode=cost would
    pay its first run again); a new model gets its own."""
    import keras
    import numpy as np

    import frep_tf

    keras.utils.set_random_seed(0)

    def robust():
        net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="logits")])
        model = frep_tf.RobustModel(frep_tf.reparameterize(net, verbose=False), objective="natural", epsilon=0.1)
        model.compile(optimizer=keras.optimizers.SGD(0.1))
        return model

    x, y = np.random.rand(8, 4).astype("float32"), np.arange(8) % 3
    (ensemble,) = frep_tf.callbacks(ensemble=True, ensemble_interval=1, log_sparsity=False)
    model = robust()
    model.fit(x, y, epochs=1, batch_size=4, callbacks=[ensemble], verbose=0)
    first = ensemble._update
    model.fit(x, y, epochs=1, batch_size=4, callbacks=[ensemble], verbose=0)
    assert ensemble._update is first and first.experimental_get_tracing_count() == 1
    assert int(model.ensemble_updates.numpy()) == 4  # it still updates (every step, interval 1)
    other = robust()
    other.fit(x, y, epochs=1, batch_size=4, callbacks=[ensemble], verbose=0)
    assert ensemble._update is not first


class _FakeTiming:
    """Stands in for cost.Timing: logs what the rounds ask of it (its warm-up returns another number than
    its measurements, so a warm-up counted as a round would show)."""

    def __init__(self, row, part, log):
        self.row, self.part, self.log = row, part, log

    def build(self):
        self.log.append(("build", self.part.name))

    def warm_up(self, steps):
        self.log.append(("warm_up", self.part.name))
        return 99.0

    def measure(self, steps):
        self.log.append(("measure", self.part.name))
        return 0.5

    def release(self):
        self.log.append(("release", self.part.name))


@pytest.mark.parametrize("keep_alive", [True, False])
def test_rounds_time_every_part_after_its_warm_up_and_record_only_the_rounds(keep_alive, monkeypatch):
    from frep_tf.config import Config
    from frep_tf.experiments import cost
    from frep_tf.experiments.spec import Cell
    from frep_tf.methods.base import Stage

    monkeypatch.setattr(cost, "_clear", lambda: None)
    plan = [Stage("pretrain", 0, 2), Stage("finetune", 2, 3)]
    row = cost.RowPlan(Cell("c", {}, {}), ["c"], Config(), plan=plan, steps_per_epoch=10, label="row")
    row.parts = [cost.Part(0, "pretrain", 2, 20), cost.Part(1, "finetune", 3, 30)]
    log = []
    timings = [_FakeTiming(row, part, log) for part in row.parts]
    cost._warm_up(timings, 4, keep_alive, sys.stdout)
    for number in range(3):
        cost._round(timings, 4, number, 3, keep_alive, [row], sys.stdout)
    for part in row.parts:
        assert part.seconds == [0.5, 0.5, 0.5]  # one value per round, none from a warm-up
    for name in ("pretrain", "finetune"):
        events = [event for event, part in log if part == name]
        assert events.index("warm_up") < events.index("measure")  # warmed up before its first timing
        if keep_alive:
            assert events == ["build", "warm_up", "measure", "measure", "measure"]
        else:
            assert events == ["build", "warm_up", "measure", "release"] * 3
    if keep_alive:  # every build (it sets the random seeds, so TensorFlow traces anew) before any warm-up
        assert [event for event, _ in log][:4] == ["build", "build", "warm_up", "warm_up"]
    # Every other round in reverse, so no part always runs first.
    measured = [part for event, part in log if event == "measure"]
    assert measured == ["pretrain", "finetune", "finetune", "pretrain", "pretrain", "finetune"]


def test_untrained_weights_are_pruned_with_a_per_layer_floor_that_keeps_the_global_budget():
    """--mode=cost prunes untrained weights: He-normal, the first layer's weights (fan-in 784) are all
    smaller than the largest of the second's, and a 99 % global budget takes every one of them (training's
    check refuses that)."""
    import dataclasses

    import numpy as np

    from frep_tf.config import Config, PruneConfig
    from frep_tf.experiments.cost import untrained_prune_floor
    from frep_tf.training.pruning import PruningError, check_layer_densities, global_unstructured_masks, layer_densities

    rng = np.random.default_rng(0)
    shapes = ((784, 512), (512, 512), (512, 10))  # the proving ground's MLP

    def he_normal(fan_in, fan_out):  # as Keras draws it: a normal truncated at two standard deviations
        std = (2 / fan_in) ** 0.5 / 0.87962566
        w = rng.normal(0, std, (fan_in, fan_out))
        while np.any(np.abs(w) > 2 * std):
            out = np.abs(w) > 2 * std
            w[out] = rng.normal(0, std, out.sum())
        return w

    kernels = [he_normal(i, o) for i, o in shapes]
    names = ["dense1", "dense2", "head"]
    cfg = Config(prune=PruneConfig(sparsity=0.99))
    with pytest.raises(PruningError):
        masks = global_unstructured_masks(kernels, 0.99, cfg.prune.min_layer_density)
        check_layer_densities(layer_densities(names, masks), 0.99, cfg.prune.min_layer_density)
    floored = untrained_prune_floor(cfg)
    assert floored.prune.min_layer_density == pytest.approx(0.005)
    masks = global_unstructured_masks(kernels, 0.99, floored.prune.min_layer_density)
    check_layer_densities(layer_densities(names, masks), 0.99, floored.prune.min_layer_density)
    assert sum(int(m.sum()) for m in masks) == round(0.01 * sum(k.size for k in kernels))
    assert untrained_prune_floor(dataclasses.replace(cfg, prune=PruneConfig(sparsity=0.0))).prune.min_layer_density == 0
