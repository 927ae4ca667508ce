"""`--mode=cost`: the training cost of every row of an experiment, measured side by side in one process.

    python main.py --mode=cost --experiment=configs/experiments/fashion_mlp_methods.cfg \\
        --workdir=benchmarks/results/fashion_mlp_methods [--cost_steps=20] [--cost_rounds=5]

Each cell records its wall time, but cells that ran hours apart under another load of a shared machine
cannot be compared by it. Timings there compare only as measured side by side, in one process,
interleaved and repeated; this module measures them so:

1. Rows. The experiment's cells that differ only in `seed` are one row (a report row). Its lowest-seed
   cell stands for it, with the flags the runner would run that cell with (runner.cell_args, parsed by
   main.py's own parser).
2. Parts. Every stage of the row's method (stages.plan) is timed; a stage that prunes inside it (frep,
   lwm at --prune_epoch) is timed before its prune and after it, where each step also keeps the pruned
   weights at zero. A part's optimizer steps in the whole training: its epochs x steps per epoch; a stage
   that is a pass over the data (MAD's saliency, kind != "fit"): the pass's batches.
3. Set-up, untimed. Per part, a model built as training builds it (setup.build_robust_model); the stages
   before the part's replayed (configured, begun - a prune, score initialisation, a rewind -, their
   epoch hooks run, a pass over one batch) so that its stage begins on the state it needs; then its stage
   configured, compiled and begun (stages.configure, compile_stage, begin) and, after a prune, pruned.
   Once every model is built (a build sets the random seeds, which makes TensorFlow trace the steps of
   every model anew), one untimed warm-up round each (tracing, compilation, the data pipeline) and one
   ensemble update.
4. Rounds. In each of R rounds every part of every row in turn (the order reversed every other round)
   times K optimizer steps inside `fit`, from the end of one step to the end of the K-th after it: the
   method's train step with its step hook, the stage's training callbacks (stages.training_callbacks: the
   non-finite loss guard, the temporal ensemble's update, pruning's schedule - kept from pruning again -,
   the method's own), Keras' per-step work and the data pipeline. A pass times K batches of its per-batch
   work (Method.pass_step). The batches are the training set's, in its first epoch's order (which batch
   it is changes no step's cost; skipping to a later epoch would take seconds per round).
5. A row's estimated training seconds in a round: the sum over its parts of steps x that round's seconds
   per step (report.stats.round_totals); its ratio to the FReP row at the same sparsity, per round.

Left out: per-epoch work (validation, which monitors and costs the same per epoch for every method;
checkpoints; TensorBoard; ADMM's Z/U updates) and one-off work (the prune itself, what a stage does as it
begins, tracing). IWI's first stage, a run of --iwi_source of its own, is not part of its row (measure
that method as a row). Models stay alive across rounds when they fit in memory, else every round
rebuilds (and warms up) each.

Output: <workdir>/cost.json, written once at the end (schema in docs/experiments.md), and a table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import io
import os
import platform
import sys
import time

from frep_tf.config import Config, ConfigError
from frep_tf.experiments import evidence, runner
from frep_tf.experiments.report.cells import NOT_SETTINGS
from frep_tf.experiments.report.stats import REPLICATE_AXIS, cost_rows, mean_std, round_totals
from frep_tf.experiments.report.tables import measured_cost_table, row_label, seconds_text
from frep_tf.experiments.spec import Cell, Experiment, ExperimentError, parse
from frep_tf.io_utils import write_json_atomic
from frep_tf.workdir import COST_FILE

SCHEMA_VERSION = 1
MEASURED = (
    "Each step timed: the method's train step (with its step hook), the stage's training callbacks (the "
    "non-finite loss guard, the temporal ensemble's update, pruning's schedule, the method's own), Keras' "
    "per-step work and the data pipeline, as `fit` runs them; a stage that prunes inside it (FReP, LWM) is "
    "timed before and after its prune."
)
LEFT_OUT = (
    "Left out: per-epoch validation (monitoring, the same per epoch for every method), checkpoints, "
    "TensorBoard, a method's per-epoch work (ADMM's Z/U updates) and one-off work (the prune itself, what a "
    "stage does as it begins, tracing)."
)
IWI_NOTE = "stage 1, the --iwi_source run that IWI inherits from, is a run of its own: not included"
# Models kept alive across rounds only if their variables (the optimizer's too) times this fit in half
# of the memory available: traced graphs, activations and the data pipeline take more.
MEMORY_FACTOR = 4


@dataclasses.dataclass
class Part:
    """What is timed: a stage of a row's method, or the part of a stage before or after its prune."""

    stage: int  # index in the row's plan
    name: str
    epochs: int
    steps: int  # optimizer steps (a pass: batches) in the whole training
    after_prune: bool = False
    first_epoch: int = 0
    seconds: list[float] = dataclasses.field(default_factory=list)  # per round: seconds per step


