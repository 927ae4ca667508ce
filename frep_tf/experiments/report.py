"""The report of an experiment: `report.md` and PNG figures, rebuilt from the cells that have finished.

    from frep_tf.experiments.report import write_report
    summary = write_report("runs/t4")      # or: python -m frep_tf.experiments.report runs/t4

Input (the layout the experiment runner writes; cells may come from several machines copied together):

    <workdir>/experiment.json   {"name", "file", "base_flags", "axes": [{"flag", "values"}], "cells": [{"name", "dir", "flags"}]}
    <workdir>/cells/<name>/     an ordinary run's workdir: config.json, results.json once finished,
                                tb/frep/ (per-epoch scalars), failed.json {"reason", "exit_status"} if it failed;
                                a committed cell (frep_tf.experiments.evidence) has scalars.json instead of tb/

Without experiment.json the cells are found as cells/*/config.json and the settings that differ between
them are the axes. Every axis but `seed` defines a table row (method x sparsity x structured x ...);
seeds are the replicates a row's mean +- std is taken over.

Output: <workdir>/report.md and <workdir>/figures/ with
    fig8_robust_vs_sparsity.png    robust accuracy vs target sparsity, one line per method (paper Fig. 8)
    fig7_weight_distribution.png   log10|w| of the exported kernels per method (paper Fig. 7)
    fig5_ensemble_vs_network.png   validation robust accuracy per epoch, network vs temporal ensemble, and
                                   the ensemble divergence Delta (paper Fig. 5)

Neither TensorFlow nor Keras is imported: results.json and config.json are JSON, and TensorBoard event
files are read here (TFRecord framing, ~10 lines) and decoded with the protos the tensorboard package
ships (`tensorboard.compat.proto`, protobuf only). tensorboard's own loaders (event_file_loader,
EventAccumulator) would import TensorFlow whenever it is installed, which costs seconds and memory.
Figures use matplotlib's Agg canvas directly (no pyplot, so no global backend is changed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import textwrap
from typing import Any

import numpy as np

from frep_tf.config import TABLE_I_COLUMNS
from frep_tf.experiments import evidence
from frep_tf.experiments.tb_events import read_scalars, writer_processes

EXPERIMENT_FILE = "experiment.json"
CELLS_DIR = "cells"
REPORT_FILE = "report.md"
FIGURES_DIR = "figures"
FIGURES = {
    "fig8": "fig8_robust_vs_sparsity.png",
    "fig7": "fig7_weight_distribution.png",
    "fig5": "fig5_ensemble_vs_network.png",
    "lipschitz": "fig_robust_vs_input_gradient.png",
}
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
METHOD_COLORS = {"Ori": "tab:blue", "FReP-CH": "tab:green", "FReP": "tab:red"}
# Settings that never make two cells different experiments (where data lives, how chatty a run is).
NOT_SETTINGS = frozenset({"workdir", "data_dir", "download", "verbose", "overwrite", "mode"})
# Axes folded into the "Method" and "Sparsity" columns; seed is the replicate axis.
ROW_BUILTIN = ("method", "parameterization", "sparsity", "structured")
REPLICATE_AXIS = "seed"
ROBUST_FIG8 = (("pgd", "PGD"), ("autoattack", "AA"))


class ReportError(ValueError):
    """The workdir holds nothing a report can be made of, or a file the report needs is damaged."""


def _set_wrapped_title(ax, title: str, width: int = 55) -> None:
    """A panel title, wrapped (and smaller) when long: rows named after several axes get long labels,
    which would run into the neighbouring panels' titles."""
    wrapped = textwrap.fill(title, width=width, break_long_words=False)
    ax.set_title(wrapped, fontsize="medium" if "\n" not in wrapped else "small")


@dataclasses.dataclass
class Cell:
    name: str
    dir: str
    flags: dict[str, str]  # from experiment.json (strings as written there); {} for discovered cells
    config: dict[str, Any] | None = None  # config.json, flattened {setting: value}
    results: dict | None = None
    failure: dict | None = None
    status: str = "pending"  # finished | failed | pending
    started: bool = False
    resumed: bool = False  # more than one process wrote its tb/frep (a kill, then the same command again)

    def setting(self, flag: str):
        if self.config is not None and flag in self.config:
            return self.config[flag]
        if flag in self.flags:
            return _parse_value(self.flags[flag])
        return None


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


# ---------------------------------------------------------------------------------------------------
# Reading the workdir


def _read_json(path: str):
    try:
        with open(path) as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except OSError as exc:
        raise ReportError(f"{path}: cannot be read ({exc.strerror})") from None


