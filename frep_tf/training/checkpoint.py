"""Epoch checkpoints that survive a kill at any moment: every variable of the model and its optimizer.

    <checkpoint dir>/epoch-00012/variables.npz   model.variables + optimizer.variables, in order
    <checkpoint dir>/epoch-00012/state.json      epochs done, that epoch's logs, the variable list
                                                 (path, shape, dtype) and the sha256 of variables.npz

A checkpoint is written into a temporary directory (".tmp-*"), fsynced, then renamed to its final
name, which is atomic: a directory named epoch-NNNNN is complete. A kill while writing leaves only the
temporary, ignored and deleted next time. Restoring checks the sha256 and the variable list, so a
damaged file or a checkpoint of another model is reported (CheckpointError), never loaded.

This plays the part of keras.callbacks.BackupAndRestore, which does not fit here (Keras
3.15): its weights file leaves out SeedGenerator states (RobustModel's perturbation RNG would restart);
it writes the weights in place and the epoch number after them, so a kill in between leaves epoch k+1
weights labelled epoch k, a checkpoint that loads as valid but is wrong; it deletes the backup when
`fit` returns, so a kill during export would retrain from scratch; and the input stream must know
the epoch to start from before `fit` begins.

What survives therefore is exactly the model's variables (factors, masks, BatchNorm statistics, the
ensemble, `ensemble_updates`, `pruned`, the perturbation seed) and the optimizer's (iterations,
momentum). Callbacks keep no state of their own that matters: the ensemble interval, the learning
rate and the pruning schedule are functions of `optimizer.iterations`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile

import keras
import numpy as np

from frep_tf import kill_points
from frep_tf.io_utils import fsync_dir

FORMAT_VERSION = 1
VARIABLES_FILE = "variables.npz"
STATE_FILE = "state.json"
_NAME = re.compile(r"^epoch-(\d{5,})$")
_TEMPORARY_PREFIX = ".tmp-"


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored (damaged, or written by another model); one line."""


@dataclasses.dataclass(frozen=True)
class Restored:
    path: str
    epoch: int  # epochs completed
    logs: dict[str, float]  # the logs of that last epoch (what History recorded)
    extra: dict = dataclasses.field(default_factory=dict)  # the pipeline's own record (stage clock)


def checkpoint_name(epoch: int) -> str:
    return f"epoch-{epoch:05d}"


def tracked_variables(model) -> list:
    """Everything a resumed run needs, in a fixed order. The optimizer must be built."""
    return list(model.variables) + list(model.optimizer.variables)


