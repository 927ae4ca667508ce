"""Runs an experiment's grid: every cell an ordinary `main.py` run in its own sub-workdir.

    python main.py --mode=experiment --experiment=configs/experiments/fashion_frep_vs_ori.cfg --workdir=runs/fo
    python main.py --mode=experiment ... --experiment_shard=1/3     # this machine: cells 1, 4, 7, ... (0-based)
    python main.py --mode=report --workdir=runs/fo                  # report.md + figures from finished cells

Layout of the workdir:
    experiment.json         the parsed experiment (base flags, axes, cells)
    cells/<name>/           a cell's run workdir (config.json, checkpoint/, tb/, export/, results.json)
    cells/<name>/failed.json  {"reason", "exit_status"} when the cell's last attempt failed
    logs/<name>.log         the cell's output (stdout and stderr of its main.py)
    report.md, figures/     the report over whatever cells have finished

Each finished cell's evidence (config, results, per-epoch scalars, the commit it ran on) is saved at
once into the experiment's results directory (frep_tf.experiments.evidence; default
benchmarks/results/<experiment name>/ of this checkout), to be committed; a cell with evidence there
counts as done, so a later session with a fresh workdir runs only the rest.

Every cell is checked before any runs (flags known, values accepted); a cell whose results.json is
there is never run again, and an interrupted one resumes from its own checkpoint, so the same
command after a kill continues the grid where it stopped. A cell that fails at run time is recorded
and the other cells still run; the exit status is then 3. Cells lock their directory while they
run (flock), so two runners sharing a file system never run the same cell at once, and a cell's
process dies with its runner (Linux PR_SET_PDEATHSIG): no orphan keeps training after a kill.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

from frep_tf.experiments import evidence, share
from frep_tf.experiments.spec import Cell, Experiment, ExperimentError, parse
from frep_tf.io_utils import read_json, remove, write_json_atomic
from frep_tf.workdir import (
    CELLS_DIR,
    CONFIG_FILE,
    EXPERIMENT_FILE,
    FAILED_FILE,
    REPORT_FILE,
    RESULTS_FILE,
    cell_lock,
    cell_log,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAIN = os.path.join(REPO_ROOT, "main.py")
EXIT_CELL_FAILED = 3


def parse_shard(text: str) -> tuple[int, int]:
    """`i/n` -> (i, n) with 0 <= i < n; '' -> (0, 1)."""
    if not text:
        return 0, 1
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ExperimentError(f"--experiment_shard={text}: expected i/n, e.g. 0/2 and 1/2 for two machines") from None
    if count < 1 or not 0 <= index < count:
        raise ExperimentError(f"--experiment_shard={text}: needs n >= 1 and 0 <= i < n")
    return index, count


def check(experiment: Experiment, workdir: str, parse_args) -> list[Cell]:
    """Every cell's flags parse and validate, before any cell runs; ExperimentError names file, line and value.
    `parse_args(args) -> Config` is main.py's own parsing (it raises ConfigError naming the flag)."""
    from frep_tf.config import ConfigError, FlagParseError

    base = list(experiment.base_args) + list(experiment.extra_args)
    scratch = os.path.join(workdir, CELLS_DIR, "_check")
    try:
        parse_args(base + [f"--workdir={scratch}"])
    except ConfigError as exc:
        lines = ",".join(map(str, experiment.base_lines)) or "-"
        raise ExperimentError(f"{experiment.path}:{lines}: base flags: {exc}") from None
    # Each axis value alone: flags that do not exist or values their flag cannot parse. (Whether a
    # value is allowed may depend on another axis, e.g. --prune_epoch on --epochs: checked per cell.)
    for axis in experiment.axes:
        for value in axis.values:
            args = [f"--{flag}={v}" for flag, v in zip(axis.flags, value, strict=True)]
            try:
                parse_args(base + args + [f"--workdir={scratch}"])
            except FlagParseError as exc:
                raise ExperimentError(
                    f"{experiment.where(axis.line)}: axis {' '.join(axis.flags)}, value {' '.join(value)!r}: {exc}"
                ) from None
            except ConfigError:
                pass
    cells = experiment.cells()
    for cell in cells:
        try:
            parse_args(base + cell.args() + [f"--workdir={os.path.join(workdir, cell.dir)}"])
        except ConfigError as exc:
            named = [flag for flag in cell.flags if str(exc).startswith(f"--{flag}=")]
            if named:  # the refused value is an axis value: name its line and value
                flag = named[0]
                raise ExperimentError(
                    f"{experiment.where(cell.lines[flag])}: axis {flag}, value {cell.flags[flag]!r} "
                    f"(cell {cell.name}): {exc}"
                ) from None
            lines = ",".join(str(n) for n in sorted(set(cell.lines.values())))
            raise ExperimentError(f"{experiment.path}:{lines}: cell {cell.name}: {exc}") from None
    return cells