def _read_object(path: str) -> dict:
    value = _read_json(path)
    if not isinstance(value, dict):
        raise ReportError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def _parse_value(text):
    """A flag value as experiment.json spells it ("0.99", "true", "plain") -> a Python value."""
    if not isinstance(text, str):
        return text
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _flatten(config: dict) -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def load_experiment(workdir: str) -> tuple[dict, list[Cell], list[tuple[str, list]], list[str]]:
    """(experiment.json or {}, cells, axes [(flag, values)], problems) of an experiment workdir."""
    if not os.path.isdir(workdir):
        raise ReportError(f"--workdir={workdir}: not a directory")
    problems: list[str] = []
    path = os.path.join(workdir, EXPERIMENT_FILE)
    experiment = _read_object(path) if os.path.exists(path) else {}
    cells: dict[str, Cell] = {}
    for i, entry in enumerate(experiment.get("cells", [])):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ReportError(f"{path}: cells[{i}] has no 'name'")
        name = str(entry["name"])
        cell_dir = os.path.join(workdir, entry.get("dir") or os.path.join(CELLS_DIR, name))
        cells[name] = Cell(name, cell_dir, {k: str(v) for k, v in (entry.get("flags") or {}).items()})
    # Cells on disk that experiment.json does not list (copied from another machine, or no experiment.json).
    cells_root = os.path.join(workdir, CELLS_DIR)
    if os.path.isdir(cells_root):
        listed = {os.path.realpath(c.dir) for c in cells.values()}
        for name in sorted(os.listdir(cells_root)):
            cell_dir = os.path.join(cells_root, name)
            if os.path.isfile(os.path.join(cell_dir, "config.json")) and os.path.realpath(cell_dir) not in listed:
                cells.setdefault(name, Cell(name, cell_dir, {}))
    if not cells:
        raise ReportError(
            f"--workdir={workdir}: no {EXPERIMENT_FILE} and no {CELLS_DIR}/*/config.json: no experiment cells to report"
        )
    for cell in cells.values():
        _load_cell(cell, problems)
    axes = _axes(experiment, list(cells.values()), path, problems)
    return experiment, list(cells.values()), axes, problems


def _load_cell(cell: Cell, problems: list[str]) -> None:
    config_path = os.path.join(cell.dir, "config.json")
    results_path = os.path.join(cell.dir, "results.json")
    failed_path = os.path.join(cell.dir, "failed.json")
    cell.started = os.path.isdir(cell.dir)
    try:
        if os.path.exists(config_path):
            cell.config = _flatten(_read_object(config_path))
        if os.path.exists(results_path):  # written last: its presence means the run is complete
            cell.results = _read_object(results_path)
            cell.status = "finished"
        elif os.path.exists(failed_path):
            cell.failure = _read_object(failed_path)
            cell.status = "failed"
    except ReportError as exc:
        cell.status, cell.results, cell.failure = "failed", None, {"reason": f"unreadable: {exc}", "exit_status": None}
    if cell.status == "finished" and cell.config is None:
        problems.append(f"{cell.dir}: results.json but no config.json; its settings come from experiment.json")


def _axes(experiment: dict, cells: list[Cell], path: str, problems: list[str]) -> list[tuple[str, list]]:
    known = [c for c in cells if c.config is not None]
    differing = []
    if known:
        flags = sorted(set().union(*(c.config for c in known)) - NOT_SETTINGS)
        for flag in flags:
            values = {json.dumps(c.config.get(flag), sort_keys=True) for c in known}
            if len(values) > 1:
                differing.append(flag)
    if experiment.get("axes"):
        axes = []
        for i, axis in enumerate(experiment["axes"]):
            if not isinstance(axis, dict) or not (axis.get("flags") or axis.get("flag")):
                raise ReportError(f"{path}: axes[{i}] has no 'flag'")
            values = axis.get("values") or []
            if axis.get("flags"):  # one axis setting several flags together: values are lists, one per flag
                for j, flag in enumerate(axis["flags"]):
                    points = [_parse_value(v[j] if isinstance(v, list) else v) for v in values]
                    axes.append((str(flag), list(dict.fromkeys(points))))
            else:
                axes.append((str(axis["flag"]), [_parse_value(v) for v in values]))
        extra = [f for f in differing if f not in {a for a, _ in axes}]
        if extra:
            problems.append(
                f"cells differ in settings that are not axes of {EXPERIMENT_FILE}: {', '.join(extra)} "
                "(cells made with different base flags are averaged together)"
            )
        return axes
    return [(flag, sorted({c.config.get(flag) for c in known}, key=_sort_key)) for flag in differing]


def _sort_key(value):
    if isinstance(value, bool) or value is None:
        return (0, str(value))
    if isinstance(value, (int, float)):
        return (1, value)
    return (2, str(value))


# ---------------------------------------------------------------------------------------------------
# TensorBoard event files, without TensorFlow


# ---------------------------------------------------------------------------------------------------
# Rows and statistics


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
        other = {flag: cell.setting(flag) for flag in others}
        key = (
            _method_key(method),
            structured,
            _sort_key(sparsity),
            tuple(_sort_key(other[f]) for f in others),
        )
        rows.setdefault(key, Row(key, method, sparsity, structured, other, [])).cells.append(cell)
    for row in rows.values():
        row.cells.sort(key=lambda c: _sort_key(c.setting(REPLICATE_AXIS)))
    ordered = [rows[k] for k in sorted(rows)]
    common = common_settings(ordered)
    for row in ordered:
        row.shown = {k: v for k, v in row.others.items() if k not in common or common[k] != v}
    return ordered


def common_settings(rows: list[Row]) -> dict[str, Any]:
    """{flag: value} of the other axes where one value is shared by more rows than any other value."""
    common = {}
    for flag in rows[0].others if rows else ():
        counts: dict[str, list] = {}
        for row in rows:
            counts.setdefault(repr(row.others[flag]), []).append(row.others[flag])
        ranked = sorted(counts.values(), key=len, reverse=True)
        if len(ranked) > 1 and len(ranked[0]) > len(ranked[1]):
            common[flag] = ranked[0][0]
    return common