@dataclasses.dataclass(eq=False)  # one object per row (hashable by identity)
class RowPlan:
    """A report row: its measured cell (the lowest seed), every cell of the row, the cell's resolved
    configuration, its method's stages and the parts timed."""

    cell: Cell
    cells: list[str]
    cfg: Config
    plan: list = dataclasses.field(default_factory=list)
    steps_per_epoch: int = 0
    parts: list[Part] = dataclasses.field(default_factory=list)
    label: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)


def run(
    experiment_path: str,
    workdir: str,
    *,
    parse_args,
    steps: int,
    rounds: int,
    extra_args=(),
    out=None,
    keep_alive: bool | None = None,
) -> dict:
    """Measure every row of the experiment (see the module docstring) and write <workdir>/cost.json; returns
    what it holds. `parse_args(args) -> Config` is main.py's parsing; `extra_args` (main.py flags of the
    command line, e.g. --data_dir) go to every cell as the runner passes them. `keep_alive` None: keep the
    models across rounds if they fit in memory. Bad input raises ExperimentError, ConfigError or DatasetError
    (one line) before anything is written."""
    import logging

    out = out or sys.stdout
    # Every model traces its step once, in its warm-up; TensorFlow's warning about frequent retracing
    # counts those traces over all the models, so it would only mislead here.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if steps < 1 or rounds < 1:
        raise ConfigError(f"--cost_steps={steps} --cost_rounds={rounds}: both must be integers >= 1")
    experiment = dataclasses.replace(parse(experiment_path), extra_args=tuple(extra_args))
    runner.check(experiment, workdir, parse_args)
    rows = plan_rows(experiment, workdir, parse_args)
    _check_one_process(experiment, rows)
    _check_data(rows)
    started, load_start = time.perf_counter(), _load_average()
    timings = _set_up(rows, steps, out)
    if keep_alive is None:
        keep_alive = _fits_in_memory(timings, out)
    print(
        f"[cost] {experiment.name}: {len(rows)} rows, {len(timings)} stages timed; {rounds} rounds x {steps} steps; "
        f"models {'kept alive across rounds' if keep_alive else 'rebuilt every round'}",
        file=out,
        flush=True,
    )
    _warm_up(timings, steps, keep_alive, out)
    for number in range(rounds):
        _round(timings, steps, number, rounds, keep_alive, rows, out)
    cost = _result(experiment, rows, steps, rounds, keep_alive, started, load_start)
    path = os.path.join(workdir, COST_FILE)
    write_json_atomic(path, cost)
    _print_table(cost, out)
    print(f"[cost] {path}", file=out, flush=True)
    return cost


# -- rows and their parts ---------------------------------------------------------------------------------
def row_cells(experiment: Experiment) -> list[list[Cell]]:
    """The experiment's cells grouped by every axis value but the seed (one report row each), in the
    file's order; each group sorted by seed, the lowest first."""
    groups: dict[tuple, list[Cell]] = {}
    for cell in experiment.cells():
        key = tuple((flag, value) for flag, value in cell.flags.items() if flag != REPLICATE_AXIS)
        groups.setdefault(key, []).append(cell)
    return [sorted(group, key=lambda c: _seed_key(c.flags.get(REPLICATE_AXIS))) for group in groups.values()]


def _seed_key(value) -> tuple:
    try:
        return (0, int(value))
    except (TypeError, ValueError):
        return (1, str(value))


