"""The catastrophic-overfitting guard: which epochs of a run's per-epoch history collapsed, and the same
rule applied epoch by epoch during training (frep_tf.training.monitor.EpochMonitor feeds it; a flagged
epoch prints a warning line, writes a TensorBoard scalar and a results.json entry; training goes on).
Plain Python, no TensorFlow: the experiment report applies the rule to committed scalars too."""

from __future__ import annotations

import dataclasses

# -- catastrophic overfitting ------------------------------------------------------------------------
# Single-step adversarial training can collapse (Wong et al. 2020, "Fast is better than free"; de Jorge et
# al. 2022, N-FGSM): the model learns to defeat its own one-step perturbation, its accuracy on it climbs,
# and its robustness to a multi-step attack falls towards zero, within one epoch or over several. The
# guard compares each epoch with the best one so far (the highest validation PGD accuracy of the epochs
# before it): an epoch is collapsed when its validation PGD accuracy has lost at least
# COLLAPSE_RELATIVE_DROP of that best and at least COLLAPSE_MIN_DROP absolute, while its training
# adversarial accuracy is above the best epoch's. The first collapsed epoch of a run of collapsed epochs is
# flagged (one warning per collapse, not one per epoch). The relative part is scale-free (a collapse takes
# most of the robustness, whatever the dataset's level); the absolute floor keeps a few validation images
# from flagging a model with little robustness to lose; the training accuracy tells a collapse from a drop
# both share (a one-shot prune, a new stage). Comparing with the best rather than with the epoch before
# also catches a collapse spread over several epochs (docs/design_notes.md: measured).
COLLAPSE_RELATIVE_DROP = 0.5
COLLAPSE_MIN_DROP = 0.1


@dataclasses.dataclass(frozen=True)
class Collapse:
    """One flagged epoch (1-based, as Keras prints it): validation PGD and training adversarial accuracy
    of the best epoch before it (`best_epoch`, 1-based) and of this one."""

    epoch: int
    val_pgd_before: float
    val_pgd_after: float
    adv_acc_before: float
    adv_acc_after: float
    best_epoch: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def message(self) -> str:
        return (
            f"[frep_tf] warning: catastrophic overfitting? after epoch {self.epoch} the validation PGD accuracy "
            f"fell from {100 * self.val_pgd_before:.1f} % (epoch {self.best_epoch}, the best so far) to "
            f"{100 * self.val_pgd_after:.1f} % while the training adversarial accuracy rose from "
            f"{100 * self.adv_acc_before:.1f} % to {100 * self.adv_acc_after:.1f} % "
            "(TensorBoard tb/frep catastrophic_overfitting, results.json catastrophic_overfitting)"
        )


def collapsed(val_pgd_best: float, val_pgd: float, adv_acc_best: float, adv_acc: float) -> bool:
    """The guard's rule for an epoch against the best epoch before it."""
    drop = val_pgd_best - val_pgd
    return drop >= COLLAPSE_MIN_DROP and drop >= COLLAPSE_RELATIVE_DROP * val_pgd_best and adv_acc > adv_acc_best


def collapses(val_pgd: dict[int, float], adv_acc: dict[int, float]) -> list[Collapse]:
    """Every flagged epoch of per-epoch histories keyed by 0-based epoch (TensorBoard's steps), in order.
    Epochs without both values are left out; an epoch is flagged when it is collapsed and the epoch before
    it (the one measured before it) was not."""
    found = []
    best = None  # the 0-based epoch with the highest validation PGD accuracy so far (the first on a tie)
    was_collapsed = False
    for epoch in sorted(e for e in val_pgd if e in adv_acc):
        now = best is not None and collapsed(val_pgd[best], val_pgd[epoch], adv_acc[best], adv_acc[epoch])
        if now and not was_collapsed:
            values = (val_pgd[best], val_pgd[epoch], adv_acc[best], adv_acc[epoch])
            found.append(Collapse(epoch + 1, *(float(v) for v in values), best + 1))
        was_collapsed = now
        if best is None or val_pgd[epoch] > val_pgd[best]:
            best = epoch
    return found


def collapse_record(val_pgd: dict[int, float], adv_acc: dict[int, float]) -> dict | None:
    """results.json `catastrophic_overfitting`: the first flagged epoch and how many were flagged, or None."""
    found = collapses(val_pgd, adv_acc)
    if not found:
        return None
    return found[0].to_dict() | {"flagged_epochs": [c.epoch for c in found]}


class CatastrophicOverfittingGuard:
    """The rule applied epoch by epoch (frep_tf.training.monitor.EpochMonitor feeds it): `update` returns
    the Collapse an epoch is, or None. The epochs before the first one it sees come from `history`, a
    function returning {tag: {epoch: value}} of what earlier processes and stages recorded (TensorBoard),
    read once, so a resumed run or a later stage compares its first epoch with the whole run before it."""

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
        if not self._loaded:
            self._load()
        self._val_pgd[epoch], self._adv_acc[epoch] = float(val_pgd), float(adv_acc)
        # The record may hold epochs after this one (a rerun over an earlier record): judge this epoch on
        # what came before it.
        before = {e: v for e, v in self._val_pgd.items() if e <= epoch}
        return next((c for c in collapses(before, self._adv_acc) if c.epoch == epoch + 1), None)


# The TensorBoard scalars (tb/frep) the guard reads and writes, per epoch.
VAL_PGD_TAG = "val_pgd_acc"
ADV_ACC_TAG = "train_adv_acc"
FLAG_TAG = "catastrophic_overfitting"