def mean_std(values) -> tuple[float, float | None, int]:
    """Mean, sample standard deviation (ddof 1; None for a single value) and count."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    if v.size == 0:
        return float("nan"), None, 0
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None), int(v.size)


def _accuracy(results: dict, attack: str) -> float | None:
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
        m, s, n = mean_std(_accuracy(c.results, attack) for c in row.cells)
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


# ---------------------------------------------------------------------------------------------------
# Formatting


def _pm(mean: float, std: float | None, scale: float = 1.0, digits: int = 1) -> str:
    if mean != mean:  # nan
        return "-"
    text = f"{scale * mean:.{digits}f}"
    return text if std is None else f"{text} ± {scale * std:.{digits}f}"


def _sparsity_label(sparsity, structured: bool) -> str:
    if sparsity is None:
        return "-"
    text = f"{100 * float(sparsity):g} %"
    return f"{text} channels" if structured else text


def _row_label(row: Row) -> str:
    parts = [row.method, _sparsity_label(row.sparsity, row.structured)]
    parts += [f"{k}={v}" for k, v in row.shown.items()]
    return ", ".join(parts)


def _bytes(n: float) -> str:
    for unit, size in (("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _md_table(header: list[str], rows: list[list[str]], align: list[str]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


# ---------------------------------------------------------------------------------------------------
# Figures


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _save(fig, path: str) -> None:
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, "." + os.path.basename(path) + ".tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)


def _color(method: str, index: int) -> str:
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    palette = ["tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]
    return palette[index % len(palette)]


def _colors(rows: list[Row]) -> dict[str, str]:
    others = sorted({r.method for r in rows} - set(METHOD_COLORS))
    return METHOD_COLORS | {m: _color(m, i) for i, m in enumerate(others)}


def _series_label(row: Row, with_sparsity: bool = False) -> str:
    parts = [row.method + (" (structured)" if row.structured else "")]
    if with_sparsity:
        parts.append(_sparsity_label(row.sparsity, row.structured).replace(" channels", ""))
    parts += [f"{k}={v}" for k, v in row.shown.items()]
    return ", ".join(parts)


def _trained_sparsity(row: Row):
    """Where a row sits on a sparsity axis: its target sparsity, except IWI, whose --sparsity is the
    small source network's and whose trained network is dense (plotted at 0 %, next to its control)."""
    return 0.0 if row.method.startswith(BASELINE_NAMES["iwi"]) else row.sparsity


def figure_robust_vs_sparsity(rows: list[Row], path: str, dataset: str) -> bool:
    """Paper Fig. 8: robust accuracy against target sparsity, a line per method, error bars = std over seeds."""
    attacks = [
        (a, t) for a, t in ROBUST_FIG8 if any(_accuracy(c.results, a) is not None for r in rows for c in r.cells)
    ]
    if not attacks:
        return False
    colors = _colors(rows)
    fig = _new_figure(5.2 * len(attacks), 4.2)
    axes = fig.subplots(1, len(attacks), squeeze=False)[0]
    for ax, (attack, title) in zip(axes, attacks, strict=True):
        lines: dict[str, list] = {}
        for row in rows:
            m, s, n = mean_std(_accuracy(c.results, attack) for c in row.cells)
            if n and row.sparsity is not None:
                label = _series_label(row)
                if _trained_sparsity(row) != row.sparsity:
                    label += f" (dense; its source {_sparsity_label(row.sparsity, row.structured)} sparse)"
                x = 100 * _trained_sparsity(row)
                lines.setdefault(label, []).append((x, 100 * m, 100 * (s or 0), row))
        ticks = sorted({p[0] for points in lines.values() for p in points})
        # Lines sit side by side by a hair, so error bars at the same sparsity do not hide each other.
        span = (ticks[-1] - ticks[0]) if len(ticks) > 1 else 10.0
        dodge = 0.012 * span
        seen: dict[tuple, int] = {}  # series of one method and kind tell themselves apart by marker
        label_of = {id(points): label for label, points in lines.items()}
        for i, points in enumerate(lines.values()):
            points.sort(key=lambda p: p[0])
            shift = (i - (len(lines) - 1) / 2) * dodge
            first = points[0][3]
            k = seen[(first.method, first.structured)] = seen.get((first.method, first.structured), -1) + 1
            ax.errorbar(
                [p[0] + shift for p in points],
                [p[1] for p in points],
                yerr=[p[2] for p in points],
                label=label_of[id(points)],
                color=colors[first.method],
                linestyle=("--" if first.structured else "-") if k == 0 else (":" if first.structured else "-."),
                marker=("sXP" if first.structured else "o^Dv")[k % (3 if first.structured else 4)],
                capsize=4,
            )
        if len(ticks) == 1:
            ax.set_xlim(ticks[0] - span / 2, ticks[0] + span / 2)
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        structured = any(r.structured for r in rows)
        ax.set_xlabel("target sparsity (%" + ("; structured: of channels)" if structured else ")"))
        ax.set_ylabel(f"{title} accuracy (%)")
        ax.set_title(f"{title} robust accuracy vs sparsity")
        ax.grid(alpha=0.3)
    # One legend for all panels, under them, so it never covers a point.
    handles = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    # Labels of rows named after several axes are long: one column, wrapped to the figure's width.
    long_labels = max(len(label) for label in handles) > 40
    chars = max(30, int(fig.get_figwidth() * 10))
    labels = (
        [textwrap.fill(label, chars, break_long_words=False) for label in handles] if long_labels else list(handles)
    )
    ncols = 1 if long_labels else min(len(handles), 3)
    if long_labels:  # room for the legend's lines, so the panels keep their height
        fig.set_figheight(fig.get_figheight() + 0.2 * sum(label.count("\n") + 1 for label in labels))
    fig.legend(list(handles.values()), labels, loc="outside lower center", ncols=ncols, fontsize="small")
    fig.suptitle(f"{dataset}: mean ± std over seeds (paper Fig. 8)")
    _save(fig, path)
    return True


