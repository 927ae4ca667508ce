"""The report's validation section (the split settings are chosen on) on synthetic cells with committed
per-epoch scalars (scalars.json): its numbers against an independent mean ± std of the scalars (epochs 1, 3
and 9 are the 0-based keys 0, 2 and 8; the last and the best epoch), the temporal ensemble's scalars where
the cell exports the ensemble and the network's otherwise, "-" where a cell trained fewer epochs, the
catastrophic-overfitting guard's count; and a validation-only experiment (every cell evaluated with
`--eval_attacks=clean`), whose report shows no test number while a normal experiment's still does."""

import json
import os
import statistics

import numpy as np
import pytest

from frep_tf.config import Config
from frep_tf.experiments import report
from frep_tf.experiments.report.cells import Cell
from frep_tf.experiments.report.figures import FIGURES
from frep_tf.experiments.report.stats import evaluated_attacks, validation_curves, validation_only

SECTION = "## Validation (the split settings are chosen on)"
# Sentinels in results.json that only the test-set columns of a report can show.
TEST_CLEAN = 0.987654  # shown as 98.8
TEST_PGD = 0.876543  # shown as 87.7
INPUT_GRADIENT = 12.3456  # shown as 12.35
# (row label, parameterization, ensemble, sparsity, {seed: epochs}, {seed: epochs the guard flagged})
ROWS = [
    ("Ori, 90 %, ensemble=False", "plain", False, 0.9, {0: 12, 1: 12}, {0: (), 1: (4, 7)}),
    ("FReP, 90 %", "hadamard", True, 0.9, {0: 12, 1: 12, 2: 10}, {0: (), 1: (), 2: (3,)}),
    ("FReP, 99 %", "hadamard", True, 0.99, {0: 12, 1: 5}, {0: (), 1: ()}),  # seed 1: fewer than 9 epochs
    ("FReP, 99.5 %", "hadamard", True, 0.995, {0: 6, 1: 4}, {0: (), 1: ()}),  # no cell reaches epoch 9
]
NO_GUARD_KEY = "hadamard-0.9-seed0"  # its scalars.json has no catastrophic_overfitting at all


def _name(p, s, seed):
    return f"{p}-{s}-seed{seed}"


def _scalars(rng, epochs, ensemble, flagged, guard_key=True):
    """scalars.json as evidence.py saves it: {tag: {0-based epoch as a string: value}}; the ensemble's
    accuracies are kept apart from the network's so that reading the wrong ones shows."""
    tags = ["val_pgd_acc", "val_clean_acc", "train_adv_acc"]
    tags += ["val_ensemble_pgd_acc", "val_ensemble_clean_acc"] if ensemble else []
    out = {}
    for tag in tags:
        low = 0.55 if "clean" in tag else 0.2
        low += 0.05 if "ensemble" in tag else 0.0
        out[tag] = {str(e): float(rng.uniform(low, low + 0.1) + 0.01 * e) for e in range(epochs)}
    for e in flagged:  # a collapse: robustness gone while the training adversarial accuracy jumps
        out["val_pgd_acc"][str(e)], out["train_adv_acc"][str(e)] = 0.0, 0.99
    if guard_key:
        # The flags training recorded, by an older rule that saw nothing: the report applies the current
        # rule to the two series instead.
        out["catastrophic_overfitting"] = {str(e): 0.0 for e in range(epochs)}
    return out


def _results(s, ensemble, attacks, epochs):
    evaluation = {"clean": {"accuracy": TEST_CLEAN, "samples": 100}, "config": {"epsilon": 0.1}}
    if "pgd" in attacks:
        evaluation["pgd"] = {"accuracy": TEST_PGD, "samples": 100}
    evaluation["input_gradient_l1"] = {"mean": INPUT_GRADIENT, "samples": 100}
    return {
        "dataset": {"name": "digits", "num_val": 200},
        "model": {"evaluated": "ensemble" if ensemble else "network", "evaluated_path": "export/model.keras"},
        "sparsity": {"kernels": s},
        "sparsity_measures": {"overall": {"zero": s, "near_zero": s}, "near_zero_relative": 0.001},
        "evaluation": evaluation,
        "training": {"epochs": epochs},
        "timings": {"total": 10.0},
    }


