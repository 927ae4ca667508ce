"""Guards on training.

Stop training when the loss stops being a number, before a diverged model is checkpointed: Keras'
TerminateOnNaN only sets `stop_training`, after which `fit` still runs validation and the epoch-end
callbacks: the checkpoint of a NaN model would replace the last good one. Raising from the batch
callback ends `fit` at once, so the newest checkpoint stays the last finite epoch.

Catastrophic overfitting is flagged, not stopped: frep_tf.training.overfitting.
"""

from __future__ import annotations

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
