"""Per-epoch monitoring for TensorBoard: robustness of the model and of the ensemble on the validation
split (never the test set), ensemble divergence Delta (paper Eq. 14), sparsity, learning rate, ensemble
interval and histograms of the fused kernels.

The values are also put into the epoch `logs`, so Keras' History and TensorBoard callbacks (which run
after this one) record them as well. The catastrophic-overfitting guard (frep_tf.training.overfitting) runs
on the validation PGD accuracy and the epoch's training adversarial accuracy; its inputs and its flag go
to TensorBoard only (`train_adv_acc`, `catastrophic_overfitting`), a flagged epoch also prints one
warning line on stderr.
"""

from __future__ import annotations

import sys

import keras
import numpy as np
import tensorflow as tf

from frep_tf.attacks.pgd import pgd
from frep_tf.training import overfitting
from frep_tf.training.ensemble import TemporalEnsemble


class EpochMonitor(keras.callbacks.Callback):
    def __init__(
        self,
        x_val: np.ndarray,
        y_val: np.ndarray,
        *,
        epsilon: float,
        pgd_steps: int,
        log_dir: str | None,
        ensemble_callback: TemporalEnsemble | None = None,
        batch_size: int = 256,
        seed: int = 0,
        histogram_every: int = 5,
    ):
        super().__init__()
        self.x_val = np.asarray(x_val, np.float32)
        self.y_val = np.asarray(y_val, np.int32)
        self.epsilon = epsilon
        self.pgd_steps = pgd_steps
        self.step_size = 2.5 * epsilon / pgd_steps  # the usual PGD-k step (Madry et al.)
        self.log_dir = log_dir
        self.ensemble_callback = ensemble_callback
        self.batch_size = batch_size
        self.seed = seed
        self.histogram_every = histogram_every
        self._writer = None
        self._fns = {}
        self.guard = overfitting.CatastrophicOverfittingGuard(history=self._recorded if log_dir else None)
        self.collapses: list[overfitting.Collapse] = []

    def _recorded(self) -> dict:
        """The scalars earlier processes and stages wrote to log_dir ({} if they cannot be read)."""
        from frep_tf.experiments.tb_events import EventFileError, read_scalars

        try:
            return read_scalars(self.log_dir)
        except (EventFileError, OSError):
            return {}

    def _robust_fn(self, net):
        key = id(net)
        if key not in self._fns:
            model_fn = lambda x: net(x, training=False)  # noqa: E731

            @tf.function(reduce_retracing=True)
            def evaluate(x, y):
                logits = model_fn(x)
                clean = tf.argmax(logits, -1, output_type=tf.int32) == y
                x_adv = pgd(
                    model_fn, x, y, eps=self.epsilon, steps=self.pgd_steps, step_size=self.step_size, seed=self.seed
                )
                robust = tf.argmax(model_fn(x_adv), -1, output_type=tf.int32) == y
                return clean, robust & clean, tf.nn.softmax(logits)

            self._fns[key] = evaluate
        return self._fns[key]

    def _measure(self, net):
        fn = self._robust_fn(net)
        clean, robust, probs = [], [], []
        for i in range(0, len(self.x_val), self.batch_size):
            c, r, p = fn(
                tf.constant(self.x_val[i : i + self.batch_size]), tf.constant(self.y_val[i : i + self.batch_size])
            )
            clean.append(c.numpy())
            robust.append(r.numpy())
            probs.append(p.numpy())
        return float(np.mean(np.concatenate(clean))), float(np.mean(np.concatenate(robust))), np.concatenate(probs)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        model = self.model
        values = {}
        if len(self.x_val):
            clean, robust, probs = self._measure(model.network)
            values.update(val_clean_acc=clean, val_pgd_acc=robust)
            if model.ensemble is not None:
                e_clean, e_robust, e_probs = self._measure(model.ensemble)
                delta = float(np.mean(np.sum(np.square(e_probs - probs), axis=-1)))
                values.update(val_ensemble_clean_acc=e_clean, val_ensemble_pgd_acc=e_robust, ensemble_delta=delta)
        kernels = [np.asarray(layer.fused_kernel()) for layer in model.reparam]
        total = sum(k.size for k in kernels)
        values["sparsity"] = float(sum(int(np.sum(k == 0)) for k in kernels) / max(total, 1))
        # Share of fused weights below 1e-3 of the largest: how prunable the network already is.
        peak = max(float(np.abs(k).max()) for k in kernels)
        values["near_zero_fraction"] = float(sum(int(np.sum(np.abs(k) < 1e-3 * peak)) for k in kernels) / total)
        lr = model.optimizer.learning_rate
        values["learning_rate"] = float(np.asarray(lr))
        if self.ensemble_callback is not None and model.ensemble is not None:
            values["ensemble_interval"] = float(self.ensemble_callback.current_interval())
            values["ensemble_updates"] = float(model.ensemble_updates.numpy())
        logs.update(values)
        guard_values = self._guard(epoch, values.get("val_pgd_acc"), logs.get("adv_acc"))
        if self.log_dir:
            if self._writer is None:
                self._writer = tf.summary.create_file_writer(self.log_dir)
            with self._writer.as_default(step=epoch):
                for name, value in (values | guard_values).items():
                    tf.summary.scalar(name, value)
                if epoch % self.histogram_every == 0 or epoch == self.params.get("epochs", 0) - 1:
                    for layer, k in zip(model.reparam, kernels, strict=True):
                        tf.summary.histogram(f"fused_kernel/{layer.name}", k)
            self._writer.flush()

    def _guard(self, epoch: int, val_pgd, adv_acc) -> dict:
        """The guard's TensorBoard scalars for this epoch ({} without both accuracies: natural training,
        no validation split); a flagged epoch prints its warning."""
        if val_pgd is None or adv_acc is None:
            return {}
        collapse = self.guard.update(epoch, float(val_pgd), float(adv_acc))
        if collapse is not None:
            self.collapses.append(collapse)
            print(collapse.message(), file=sys.stderr, flush=True)
        return {overfitting.ADV_ACC_TAG: float(adv_acc), overfitting.FLAG_TAG: float(collapse is not None)}

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
