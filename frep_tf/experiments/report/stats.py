"""Table rows and their statistics: finished cells grouped by every axis but the seed, each row's
mean +- std over seeds, the methods' names and order, the sparsity measures of a cell, what each row's
pruning kept of every layer, what a cell's validation scalars say of its exported model, whether an
experiment is validation-only (evaluated on clean test images only), and the rows of cost.json (the
training cost measured side by side, --mode=cost) with their per-round totals and ratios to FReP."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from frep_tf.config import TABLE_I_COLUMNS, scaled_epochs
from frep_tf.experiments.report.cells import Cell, parse_value, sort_key

# parameterization -> the paper's name of the method (Table IV).
METHOD_NAMES = {"hadamard": "FReP", "channel": "FReP-CH", "plain": "Ori"}
# --method values other than frep, as the paper names them.
BASELINE_NAMES = {
    "lwm": "LWM",
    "admm": "ADMM",
    "hydra": "HYDRA",
    "harp": "HARP",
    "mad": "MAD",
    "posthoc": "Post-hoc",
    "lottery": "Lottery",
    "iwi": "IWI",
}
METHOD_ORDER = (
    "Ori (pgd)",
    "LWM",
    "ADMM",
    "HYDRA",
    "HARP",
    "MAD",
    "Lottery",
    "IWI",
    "Post-hoc",
    "Ori",
    "FReP-CH",
    "FReP",
)
# Axes folded into the "Method" and "Sparsity" columns; seed is the replicate axis.
ROW_BUILTIN = ("method", "parameterization", "sparsity", "structured")
REPLICATE_AXIS = "seed"
# Target sparsities the per-layer figure and its tables show at most.
LAYER_PANELS = 3


@dataclasses.dataclass
class Row:
    key: tuple
    method: str
    sparsity: float | None
    structured: bool
    others: dict[str, Any]
    cells: list[Cell]
    # The settings a label names: those of `others` that differ from the value most rows share (all of
    # them where no value is the most common), so a grid listing many flags per cell labels its rows
    # by what sets them apart.
    shown: dict[str, Any] = dataclasses.field(default_factory=dict)


def epoch_marks(cell: Cell, sparsity) -> list[tuple[int, str]]:
    """(0-based epoch, label) of the moments a Fig. 5 panel marks: where each stage of a multi-stage method
    begins (from results.json), or the one-shot prune of frep / lwm (--prune_epoch after --epoch_scale)."""
    stages = ((cell.results or {}).get("method") or {}).get("stages") or []
    if len(stages) > 1:
        return [(s["first_epoch"], s["name"]) for s in stages[1:]]
    method = cell.setting("method") or "frep"
    prune_epoch = cell.setting("prune_epoch")
    if not sparsity or method not in ("frep", "lwm"):
        return []
    from frep_tf.config import Config, scaled_epochs

    prune_epoch = Config().prune.prune_epoch if prune_epoch is None else prune_epoch
    return [(scaled_epochs(prune_epoch, cell.setting("epoch_scale") or 1.0), "prune")]


def method_name(cell: Cell) -> str:
    """FReP / FReP-CH / Ori from the parameterization; a `method` setting other than frep names itself."""
    method = cell.setting("method")
    p = cell.setting("parameterization")
    if method and method != "frep":
        name = BASELINE_NAMES.get(str(method), str(method))
        return name if p in (None, "plain") else f"{name} ({p})"
    name = METHOD_NAMES.get(p, str(p))
    objective = cell.setting("objective")
    # The FReP pipeline with another training objective (e.g. dense PGD training): named by it.
    return name if objective in (None, "sre") else f"{name} ({objective})"


def _method_key(name: str):
    return (METHOD_ORDER.index(name), "") if name in METHOD_ORDER else (len(METHOD_ORDER), name)


def build_rows(cells: list[Cell], axes: list[tuple[str, list]]) -> list[Row]:
    """Finished cells grouped by every axis but the seed, in the paper's order (Ori, FReP-CH, FReP;
    unstructured before structured; sparsity ascending)."""
    others = [flag for flag, _ in axes if flag not in ROW_BUILTIN and flag != REPLICATE_AXIS]
    rows: dict[tuple, Row] = {}
    for cell in cells:
        if cell.status != "finished":
            continue
        method = method_name(cell)
        sparsity = cell.setting("sparsity")
        structured = bool(cell.setting("structured"))
        other = {flag: row_setting(cell, flag) for flag in others}
        key = (
            _method_key(method),
            structured,
            sort_key(sparsity),
            tuple(sort_key(other[f]) for f in others),
        )
        rows.setdefault(key, Row(key, method, sparsity, structured, other, [])).cells.append(cell)
    for row in rows.values():
        row.cells.sort(key=lambda c: sort_key(c.setting(REPLICATE_AXIS)))
    ordered = [rows[k] for k in sorted(rows)]
    common = common_settings(ordered)
    for row in ordered:
        row.shown = {k: v for k, v in row.others.items() if k not in common or common[k] != v}
    return ordered


def row_setting(cell: Cell, flag: str):
    """A setting as rows group and label it: `epochs` as the epochs trained, after --epoch_scale, so a cell
    run as --epochs=100 --epoch_scale=0.3 and one run as --epochs=30 (the same training) read alike."""
    value = cell.setting(flag)
    if flag == "epochs" and value is not None:
        return scaled_epochs(int(value), cell.setting("epoch_scale") or 1.0)
    return value


def common_settings(rows: list[Row]) -> dict[str, Any]:
    """{flag: value} of the other axes where one value is shared by more rows than any other value (or by
    every row)."""
    common = {}
    for flag in rows[0].others if rows else ():
        counts: dict[str, list] = {}
        for row in rows:
            counts.setdefault(repr(row.others[flag]), []).append(row.others[flag])
        ranked = sorted(counts.values(), key=len, reverse=True)
        if len(ranked) == 1 or len(ranked[0]) > len(ranked[1]):
            common[flag] = ranked[0][0]
    return common


def mean_std(values) -> tuple[float, float | None, int]:
    """Mean, sample standard deviation (ddof 1; None for a single value) and count."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    if v.size == 0:
        return float("nan"), None, 0
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None), int(v.size)


