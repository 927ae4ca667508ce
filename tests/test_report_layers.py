"""The report's per-layer figure and tables (what each method's pruning kept of every layer, from
results.json `pruning.layers`) on a synthetic grid of methods x sparsities x seeds: drawn only when a
sparse cell recorded it, the table's numbers against results.json and an independent mean over seeds,
older cells without the field left out with a note."""

import json
import os
import shutil
import statistics

import numpy as np
import pytest

from frep_tf.config import Config
from frep_tf.experiments import report
from frep_tf.experiments.report import figures, markdown, tables
from frep_tf.experiments.report.cells import Cell
from frep_tf.experiments.report.stats import LAYER_PANELS, kept_per_layer

LAYERS = {"dense1": 784 * 512, "dense2": 512 * 512, "head_dense": 512 * 10}  # network order
# (method, parameterization) -> the row's name in the report
METHODS = {
    ("harp", "plain"): "HARP",
    ("hydra", "plain"): "HYDRA",
    ("lwm", "plain"): "LWM",
    ("frep", "plain"): "Ori",
    ("frep", "hadamard"): "FReP",
}
SPARSITIES = (0.9, 0.99)
SEEDS = (0, 1)
OLD = "lwm-0.9-seed1"  # a cell from before results.json recorded pruning.layers


def _name(method, p, s, seed):
    return f"{method if method != 'frep' else p}-{s}-seed{seed}"


def _layers(rng, s):
    """pruning.layers as results.py writes it: {name: {fraction, kept, total}}, about 1 - s kept overall."""
    budget = (1 - s) * sum(LAYERS.values())
    shares = rng.dirichlet(np.ones(len(LAYERS)))
    out = {}
    for name, total in LAYERS.items():
        kept = int(min(total, max(1, round(budget * shares[list(LAYERS).index(name)]))))
        out[name] = {"fraction": kept / total, "kept": kept, "total": total}
    return out


def _write_cell(workdir, name, method, p, s, seed, results):
    cell_dir = os.path.join(workdir, "cells", name)
    os.makedirs(cell_dir)
    cfg = Config.from_flat({"dataset": "digits", "method": method, "parameterization": p, "sparsity": s, "seed": seed})
    with open(os.path.join(cell_dir, "config.json"), "w") as fh:
        fh.write(cfg.to_json())
    with open(os.path.join(cell_dir, "results.json"), "w") as fh:
        json.dump(results, fh)
    return {
        "name": name,
        "dir": f"cells/{name}",
        "flags": {"method": method, "parameterization": p, "sparsity": str(s), "seed": str(seed)},
    }


def _results(rng, s, layers):
    results = {
        "dataset": {"name": "digits"},
        "sparsity": {"kernels": s},
        "evaluation": {"pgd": {"accuracy": float(rng.uniform(0.2, 0.6)), "samples": 100}},
        "timings": {"total": 10.0},
    }
    if layers is not None:
        results["pruning"] = {"layers": layers}
    return results


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """5 methods x 2 sparsities x 2 seeds, and a dense cell: (workdir, summary, results, report text)."""
    workdir = str(tmp_path_factory.mktemp("layers"))
    rng = np.random.default_rng(7)
    cells, results = [], {}
    dense = {name: {"fraction": 1.0, "kept": total, "total": total} for name, total in LAYERS.items()}
    results["dense-seed0"] = _results(rng, 0.0, dense)
    cells.append(_write_cell(workdir, "dense-seed0", "frep", "hadamard", 0.0, 0, results["dense-seed0"]))
    for method, p in METHODS:
        for s in SPARSITIES:
            for seed in SEEDS:
                name = _name(method, p, s, seed)
                results[name] = _results(rng, s, None if name == OLD else _layers(rng, s))
                cells.append(_write_cell(workdir, name, method, p, s, seed, results[name]))
    axes = [
        {
            "flag": "method parameterization",
            "flags": ["method", "parameterization"],
            "values": [list(k) for k in METHODS],
        },
        {"flag": "sparsity", "values": ["0", *map(str, SPARSITIES)]},
        {"flag": "seed", "values": list(map(str, SEEDS))},
    ]
    with open(os.path.join(workdir, "experiment.json"), "w") as fh:
        json.dump({"name": "layers", "axes": axes, "cells": cells}, fh)
    summary = report.write_report(workdir)
    with open(summary["report"]) as fh:
        text = fh.read()
    return workdir, summary, results, text


