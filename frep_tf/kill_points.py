"""Test-only kill points: a hook that kills the process at a named point, for the kill-and-resume tests.

    FREP_TF_TEST_KILL_AT=checkpoint:2 python main.py ...   # SIGKILL itself while writing the 2nd checkpoint

Some moments are too short to hit from outside by polling files or output (the instant between
writing a checkpoint and renaming it into place, the step right after the one-shot prune). With the
variable set to `<point>[:<n>]` the process sends itself SIGKILL the n-th time (default: the first)
it reaches `<point>`: the same uncatchable kill an outside `kill -9` is, with no clean-up, at an exact
moment. Unset (always, outside tests) it costs one environment lookup per point.

The points:
    checkpoint        a checkpoint is complete under its temporary name, not yet renamed into place
    pruned            the one-shot prune has changed masks and factors in memory; no step taken since
    export            every export is written and checked in the staging directory, not yet in export/
    results           results.json is written; the checkpoint is not yet deleted
    experiment_cell   an experiment's cell has finished and its evidence is saved
"""

from __future__ import annotations

import os
import signal

ENV = "FREP_TF_TEST_KILL_AT"

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
