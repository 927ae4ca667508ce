"""Guards on training.

Stop training when the loss stops being a number, before a diverged model is checkpointed: Keras'
TerminateOnNaN only sets `stop_training`, after which `fit` still runs validation and the epoch-end
callbacks: the checkpoint of a NaN model would replace the last good one. Raising from the batch
callback ends `fit` at once, so the newest checkpoint stays the last finite epoch.

Flag catastrophic overfitting (below): a warning line, a TensorBoard scalar and a results.json entry;
training goes on.
"""

from __future__ import annotations

import dataclasses
import math

import keras


class NonFiniteLossError(RuntimeError):
    """Training diverged (NaN or Inf loss); the message is one line."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            step = int(self.model.optimizer.iterations.numpy())
            raise NonFiniteLossError(
                f"training diverged: the loss is {float(loss)} in epoch {self._epoch + 1}, "
                f"batch {batch + 1} (optimizer step {step})"
            )

    def on_epoch_end(self, epoch, logs=None):
        # Validation can overflow even when the running training loss has not (yet).
        for key, value in (logs or {}).items():
            if key.endswith("loss") and not math.isfinite(float(value)):
                raise NonFiniteLossError(f"training diverged: {key} is {float(value)} after epoch {epoch + 1}")


# -- catastrophic overfitting ------------------------------------------------------------------------
# Single-step adversarial training can collapse within an epoch (Wong et al. 2020, "Fast is better than
# free"; de Jorge et al. 2022, N-FGSM): the model learns to defeat its own one-step perturbation, its
# accuracy on it jumps, and its robustness to a multi-step attack falls to near zero. The guard flags an
# epoch whose validation PGD accuracy lost at least COLLAPSE_RELATIVE_DROP of the previous epoch's and at
# least COLLAPSE_MIN_DROP absolute, while the training adversarial accuracy rose. The relative part is
# scale-free (a collapse takes most of the robustness, whatever the dataset's level); the absolute floor
# keeps a few validation images from flagging a model with little robustness to lose (docs/outputs.md).
COLLAPSE_RELATIVE_DROP = 0.5
COLLAPSE_MIN_DROP = 0.1


@dataclasses.dataclass(frozen=True)
class Collapse:
    """One flagged epoch (1-based, as Keras prints it): validation PGD and training adversarial accuracy
    of the epoch before and of this one."""

    epoch: int
    val_pgd_before: float
    val_pgd_after: float
    adv_acc_before: float
    adv_acc_after: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def message(self) -> str:
        return (
            f"[frep_tf] warning: catastrophic overfitting? after epoch {self.epoch} the validation PGD accuracy "
            f"fell from {100 * self.val_pgd_before:.1f} % to {100 * self.val_pgd_after:.1f} % while the training "
            f"adversarial accuracy rose from {100 * self.adv_acc_before:.1f} % to {100 * self.adv_acc_after:.1f} % "
            "(TensorBoard tb/frep catastrophic_overfitting, results.json catastrophic_overfitting)"
        )


def collapsed(val_pgd_before: float, val_pgd_after: float, adv_acc_before: float, adv_acc_after: float) -> bool:
    """The guard's rule for two consecutive epochs."""
    drop = val_pgd_before - val_pgd_after
    return (
        drop >= COLLAPSE_MIN_DROP and drop >= COLLAPSE_RELATIVE_DROP * val_pgd_before and adv_acc_after > adv_acc_before
    )


def collapses(val_pgd: dict[int, float], adv_acc: dict[int, float]) -> list[Collapse]:
    """Every flagged epoch of per-epoch histories keyed by 0-based epoch (TensorBoard's steps), in order;
    an epoch is compared with the one before it only when both have both values."""
    found = []
    for epoch in sorted(val_pgd):
        before = epoch - 1
        if before not in val_pgd or epoch not in adv_acc or before not in adv_acc:
            continue
        values = (val_pgd[before], val_pgd[epoch], adv_acc[before], adv_acc[epoch])
        if collapsed(*values):
            found.append(Collapse(epoch + 1, *(float(v) for v in values)))
    return found


def collapse_record(val_pgd: dict[int, float], adv_acc: dict[int, float]) -> dict | None:
    """results.json `catastrophic_overfitting`: the first flagged epoch and how many were flagged, or None."""
    found = collapses(val_pgd, adv_acc)
    if not found:
        return None
    return found[0].to_dict() | {"flagged_epochs": [c.epoch for c in found]}


class CatastrophicOverfittingGuard:
    """The rule applied epoch by epoch (frep_tf.training.monitor.EpochMonitor feeds it): `update` returns
    the Collapse an epoch is, or None. The epoch before the first one it sees comes from `history`, a
    function returning {tag: {epoch: value}} of what earlier processes and stages recorded (TensorBoard),
    read once, so a resumed run or a later stage compares its first epoch too."""

    def __init__(self, history=None):
        self._history = history
        self._val_pgd: dict[int, float] = {}
        self._adv_acc: dict[int, float] = {}
        self._loaded = history is None

    def _load(self) -> None:
        self._loaded = True
        recorded = self._history() or {}
        # What this process recorded itself wins over the record.
        self._val_pgd = {**recorded.get(VAL_PGD_TAG, {}), **self._val_pgd}
        self._adv_acc = {**recorded.get(ADV_ACC_TAG, {}), **self._adv_acc}

    def update(self, epoch: int, val_pgd: float, adv_acc: float) -> Collapse | None:
        """`epoch` 0-based."""
        if not self._loaded and (epoch - 1) not in self._val_pgd:
            self._load()
        self._val_pgd[epoch], self._adv_acc[epoch] = float(val_pgd), float(adv_acc)
        before = epoch - 1
        if before not in self._val_pgd or before not in self._adv_acc:
            return None
        values = (self._val_pgd[before], val_pgd, self._adv_acc[before], adv_acc)
        return Collapse(epoch + 1, *(float(v) for v in values)) if collapsed(*values) else None


# The TensorBoard scalars (tb/frep) the guard reads and writes, per epoch.
VAL_PGD_TAG = "val_pgd_acc"
ADV_ACC_TAG = "train_adv_acc"
FLAG_TAG = "catastrophic_overfitting"