def accuracy(results: dict, attack: str) -> float | None:
    entry = (results.get("evaluation") or {}).get(attack)
    return entry.get("accuracy") if isinstance(entry, dict) else None


def smallest_export(results: dict) -> tuple[str, int] | None:
    """(path, bytes) of the smallest exported file: what a device would be sent."""
    exports = [e for e in results.get("exports") or [] if e.get("bytes") is not None]
    if not exports:
        return None
    e = min(exports, key=lambda e: e["bytes"])
    return e.get("path") or e.get("format"), int(e["bytes"])


def attack_columns(rows: list[Row]) -> list[tuple[str, str]]:
    """The paper's Table I columns that some finished cell measured."""
    present = {a for row in rows for c in row.cells for a in (c.results.get("evaluation") or {})}
    return [(a, title) for a, title in TABLE_I_COLUMNS if a in present]


def row_summary(row: Row, columns) -> dict:
    acc = {}
    for attack, _ in columns:
        m, s, n = mean_std(accuracy(c.results, attack) for c in row.cells)
        if n:
            acc[attack] = {"mean": m, "std": s, "n": n}
    sizes = [smallest_export(c.results) for c in row.cells]
    files = [s[0] for s in sizes if s]
    size = mean_std(s[1] for s in sizes if s)
    sparsity = mean_std((c.results.get("sparsity") or {}).get("kernels") for c in row.cells)
    total = mean_std((c.results.get("timings") or {}).get("total") for c in row.cells)
    train = mean_std(train_seconds(c) for c in row.cells)
    epochs = mean_std((c.results.get("training") or {}).get("epochs") for c in row.cells)
    peak = mean_std((c.results.get("method") or {}).get("peak_rss_mb") for c in row.cells)
    return {
        "method": row.method,
        "sparsity": row.sparsity,
        "structured": row.structured,
        **({"settings": row.others} if row.others else {}),
        "cells": [c.name for c in row.cells],
        "seeds": [c.setting(REPLICATE_AXIS) for c in row.cells],
        "n": len(row.cells),
        "accuracy": acc,
        "deployed_bytes": {"mean": size[0], "std": size[1], "file": max(sorted(set(files)), key=files.count)}
        if files
        else None,
        "measured_sparsity": {"mean": sparsity[0], "std": sparsity[1]} if sparsity[2] else None,
        "seconds_total": {"mean": total[0], "std": total[1]} if total[2] else None,
        "seconds_train": {"mean": train[0], "std": train[1]} if train[2] else None,
        "epochs": {"mean": epochs[0], "std": epochs[1]} if epochs[2] else None,
        "peak_rss_mb": {"mean": peak[0], "std": peak[1]} if peak[2] else None,
        "stages": stage_text(row.cells[0]) if row.cells else "",
    }