def cell_state(workdir: str, cell: Cell) -> str:
    """finished | failed | started | pending."""
    path = os.path.join(workdir, cell.dir)
    try:
        if read_json(os.path.join(path, RESULTS_FILE)) is not None:
            return "finished"
    except ValueError:
        pass
    if os.path.exists(os.path.join(path, FAILED_FILE)):
        return "failed"
    if os.path.exists(os.path.join(path, CONFIG_FILE)):
        return "started"
    return "pending"


@contextlib.contextmanager
def _cell_lock(path: str):
    import fcntl

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the runner dies (Linux), so a killed grid leaves no orphan."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _reason(log_path: str, status: int) -> str:
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        lines = []
    errors = [line for line in lines if line.startswith("error:")]
    if errors:
        return errors[-1]
    if status < 0:
        return f"killed by signal {signal.Signals(-status).name}"
    tail = lines[-1] if lines else "no output"
    return f"exit status {status}: {tail[:300]}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 90:
        return f"{minutes} min {seconds % 60:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def cell_args(experiment: Experiment, cell: Cell, workdir: str) -> list[str]:
    """main.py's arguments for a cell: the file's base flags, the runner's command-line flags, the cell's
    axis values (last, so they win), its workdir and --verbose=2 (--mode=cost resolves a cell with these)."""
    return [
        *experiment.base_args,
        *experiment.extra_args,
        *cell.args(),
        f"--workdir={os.path.join(workdir, cell.dir)}",
        "--verbose=2",
    ]


