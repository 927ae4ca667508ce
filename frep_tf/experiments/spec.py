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
- `#` starts a comment; blank lines are ignored.
The cells are the product of the axes, the first axis varying slowest. A cell is named after its
axis values (`parameterization=plain,sparsity=0.9,seed=0`) and runs in `cells/<name>/` of the
experiment's workdir. `--workdir` and `--mode` belong to the runner and may not be set here.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re

from frep_tf.workdir import cell_dir

RESERVED = ("workdir", "mode", "experiment", "experiment_shard", "experiment_results", "overwrite", "flagfile")
_AXIS = re.compile(r"^axis\s+(?P<flags>[A-Za-z_][\w ]*?)\s*=\s*(?P<values>.*)$")
_FLAG = re.compile(r"^--[A-Za-z_]\w*(?:=.*)?$")


class ExperimentError(ValueError):
    """A problem with an experiment file or its cells; the message is one line naming file, line and value."""


@dataclasses.dataclass(frozen=True)
class Axis:
    flags: tuple[str, ...]
    values: tuple[tuple[str, ...], ...]  # one tuple of strings (one per flag) per point of the axis
    line: int


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
        return {
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
    base_args, base_lines, axes, seen = [], [], [], {}
    for number, text in _logical_lines(lines):
        where = f"{apath}:{number}"
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
                f"{where}: {text!r} is neither a --flag=value line nor `axis FLAG = value | value ...`"
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
    name = os.path.splitext(os.path.basename(apath))[0]
    return Experiment(apath, name, tuple(base_args), tuple(base_lines), tuple(axes))


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