def plan_rows(experiment: Experiment, workdir: str, parse_args) -> list[RowPlan]:
    """Every row with its measured cell's configuration (resolved as the runner resolves it) and stages,
    in the report's order, labelled as the report labels rows."""
    from frep_tf.methods import stages as stages_lib

    rows = []
    for group in row_cells(experiment):
        cell = group[0]
        cfg = untrained_prune_floor(parse_args(runner.cell_args(experiment, cell, workdir)))
        row = RowPlan(cell, [c.name for c in group], cfg, plan=stages_lib.plan(cfg))
        if cfg.method.method == "iwi":
            row.notes.append(IWI_NOTE)
        rows.append(row)
    entries = {row.cell.name: _entry(row) for row in rows}
    ordered = cost_rows({"axes": _axes(experiment), "rows": list(entries.values())})
    by_name = {row.cell.name: row for row in rows}
    for c in ordered:
        by_name[c.entry["cell"]].label = row_label(c.row)
    return [by_name[c.entry["cell"]] for c in ordered]


def untrained_prune_floor(cfg: Config) -> Config:
    """The row's configuration with every layer keeping at least half the global density when pruned.
    --mode=cost prunes untrained weights, whose magnitudes rank layers unlike trained ones (at 99 % a
    global budget can take every weight of a He-initialised first layer, which pruning's check refuses);
    which weights a step keeps changes no step's cost, and the global budget is unchanged."""
    p = cfg.prune
    if not p.sparsity or p.structured:
        return cfg
    floor = max(p.min_layer_density, (1.0 - p.sparsity) / 2)
    return dataclasses.replace(cfg, prune=dataclasses.replace(p, min_layer_density=floor))


def plan_parts(cfg: Config, plan: list, steps_per_epoch: int) -> list[Part]:
    """The parts of a row: a part per stage, and two for a stage with a prune inside it (before and after;
    the prune comes --prune_epoch epochs into the stage, as its schedule counts them)."""
    from frep_tf.methods import stages as stages_lib

    method = stages_lib.method_of(cfg)
    parts = []
    for index, stage in enumerate(plan):
        if stage.kind != "fit":
            batches = method.pass_batches(stage, cfg, steps_per_epoch)
            parts.append(Part(index, stage.name, stage.epochs, batches, first_epoch=stage.start))
            continue
        before = min(max(cfg.prune_epoch, 0), stage.epochs) if stage.prune else stage.epochs
        pieces = [(before, False), (stage.epochs - before, True)]
        pieces = [(epochs, after) for epochs, after in pieces if epochs > 0]
        for epochs, after in pieces:
            name = stage.name if len(pieces) == 1 else f"{stage.name} ({'after' if after else 'before'} prune)"
            first = stage.start + (before if after else 0)
            parts.append(Part(index, name, epochs, epochs * steps_per_epoch, after, first_epoch=first))
    return parts


def _axes(experiment: Experiment) -> list[dict]:
    """The experiment's axes one flag at a time, each with its values as the file wrote them."""
    out = []
    for axis in experiment.axes:
        for i, flag in enumerate(axis.flags):
            out.append({"flag": flag, "values": list(dict.fromkeys(v[i] for v in axis.values))})
    return out


def _entry(row: RowPlan) -> dict:
    """A row as cost.json holds it (the measurements are added once taken)."""
    settings = {k: v for k, v in row.cfg.flat().items() if k not in NOT_SETTINGS}
    entry = {
        "label": row.label,
        "cell": row.cell.name,
        "cells": list(row.cells),
        "flags": dict(row.cell.flags),
        "settings": settings,
        "steps_per_epoch": row.steps_per_epoch,
        "stages": [
            {
                "name": p.name,
                "stage": row.plan[p.stage].name,
                "kind": row.plan[p.stage].kind,
                "epochs": p.epochs,
                "steps": p.steps,
                "seconds_per_step": list(p.seconds),
            }
            for p in row.parts
        ],
    }
    if row.notes:
        entry["notes"] = list(row.notes)
    return entry


def _check_one_process(experiment: Experiment, rows: list[RowPlan]) -> None:
    """What one process cannot measure side by side: op determinism (on for the whole process once set)
    that some rows use and others not, and several machines."""
    deterministic = {row.cfg.run.deterministic for row in rows}
    if len(deterministic) > 1:
        raise ExperimentError(
            f"{experiment.path}: some rows run with --deterministic and some without; op determinism, once on, "
            "stays on for the whole process, so --mode=cost cannot time both side by side: measure them apart"
        )
    for row in rows:
        if row.cfg.run.distribution == "multi_worker":
            raise ExperimentError(
                f"{experiment.path}: cell {row.cell.name}: --distribution=multi_worker trains on several machines; "
                "--mode=cost measures in one process (use none or mirrored)"
            )