def run_cell(experiment: Experiment, cell: Cell, workdir: str, *, python: str = sys.executable) -> tuple[int, str]:
    """Runs one cell to the end (or resumes it); returns (exit status, one-line reason or '')."""
    cell_dir = os.path.join(workdir, cell.dir)
    log_path = cell_log(workdir, cell.name)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    command = [python, MAIN, *cell_args(experiment, cell, workdir)]
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
        log.flush()
        status = subprocess.call(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
    failed = os.path.join(cell_dir, FAILED_FILE)
    if status == 0:
        remove(failed)
        return 0, ""
    reason = _reason(log_path, status)
    os.makedirs(cell_dir, exist_ok=True)
    write_json_atomic(failed, {"reason": reason, "exit_status": status, "log": os.path.relpath(log_path, workdir)})
    return status, reason


def run(
    experiment_path: str,
    workdir: str,
    *,
    parse_args,
    shard: str = "",
    extra_args: list[str] | tuple[str, ...] = (),
    python: str = sys.executable,
    out=None,
    results_dir: str | None = None,
) -> int:
    """Runs the cells of this shard that have not finished, then writes the report. Returns the exit status.

    `extra_args` (main.py flags from the runner's own command line, e.g. --data_dir) go to every cell
    after the file's base flags; axis values come last and win. `parse_args(args) -> Config` checks a
    cell's flags as main.py would parse them (main.py passes its own; the library never imports flags/). `results_dir` (default
    benchmarks/results/<experiment name>) receives each finished cell's evidence; cells with evidence
    there are done."""
    import dataclasses

    from frep_tf.kill_points import kill_point

    out = out or sys.stdout
    index, count = parse_shard(shard)
    experiment = dataclasses.replace(parse(experiment_path), extra_args=tuple(extra_args))
    cells = check(experiment, workdir, parse_args)
    os.makedirs(workdir, exist_ok=True)
    _write_experiment(workdir, experiment)
    results_dir = results_dir or evidence.default_results_dir(experiment.name)
    mine = [c for i, c in enumerate(cells) if i % count == index]
    kept = [c for c in mine if evidence.has_evidence(results_dir, c.dir)]
    todo = [c for c in mine if c not in kept and cell_state(workdir, c) != "finished"]
    commit = evidence.code_commit()
    shard_text = f" (shard {index}/{count}: {len(mine)} of {len(cells)} cells)" if count > 1 else ""
    print(
        f"[experiment] {experiment.name}: {len(cells)} cells{shard_text}, {len(mine) - len(todo)} finished, "
        f"{len(todo)} to run ({len(kept)} kept in {results_dir}); workdir {workdir}",
        file=out,
        flush=True,
    )
    spent, failures = [], 0
    for number, cell in enumerate(todo, start=1):
        label = f"[experiment] cell {number}/{len(todo)} {cell.name}"
        with _cell_lock(cell_lock(workdir, cell.name)) as mine_now:
            if not mine_now:
                print(f"{label}: running elsewhere (locked), skipped", file=out, flush=True)
                continue
            if cell_state(workdir, cell) == "finished":  # another runner finished it meanwhile
                continue
            print(f"{label}: {cell_state(workdir, cell)} -> running", file=out, flush=True)
            start = time.perf_counter()
            finished = [
                os.path.join(workdir, c.dir) for c in cells if c is not cell and cell_state(workdir, c) == "finished"
            ]
            share.fill_own_runs(parse_args(cell_args(experiment, cell, workdir)), finished, out=out)
            status, reason = run_cell(experiment, cell, workdir, python=python)
            spent.append(time.perf_counter() - start)
        left = len(todo) - number
        eta = f", ETA {_duration(left * sum(spent) / len(spent))} for {left} more" if left else ""
        if status:
            failures += 1
            print(f"{label}: FAILED in {_duration(spent[-1])} ({reason}){eta}", file=out, flush=True)
        else:
            evidence.save_cell(os.path.join(workdir, cell.dir), os.path.join(results_dir, cell.dir), commit)
            print(f"{label}: done in {_duration(spent[-1])}{eta}; evidence in {results_dir}", file=out, flush=True)
        kill_point("experiment_cell")
    evidence.save_finished(workdir, results_dir, commit)  # experiment.json, and cells another runner finished
    for where in (workdir, results_dir):  # the kept evidence's report is the one to commit
        report_path = write_report(where, out=out)
        if report_path:
            print(f"[experiment] report: {report_path}", file=out, flush=True)
    if failures:
        print(f"[experiment] {failures} cell(s) failed; see {os.path.join(workdir, REPORT_FILE)}", file=out, flush=True)
        return EXIT_CELL_FAILED
    return 0


def _write_experiment(workdir: str, experiment: Experiment) -> None:
    path = os.path.join(workdir, EXPERIMENT_FILE)
    data = experiment.to_dict()
    try:
        previous = read_json(path)
    except ValueError:
        previous = None
    if previous != data:
        write_json_atomic(path, data)


def write_report(workdir: str, out=None, experiment_path: str | None = None) -> str | None:
    """report.md and figures from the finished cells (frep_tf.experiments.report). With `experiment_path`
    the workdir's experiment.json is first replaced by that file's, as the runner would write it (its
    cells, so cells added to the file show as pending, and its claims), so a later report without it
    keeps them; ExperimentError if the file is another experiment's."""
    from frep_tf.experiments import report

    if experiment_path:
        experiment = parse(experiment_path)
        path = os.path.join(workdir, EXPERIMENT_FILE)
        try:
            stored = read_json(path)
        except ValueError as exc:
            raise report.ReportError(str(exc)) from None
        name = stored.get("name") if isinstance(stored, dict) else None
        if name is not None and name != experiment.name:
            raise ExperimentError(
                f"--experiment={experiment_path}: experiment {experiment.name!r}, but {path} is experiment "
                f"{name!r}: give the file of the same experiment"
            )
        if os.path.isdir(workdir):
            _write_experiment(workdir, experiment)
    summary = report.write_report(workdir)
    return summary.get("report") if isinstance(summary, dict) else None