def _experiment(workdir, attacks: str, seed=3):
    """The ROWS grid with every cell evaluated with `--eval_attacks=<attacks>`: {cell name: scalars}."""
    rng = np.random.default_rng(seed)
    scalars, entries = {}, []
    for _, p, ensemble, s, epochs, flagged in ROWS:
        for seed_, n in epochs.items():
            name = _name(p, s, seed_)
            cell_dir = os.path.join(workdir, "cells", name)
            os.makedirs(cell_dir)
            flat = {
                "dataset": "digits",
                "parameterization": p,
                "ensemble": ensemble,
                "sparsity": s,
                "seed": seed_,
                "eval_attacks": attacks,
                "val_samples": 150,
            }
            with open(os.path.join(cell_dir, "config.json"), "w") as fh:
                fh.write(Config.from_flat(flat).to_json())
            with open(os.path.join(cell_dir, "results.json"), "w") as fh:
                json.dump(_results(s, ensemble, attacks.split(","), n), fh)
            scalars[name] = _scalars(rng, n, ensemble, flagged[seed_], guard_key=name != NO_GUARD_KEY)
            with open(os.path.join(cell_dir, "scalars.json"), "w") as fh:
                json.dump(scalars[name], fh)
            flags = {"parameterization": p, "ensemble": str(ensemble).lower(), "sparsity": str(s), "seed": str(seed_)}
            entries.append({"name": name, "dir": f"cells/{name}", "flags": flags})
    axes = [
        {"flag": "parameterization ensemble", "flags": ["parameterization", "ensemble"], "values": [["plain", "false"], ["hadamard", "true"]]},
        {"flag": "sparsity", "values": ["0.9", "0.99", "0.995"]},
        {"flag": "seed", "values": ["0", "1", "2"]},
    ]  # fmt: skip
    with open(os.path.join(workdir, "experiment.json"), "w") as fh:
        json.dump({"name": os.path.basename(workdir), "axes": axes, "cells": entries}, fh)
    summary = report.write_report(workdir)
    with open(summary["report"]) as fh:
        return scalars, summary, fh.read()


@pytest.fixture(scope="module")
def normal(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("normal"))
    return _experiment(workdir, "clean,pgd")


@pytest.fixture(scope="module")
def validation(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("validation"))
    return _experiment(workdir, "clean")


def _section(text):
    return text.split(SECTION + "\n", 1)[1].split("\n## ", 1)[0]


def _table(text):
    """{row label: [columns]} of the validation table, and its header."""
    lines = [
        [c.strip() for c in line.strip("|").split("|")] for line in _section(text).splitlines() if line[:2] == "| "
    ]
    return lines[0], {line[0]: line[1:] for line in lines[1:]}


def _expected(values):
    """An independent mean ± sample std over seeds, in percent with one decimal (n where fewer reached it)."""
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    text = f"{100 * statistics.mean(present):.1f}"
    if len(present) > 1:
        text += f" ± {100 * statistics.stdev(present):.1f}"
    return text + (f" (n={len(present)})" if len(present) < len(values) else "")


def _rows_expected(scalars):
    """{row label (as the report marks it): expected columns} computed from the scalars written."""
    out = {}
    for label, p, ensemble, s, epochs, flagged in ROWS:
        pgd_tag, clean_tag = (
            ("val_ensemble_pgd_acc", "val_ensemble_clean_acc") if ensemble else ("val_pgd_acc", "val_clean_acc")
        )
        runs = [scalars[_name(p, s, seed)] for seed in epochs]
        pgd = [{int(k): v for k, v in r[pgd_tag].items()} for r in runs]
        clean = [{int(k): v for k, v in r[clean_tag].items()} for r in runs]
        last = [max(c) for c in pgd]
        best = [max(c.values()) for c in pgd]
        best_epoch = [1 + min(e for e, v in c.items() if v == max(c.values())) for c in pgd]
        guard = [len(flagged[seed]) for seed in epochs]
        out[f"{label} ({'ensemble' if ensemble else 'network'})"] = [
            str(len(runs)),
            *[_expected([c.get(epoch - 1) for c in pgd]) for epoch in (1, 3, 9)],
            _expected([c[e] for c, e in zip(pgd, last, strict=True)]),
            _expected(best),
            " / ".join(map(str, best_epoch)),
            _expected([c[e] for c, e in zip(clean, last, strict=True)]),
            " / ".join(map(str, guard)),
        ]  # fmt: skip
    return out


def test_the_validation_table_is_the_mean_over_seeds_of_the_scalars(normal):
    scalars, _, text = normal
    header, table = _table(text)
    assert header == [
        "Row", "n", "PGD, epoch 1 (%)", "PGD, epoch 3 (%)", "PGD, epoch 9 (%)", "PGD, last (%)", "PGD, best (%)",
        "Best epoch", "Clean, last (%)", "Catastrophic overfitting (epochs)",
    ]  # fmt: skip
    expected = _rows_expected(scalars)
    assert list(table) == list(expected)  # a line per report row, in the report's order
    for label, columns in expected.items():
        assert table[label] == columns, label


def test_ensemble_or_network_and_the_epochs_of_a_single_cell(normal):
    """Spelled out for one cell of each kind: the ensemble's scalars for an ensemble row, the network's
    for Ori, and epoch 9 is the 0-based key "8"."""
    scalars, _, text = normal
    _, table = _table(text)
    frep = scalars[_name("hadamard", 0.99, 0)]
    assert table["FReP, 99 % (ensemble)"][3] == f"{100 * frep['val_ensemble_pgd_acc']['8']:.1f} (n=1)"
    ori = [scalars[_name("plain", 0.9, seed)]["val_pgd_acc"]["0"] for seed in (0, 1)]
    first = f"{100 * statistics.mean(ori):.1f} ± {100 * statistics.stdev(ori):.1f}"
    assert table["Ori, 90 %, ensemble=False (network)"][1] == first
    (caption,) = [line for line in _section(text).splitlines() if line.startswith("Accuracy (%) on the validation")]
    assert "`val_ensemble_pgd_acc`" in caption and "*ensemble*" in caption and "*network*" in caption