def _check_data(rows: list[RowPlan]) -> None:
    """Every row's dataset is there (DatasetError, one line), before TensorFlow starts."""
    from frep_tf import data

    seen = set()
    for row in rows:
        d = row.cfg.data
        key = (d.dataset, d.data_dir, d.download, d.svhn_extra)
        if key not in seen:
            seen.add(key)
            data.check_available(d.dataset, data_dir=d.data_dir or None, download=d.download, svhn_extra=d.svhn_extra)


# -- timing one part ------------------------------------------------------------------------------------
class Timing:
    """One part of one row: its model set up as training sets it up for that part, and its timer."""

    def __init__(self, row: RowPlan, part: Part, splits):
        self.row, self.part, self.splits = row, part, splits
        self.model = self.callbacks = self.step = self.batches = None
        self.batch_index = 0

    @property
    def stage(self):
        return self.row.plan[self.part.stage]

    def build(self) -> None:
        """The model at the start of the part, as training gets there; the step's callbacks or pass step."""
        from frep_tf.methods import stages as stages_lib
        from frep_tf.run.setup import build_robust_model, setup_tf

        cfg, spe, stage = self.row.cfg, self.row.steps_per_epoch, self.stage
        strategy = setup_tf(cfg)  # seeds (and op determinism), as a run sets them
        with strategy.scope():
            self.model = build_robust_model(cfg, self.splits.info)
            for earlier in self.row.plan[: self.part.stage]:
                _replay(earlier, self.model, cfg, self.splits, spe)
            stages_lib.configure(stage, self.model, cfg)
            decay_steps = stages_lib.compile_stage(stage, self.model, spe, cfg)
            _begin(stage, self.model, cfg)
            if stage.kind != "fit":
                self.step = stages_lib.method_of(cfg).pass_step(stage, self.model, cfg)
                self.batches = iter(self.splits.train_from(0))
                return
            self.callbacks = stages_lib.training_callbacks(cfg, self.model, stage, decay_steps, spe)
            for callback in self.callbacks:
                callback.set_model(self.model)
            if self.part.after_prune:
                _prune(self.callbacks, cfg)
            _keep_from_pruning(self.callbacks)
            self.batches = self.splits.train_from(0)

    def warm_up(self, steps: int) -> None:
        """One untimed round (tracing, compilation, the data pipeline), then one temporal ensemble update: its
        first run traces it, which would otherwise land in whichever timed step updates first."""
        from frep_tf.training.ensemble import TemporalEnsemble

        self.measure(steps)
        for callback in self.callbacks or []:
            if isinstance(callback, TemporalEnsemble) and self.model.ensemble is not None:
                callback.apply_update()

    def measure(self, steps: int) -> float:
        """Seconds per optimizer step (a pass: per batch) over `steps` of them."""
        if self.step is not None:
            return self._measure_pass(steps)
        timer = _step_timer(steps)
        epoch = self.part.first_epoch
        with contextlib.redirect_stdout(io.StringIO()):  # Keras' epoch line, a method's epoch print
            self.model.fit(
                self.batches,
                initial_epoch=epoch,
                epochs=epoch + 1,
                steps_per_epoch=steps + 1,
                callbacks=[*self.callbacks, timer],
                verbose=2,  # as the runner runs every cell
                shuffle=False,
            )
        return timer.seconds / steps

    def _measure_pass(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            x, y = next(self.batches)
            self.step(self.batch_index, x, y)
            self.batch_index += 1
        return (time.perf_counter() - start) / steps

    def variable_bytes(self) -> int:
        import numpy as np

        variables = list(self.model.variables) + list(getattr(self.model.optimizer, "variables", []) or [])
        return int(sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables))

    def release(self) -> None:
        self.model = self.callbacks = self.step = self.batches = None