def _layer_table(text, sparsity_label):
    """{layer: [columns]} of the kept-per-layer table at one target sparsity, and its header."""
    part = text.split(f"Kept per layer, target sparsity {sparsity_label}:", 1)[1].split("\n\n", 2)[1]
    lines = [[c.strip() for c in line.strip("|").split("|")] for line in part.splitlines() if line.startswith("| ")]
    return lines[0], {line[0]: line[1:] for line in lines[1:]}  # the |---| line is not "| "


def _column(header, label):
    return header.index(label) - 1  # columns after the layer's name


def test_the_figure_is_drawn_and_shown_with_its_caption(grid):
    workdir, summary, _, text = grid
    from matplotlib import image

    path = summary["figures"]["layers"]
    assert os.path.basename(path) == "fig_layer_density.png"
    pixels = image.imread(path)
    assert 300 < pixels.shape[1] < 3000 and 300 < pixels.shape[0] < 3000 and pixels.std() > 0.05
    section = text.split("## Figures", 1)[1].split("\n## ", 1)[0]
    rel = os.path.relpath(path, workdir)
    assert f"![fig_layer_density.png]({rel})\n\n{markdown.FIGURE_CAPTIONS['layers']}" in section
    # A table per target sparsity the figure shows, after the figure; the dense row has none.
    assert section.index(rel) < section.index("Kept per layer, target sparsity 90 %:")
    assert section.index("Kept per layer, target sparsity 90 %:") < section.index(
        "Kept per layer, target sparsity 99 %:"
    )
    assert "Kept per layer, target sparsity 0 %" not in text


def test_the_table_is_the_mean_over_seeds_of_results_json(grid):
    _, _, results, text = grid
    for s in SPARSITIES:
        header, table = _layer_table(text, f"{100 * s:g} %")
        assert list(table) == [f"`{name}`" for name in LAYERS] + ["all"]  # network order
        for (method, p), label in METHODS.items():
            names = [_name(method, p, s, seed) for seed in SEEDS]
            recorded = [results[n]["pruning"]["layers"] for n in names if "pruning" in results[n]]
            column = _column(header, label + (f" (n={len(recorded)})" if len(recorded) > 1 else ""))
            for layer, total in LAYERS.items():
                cols = table[f"`{layer}`"]
                assert cols[0] == f"{total:,}"
                kept = [r[layer]["kept"] for r in recorded]
                fraction = statistics.mean(r[layer]["fraction"] for r in recorded)
                std = f" ± {statistics.stdev(kept):,.0f}" if len(kept) > 1 else ""
                assert cols[column] == f"{statistics.mean(kept):,.0f}{std} ({100 * fraction:.3g} %)", (label, s, layer)
            everything = sum(statistics.mean(r[layer]["kept"] for r in recorded) for layer in LAYERS)
            share = everything / sum(LAYERS.values())
            assert table["all"][column] == f"{everything:,.0f} ({100 * share:.3g} %)"


def test_a_single_seed_shows_its_results_json_values(grid):
    _, _, results, text = grid
    header, table = _layer_table(text, "90 %")
    column = _column(header, "LWM")  # its other seed's results.json predates pruning.layers
    for layer in LAYERS:
        entry = results["lwm-0.9-seed0"]["pruning"]["layers"][layer]
        assert table[f"`{layer}`"][column] == f"{entry['kept']:,} ({100 * entry['fraction']:.3g} %)"


