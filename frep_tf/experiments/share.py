"""Cells that share a run share it: a method whose first stage is an ordinary run of its own
(`Method.own_runs`; IWI's small sparse source) starts from a finished cell of the same experiment that is
that run, instead of training it again.

A finished cell qualifies when its config.json differs from the wanted run's only in settings that do
not change what it trains (frep_tf.resume.IGNORED, and --export: the own run needs export/model.keras,
which every frep_tf run writes). Its results.json and export/ are copied into the own run's workdir
with the wanted run's config.json, so the method's `before_training` finds a finished run there (as after
a kill) and goes on; shared_from.json names the cell, and the method's results say so. An own run that
has already started (config.json present) is left to resume as it is.
"""

from __future__ import annotations

import os
import shutil

from frep_tf.io_utils import read_json, write_json_atomic
from frep_tf.resume import differences
from frep_tf.workdir import CONFIG_FILE, EXPORT_DIR, RESULTS_FILE, SHARED_FILE

# Settings a finished cell may differ in and still be the run (beyond those resume never compares).
NOT_TRAINED = ("export",)


def same_run(stored: dict, wanted) -> bool:
    """True when config.json `stored` trains what Config `wanted` trains."""
    return not [d for d in differences(stored, wanted) if not any(d.startswith(f"--{f}=") for f in NOT_TRAINED)]


def fill_own_runs(cfg, finished_dirs: list[str], out=None) -> list[str]:
    """For each own run of `cfg`'s method that has not started, copy in the first of `finished_dirs`
    (finished cells' workdirs) that is the same run. Returns the workdirs copied from."""
    from frep_tf.methods import stages as stages_lib

    used = []
    for wanted in stages_lib.method_of(cfg).own_runs(cfg):
        target = wanted.run.workdir
        if os.path.exists(os.path.join(target, CONFIG_FILE)):
            continue
        for source in finished_dirs:
            stored = read_json(os.path.join(source, CONFIG_FILE))
            results = read_json(os.path.join(source, RESULTS_FILE))
            model = os.path.join(source, EXPORT_DIR, "model.keras")
            if stored is None or results is None or not os.path.isfile(model) or not same_run(stored, wanted):
                continue
            _copy_run(source, target, wanted)
            used.append(source)
            if out is not None:
                print(
                    f"[experiment]   {target}: the finished cell {source} is this run; copied, not trained again",
                    file=out,
                    flush=True,
                )
            break
    return used


def _copy_run(source: str, target: str, wanted) -> None:
    """config.json first (killed here, the own run resumes from nothing and trains), results.json last."""
    os.makedirs(target, exist_ok=True)
    write_json_atomic(os.path.join(target, CONFIG_FILE), wanted.to_dict())
    shutil.copytree(os.path.join(source, EXPORT_DIR), os.path.join(target, EXPORT_DIR), dirs_exist_ok=True)
    write_json_atomic(os.path.join(target, SHARED_FILE), {"cell": os.path.abspath(source)})
    write_json_atomic(os.path.join(target, RESULTS_FILE), read_json(os.path.join(source, RESULTS_FILE)))