def figure_weight_distribution(rows: list[Row], path: str, dataset: str) -> tuple[bool, int]:
    """Paper Fig. 7: distribution of log10|w| of the exported kernels, a panel per sparsity setting, a
    line per method (histograms of the seeds added up). Returns (written, cells without the field)."""
    missing = sum(1 for r in rows for c in r.cells if not c.results.get("weight_histogram"))
    groups: dict[tuple, list[tuple[Row, dict]]] = {}
    for row in rows:
        hists = [c.results["weight_histogram"] for c in row.cells if c.results.get("weight_histogram")]
        if not hists:
            continue
        edges = np.asarray(hists[0]["edges"])
        if any(not np.array_equal(np.asarray(h["edges"]), edges) for h in hists):
            continue
        total = {
            "edges": edges,
            "counts": np.sum([h["counts"] for h in hists], axis=0),
            "zeros": sum(h["zeros"] for h in hists),
            "total": sum(h["total"] for h in hists),
            "outside": sum(h.get("below", 0) + h.get("above", 0) for h in hists),
        }
        key = row.key[1:]  # everything but the method
        groups.setdefault(key, []).append((row, total))
    if not groups:
        return False, missing
    colors = _colors(rows)
    ncols = min(len(groups), 3)
    nrows = -(-len(groups) // ncols)
    fig = _new_figure(5.0 * ncols, 3.8 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(groups) :]:
        ax.set_visible(False)
    for ax, (_, members) in zip(axes, sorted(groups.items()), strict=False):
        lo, hi, peak = np.inf, -np.inf, 0.0
        for row, h in members:
            counts = h["counts"].astype(np.float64)
            nonzero = counts.sum() + h["outside"]
            if not nonzero:
                continue
            share = 100 * counts / nonzero
            used = np.nonzero(counts)[0]
            lo, hi = min(lo, h["edges"][used[0]]), max(hi, h["edges"][used[-1] + 1])
            peak = max(peak, float(share.max()))
            zeros = 100 * h["zeros"] / max(h["total"], 1)
            ax.stairs(
                share,
                h["edges"],
                color=colors[row.method],
                linewidth=1.6,
                label=f"{row.method}: {zeros:.1f} % zeros, {int(nonzero / len(row.cells)):,} non-zero (n={len(row.cells)})",
            )
        if np.isfinite(lo):
            ax.set_xlim(lo - 0.3, hi + 0.3)
            # Head room for the legend, which sits above the histograms rather than on them.
            ax.set_ylim(0, peak * (1.15 + 0.1 * len(members)))
        first = members[0][0]
        title = _sparsity_label(first.sparsity, first.structured)
        title += "".join(f", {k}={v}" for k, v in first.shown.items())
        _set_wrapped_title(ax, f"target sparsity {title}")
        ax.set_xlabel("log10 |w| of non-zero kernel weights")
        ax.set_ylabel("% of non-zero weights per 0.1 decade")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", loc="upper left")
    fig.suptitle(f"{dataset}: exported (fused) kernel weights (paper Fig. 7)")
    _save(fig, path)
    return True, missing


def _mean_curve(curves: list[dict[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    steps = sorted(set().union(*curves)) if curves else []
    means = [np.mean([c[s] for c in curves if s in c]) for s in steps]
    return np.asarray(steps), np.asarray(means)


def figure_ensemble_vs_network(rows: list[Row], scalars: dict[str, dict], path: str, dataset: str) -> bool:
    """Paper Fig. 5: per epoch, the validation PGD accuracy of the network and of the temporal ensemble
    (top) and the ensemble divergence Delta (bottom), a panel per table row, mean over seeds."""
    panels = []
    for row in rows:
        runs = [scalars.get(c.name) or {} for c in row.cells]
        if any("val_pgd_acc" in r for r in runs):
            panels.append((row, runs))
    if not panels:
        return False
    ncols = min(len(panels), 3)
    nrows = -(-len(panels) // ncols)
    fig = _new_figure(4.6 * ncols, 4.6 * nrows)
    grid = fig.subplots(2 * nrows, ncols, squeeze=False, gridspec_kw={"height_ratios": [2, 1] * nrows})
    for i in range(nrows * ncols):
        top, bottom = grid[2 * (i // ncols), i % ncols], grid[2 * (i // ncols) + 1, i % ncols]
        if i >= len(panels):
            top.set_visible(False)
            bottom.set_visible(False)
            continue
        row, runs = panels[i]
        n = len(runs)
        for tag, label, color in (
            ("val_pgd_acc", "network", "tab:gray"),
            ("val_ensemble_pgd_acc", "temporal ensemble", "tab:red"),
        ):
            curves = [r[tag] for r in runs if tag in r]
            if curves:
                steps, means = _mean_curve(curves)
                top.plot(steps + 1, 100 * means, label=label, color=color, marker=".")
        curves = [r["ensemble_delta"] for r in runs if "ensemble_delta" in r]
        if curves:
            steps, means = _mean_curve(curves)
            bottom.plot(steps + 1, means, color="tab:purple", marker=".")
        else:  # --noensemble
            bottom.text(
                0.5, 0.5, "no temporal ensemble", ha="center", va="center", transform=bottom.transAxes,
                bbox={"facecolor": "white", "edgecolor": "none"},
            )  # fmt: skip
            bottom.set_yticks([])
        for i, (epoch, label) in enumerate(epoch_marks(row.cells[0], row.sparsity)):
            for ax in (top, bottom):
                ax.axvline(epoch + 0.5, color="k", linestyle=":", linewidth=1)
            top.annotate(  # labels of neighbouring marks alternate in height so that they never overlap
                label, (epoch + 0.5, 1), xycoords=("data", "axes fraction"), xytext=(3, -12 - 11 * (i % 2)),
                textcoords="offset points", fontsize="small",
            )  # fmt: skip
        _set_wrapped_title(top, f"{_row_label(row)} (n={n})")
        top.set_ylabel("val. PGD accuracy (%)")
        top.grid(alpha=0.3)
        top.tick_params(labelbottom=False)
        bottom.set_ylabel("Δ (divergence)")
        bottom.set_xlabel("epoch")
        bottom.grid(alpha=0.3)
        top.sharex(bottom)
        bottom.xaxis.get_major_locator().set_params(integer=True)
    handles = {}
    for ax in grid[0::2].ravel():
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=len(handles))
    fig.suptitle(f"{dataset}: network vs temporal ensemble during training, mean over seeds (paper Fig. 5)")
    _save(fig, path)
    return True


def _measures(cell: Cell) -> dict:
    """The second paper's sparsity measures of a cell's exported model, and its validation robustness:
    {zero, near_zero (fractions), input_gradient_l1, val_pgd (last epoch, of the evaluated model), robust
    (AutoAttack, else PGD, accuracy on the test images)}; None where the cell did not record it."""
    r = cell.results or {}
    overall = (r.get("sparsity_measures") or {}).get("overall") or {}
    gradient = (r.get("evaluation") or {}).get("input_gradient_l1") or {}
    final = (r.get("training") or {}).get("final_epoch") or {}
    ensemble = (r.get("model") or {}).get("evaluated") == "ensemble"
    val = final.get("val_ensemble_pgd_acc") if ensemble else None
    robust = _accuracy(r, "autoattack")
    return {
        "zero": overall.get("zero"),
        "near_zero": overall.get("near_zero"),
        "input_gradient_l1": gradient.get("mean"),
        "val_pgd": val if val is not None else final.get("val_pgd_acc"),
        "robust": robust if robust is not None else _accuracy(r, "pgd"),
        "robust_attack": "AA" if robust is not None else "PGD",
    }


def measures_table(rows: list[Row]) -> list[str]:
    """Markdown lines: per row, the sparsity measures next to validation and test robustness ([] if no
    finished cell recorded them)."""
    if not any(_measures(c)["near_zero"] is not None for r in rows for c in r.cells):
        return []
    body = []
    for row in rows:
        m = [_measures(c) for c in row.cells]
        cols = [_pm(*mean_std(x[k] for x in m)[:2], 100) for k in ("zero", "near_zero")]
        cols.append(_pm(*mean_std(x["input_gradient_l1"] for x in m)[:2], 1, 2))
        cols.append(_pm(*mean_std(x["val_pgd"] for x in m)[:2], 100))
        attacks = sorted({x["robust_attack"] for x in m if x["robust"] is not None})
        robust = _pm(*mean_std(x["robust"] for x in m)[:2], 100)
        cols.append(f"{robust} ({'/'.join(attacks)})" if attacks else "-")
        body.append([_row_label(row), str(len(row.cells)), *cols])
    near = sorted(
        {(c.results.get("sparsity_measures") or {}).get("near_zero_relative") for r in rows for c in r.cells} - {None}
    )
    val = sorted({(c.results.get("dataset") or {}).get("num_val") for r in rows for c in r.cells} - {None})
    return [
        "## Sparsity measures and robustness",
        "",
        *_md_table(
            [
                "Row",
                "n",
                "Exact zeros (%)",
                "Near-zero (%)",
                "Input-gradient L1",
                "Val. PGD, last epoch (%)",
                "Test robust (%)",
            ],
            body,
            ["l", "r", "r", "r", "r", "r", "r"],
        ),
        "",
        "Of the exported Conv2D / Dense kernels: exact zeros, and near-zero weights (|w| <= "
        f"{' / '.join(f'{x:g}' for x in near) or '?'} x the layer's max |w|); input-gradient L1: mean L1 norm "
        "of the gradient of the margin (true-class logit minus the largest other) with respect to the input at "
        "test points, a local Lipschitz proxy (lower = flatter); Val. PGD: the last epoch's validation PGD "
        f"accuracy (`--val_pgd_steps`, on `--val_samples` of the {' / '.join(map(str, val)) or '?'} held-out "
        "training images: what a choice between settings may be made on); Test robust: AutoAttack where the "
        "cell ran it, else PGD. Mean ± std over seeds.",
        "",
    ]


def figure_robust_vs_input_gradient(rows: list[Row], path: str, dataset: str) -> bool:
    """Test robust accuracy (AutoAttack, else PGD) against the input-gradient L1 of each finished cell,
    a marker per table row: does the Lipschitz proxy track robustness?"""
    points = [
        (row, m)
        for row in rows
        for c in row.cells
        if (m := _measures(c))["input_gradient_l1"] is not None and m["robust"] is not None
    ]
    if not points:
        return False
    colors = _colors(rows)
    fig = _new_figure(6.4, 4.8)
    ax = fig.subplots()
    markers = "oDs^v<>PXhp*"
    seen: dict[str, int] = {}
    for row in rows:
        mine = [m for r, m in points if r is row]
        if not mine:
            continue
        k = seen[row.method] = seen.get(row.method, -1) + 1
        ax.scatter(
            [m["input_gradient_l1"] for m in mine],
            [100 * m["robust"] for m in mine],
            color=colors[row.method],
            marker=markers[k % len(markers)],
            s=46,
            label=f"{_row_label(row)} ({'/'.join(sorted({m['robust_attack'] for m in mine}))})",
        )
    ax.set_xlabel("mean L1 norm of the input gradient of the margin (test points)")
    ax.set_ylabel("test robust accuracy (%)")
    ax.grid(alpha=0.3)
    labels = ax.get_legend_handles_labels()
    fig.set_figheight(fig.get_figheight() + 0.22 * len(labels[1]))
    fig.legend(*labels, loc="outside lower center", ncols=1, fontsize="small")
    fig.suptitle(f"{dataset}: robustness vs the input-gradient norm, one point per cell")
    _save(fig, path)
    return True


# ---------------------------------------------------------------------------------------------------
# The report


def write_report(workdir: str) -> dict:
    """Write <workdir>/report.md and <workdir>/figures/*.png from the finished cells; returns a summary:
    {"report", "figures": {fig8|fig7|fig5: path}, "cells": {total, finished, failed, pending}, "rows",
    "failed": [{name, reason, exit_status}], "pending": [names], "problems": [one-line notes]}."""
    experiment, cells, axes, problems = load_experiment(workdir)
    rows = build_rows(cells, axes)
    columns = attack_columns(rows)
    finished = [c for c in cells if c.status == "finished"]
    failed = [c for c in cells if c.status == "failed"]
    pending = [c for c in cells if c.status == "pending"]
    summaries = [row_summary(r, columns) for r in rows]
    datasets = sorted({str((c.results.get("dataset") or {}).get("name")) for c in finished})
    dataset = ", ".join(datasets) or "no data"

    figures_dir = os.path.join(workdir, FIGURES_DIR)
    os.makedirs(figures_dir, exist_ok=True)
    figures: dict[str, str] = {}
    scalars = {}
    for cell in finished:
        log_dir = os.path.join(cell.dir, "tb", "frep")
        if os.path.isdir(log_dir):
            cell.resumed = len(writer_processes(os.listdir(log_dir))) > 1
        try:
            saved = None if os.path.isdir(log_dir) else evidence.load_scalars(cell.dir)
            scalars[cell.name] = read_scalars(log_dir) if saved is None else saved
        except (ReportError, ValueError) as exc:
            problems.append(str(exc))
    if rows:
        path = os.path.join(figures_dir, FIGURES["fig8"])
        if figure_robust_vs_sparsity(rows, path, dataset):
            figures["fig8"] = path
        path = os.path.join(figures_dir, FIGURES["fig7"])
        written, missing = figure_weight_distribution(rows, path, dataset)
        if written:
            figures["fig7"] = path
        if missing:
            problems.append(
                f"{missing} finished cell(s) have no weight_histogram in results.json (made before the field "
                "existed): left out of Fig. 7"
            )
        path = os.path.join(figures_dir, FIGURES["fig5"])
        if figure_ensemble_vs_network(rows, scalars, path, dataset):
            figures["fig5"] = path
        path = os.path.join(figures_dir, FIGURES["lipschitz"])
        if figure_robust_vs_input_gradient(rows, path, dataset):
            figures["lipschitz"] = path
        no_curves = [c.name for c in finished if "val_pgd_acc" not in scalars.get(c.name, {})]
        if no_curves:
            problems.append(f"no per-epoch validation curves (tb/frep) for: {', '.join(no_curves)}")
    for key, name in FIGURES.items():  # a figure an earlier report drew but this one cannot
        if key not in figures and os.path.exists(os.path.join(figures_dir, name)):
            os.remove(os.path.join(figures_dir, name))

    text = _markdown(workdir, experiment, cells, axes, rows, summaries, columns, figures, problems)
    tmp = os.path.join(workdir, "." + REPORT_FILE + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, os.path.join(workdir, REPORT_FILE))
    return {
        "report": os.path.join(workdir, REPORT_FILE),
        "figures": figures,
        "cells": {"total": len(cells), "finished": len(finished), "failed": len(failed), "pending": len(pending)},
        "rows": summaries,
        "failed": [
            {
                "name": c.name,
                "reason": (c.failure or {}).get("reason"),
                "exit_status": (c.failure or {}).get("exit_status"),
            }
            for c in failed
        ],
        "pending": [c.name for c in pending],
        "problems": problems,
    }


def _markdown(workdir, experiment, cells, axes, rows, summaries, columns, figures, problems) -> str:
    finished = [c for c in cells if c.status == "finished"]
    failed = [c for c in cells if c.status == "failed"]
    pending = [c for c in cells if c.status == "pending"]
    name = experiment.get("name") or os.path.basename(os.path.abspath(workdir))
    out = [f"# Experiment report: {name}", ""]
    source = f"`{experiment['file']}`" if experiment.get("file") else None
    if experiment:
        out.append(f"Experiment {source or EXPERIMENT_FILE}; " + _axes_text(axes) + ".")
    else:
        out.append(f"No {EXPERIMENT_FILE}: cells found as `{CELLS_DIR}/*/config.json`; " + _axes_text(axes) + ".")
    flags = [*experiment.get("base_flags", []), *experiment.get("command_line_flags", [])]
    if flags:
        out.append("Every cell: " + " ".join(f"`{f}`" for f in flags) + ".")
    started = sum(1 for c in pending if c.started)
    out.append(
        f"Cells: {len(cells)} — {len(finished)} finished, {len(failed)} failed, {len(pending)} pending"
        + (f" ({started} started)" if started else "")
        + ". This report covers the finished ones; rebuild it as more finish "
        "(`python main.py --mode=report --workdir=<this directory>`)."
    )
    out.append("")

    out += ["## Robust accuracy (paper Tables I / IV)", ""]
    if not rows:
        out += ["No cell has finished yet.", ""]
    else:
        extra = list(rows[0].others)
        # Up to two other axes get a column each; more (a grid listing many flags per cell) get one
        # Settings column with what sets each row apart (Row.shown).
        settings_column = len(extra) > 2
        header = [
            "Method",
            "Sparsity",
            *(["Settings"] if settings_column else extra),
            *[t for _, t in columns],
            "n",
            "Deployed size",
            "Measured sparsity",
        ]
        body = []
        for row, s in zip(rows, summaries, strict=True):
            line = [row.method, _sparsity_label(row.sparsity, row.structured)]
            if settings_column:
                line.append(", ".join(f"{k}={v}" for k, v in row.shown.items()) or "-")
            else:
                line += [str(row.others[k]) for k in extra]
            for attack, _ in columns:
                a = s["accuracy"].get(attack)
                cell = _pm(a["mean"], a["std"], 100) if a else "-"
                if a and a["n"] != s["n"]:
                    cell += f" (n={a['n']})"
                line.append(cell)
            line.append(str(s["n"]))
            d = s["deployed_bytes"]
            line.append(f"{_bytes(d['mean'])} (`{os.path.basename(d['file'])}`)" if d else "-")
            m = s["measured_sparsity"]
            line.append(_pm(m["mean"], m["std"], 100, 2) + " %" if m else "-")
            body.append(line)
        align = ["l", "l", *["l"] * (1 if settings_column else len(extra)), *["r"] * len(columns), "r", "r", "r"]
        out += _md_table(header, body, align)
        out += [""] + _table_notes(finished, columns) + [""]
        common = common_settings(rows)
        if settings_column and common:
            out += [
                "Settings: what sets a row apart; a row that does not name a setting has "
                + ", ".join(f"{k}={v}" for k, v in common.items())
                + ".",
                "",
            ]
        bad = [
            c.name for c in finished if ((c.results.get("evaluation") or {}).get("sanity") or {}).get("passed") is False
        ]
        if bad:
            out += [f"Sanity checks failed (see each cell's results.json): {', '.join(bad)}.", ""]

    out += measures_table(rows)
    if figures:
        out += ["## Figures", ""]
        captions = {
            "fig8": "Robust accuracy vs target sparsity, mean ± std over seeds (paper Fig. 8); an IWI row sits "
            "at 0 % (the network it trains is dense; its --sparsity is the source network's).",
            "fig7": "Distribution of the exported (fused) kernel weights, log10 |w| of the non-zero ones; "
            "exact zeros are counted in the legend (paper Fig. 7).",
            "fig5": "Validation PGD accuracy per epoch of the network and of its temporal ensemble, and the "
            "ensemble divergence Delta (paper Eq. 14), mean over seeds (paper Fig. 5).",
            "lipschitz": "Test robust accuracy against the mean L1 norm of the input gradient of the margin, "
            "one point per finished cell (the second paper's Lipschitz argument for sparsity).",
        }
        for key in ("fig8", "fig7", "fig5", "lipschitz"):
            if key in figures:
                rel = os.path.relpath(figures[key], workdir)
                out += [f"![{FIGURES[key]}]({rel})", "", captions[key], ""]

    if rows:
        out += ["## Cost (paper Table V)", ""]
        body = []
        frep_train = {
            _sort_key(r.sparsity): s["seconds_train"]["mean"]
            for r, s in zip(rows, summaries, strict=True)
            if r.method == "FReP" and not r.structured and s["seconds_train"]
        }
        for row, s in zip(rows, summaries, strict=True):
            t, tr, ep, peak = s["seconds_total"], s["seconds_train"], s["epochs"], s["peak_rss_mb"]
            per_epoch = mean_std(
                (train_seconds(c) or 0) / max((c.results.get("training") or {}).get("epochs") or 1, 1)
                for c in row.cells
            )
            reference = frep_train.get(_sort_key(row.sparsity))
            ratio = f"{tr['mean'] / reference:.2f}" if tr and reference else "-"
            body.append(
                [
                    _row_label(row),
                    str(s["n"]),
                    s["stages"] or "-",
                    _pm(ep["mean"], ep["std"] or None, 1, 0) if ep else "-",
                    _pm(tr["mean"], tr["std"]) if tr else "-",
                    ratio,
                    _pm(per_epoch[0], per_epoch[1], 1, 2),
                    _pm(peak["mean"], peak["std"] or None, 1, 0) if peak else "-",
                    _pm(t["mean"], t["std"]) if t else "-",
                ]
            )
        out += _md_table(
            [
                "Row",
                "n",
                "Stages (epochs)",
                "Epochs",
                "Train (s)",
                "Train / FReP",
                "Train s / epoch",
                "Peak RSS (MiB)",
                "Total (s)",
            ],
            body,
            ["l", "r", "l", "r", "r", "r", "r", "r", "r"],
        )
        total = sum((c.results.get("timings") or {}).get("total", 0) for c in finished)
        out += [
            "",
            f"Wall time, mean ± std over seeds; all {len(finished)} finished cells together: {total / 3600:.2f} h. "
            "Train time is the method's stages summed over every process that ran them (results.json "
            "`method.seconds`; older results: the finishing process only); Train / FReP divides by the FReP row "
            "at the same sparsity; peak RSS is the process's resident-memory high-water mark (ru_maxrss). "
            "Total is the finishing process's wall time (a cell resumed after a kill is marked *resumed*).",
            "",
        ]
        out += ["Per cell:", ""]
        body = []
        for row in rows:
            for c in row.cells:
                timings = c.results.get("timings") or {}
                epochs = (c.results.get("training") or {}).get("epochs")
                body.append(
                    [
                        f"`{c.name}`" + (" *resumed*" if c.resumed else ""),
                        _row_label(row),
                        str(c.setting(REPLICATE_AXIS)),
                        str(epochs if epochs is not None else "-"),
                        f"{train_seconds(c):.1f}" if train_seconds(c) is not None else "-",
                        f"{timings['total']:.1f}" if "total" in timings else "-",
                    ]
                )
        out += _md_table(
            ["Cell", "Row", "Seed", "Epochs", "Train (s)", "Total (s)"], body, ["l", "l", "r", "r", "r", "r"]
        )
        out.append("")

    if failed:
        out += ["## Failed cells", ""]
        for c in failed:
            f = c.failure or {}
            status = f.get("exit_status")
            reason = " ".join(str(f.get("reason") or "no reason recorded").split())
            out.append(f"- `{c.name}`: {reason}" + (f" (exit status {status})" if status is not None else ""))
        out.append("")
    if pending:
        out += ["## Pending cells", ""]
        out.append(f"{len(pending)} cell(s) not finished: " + ", ".join(f"`{c.name}`" for c in pending) + ".")
        out.append("")
    if problems:
        out += ["## Notes", ""] + [f"- {p}" for p in problems] + [""]
    return "\n".join(out)


def _axes_text(axes) -> str:
    if not axes:
        return "no axes (all cells share their settings)"
    return "axes: " + "; ".join(f"{flag} = {', '.join(str(v) for v in values)}" for flag, values in axes)


def _table_notes(finished: list[Cell], columns) -> list[str]:
    samples = {}
    for attack, title in columns:
        counts = sorted(
            {
                e.get("samples")
                for c in finished
                if isinstance(e := (c.results.get("evaluation") or {}).get(attack), dict)
            }
            - {None}
        )
        samples.setdefault(" / ".join(map(str, counts)), []).append(title)
    if len(samples) == 1:
        images = f"{next(iter(samples))} test images"
    else:  # e.g. AutoAttack on a fixed subset
        images = "test images (" + "; ".join(f"{', '.join(t)}: {n}" for n, t in samples.items()) + ")"
    eps = sorted({((c.results.get("evaluation") or {}).get("config") or {}).get("epsilon") for c in finished} - {None})
    datasets = sorted({str((c.results.get("dataset") or {}).get("name")) for c in finished})
    evaluated = sorted({str((c.results.get("model") or {}).get("evaluated_path")) for c in finished})
    return [
        f"Accuracy (%) of the exported model ({', '.join(f'`{e}`' for e in evaluated)}) on {images} of "
        f"{', '.join(datasets)}, epsilon {', '.join(f'{e:.4g}' for e in eps)}; mean ± sample std (ddof 1) over "
        "the n seeds of a row (no ± for n = 1). Deployed size: the smallest exported file (mean over seeds). "
        "Measured sparsity: exact zeros among the exported Conv2D/Dense kernel weights."
    ]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m frep_tf.experiments.report WORKDIR", file=sys.stderr)
        return 2
    try:
        summary = write_report(argv[1])
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    c = summary["cells"]
    print(
        f"[frep_tf] {summary['report']}: {c['finished']} finished, {c['failed']} failed, {c['pending']} pending; "
        f"figures: {', '.join(summary['figures'].values()) or 'none'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
