"""What a --workdir already holds, and what a run may do with it (docs/outputs.md).

Re-running a command with the same --workdir either resumes it (config.json matches, no results.json
yet: training continues from the newest checkpoint in checkpoint/), or, once results.json is there,
prints the stored results without doing any work. A workdir made with other settings is refused
with the differing flags listed; `--overwrite` deletes our outputs and starts afresh.

Settings that cannot change what a run computes are not compared (IGNORED). Everything here reads
small JSON files only, so it runs before TensorFlow starts; nothing is written until `prepare` (or
`tidy_finished`, which clears what a kill left behind in a finished workdir).
"""

from __future__ import annotations

import dataclasses
import os

from frep_tf.config import SECTIONS, Config, ConfigError
from frep_tf.io_utils import read_json, remove, temporary_prefix, write_json_atomic
from frep_tf.workdir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    EXPORT_PREVIOUS,
    EXPORT_STAGING,
    OUTPUTS,
    RESULTS_FILE,
    SHARED_FILE,
)

# Where the data is found, how much is printed, and the workdir's own spelling (a relative or
# absolute path to the same directory) do not change results; --overwrite is this module's switch.
IGNORED = (
    "workdir",
    "data_dir",
    "download",
    "verbose",
    "overwrite",
    "experiment",
    "experiment_shard",
    "experiment_results",
    "cost_steps",
    "cost_rounds",
)


@dataclasses.dataclass(frozen=True)
class WorkdirState:
    workdir: str
    results: dict | None  # the stored results.json of a finished run with these settings
    resumable: bool  # config.json matches: continue from checkpoint/ (if any)

    @property
    def finished(self) -> bool:
        return self.results is not None


def _flag(workdir: str, problem: str) -> ConfigError:
    return ConfigError(f"--workdir={workdir}: {problem}")


def differences(stored: dict, cfg: Config) -> list[str]:
    """`--flag=old -> new` for every compared setting where config.json and `cfg` differ.

    A setting missing from config.json (written before the flag existed) counts as its default.
    """
    stored_flat = {}
    for section in stored.values():
        if isinstance(section, dict):
            stored_flat.update(section)
    defaults = {f.name: f.default for klass in SECTIONS.values() for f in dataclasses.fields(klass)}
    out = []
    for name, new in cfg.flat().items():
        if name in IGNORED:
            continue
        old = stored_flat.get(name, defaults[name])
        if old != new:
            out.append(f"--{name}={_show(old)} -> {_show(new)}")
    return out


def _show(value) -> str:
    if isinstance(value, str):
        return value if value else "''"
    return repr(value)


def inspect(cfg: Config, *, schema_version: int) -> WorkdirState:
    """Read-only look at the workdir; raises ConfigError (one line) when the run must not use it."""
    workdir = cfg.run.workdir
    if not workdir or not os.path.isdir(workdir) or cfg.run.overwrite:
        return WorkdirState(workdir, results=None, resumable=False)
    path = os.path.join(workdir, CONFIG_FILE)
    try:
        stored = read_json(path)
    except ValueError:
        raise _flag(workdir, f"{CONFIG_FILE} is unreadable; use --overwrite to start afresh") from None
    if stored is None:
        ours = [name for name in OUTPUTS if os.path.lexists(os.path.join(workdir, name))]
        if ours:
            raise _flag(
                workdir,
                f"holds {', '.join(ours)} but no {CONFIG_FILE} (an interrupted --overwrite, or not made by "
                "frep_tf); use --overwrite to start afresh, or another --workdir",
            )
        return WorkdirState(workdir, results=None, resumable=False)
    if not isinstance(stored, dict):
        raise _flag(workdir, f"{CONFIG_FILE} is not a frep_tf configuration; use --overwrite to start afresh")
    changed = differences(stored, cfg)
    if changed:
        raise _flag(
            workdir,
            f"holds a run made with other settings ({', '.join(changed)}); repeat its flags to resume it, "
            "add --overwrite to start afresh, or choose another --workdir",
        )
    try:
        results = read_json(os.path.join(workdir, RESULTS_FILE))
    except ValueError:
        raise _flag(workdir, f"{RESULTS_FILE} is unreadable; use --overwrite to run again") from None
    if results is not None and not _complete(results, cfg.run.mode, schema_version):
        raise _flag(
            workdir, f"{RESULTS_FILE} is not a complete schema-{schema_version} result; use --overwrite to run again"
        )
    return WorkdirState(workdir, results=results, resumable=True)


def _complete(results, mode: str, schema_version: int) -> bool:
    if not isinstance(results, dict) or results.get("schema_version") != schema_version:
        return False
    if results.get("mode") != mode:
        return False
    needed = ("dataset", "evaluation", "timings") + (("training", "exports", "sparsity") if mode == "train" else ())
    return all(key in results for key in needed)


def prepare(cfg: Config) -> None:
    """Make the workdir ready to be written, once every check has passed.

    Creates it, deletes our outputs under --overwrite, removes what killed runs can leave behind
    (temporaries of atomic writes, export staging), and writes config.json.
    """
    workdir = cfg.run.workdir
    os.makedirs(workdir, exist_ok=True)
    if cfg.run.overwrite:
        for name in OUTPUTS:
            remove(os.path.join(workdir, name))
    _remove_leftovers(workdir)
    write_json_atomic(os.path.join(workdir, CONFIG_FILE), cfg.to_dict())


def tidy_finished(workdir: str) -> None:
    """A finished run killed before it cleaned up: its checkpoint and temporaries go."""
    remove(os.path.join(workdir, CHECKPOINT_DIR))
    _remove_leftovers(workdir)


def _remove_leftovers(workdir: str) -> None:
    """What a kill can leave behind: temporaries of atomic writes and the export staging."""
    for name in os.listdir(workdir):
        leftover = name in (EXPORT_STAGING, EXPORT_PREVIOUS) or any(
            name.startswith(temporary_prefix(f)) for f in (CONFIG_FILE, RESULTS_FILE)
        )
        if leftover:
            remove(os.path.join(workdir, name))


def shared_from(workdir: str) -> str | None:
    """The finished experiment cell a run's workdir was copied from (frep_tf.experiments.share), or None
    if the run was trained there."""
    try:
        data = read_json(os.path.join(workdir, SHARED_FILE))
    except ValueError:
        return None
    return data.get("cell") if isinstance(data, dict) else None
