"""Temporal ensemble (paper Eq. 13): an EMA of the fused weights, every `interval` optimizer steps.

W_TE = tau * W_TE + (1 - tau) * W,  tau = min(tau0, i / (i + c)),  i = ensemble updates so far.
The interval is multiplied by `growth` (10) at each learning-rate decay: late in training successive
models are near-identical, and averaging them too often makes the ensemble collapse onto the current
model (paper Fig. 5). All state is in model variables (`ensemble_updates`, the ensemble weights) or is a
function of `optimizer.iterations`, so a restored checkpoint resumes the ensemble exactly.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def interval_at(step: int, base: int, decay_steps: tuple[int, ...], growth: int = 10) -> int:
    """Ensemble interval at optimizer step `step`: base * growth ** (lr decays passed)."""
    return base * growth ** sum(step >= b for b in decay_steps)


def is_update_step(
    step: int, base: int, decay_steps: tuple[int, ...], growth: int = 10, count_from: str = "global"
) -> bool:
    """Whether the ensemble is updated after optimizer step `step`.

    "global": step % interval == 0 (the paper's text read literally; with the paper's schedule there is no
    update in the last 15 epochs). "decay": the interval is counted from the last learning-rate decay.
    """
    if step <= 0:
        return False
    interval = interval_at(step, base, decay_steps, growth)
    if count_from == "decay":
        start = max([0] + [b for b in decay_steps if step >= b])
        return (step - start) % interval == 0
    return step % interval == 0


def tau_at(updates: int, tau0: float, warmup: float) -> float:
    return min(tau0, updates / (updates + warmup)) if updates + warmup > 0 else tau0


class TemporalEnsemble(keras.callbacks.Callback):
    def __init__(
        self,
        *,
        decay: float,
        warmup: float,
        interval: int,
        decay_steps=(),
        growth: int = 10,
        count_from: str = "global",
        final_update: bool = False,
    ):
        super().__init__()
        self.count_from = count_from
        self.final_update = final_update
        self.decay = decay
        self.warmup = warmup
        self.interval = interval
        self.decay_steps = tuple(decay_steps)
        self.growth = growth
        self._update = None
        self._updated_model = None

    def on_train_begin(self, logs=None):
        if self._update is not None and self._updated_model is self.model:
            return  # another `fit` of the same model: its update function is built (and traced) already
        pairs = self.model.ensemble_pairs()

        @tf.function
        def update(tau):
            for var, source in pairs:
                var.assign(tau * var + (1.0 - tau) * tf.cast(source(), var.dtype))

        self._update, self._updated_model = update, self.model

    def current_interval(self) -> int:
        return interval_at(int(self.model.optimizer.iterations.numpy()), self.interval, self.decay_steps, self.growth)

    def on_train_batch_end(self, batch, logs=None):
        if self.model.ensemble is None:
            return
        step = int(self.model.optimizer.iterations.numpy())
        if not is_update_step(step, self.interval, self.decay_steps, self.growth, self.count_from):
            return
        self.apply_update()

    def on_epoch_end(self, epoch, logs=None):
        # The last epoch ends with an update (unless its last step was one): before the checkpoint, so a
        # resumed run has it too.
        if not self.final_update or self.model.ensemble is None or epoch != self.params.get("epochs", 0) - 1:
            return
        step = int(self.model.optimizer.iterations.numpy())
        if not is_update_step(step, self.interval, self.decay_steps, self.growth, self.count_from):
            self.apply_update()

    def apply_update(self) -> None:
        """One update of the ensemble, with tau from the updates so far (`fit` calls it at the update steps;
        --mode=cost once before it times steps, so that the update's first run, which traces it, is not
        timed)."""
        updates = int(self.model.ensemble_updates.numpy())
        self._update(tf.constant(tau_at(updates, self.decay, self.warmup), tf.float32))
        self.model.ensemble_updates.assign_add(1)
