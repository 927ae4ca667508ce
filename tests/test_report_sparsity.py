"""The report on a grid that lists many flags per cell (the lottery/IWI grid's shape): row labels name only what sets a
row apart, the sparsity-measures table against an independent mean, the robustness-vs-input-gradient
figure, IWI plotted at the sparsity of the network it trains."""

import json
import os
import statistics

import numpy as np
import pytest

from frep_tf.config import Config
from frep_tf.experiments import report

FLAGS = ("seed", "method", "sparsity", "lottery_reinit", "rewind_epoch", "eval_attacks")
CELLS = [  # (seed, method, sparsity, lottery_reinit, rewind_epoch, eval_attacks)
    (0, "frep", 0.0, False, 0, "clean,pgd,autoattack"),
    (1, "frep", 0.0, False, 0, "clean,pgd,autoattack"),
    (0, "lottery", 0.9, False, 0, "clean,pgd,autoattack"),
    (1, "lottery", 0.9, False, 0, "clean,pgd,autoattack"),
    (0, "lottery", 0.9, True, 0, "clean,pgd,autoattack"),
    (1, "lottery", 0.9, True, 0, "clean,pgd,autoattack"),
    (0, "iwi", 0.9, False, 0, "clean,pgd,autoattack"),
    (1, "iwi", 0.9, False, 0, "clean,pgd,autoattack"),
    (0, "lottery", 0.9, False, 1, "clean"),
]


def _name(values):
    return ",".join(f"{k}={v}" for k, v in zip(FLAGS, values, strict=True))


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("sparsity_grid"))
    rng = np.random.default_rng(3)
    cells, results = [], {}
    for values in CELLS:
        seed, method, sparsity, reinit, rewind, attacks = values
        name = _name(values)
        flags = dict(zip(FLAGS, map(str, values), strict=True))
        cells.append({"name": name, "dir": f"cells/{name}", "flags": flags})
        cell_dir = os.path.join(workdir, "cells", name)
        os.makedirs(cell_dir)
        cfg = Config.from_flat(
            {
                "dataset": "digits",
                "method": method,
                "sparsity": sparsity,
                "seed": seed,
                "lottery_reinit": reinit,
                "rewind_epoch": rewind,
                "eval_attacks": attacks,
                "parameterization": "plain",
                "objective": "pgd",
            }
        )
        with open(os.path.join(cell_dir, "config.json"), "w") as fh:
            fh.write(cfg.to_json())
        evaluation = {a: {"accuracy": float(rng.uniform(0.1, 0.6)), "samples": 50} for a in attacks.split(",")}
        evaluation["input_gradient_l1"] = {"mean": float(rng.uniform(1, 6)), "samples": 50}
        evaluation["config"] = {"epsilon": 0.1}
        results[name] = {
            "dataset": {"name": "digits", "num_val": 100},
            "model": {"evaluated": "network", "evaluated_path": "export/model.keras"},
            "sparsity": {"kernels": sparsity},
            "sparsity_measures": {
                "near_zero_relative": 1e-3,
                "layers": {},
                "overall": {"zero": sparsity, "near_zero": float(sparsity + rng.uniform(0, 0.05))},
            },
            "evaluation": evaluation,
            "training": {"epochs": 4, "final_epoch": {"val_pgd_acc": float(rng.uniform(0.2, 0.5))}},
            "timings": {"total": 10.0},
        }
        with open(os.path.join(cell_dir, "results.json"), "w") as fh:
            json.dump(results[name], fh)
    axis = {"flag": " ".join(FLAGS), "flags": list(FLAGS), "values": [list(map(str, v)) for v in CELLS]}
    with open(os.path.join(workdir, "experiment.json"), "w") as fh:
        json.dump({"name": "grid", "axes": [axis], "cells": cells}, fh)
    summary = report.write_report(workdir)
    with open(summary["report"]) as fh:
        text = fh.read()
    return workdir, summary, results, text


def _section(text, title):
    part = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    return [line for line in part.splitlines() if line.startswith("| ")][1:]  # without the header


