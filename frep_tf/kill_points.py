"""Test-only kill points: a hook that kills the process at a named point, for the kill-and-resume tests.

    FREP_TF_TEST_KILL_AT=checkpoint:2 python main.py ...   # SIGKILL itself while writing the 2nd checkpoint

Some moments are too short to hit from outside by polling files or output (the instant between
writing a checkpoint and renaming it into place, the step right after the one-shot prune). With the
variable set to `<point>[:<n>]` the process sends itself SIGKILL the n-th time (default: the first)
it reaches `<point>`: the same uncatchable kill an outside `kill -9` is, with no clean-up, at an exact
moment. Unset (always, outside tests) it costs one environment lookup per point.
"""

from __future__ import annotations

import os
import signal

ENV = "FREP_TF_TEST_KILL_AT"

# checkpoint: a checkpoint is complete under its temporary name, not yet renamed into place.
# pruned: the one-shot prune has changed masks and factors in memory; no step taken since.
# export: every export is written and checked in the staging directory, not yet moved into export/.
# results: results.json is written; the checkpoint is not yet deleted.
POINTS = ("checkpoint", "pruned", "export", "results")

# A short deterministic quickstart run (4 epochs, pruning at 2) for the kill-and-resume tests and
# benchmarks/kill_resume.py: long enough to have every kill point, short enough to run many times.
# Pruned to 99 % after 2 epochs, conv3 would keep 4 of its 73,728 weights, which pruning refuses:
# every layer keeps 0.1 %.
QUICK_RUN_FLAGS = (
    "--flagfile=configs/quickstart.cfg",
    "--epochs=4",
    "--prune_epoch=2",
    "--min_layer_density=0.001",
    "--val_pgd_steps=2",
    "--eval_pgd_steps=5",
    "--ensemble_interval=5",
    "--deterministic",
    "--verbose=2",
)

# A tinier dense run (no pruning, 2 epochs, clean evaluation only) for the failure-injection and
# multi-worker tests, which need a complete run, not its numbers. Add --verbose=... as needed.
TINY_DENSE_RUN_FLAGS = (
    "--dataset=digits",
    "--arch=small_cnn",
    "--width=0.25",
    "--sparsity=0",
    "--epochs=2",
    "--epsilon=0.1",
    "--batch_size=64",
    "--val_pgd_steps=1",
    "--val_samples=32",
    "--eval_attacks=clean",
    "--export=keras",
)

_reached: dict[str, int] = {}


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def kill_point(name: str) -> None:
    """SIGKILL this process if FREP_TF_TEST_KILL_AT names this point and occurrence."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == int(nth or 1):
        print(f"[frep_tf] test hook: SIGKILL at {name}:{_reached[name]}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