def _describe(model) -> list[list]:
    """[name, shape, dtype] per tracked variable. Optimizer variables are named without the
    optimizer's own name, which Keras numbers per process (sgd, sgd_1, ...)."""
    own = [[v.path, list(v.shape), str(v.dtype)] for v in model.variables]
    optimizer = [[v.path.split("/", 1)[-1], list(v.shape), str(v.dtype)] for v in model.optimizer.variables]
    return [[name, [int(d) for d in shape], dtype] for name, shape, dtype in own + optimizer]


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save(model, directory: str, epoch: int, logs: dict | None = None, extra: dict | None = None) -> str:
    """Write checkpoint `epoch` (epochs completed) into `directory`; returns its path."""
    os.makedirs(directory, exist_ok=True)
    variables = tracked_variables(model)
    work = tempfile.mkdtemp(prefix=_TEMPORARY_PREFIX, dir=directory)
    try:
        npz = os.path.join(work, VARIABLES_FILE)
        with open(npz, "wb") as fh:
            np.savez(fh, **{f"v{i:05d}": np.asarray(v) for i, v in enumerate(variables)})
            fh.flush()
            os.fsync(fh.fileno())
        state = {
            "format": FORMAT_VERSION,
            "epoch": int(epoch),
            "logs": _scalars(logs or {}),
            "variables": _describe(model),
            "sha256": _sha256(npz),
            "extra": extra or {},
        }
        with open(os.path.join(work, STATE_FILE), "w") as fh:
            json.dump(state, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(work)
        kill_points.kill_point("checkpoint")
        final = os.path.join(directory, checkpoint_name(epoch))
        if os.path.exists(final):  # left by an earlier attempt at this epoch: replaced as a whole
            shutil.rmtree(final)
        os.replace(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    fsync_dir(directory)
    return final


def _scalars(logs: dict) -> dict[str, float]:
    out = {}
    for key, value in logs.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue  # not a scalar: not part of the per-epoch record
    return out


def complete(directory: str) -> list[str]:
    """Paths of the complete checkpoints in `directory`, oldest first."""
    if not os.path.isdir(directory):
        return []
    found = sorted((int(m.group(1)), name) for name in os.listdir(directory) if (m := _NAME.match(name)))
    return [os.path.join(directory, name) for _, name in found]


def latest(directory: str) -> str | None:
    paths = complete(directory)
    return paths[-1] if paths else None


def prune_others(directory: str, keep: str | None) -> None:
    """Delete temporaries of interrupted writes and every complete checkpoint but `keep`."""
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if (name.startswith(_TEMPORARY_PREFIX) or _NAME.match(name)) and path != keep:
            shutil.rmtree(path, ignore_errors=True)


def read_state(path: str) -> dict:
    """state.json of checkpoint `path`, with variables.npz verified against its sha256."""
    name = os.path.basename(path)
    state_path = os.path.join(path, STATE_FILE)
    npz = os.path.join(path, VARIABLES_FILE)
    try:
        with open(state_path) as fh:
            state = json.load(fh)
        epoch, recorded, expected = state["epoch"], state["variables"], state["sha256"]
        if state.get("format") != FORMAT_VERSION or not isinstance(epoch, int) or not isinstance(recorded, list):
            raise ValueError("unexpected contents")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{name}/{STATE_FILE} is damaged or unreadable ({type(exc).__name__})") from exc
    try:
        actual = _sha256(npz)
    except OSError as exc:
        raise CheckpointError(f"{name}/{VARIABLES_FILE} is missing or unreadable ({type(exc).__name__})") from exc
    if actual != expected:
        raise CheckpointError(f"{name}/{VARIABLES_FILE} is damaged (its sha256 does not match {STATE_FILE})")
    return state


def restore(model, path: str) -> Restored:
    """Load checkpoint `path` into `model` (built, with its optimizer built). Raises CheckpointError."""
    name = os.path.basename(path)
    state = read_state(path)
    variables = tracked_variables(model)
    recorded, current = state["variables"], _describe(model)
    if len(recorded) != len(current):
        raise CheckpointError(
            f"{name} holds {len(recorded)} variables, this model has {len(current)}: written by another model"
        )
    for i, (old, new) in enumerate(zip(recorded, current, strict=True)):
        if old != new:
            raise CheckpointError(
                f"{name} was written by another model: variable {i} is {old[0]} {tuple(old[1])} {old[2]} there, "
                f"{new[0]} {tuple(new[1])} {new[2]} here"
            )
    try:
        with np.load(os.path.join(path, VARIABLES_FILE), allow_pickle=False) as arrays:
            values = [arrays[f"v{i:05d}"] for i in range(len(variables))]
    except Exception as exc:  # zip and npy format errors of a file whose checksum matched
        raise CheckpointError(f"{name}/{VARIABLES_FILE} cannot be read ({type(exc).__name__})") from exc
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)
    logs = {k: float(v) for k, v in state.get("logs", {}).items() if isinstance(v, (int, float))}
    extra = state.get("extra") if isinstance(state.get("extra"), dict) else {}
    return Restored(path=path, epoch=int(state["epoch"]), logs=logs, extra=extra)


class EpochCheckpoint(keras.callbacks.Callback):
    """Writes a checkpoint at the end of every epoch and keeps only the newest one.

    Put it last among the callbacks: at epoch end the others have finished (the monitor has added
    its values to `logs`, TensorBoard has written the epoch, the non-finite-loss guard has had its
    say), so the checkpoint is the whole epoch and never a diverged one.
    """

    def __init__(self, directory: str, extra=None):
        super().__init__()
        self.directory = directory
        self.extra = extra  # a function returning a JSON-able dict stored with each checkpoint
        self.last_logs: dict[str, float] = {}

    def on_epoch_end(self, epoch, logs=None):
        path = save(self.model, self.directory, epoch + 1, logs, self.extra() if self.extra else None)
        prune_others(self.directory, keep=path)
        self.last_logs = _scalars(logs or {})