def _step_timer(steps: int):
    """A callback (the last of the fit) that times `steps` whole steps: from the end of the fit's first
    step (its callbacks included) to the end of the `steps`-th after it."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        seconds = None

        def on_train_batch_end(self, batch, logs=None):
            if batch not in (0, steps):
                return
            self.model.optimizer.iterations.numpy()  # every op of the step has run
            now = time.perf_counter()
            if batch == 0:
                self.start = now
            else:
                self.seconds = now - self.start

    return StepTimer()


def _begin(stage, model, cfg: Config) -> None:
    """stages.begin, except IWI's first stage: it loads the small network of IWI's own source run, which
    --mode=cost does not train (the inherited weights change no computation)."""
    from frep_tf.methods import stages as stages_lib

    if cfg.method.method == "iwi" and stage.start == 0:
        return
    stages_lib.begin(stage, model, cfg)


def _replay(stage, model, cfg: Config, splits, steps_per_epoch: int) -> None:
    """An earlier stage's effect on the state a later one begins from, without its training: configured,
    compiled and begun, its callbacks' epoch hooks run over its epochs (a lottery rewind copy, ADMM's
    Z/U), a pass over one batch (e.g. MAD's saliency, which its fine-tuning prunes by)."""
    from frep_tf.methods import stages as stages_lib

    stages_lib.configure(stage, model, cfg)
    decay_steps = stages_lib.compile_stage(stage, model, steps_per_epoch, cfg)
    _begin(stage, model, cfg)
    if stage.kind != "fit":
        x, y = next(iter(splits.train_from(0)))
        stages_lib.method_of(cfg).pass_step(stage, model, cfg)(0, x, y)
        return
    callbacks = stages_lib.training_callbacks(cfg, model, stage, decay_steps, steps_per_epoch)
    for callback in callbacks:
        callback.set_model(model)
    for epoch in range(stage.start, stage.end):
        for callback in callbacks:
            callback.on_epoch_begin(epoch)


def _prune(callbacks: list, cfg: Config) -> None:
    """The prune inside a stage, as its pruning callback does it when its schedule says so."""
    from frep_tf.training.pruning import GlobalPruning

    for callback in callbacks:
        if isinstance(callback, GlobalPruning):
            callback.prune(cfg.prune.sparsity)


def _keep_from_pruning(callbacks: list) -> None:
    """Pruning's schedule still runs at every step (its per-step cost is training's), but never prunes:
    the part's state is set up once, and the prune itself is one-off work."""
    from frep_tf.training.pruning import GlobalPruning

    for callback in callbacks:
        if isinstance(callback, GlobalPruning):
            schedule = callback.schedule
            if schedule is None:
                raise RuntimeError("the pruning callback has no schedule before fit: cannot time its steps")

            def never(step, schedule=schedule):
                _, sparsity = schedule(step)
                return False, sparsity

            callback.schedule = never


# -- set-up, warm-up and rounds -----------------------------------------------------------------------------
def _set_up(rows: list[RowPlan], steps: int, out) -> list[Timing]:
    """Every row's data (shared by rows with the same data settings), steps per epoch and parts."""
    from frep_tf.run.setup import load_data

    loaded: dict[tuple, object] = {}
    timings = []
    for row in rows:
        cfg = row.cfg
        key = (cfg.data, cfg.run.seed, cfg.run.deterministic)
        if key not in loaded:
            loaded[key] = load_data(cfg)
        splits = loaded[key]
        info = splits.info
        row.steps_per_epoch = info.num_train // cfg.data.batch_size
        if row.steps_per_epoch < 1:
            raise ConfigError(
                f"cell {row.cell.name}: --batch_size={cfg.data.batch_size}: larger than the {info.num_train} "
                f"training examples of {info.name}; use a smaller batch"
            )
        row.parts = plan_parts(cfg, row.plan, row.steps_per_epoch)
        timings += [Timing(row, part, splits) for part in row.parts]
    return timings


def _fits_in_memory(timings: list[Timing], out) -> bool:
    """Whether every part's model can stay alive: the first one's variables (and optimizer's) x
    MEMORY_FACTOR x the parts, under half of the memory available now (Linux; elsewhere assumed)."""
    available = _available_bytes()
    if available is None or not timings:
        return True
    first = timings[0]
    first.build()
    need = first.variable_bytes() * MEMORY_FACTOR * len(timings)
    first.release()
    gc.collect()
    print(
        f"[cost] models: about {need / 2**20:.0f} MiB for all {len(timings)}, {available / 2**20:.0f} MiB available",
        file=out,
        flush=True,
    )
    return need < available / 2


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _warm_up(timings: list[Timing], steps: int, keep_alive: bool, out) -> None:
    """Build every part's model, then warm each up (Timing.warm_up); in this order because a build sets the
    random seeds, after which TensorFlow traces every function again at its next call. In rebuild mode the
    rounds do this themselves."""
    if not keep_alive:
        return
    for row in dict.fromkeys(t.row for t in timings):
        start = time.perf_counter()
        for timing in (t for t in timings if t.row is row):
            timing.build()
        parts = " + ".join(f"{p.name} {p.epochs}" for p in row.parts)
        print(f"[cost] set up: {row.label} ({parts}) in {time.perf_counter() - start:.0f} s", file=out, flush=True)
    start = time.perf_counter()
    for timing in timings:
        timing.warm_up(steps)
    print(f"[cost] warm-up in {time.perf_counter() - start:.0f} s", file=out, flush=True)


def _round(timings: list[Timing], steps: int, number: int, rounds: int, keep_alive: bool, rows, out) -> None:
    """One round: every part in turn (reversed in odd rounds, so no part always runs first) times `steps`."""
    start = time.perf_counter()
    order = timings if number % 2 == 0 else list(reversed(timings))
    for timing in order:
        if not keep_alive:
            timing.build()
            timing.warm_up(steps)
        timing.part.seconds.append(timing.measure(steps))
        if not keep_alive:
            timing.release()
            _clear()
    totals = [f"{row.label} {seconds_text(round_totals(_entry(row)['stages'])[-1])} s" for row in rows]
    print(
        f"[cost] round {number + 1}/{rounds} in {time.perf_counter() - start:.0f} s; est. train: {'; '.join(totals)}",
        file=out,
        flush=True,
    )


def _clear() -> None:
    import keras

    gc.collect()
    keras.backend.clear_session()


# -- the result -----------------------------------------------------------------------------------------
def _result(experiment, rows, steps, rounds, keep_alive, started, load_start) -> dict:
    """cost.json: the measurement's context, then per row its stages' seconds per step in every round, the
    per-round totals with mean and sample std, and the per-round ratio to the FReP row at its sparsity."""
    import keras
    import tensorflow as tf

    entries = [_entry(row) for row in rows]
    for entry in entries:
        entry["totals"] = round_totals(entry["stages"])
        mean, std, _ = mean_std(entry["totals"])
        entry["mean"], entry["std"] = mean, std
    cost = {
        "schema_version": SCHEMA_VERSION,
        "experiment": {"name": experiment.name, "file": experiment.path},
        "command_line_flags": list(experiment.extra_args),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": evidence.code_commit(),
        "machine": _machine(load_start),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "steps": steps,
        "rounds": rounds,
        "models": "kept alive across rounds" if keep_alive else "rebuilt and warmed up every round",
        "measured": MEASURED,
        "left_out": LEFT_OUT,
        "seconds": round(time.perf_counter() - started, 1),
        "axes": _axes(experiment),
        "rows": entries,
    }
    for c in cost_rows(cost):
        if c.ratios is not None:
            mean, std, _ = mean_std(c.ratios)
            c.entry["ratio_to_frep"] = {"row": row_label(c.reference.row), "per_round": c.ratios, "mean": mean}
            c.entry["ratio_to_frep"]["std"] = std
    return cost


def _machine(load_start) -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        cpu = names[0] if names else cpu
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "platform": platform.platform(),
        "load_average": {"start": load_start, "end": _load_average()},
    }


def _load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _print_table(cost: dict, out) -> None:
    rows = cost_rows(cost)
    print(
        f"[cost] training cost measured side by side: {cost['rounds']} rounds x {cost['steps']} steps per stage "
        f"({cost['machine']['cpu']}, {cost['machine']['cores']} cores); est. train = sum over stages of epochs x "
        "steps per epoch x s per step; mean ± std over rounds, Train / FReP taken per round",
        file=out,
    )
    for line in measured_cost_table(rows):
        print(line, file=out)
    for c in rows:
        for note in c.entry.get("notes", []):
            print(f"[cost] {row_label(c.row)}: {note}", file=out)
    print(f"[cost] {LEFT_OUT}", file=out, flush=True)