def train_seconds(cell) -> float | None:
    """Training wall time of a cell: the method's stages summed over every process that ran them
    (results.json `method.seconds`), else the finishing process's train timing (older results)."""
    method = cell.results.get("method") or {}
    if method.get("seconds") is not None:
        return method["seconds"]
    return (cell.results.get("timings") or {}).get("train")


def stage_text(cell) -> str:
    """`pretrain 10 + admm 10 + retrain 10` (the method's stages and their epochs)."""
    stages = (cell.results.get("method") or {}).get("stages") or []
    return " + ".join(f"{s['name']} {s['epochs']}" for s in stages)


def is_iwi(row: Row) -> bool:
    """An IWI row: its --sparsity is the small source network's, and the network it trains is dense."""
    return row.method.startswith(BASELINE_NAMES["iwi"])


def trained_sparsity(row: Row):
    """Where a row sits on a sparsity axis: its target sparsity, except IWI (plotted at 0 %, next to its
    control)."""
    return 0.0 if is_iwi(row) else row.sparsity


def measures(cell: Cell) -> dict:
    """The second paper's sparsity measures of a cell's exported model, and its validation robustness:
    {zero, near_zero (fractions), input_gradient_l1, val_pgd (last epoch, of the evaluated model), robust
    (AutoAttack, else PGD, accuracy on the test images)}; None where the cell did not record it."""
    r = cell.results or {}
    overall = (r.get("sparsity_measures") or {}).get("overall") or {}
    gradient = (r.get("evaluation") or {}).get("input_gradient_l1") or {}
    final = (r.get("training") or {}).get("final_epoch") or {}
    ensemble = (r.get("model") or {}).get("evaluated") == "ensemble"
    val = final.get("val_ensemble_pgd_acc") if ensemble else None
    robust = accuracy(r, "autoattack")
    return {
        "zero": overall.get("zero"),
        "near_zero": overall.get("near_zero"),
        "input_gradient_l1": gradient.get("mean"),
        "val_pgd": val if val is not None else final.get("val_pgd_acc"),
        "robust": robust if robust is not None else accuracy(r, "pgd"),
        "robust_attack": "AA" if robust is not None else "PGD",
    }


@dataclasses.dataclass
class LayerKept:
    """What a row's pruning kept of one layer, over the seeds that recorded it (results.json
    `pruning.layers[name]`): the kept fraction's mean and range, the kept count's mean and std."""

    fraction: float
    fraction_min: float
    fraction_max: float
    kept: float
    kept_std: float | None
    total: int
    n: int


