"""Experiment files: a base set of flags plus axes over flags; the grid of cells they span.

An experiment file is a text file a person reads and edits:

    # FReP vs Ori on Fashion-MNIST at two sparsities, three seeds (12 cells)
    --flagfile=../fashion_mnist_s99.cfg         # base flags: any main.py flag, or a flagfile
    --eval_attacks=clean,fgsm,pgd,mim,square,autoattack
    axis parameterization = plain | hadamard
    axis sparsity = 0.9 | 0.99
    axis seed = 0 | 1 | 2

- `--flag=value` lines are the base flags every cell gets (as in an absl flagfile); a relative
  `--flagfile=` path is looked up next to the experiment file first, then in the current directory.
- `axis FLAG = v1 | v2 | ...` adds an axis; values are separated by `|` (flag values may contain
  commas). `axis FLAG1 FLAG2 = a1 b1 | a2 b2` is one axis that sets several flags together, e.g.
  `axis sparsity structured = 0.9 false | 0.5 true` (values separated by whitespace).
- An axis line that ends with `=` or `|` continues on the next line (one value per line reads well
  for multi-flag axes that list their cells one by one).
- `claim LABEL = METRIC: SELECTOR > SELECTOR` (or `<`: the first is lower, e.g. for a cost) states what
  the experiment is meant to show; its report ends its first table with a verdict per claim. Example:
      claim FReP beats Ori at 99 % = autoattack: parameterization=hadamard sparsity=0.99 > parameterization=plain sparsity=0.99
  LABEL is free text without `=` or `#`. METRIC is a test attack as results.json's `evaluation` names it
  (clean, fgsm, pgd, mim, square, autoattack, ...), `val_pgd` (the validation PGD accuracy of the exported
  model at the last epoch), `train_seconds` (the training wall time) or `train_cost` (the training cost
  measured side by side by `--mode=cost`, cost.json). A SELECTOR is whitespace-separated
  `flag=value` pairs over the axes of this file (not `seed`: a selector picks one report row, whose seeds
  are its replicates); each value must be one of its axis's values.
- `#` starts a comment; blank lines are ignored.
The cells are the product of the axes, the first axis varying slowest. A cell is named after its
axis values (`parameterization=plain,sparsity=0.9,seed=0`) and runs in `cells/<name>/` of the
experiment's workdir. `--workdir` and `--mode` belong to the runner and may not be set here.
The claims are kept in experiment.json (`claims`: [{label, metric, op, a, b, line}], a and b the two
selectors as {flag: value}).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re

from frep_tf.config import EVAL_ATTACKS
from frep_tf.workdir import cell_dir

RESERVED = (
    "workdir",
    "mode",
    "experiment",
    "experiment_shard",
    "experiment_results",
    "overwrite",
    "flagfile",
    "cost_steps",
    "cost_rounds",
)
_AXIS = re.compile(r"^axis\s+(?P<flags>[A-Za-z_][\w ]*?)\s*=\s*(?P<values>.*)$")
_FLAG = re.compile(r"^--[A-Za-z_]\w*(?:=.*)?$")
_CLAIM = re.compile(r"^claim(?:\s+(?P<label>[^=]*?))?\s*=\s*(?P<rest>.*)$")
_PAIR = re.compile(r"^(?P<flag>[A-Za-z_]\w*)=(?P<value>\S+)$")
# What a claim may compare: a test attack (results.json `evaluation`), the last epoch's validation PGD
# accuracy of the exported model, the training wall time, or the training cost measured side by side
# (--mode=cost, cost.json).
CLAIM_METRICS = (*EVAL_ATTACKS, "val_pgd", "train_seconds", "train_cost")
CLAIM_USAGE = "expected `claim LABEL = METRIC: FLAG=VALUE ... > FLAG=VALUE ...` (or `<`)"


class ExperimentError(ValueError):
    """A problem with an experiment file or its cells; the message is one line naming file, line and value."""


@dataclasses.dataclass(frozen=True)
class Axis:
    flags: tuple[str, ...]
    values: tuple[tuple[str, ...], ...]  # one tuple of strings (one per flag) per point of the axis
    line: int


@dataclasses.dataclass(frozen=True)
class Claim:
    """`claim LABEL = METRIC: A > B`: the rows A and B select, compared on METRIC (`<`: A is lower)."""

    label: str
    metric: str
    op: str  # ">" or "<"
    a: dict  # {flag: value string} selecting one report row
    b: dict
    line: int

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "metric": self.metric,
            "op": self.op,
            "a": dict(self.a),
            "b": dict(self.b),
            "line": self.line,
        }


@dataclasses.dataclass(frozen=True)
class Cell:
    name: str
    flags: dict  # {flag: value string}, in axis order
    lines: dict  # {flag: line of the experiment file that set it}

    @property
    def dir(self) -> str:
        return cell_dir(self.name)

    def args(self) -> list[str]:
        return [f"--{k}={v}" for k, v in self.flags.items()]


@dataclasses.dataclass(frozen=True)
class Experiment:
    path: str  # absolute path of the experiment file
    name: str
    base_args: tuple[str, ...]  # main.py arguments, flagfile paths made absolute
    base_lines: tuple[int, ...]  # the line of each base argument
    axes: tuple[Axis, ...]
    extra_args: tuple[str, ...] = ()  # flags from the runner's command line, for every cell (after the base)
    claims: tuple[Claim, ...] = ()

    def cells(self) -> list[Cell]:
        out = []
        for point in itertools.product(*(range(len(a.values)) for a in self.axes)):
            flags, lines = {}, {}
            for axis, index in zip(self.axes, point, strict=True):
                for flag, value in zip(axis.flags, axis.values[index], strict=True):
                    flags[flag] = value
                    lines[flag] = axis.line
            out.append(Cell(name=cell_name(flags), flags=flags, lines=lines))
        return out

    def where(self, line: int) -> str:
        return f"{self.path}:{line}"

    def to_dict(self) -> dict:
        claims = {"claims": [c.to_dict() for c in self.claims]} if self.claims else {}
        return {
            **claims,
            "name": self.name,
            "file": self.path,
            "base_flags": list(self.base_args),
            "command_line_flags": list(self.extra_args),
            "axes": [
                {"flag": " ".join(a.flags), "flags": list(a.flags), "values": [list(v) for v in a.values]}
                for a in self.axes
            ],
            "cells": [{"name": c.name, "dir": c.dir, "flags": dict(c.flags)} for c in self.cells()],
        }


def cell_name(flags: dict) -> str:
    """A readable, file-system-safe name from the cell's axis values."""
    text = ",".join(f"{k}={v}" for k, v in flags.items()) or "base"
    return re.sub(r"[^\w.,=+-]", "_", text)