def test_labels_name_only_the_settings_that_set_a_row_apart(grid):
    workdir, _, _, text = grid
    _, cells, axes, _ = report.load_experiment(workdir)
    rows = report.build_rows(cells, axes)
    # rewind_epoch 0 and the full attack list are what most rows have; reinit is 2 rows against 3: shown
    # only where it is True. A row's key still holds every setting.
    assert report.common_settings(rows) == {
        "lottery_reinit": False,
        "rewind_epoch": 0,
        "eval_attacks": "clean,pgd,autoattack",
    }
    labels = [report.row_label(r) for r in rows]
    assert labels == [
        "Ori (pgd), 0 %",
        "Lottery, 90 %",
        "Lottery, 90 %, rewind_epoch=1, eval_attacks=clean",
        "Lottery, 90 %, lottery_reinit=True",
        "IWI, 0 % (from a 90 % source)",
    ]
    table = _section(text, "Robust accuracy")
    assert [line.split("|")[3].strip() for line in table] == [
        "-",
        "-",
        "rewind_epoch=1, eval_attacks=clean",
        "lottery_reinit=True",
        "-",
    ]
    assert "a row that does not name a setting has lottery_reinit=False, rewind_epoch=0, " in text


def test_a_value_no_more_common_than_another_is_named_on_every_row():
    rows = [
        report.Row((i,), "FReP", 0.9, False, {"objective": objective}, []) for i, objective in enumerate(("pgd", "sre"))
    ]
    assert report.common_settings(rows) == {}


def test_the_measures_table_is_the_mean_over_seeds(grid):
    _, _, results, text = grid
    table = _section(text, "Sparsity measures and robustness")
    assert len(table) == 5
    lottery = [results[_name(v)] for v in CELLS if v[1] == "lottery" and not v[3] and v[4] == 0]
    cols = [c.strip() for c in table[1].split("|")[1:-1]]
    assert cols[0] == "Lottery, 90 %" and cols[1] == "2"
    near = [100 * r["sparsity_measures"]["overall"]["near_zero"] for r in lottery]
    assert cols[3] == f"{statistics.mean(near):.1f} ± {statistics.stdev(near):.1f}"
    grad = [r["evaluation"]["input_gradient_l1"]["mean"] for r in lottery]
    assert cols[4] == f"{statistics.mean(grad):.2f} ± {statistics.stdev(grad):.2f}"
    val = [100 * r["training"]["final_epoch"]["val_pgd_acc"] for r in lottery]
    assert cols[5] == f"{statistics.mean(val):.1f} ± {statistics.stdev(val):.1f}"
    aa = [100 * r["evaluation"]["autoattack"]["accuracy"] for r in lottery]
    assert cols[6] == f"{statistics.mean(aa):.1f} ± {statistics.stdev(aa):.1f} (AA)"
    # The clean-only row has no robust test number, but its validation robustness is there.
    rewind = [c.strip() for c in table[2].split("|")[1:-1]]
    rewind_val = 100 * results[_name(CELLS[-1])]["training"]["final_epoch"]["val_pgd_acc"]
    assert rewind[5] == f"{rewind_val:.1f}" and rewind[6] == "-"


def test_the_input_gradient_figure_is_drawn_and_iwi_sits_at_zero(grid):
    workdir, summary, _, text = grid
    path = summary["figures"]["lipschitz"]
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.relpath(path, workdir) in text
    _, cells, axes, _ = report.load_experiment(workdir)
    rows = report.build_rows(cells, axes)
    assert [report.trained_sparsity(r) for r in rows] == [0.0, 0.9, 0.9, 0.9, 0.0]


def test_rows_group_and_label_epochs_as_trained_after_the_epoch_scale():
    # The shared dense cell ran as --epochs=30; the lottery grid's cells as --epochs=100 at x0.3 (the same
    # 30 epochs) and the equal-compute control as --epochs=300 at x0.3 (90).
    written = [("frep", 30, 1.0), ("lottery", 100, 0.3), ("lottery", 100, 0.3), ("frep", 300, 0.3)]
    cells = [
        report.Cell(
            name=f"c{i}",
            dir=f"cells/c{i}",
            flags={"seed": str(i), "method": m, "epochs": str(e)},
            config={
                "seed": i,
                "method": m,
                "epochs": e,
                "epoch_scale": scale,
                "sparsity": 0.9 * (m == "lottery"),
                "parameterization": "plain",
            },
            results={},
            status="finished",
        )
        for i, (m, e, scale) in enumerate(written)
    ]
    rows = report.build_rows(cells, [("seed", []), ("method", []), ("epochs", []), ("lottery_reinit", [])])
    # lottery_reinit is the same (unset) on every row: named on none.
    assert report.common_settings(rows) == {"epochs": 30, "lottery_reinit": None}
    assert sorted(report.row_label(r) for r in rows) == ["Lottery, 90 %", "Ori, 0 %", "Ori, 0 %, epochs=90"]
