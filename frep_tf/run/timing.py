"""Wall time per stage of a run, and which stage is running (main.py names it when something fails)."""

from __future__ import annotations

import contextlib
import time

_current_stage = "start"


def current_stage() -> str:
    """The stage running (or that was running when something failed): for main.py's error line."""
    return _current_stage


def enter_stage(name: str) -> None:
    global _current_stage
    _current_stage = name


class Stages:
    """Wall time per stage, printed as the stages start."""

    def __init__(self, quiet: bool = False):
        self.seconds: dict[str, float] = {}
        self.quiet = quiet
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str):
        if not self.quiet:
            print(f"[frep_tf] {name} ...", flush=True)
        enter_stage(name)
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - t, 3)

    def total(self) -> float:
        return round(time.perf_counter() - self._start, 3)