def test_the_series_are_the_mean_and_range_over_seeds(grid):
    workdir, _, results, _ = grid
    _, cells, axes, _ = report.load_experiment(workdir)
    panels, left_out, missing = kept_per_layer(report.build_rows(cells, axes))
    assert [(p.sparsity, p.structured) for p in panels] == [(0.9, False), (0.99, False)] and left_out == []
    assert missing == 1
    panel = panels[1]
    assert panel.layers == list(LAYERS)
    assert [row.method for row, _ in panel.series] == ["LWM", "HYDRA", "HARP", "Ori", "FReP"]  # the paper's order
    for row, kept in panel.series:
        (method, p) = next(k for k, v in METHODS.items() if v == row.method)
        recorded = [results[_name(method, p, 0.99, seed)]["pruning"]["layers"] for seed in SEEDS]
        for layer in LAYERS:
            fractions = [r[layer]["fraction"] for r in recorded]
            assert kept[layer].n == 2 and kept[layer].total == LAYERS[layer]
            assert kept[layer].fraction == pytest.approx(statistics.mean(fractions), rel=1e-12)
            assert (kept[layer].fraction_min, kept[layer].fraction_max) == (min(fractions), max(fractions))
            assert kept[layer].kept == pytest.approx(statistics.mean(r[layer]["kept"] for r in recorded))


def test_older_cells_are_left_out_with_a_note(grid):
    _, summary, _, text = grid
    note = "1 finished sparse cell(s) have no pruning.layers in results.json"
    assert any(p.startswith(note) for p in summary["problems"])
    assert note in text.split("## Notes", 1)[1]


def test_no_figure_without_per_layer_data(grid, tmp_path):
    """Without pruning.layers, or with it only on dense cells, nothing is drawn: a figure an earlier
    report drew is deleted, and the tables go with it."""
    workdir, summary, _, _ = grid
    copy = tmp_path / "w"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("report.md"))
    assert (copy / "figures" / "fig_layer_density.png").exists()
    sparse = 0
    for path in copy.glob("cells/*/results.json"):
        results = json.loads(path.read_text())
        if results["sparsity"]["kernels"] > 0 and results.pop("pruning", None) is not None:
            sparse += 1
            path.write_text(json.dumps(results))
    again = report.write_report(str(copy))
    assert "layers" not in again["figures"] and set(again["figures"]) == set(summary["figures"]) - {"layers"}
    assert not (copy / "figures" / "fig_layer_density.png").exists()
    text = (copy / "report.md").read_text()
    assert "fig_layer_density.png" not in text and "Kept per layer" not in text
    assert f"{sparse + 1} finished sparse cell(s) have no pruning.layers" in text  # the dense cell is not counted


def _row(method, sparsity, fractions, seed=0):
    layers = {
        name: {"fraction": f, "kept": round(f * LAYERS[name]), "total": LAYERS[name]} for name, f in fractions.items()
    }
    cell = Cell(f"{method}-{sparsity}-{seed}", "", {}, results={"pruning": {"layers": layers}}, status="finished")
    return report.Row((method, sparsity), method, sparsity, False, {}, [cell])


def test_at_most_three_target_sparsities_the_most_populated_first(tmp_path):
    fractions = {"dense1": 0.01, "dense2": 0.02, "head_dense": 0.3}
    rows = [
        _row(m, s, fractions) for s in (0.5, 0.9, 0.99, 0.995) for m in (("FReP", "Ori") if s != 0.5 else ("FReP",))
    ]
    panels, left_out, _ = kept_per_layer(rows)
    assert len(panels) == LAYER_PANELS
    assert [p.sparsity for p in panels] == [0.9, 0.99, 0.995] and [p.sparsity for p in left_out] == [0.5]
    problems = []
    drawn = figures.draw_figures(str(tmp_path), rows, {}, "digits", problems)
    assert set(drawn) == {"layers"}
    assert [p for p in problems if "per-layer" in p] == [
        "the per-layer figure shows the target sparsities with the most rows; left out: 50 %"
    ]
    # A layer the network does not have in every row still gets its place, in the order first seen.
    rows = [_row("FReP", 0.9, {"dense1": 0.05, "head_dense": 0.5}), _row("Ori", 0.9, fractions)]
    (panel,), _, _ = kept_per_layer(rows)
    assert panel.layers == ["dense1", "head_dense", "dense2"]
    lines = tables.layer_table(panel)
    assert lines[0] == "| Layer | Weights | FReP | Ori |"
    assert lines[4] == "| `dense2` | 262,144 | - | 5,243 (2 %) |"