def test_fewer_than_nine_epochs_show_a_dash(normal):
    _, _, text = normal
    _, table = _table(text)
    row = table["FReP, 99.5 % (ensemble)"]
    assert row[3] == "-"  # epoch 9: neither seed trained 9 epochs
    assert row[1] != "-" and row[2] != "-" and row[4] != "-"  # epochs 1 and 3 and the last are there
    assert table["FReP, 99 % (ensemble)"][3].endswith(" (n=1)")  # one of two seeds reached epoch 9


def test_the_guard_count(normal):
    _, _, text = normal
    _, table = _table(text)
    assert table["Ori, 90 %, ensemble=False (network)"][-1] == "0 / 2"
    assert table["FReP, 90 % (ensemble)"][-1] == "0 / 0 / 1"  # seed 0 has no catastrophic_overfitting key


def test_a_normal_experiment_still_shows_its_test_numbers(normal):
    _, summary, text = normal
    assert "## Robust accuracy (paper Tables I / IV)" in text
    assert text.index("## Robust accuracy") < text.index(SECTION) < text.index("## Figures")
    assert "98.8" in text and "87.7" in text and "12.35" in text and "Test robust (%)" in text
    assert "Validation-only experiment" not in text
    assert {"fig8", "lipschitz"} <= set(summary["figures"])


def test_a_validation_only_experiment_shows_no_test_number(validation, normal):
    scalars, summary, text = validation
    for sentinel in ("98.8", "87.7", "12.35", "98.7654", "12.3456"):
        assert sentinel not in text, sentinel
    assert "Test robust" not in text and "Input-gradient" not in text and "| Clean |" not in text
    assert "## Robust accuracy" not in text
    # The note, then the validation section, before everything else.
    assert (
        text.index("Validation-only experiment: its cells were evaluated on clean test images only")
        < text.index(SECTION)
        < text.index("## Exported models")
        < text.index("## Sparsity measures")
    )
    assert not {"fig8", "lipschitz"} & set(summary["figures"])
    figures_dir = os.path.dirname(summary["report"])
    assert not os.path.exists(os.path.join(figures_dir, "figures", FIGURES["fig8"]))
    assert not os.path.exists(os.path.join(figures_dir, "figures", FIGURES["lipschitz"]))
    # The same validation numbers as a normal experiment would show.
    _, table = _table(text)
    assert table == {label: columns for label, columns in _rows_expected(scalars).items()}
    assert _table(normal[2]) == _table(text)  # same seed for the scalars


@pytest.mark.parametrize(
    "value, expected",
    [
        ("clean", ["clean"]),
        (["clean"], ["clean"]),
        (" clean ,", ["clean"]),
        ("clean,pgd", ["clean", "pgd"]),
        (None, None),
    ],
)
def test_evaluated_attacks_reads_either_form(value, expected):
    cell = Cell("c", "/nowhere", {}, config={} if value is None else {"eval_attacks": value}, status="finished")
    assert evaluated_attacks(cell) == expected


def test_validation_only_needs_every_finished_cell_clean_only():
    def cell(attacks, status="finished"):
        return Cell("c", "/nowhere", {}, config={"eval_attacks": attacks}, status=status)

    assert validation_only([cell("clean"), cell(["clean"])])
    assert not validation_only([cell("clean"), cell("clean,pgd")])
    assert validation_only([cell("clean"), cell("clean,pgd", status="failed")])
    assert not validation_only([cell("clean", status="pending")])  # nothing finished
    assert not validation_only([Cell("c", "/nowhere", {}, config={}, status="finished")])  # the default attacks


def test_without_model_evaluated_the_ensemble_scalars_decide():
    """Older results.json without `model.evaluated`: the ensemble where its scalars were logged."""
    runs = {"val_pgd_acc": {0: 0.3, 1: 0.4}, "val_clean_acc": {0: 0.6, 1: 0.7}}
    ensemble = {"val_ensemble_pgd_acc": {0: 0.35, 1: 0.45}, "val_ensemble_clean_acc": {0: 0.65, 1: 0.75}}
    cell = Cell("c", "/nowhere", {}, config={}, results={}, status="finished")
    network = validation_curves(cell, {"c": runs})
    assert (network["model"], network["last"], network["clean"], network["guard"]) == ("network", 0.4, 0.7, 0)
    both = validation_curves(cell, {"c": runs | ensemble})
    assert (both["model"], both["last"], both["clean"], both["epochs"][1]) == ("ensemble", 0.45, 0.75, 0.35)
    assert both["epochs"][3] is None and both["last_epoch"] == 2 and both["best_epoch"] == 2
    assert validation_curves(cell, {}) is None
