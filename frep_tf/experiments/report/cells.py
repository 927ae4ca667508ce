"""Reading an experiment workdir: experiment.json, every cell's config.json, results.json or failed.json,
its per-epoch validation scalars (tb/frep/, or a committed cell's scalars.json), and cost.json (the
training cost measured side by side, --mode=cost). No TensorFlow."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from frep_tf.experiments import evidence
from frep_tf.experiments.tb_events import read_scalars, writer_processes
from frep_tf.workdir import (
    CELLS_DIR,
    CONFIG_FILE,
    COST_FILE,
    EXPERIMENT_FILE,
    FAILED_FILE,
    RESULTS_FILE,
    VALIDATION_LOG_DIR,
)

# Settings that never make two cells different experiments (where data lives, how chatty a run is).
NOT_SETTINGS = frozenset(
    {
        "workdir",
        "data_dir",
        "download",
        "verbose",
        "overwrite",
        "mode",
        "experiment",
        "experiment_shard",
        "experiment_results",
        "cost_steps",
        "cost_rounds",
    }
)


class ReportError(ValueError):
    """The workdir holds nothing a report can be made of, or a file the report needs is damaged."""


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
            return parse_value(self.flags[flag])
        return None


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


def parse_value(text):
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


def same_value(setting, wanted) -> bool:
    """A cell's setting equals a wanted (parsed) value: numbers within a relative 1e-6 (0.99 written as 0.990,
    or one that went through a float32), booleans and text exactly."""
    if isinstance(setting, bool) or isinstance(wanted, bool):
        return setting is wanted
    if isinstance(setting, (int, float)) and isinstance(wanted, (int, float)):
        return math.isclose(setting, wanted, rel_tol=1e-6, abs_tol=1e-12)
    return setting == wanted


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
            if os.path.isfile(os.path.join(cell_dir, CONFIG_FILE)) and os.path.realpath(cell_dir) not in listed:
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
    config_path = os.path.join(cell.dir, CONFIG_FILE)
    results_path = os.path.join(cell.dir, RESULTS_FILE)
    failed_path = os.path.join(cell.dir, FAILED_FILE)
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
                    points = [parse_value(v[j] if isinstance(v, list) else v) for v in values]
                    axes.append((str(flag), list(dict.fromkeys(points))))
            else:
                axes.append((str(axis["flag"]), [parse_value(v) for v in values]))
        extra = [f for f in differing if f not in {a for a, _ in axes}]
        if extra:
            problems.append(_differing_note(known, extra))
        return axes
    return [(flag, sorted({c.config.get(flag) for c in known}, key=sort_key)) for flag in differing]


def _differing_note(known: list[Cell], flags: list[str]) -> str:
    """The settings that differ between cells without being axes: those whose values differ (each value
    named, so e.g. --epochs=30 next to --epochs=100 with --epoch_scale=0.3 reads as the same schedule),
    and those only some cells' config.json record (flags added after the older cells ran)."""
    missing = [f for f in flags if any(f not in c.config for c in known)]
    valued = []
    for flag in flags:
        if flag in missing:
            continue
        values = sorted(
            {json.dumps(c.config[flag], sort_keys=True) for c in known}, key=lambda v: sort_key(json.loads(v))
        )
        valued.append(f"{flag} ({' / '.join(values)})")
    parts = []
    if valued:
        parts.append(f"{', '.join(valued)}: cells made with different base flags are averaged together")
    if missing:
        parts.append(f"{', '.join(missing)}: recorded by some cells' config.json only (added after the others ran)")
    return f"cells differ in settings that are not axes of {EXPERIMENT_FILE}: " + "; ".join(parts)


def sort_key(value):
    if isinstance(value, bool) or value is None:
        return (0, str(value))
    if isinstance(value, (int, float)):
        return (1, value)
    return (2, str(value))


def load_scalars(finished: list[Cell], problems: list[str]) -> dict[str, dict]:
    """{cell name: {tag: {epoch: value}}} of the finished cells (tb/frep/, else a committed cell's
    scalars.json); marks a cell `resumed` when more than one process wrote its tb/frep/."""
    scalars = {}
    for cell in finished:
        log_dir = os.path.join(cell.dir, VALIDATION_LOG_DIR)
        if os.path.isdir(log_dir):
            cell.resumed = len(writer_processes(os.listdir(log_dir))) > 1
        try:
            saved = None if os.path.isdir(log_dir) else evidence.load_scalars(cell.dir)
            scalars[cell.name] = read_scalars(log_dir) if saved is None else saved
        except (ReportError, ValueError) as exc:
            problems.append(str(exc))
    return scalars


def load_cost(workdir: str, experiment_name: str | None, problems: list[str]) -> dict | None:
    """<workdir>/cost.json (frep_tf.experiments.cost), checked; None when there is none, or (with a note)
    when it measured another experiment. ReportError (one line) when it is damaged."""
    path = os.path.join(workdir, COST_FILE)
    if not os.path.exists(path):
        return None
    cost = _read_object(path)
    _check_cost(cost, path)
    measured = (cost.get("experiment") or {}).get("name")
    if experiment_name and measured != experiment_name:
        problems.append(f"{COST_FILE} measured experiment {measured!r}, not {experiment_name!r}: left out")
        return None
    return cost


def _check_cost(cost: dict, path: str) -> None:
    """The fields the report reads: rounds and steps >= 1; per row its cell, cells, flags, settings, stages and
    one total per round; per stage its name, epochs, steps and one seconds-per-step value per round."""
    rounds = cost.get("rounds")
    if not isinstance(rounds, int) or rounds < 1 or not isinstance(cost.get("steps"), int):
        raise ReportError(f"{path}: 'rounds' and 'steps' must be integers >= 1")
    if not isinstance(cost.get("rows"), list):
        raise ReportError(f"{path}: 'rows' is not a list")
    row_keys = {"cell": str, "cells": list, "flags": dict, "settings": dict, "stages": list, "totals": list}
    for i, row in enumerate(cost["rows"]):
        if not isinstance(row, dict) or any(not isinstance(row.get(k), t) for k, t in row_keys.items()):
            raise ReportError(f"{path}: rows[{i}] is not {{{', '.join(row_keys)}}}")
        if len(row["totals"]) != rounds or not row["stages"]:
            raise ReportError(f"{path}: rows[{i}] has {len(row['totals'])} totals for {rounds} rounds, or no stage")
        for j, stage in enumerate(row["stages"]):
            seconds = stage.get("seconds_per_step") if isinstance(stage, dict) else None
            if (
                not isinstance(stage, dict)
                or not all(isinstance(stage.get(k), int) for k in ("epochs", "steps"))
                or not isinstance(seconds, list)
                or len(seconds) != rounds
            ):
                raise ReportError(
                    f"{path}: rows[{i}].stages[{j}] is not {{name, epochs, steps, seconds_per_step (one per round)}}"
                )