@dataclasses.dataclass
class LayerPanel:
    """The rows pruned to one target sparsity, with what each kept of every layer; layers in network order."""

    sparsity: float
    structured: bool
    layers: list[str]
    series: list[tuple[Row, dict[str, LayerKept]]]


def kept_per_layer(rows: list[Row]) -> tuple[list[LayerPanel], list[LayerPanel], int]:
    """(panels shown, panels left out, sparse cells without `pruning.layers`): the sparse rows (an IWI row
    trains a dense network) grouped by target sparsity; beyond LAYER_PANELS, the sparsities with the most
    rows are shown (the higher one on a tie)."""
    panels: dict[tuple, LayerPanel] = {}
    missing = 0
    for row in rows:
        if not trained_sparsity(row):
            continue
        recorded = []
        for cell in row.cells:
            layers = ((cell.results or {}).get("pruning") or {}).get("layers")
            if layers:
                recorded.append(layers)
            else:
                missing += 1
        if not recorded:
            continue
        names = list(dict.fromkeys(name for layers in recorded for name in layers))
        kept = {}
        for name in names:
            entries = [layers[name] for layers in recorded if name in layers]
            fractions = [float(e["fraction"]) for e in entries]
            count = mean_std(e["kept"] for e in entries)
            kept[name] = LayerKept(
                float(np.mean(fractions)), min(fractions), max(fractions), count[0], count[1],
                int(entries[0]["total"]), len(entries),
            )  # fmt: skip
        key = (row.structured, sort_key(row.sparsity))
        panel = panels.setdefault(key, LayerPanel(row.sparsity, row.structured, [], []))
        panel.layers += [name for name in names if name not in panel.layers]
        panel.series.append((row, kept))
    ranked = sorted(panels, key=lambda k: (len(panels[k].series), k[1]), reverse=True)
    shown = sorted(ranked[:LAYER_PANELS])
    return [panels[k] for k in shown], [panels[k] for k in sorted(ranked[LAYER_PANELS:])], missing


# Epochs (1-based) the validation table shows besides the last and the best; a cell's scalars are keyed
# by the 0-based epoch.
VALIDATION_EPOCHS = (1, 3, 9)
# The scalars (tb/frep) of the exported weights' model: (PGD tag, clean tag).
VALIDATION_TAGS = {
    "ensemble": ("val_ensemble_pgd_acc", "val_ensemble_clean_acc"),
    "network": ("val_pgd_acc", "val_clean_acc"),
}
GUARD_TAG = "catastrophic_overfitting"


def guard_flags(runs: dict) -> int:
    """How many collapses the catastrophic-overfitting guard finds in a cell's scalars, by the current rule
    (frep_tf.training.overfitting) applied to its validation PGD and training adversarial accuracy, so a
    cell trained before a change of the rule is judged as a new one would be; the flags the training
    recorded where those two series are missing."""
    from frep_tf.training import overfitting

    val_pgd, adv_acc = runs.get(overfitting.VAL_PGD_TAG), runs.get(overfitting.ADV_ACC_TAG)
    if val_pgd and adv_acc:
        series = [{int(k): float(v) for k, v in s.items()} for s in (val_pgd, adv_acc)]
        return len(overfitting.collapses(*series))
    return sum(1 for v in (runs.get(GUARD_TAG) or {}).values() if v)