def parse(path: str) -> Experiment:
    """Reads an experiment file; raises ExperimentError naming the file and line of the first problem."""
    apath = os.path.abspath(path)
    try:
        with open(apath, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise ExperimentError(f"--experiment={path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ExperimentError(f"--experiment={path}: cannot be read ({exc})") from None
    base_args, base_lines, axes, seen, claims = [], [], [], {}, []
    for number, text in _logical_lines(lines):
        where = f"{apath}:{number}"
        if re.match(r"^claim(\s|=|$)", text):
            claims.append(_parse_claim(text, number, where))
            continue
        if text.startswith("--"):
            match = _FLAG.match(text)
            if not match:
                raise ExperimentError(f"{where}: {text!r} is not a --flag=value line")
            name = _flag_name(text)
            if name in RESERVED and name != "flagfile":
                raise ExperimentError(f"{where}: --{name} is set by the experiment runner, not in an experiment file")
            if name == "flagfile":
                text = "--flagfile=" + _resolve_flagfile(text.split("=", 1)[1], apath, where)
            base_args.append(text)
            base_lines.append(number)
            continue
        match = _AXIS.match(text)
        if not match:
            raise ExperimentError(
                f"{where}: {text!r} is neither a --flag=value line nor `axis FLAG = value | value ...` nor "
                "`claim LABEL = METRIC: SELECTOR > SELECTOR`"
            )
        flags = tuple(match.group("flags").split())
        for flag in flags:
            if flag in RESERVED:
                raise ExperimentError(f"{where}: axis {flag}: --{flag} is set by the experiment runner")
            if flag in seen:
                raise ExperimentError(f"{where}: axis {flag}: the flag already has an axis on line {seen[flag]}")
            seen[flag] = number
        values_text = match.group("values").strip()
        if not values_text:
            raise ExperimentError(f"{where}: axis {' '.join(flags)} is empty: give at least one value")
        values = []
        for item in values_text.split("|"):
            parts = item.split() if len(flags) > 1 else [item.strip()]
            if not parts or not parts[0]:
                raise ExperimentError(f"{where}: axis {' '.join(flags)}: an empty value between `|` separators")
            if len(parts) != len(flags):
                raise ExperimentError(
                    f"{where}: axis {' '.join(flags)}: value {item.strip()!r} has {len(parts)} part(s), "
                    f"expected {len(flags)} (one per flag, separated by spaces)"
                )
            values.append(tuple(parts))
        if len(set(values)) != len(values):
            raise ExperimentError(f"{where}: axis {' '.join(flags)}: a value is listed twice")
        axes.append(Axis(flags=flags, values=tuple(values), line=number))
    if not axes and not base_args:
        raise ExperimentError(f"{apath}: empty experiment: no flags and no axes")
    for claim in claims:
        _check_selectors(claim, axes, f"{apath}:{claim.line}")
    name = os.path.splitext(os.path.basename(apath))[0]
    return Experiment(apath, name, tuple(base_args), tuple(base_lines), tuple(axes), claims=tuple(claims))


def _parse_claim(text: str, number: int, where: str) -> Claim:
    """`claim LABEL = METRIC: A > B` -> Claim; ExperimentError naming what is wrong and what is allowed."""
    match = _CLAIM.match(text)
    if not match:
        raise ExperimentError(f"{where}: {text!r}: no `=` after the claim's label; {CLAIM_USAGE}")
    label = (match.group("label") or "").strip()
    if not label:
        raise ExperimentError(f"{where}: {text!r}: the claim has no label before `=`; {CLAIM_USAGE}")
    rest = match.group("rest")
    if ":" not in rest:
        raise ExperimentError(f"{where}: claim {label!r}: no `:` after the metric; {CLAIM_USAGE}")
    metric, sides = (part.strip() for part in rest.split(":", 1))
    if metric not in CLAIM_METRICS:
        raise ExperimentError(
            f"{where}: claim {label!r}: unknown metric {metric!r}; allowed: a test attack "
            f"({', '.join(EVAL_ATTACKS)}), val_pgd (validation PGD accuracy, last epoch), train_seconds (training "
            "wall time) or train_cost (training cost measured side by side, --mode=cost)"
        )
    operators = [c for c in sides if c in "<>"]
    if len(operators) != 1:
        found = "no" if not operators else f"{len(operators)} operators ({' '.join(operators)}), not one"
        raise ExperimentError(f"{where}: claim {label!r}: {found} `>` or `<` between the two selectors; {CLAIM_USAGE}")
    left, right = re.split(r"[<>]", sides)
    a = _parse_selector(left, "left", label, where)
    b = _parse_selector(right, "right", label, where)
    return Claim(label, metric, operators[0], a, b, number)


def _parse_selector(text: str, side: str, label: str, where: str) -> dict:
    pairs = text.split()
    if not pairs:
        raise ExperimentError(
            f"{where}: claim {label!r}: the selector {side} of the operator is empty; give flag=value pairs"
        )
    selector = {}
    for pair in pairs:
        match = _PAIR.match(pair)
        if not match:
            raise ExperimentError(
                f"{where}: claim {label!r}: {pair!r} in the {side} selector is not a flag=value pair "
                "(pairs are separated by spaces, values have none)"
            )
        flag, value = match.group("flag"), match.group("value")
        if flag == "seed":
            raise ExperimentError(
                f"{where}: claim {label!r}: seed={value} in the {side} selector: a selector picks a report row, "
                "whose seeds are its replicates; leave seed out"
            )
        if flag in selector:
            raise ExperimentError(f"{where}: claim {label!r}: {flag} is set twice in the {side} selector")
        selector[flag] = value
    return selector


def _check_selectors(claim: Claim, axes: list[Axis], where: str) -> None:
    """Every selector flag is an axis of the file and its value one of the axis's values (else no cell
    could ever match)."""
    from frep_tf.experiments.report.cells import parse_value, same_value

    values: dict[str, list[str]] = {}
    for axis in axes:
        for i, flag in enumerate(axis.flags):
            listed = values.setdefault(flag, [])
            listed += [v[i] for v in axis.values if v[i] not in listed]
    for side, selector in (("left", claim.a), ("right", claim.b)):
        for flag, value in selector.items():
            if flag not in values:
                axes_text = ", ".join(f for f in values if f != "seed") or "none"
                raise ExperimentError(
                    f"{where}: claim {claim.label!r}: {flag}={value} in the {side} selector: {flag} is not an axis "
                    f"of this file (a selector may name: {axes_text})"
                )
            if not any(same_value(parse_value(v), parse_value(value)) for v in values[flag]):
                raise ExperimentError(
                    f"{where}: claim {claim.label!r}: {flag}={value} in the {side} selector: not a value of the "
                    f"{flag} axis ({', '.join(values[flag])})"
                )


def _logical_lines(lines: list[str]):
    """(first line number, text without comment) per non-blank line; an axis line ending with `=` or `|`
    takes the following lines until one does not end so."""
    pending, start = None, 0
    for number, raw in enumerate(lines, start=1):
        text = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("--") else _strip_comment(raw)
        if not text:
            continue
        if pending is not None:
            pending, text = None, pending + " " + text
        else:
            start = number
        if text.startswith("axis") and text.endswith(("=", "|")):
            pending = text
            continue
        yield start, text
    if pending is not None:
        yield start, pending


def _strip_comment(raw: str) -> str:
    """A flag line with its trailing ` # comment` removed (a `#` inside the value without a space stays)."""
    return re.split(r"\s+#", raw.strip(), maxsplit=1)[0].strip()


def _flag_name(text: str) -> str:
    """The flag a `--name[=value]` line sets (`--nooverwrite` sets `overwrite`)."""
    name = text[2:].split("=", 1)[0]
    return name[2:] if name.startswith("no") and name[2:] in RESERVED else name


def _resolve_flagfile(value: str, experiment_path: str, where: str) -> str:
    value = os.path.expanduser(value.strip())
    if os.path.isabs(value):
        candidates = [value]
    else:
        candidates = [os.path.join(os.path.dirname(experiment_path), value), os.path.abspath(value)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise ExperimentError(
        f"{where}: --flagfile={value}: no such file (looked in {' and '.join(os.path.dirname(c) for c in candidates)})"
    )