def validation_curves(cell: Cell, scalars: dict) -> dict | None:
    """What the validation split says of a cell's exported weights, from its per-epoch scalars: {model
    (ensemble | network), epochs {1-based epoch: PGD accuracy or None}, last, last_epoch (1-based), best,
    best_epoch (1-based, the first on a tie), clean (at the last epoch), guard (epochs the catastrophic-
    overfitting guard flagged)}; None without the PGD scalars. The exported model is the temporal ensemble
    when the cell trains one (results.json `model.evaluated`; older results: its scalars were logged)."""
    runs = scalars.get(cell.name) or {}
    evaluated = ((cell.results or {}).get("model") or {}).get("evaluated")
    model = (
        evaluated
        if evaluated in VALIDATION_TAGS
        else ("ensemble" if VALIDATION_TAGS["ensemble"][0] in runs else "network")
    )
    pgd_tag, clean_tag = VALIDATION_TAGS[model]
    pgd = {int(k): float(v) for k, v in (runs.get(pgd_tag) or {}).items()}
    if not pgd:
        return None
    clean = {int(k): float(v) for k, v in (runs.get(clean_tag) or {}).items()}
    last = max(pgd)
    best = max(pgd, key=lambda e: (pgd[e], -e))
    return {
        "model": model,
        "epochs": {e: pgd.get(e - 1) for e in VALIDATION_EPOCHS},
        "last": pgd[last],
        "last_epoch": last + 1,
        "best": pgd[best],
        "best_epoch": best + 1,
        "clean": clean.get(last),
        "guard": guard_flags(runs),
    }


def evaluated_attacks(cell: Cell) -> list[str] | None:
    """The attacks a cell's final evaluation ran (config `eval_attacks`, a comma-separated string or a
    list); None where the cell does not record it."""
    value = cell.setting("eval_attacks")
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(a).strip() for a in items if str(a).strip()]


def validation_only(cells: list[Cell]) -> bool:
    """Every finished cell was evaluated on clean test images only (`--eval_attacks=clean`): an experiment
    whose settings are chosen on the validation split, whose report shows no test accuracy."""
    finished = [c for c in cells if c.status == "finished"]
    return bool(finished) and all(evaluated_attacks(c) == ["clean"] for c in finished)


# -- the training cost measured side by side (--mode=cost, cost.json) -------------------------------------
@dataclasses.dataclass
class CostRow:
    """One row of cost.json as a report row: the per-round estimated training seconds and, per round, the
    ratio to the FReP row at the same sparsity (`reference`; None when there is none)."""

    row: Row
    entry: dict
    totals: list[float]
    reference: CostRow | None = None
    ratios: list[float] | None = None


def round_totals(stages: list[dict]) -> list[float]:
    """A row's estimated training seconds in each measurement round: the sum over its stages of the stage's
    optimizer steps (epochs x steps per epoch; a pass over the data: its batches) x that round's seconds
    per step."""
    rounds = len(stages[0]["seconds_per_step"]) if stages else 0
    return [float(sum(s["steps"] * s["seconds_per_step"][r] for s in stages)) for r in range(rounds)]


def cost_rows(cost: dict) -> list[CostRow]:
    """cost.json's rows, grouped and labelled as the report groups and labels finished cells (each row's
    measured cell with its resolved settings, over cost.json's axes), in the report's order; each with
    its per-round totals as cost.json holds them and its per-round ratio to the FReP row (unstructured)
    at the same sparsity."""
    axes = [(a["flag"], [parse_value(v) for v in a["values"]]) for a in cost.get("axes") or []]
    entries = {e["cell"]: e for e in cost["rows"]}
    cells = [
        Cell(e["cell"], "", {k: str(v) for k, v in e["flags"].items()}, config=dict(e["settings"]), status="finished")
        for e in cost["rows"]
    ]
    out = [
        CostRow(row, entries[c.name], [float(t) for t in entries[c.name].get("totals", [])])
        for row in build_rows(cells, axes)
        for c in row.cells
    ]
    frep: dict = {}
    for c in out:
        if c.row.method == METHOD_NAMES["hadamard"] and not c.row.structured:
            frep.setdefault(sort_key(c.row.sparsity), c)
    for c in out:
        c.reference = frep.get(sort_key(c.row.sparsity))
        if c.reference is not None and c.totals and len(c.totals) == len(c.reference.totals):
            c.ratios = [a / b if b else float("nan") for a, b in zip(c.totals, c.reference.totals, strict=True)]
    return out
