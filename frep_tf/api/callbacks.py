"""`frep_tf.callbacks(...)`: the temporal ensemble and one-shot (or gradual) global pruning as Keras
callbacks for the user's own `RobustModel.fit`, next to their own learning-rate schedule and callbacks.

main.py builds its ensemble and pruning callbacks through the same function (frep_tf.methods.stages).
Everything these callbacks act on is a variable of the model or a function of `optimizer.iterations`
(masks, the ensemble's weights, `ensemble_updates`, `pruned`; the prune step, the ensemble interval), so
`keras.callbacks.BackupAndRestore` resumes them. Epoch logs get `sparsity` (and `ensemble_updates`), so
History and a TensorBoard callback listed after these record them. With `validation_data`, each epoch
also measures clean and PGD accuracy on it (the network's and the ensemble's) and runs the
catastrophic-overfitting guard (frep_tf.training.overfitting): a collapse prints one warning line.
"""

from __future__ import annotations

import keras
import numpy as np

from frep_tf.training.ensemble import TemporalEnsemble
from frep_tf.training.monitor import EpochMonitor
from frep_tf.training.pruning import GlobalPruning, make_schedule

SCHEDULES = ("oneshot", "gradual")
INTERVAL_FROM = ("global", "decay")


def callbacks(
    *,
    sparsity: float | None = None,
    prune_epoch: int = 0,
    structured: bool = False,
    schedule: str = "oneshot",
    prune_end_epoch: int | None = None,
    min_layer_density: float = 0.0,
    steps_per_epoch: int | None = None,
    ensemble: bool = True,
    ensemble_decay: float = 0.99,
    ensemble_warmup: float = 10.0,
    ensemble_interval: int = 100,
    lr_decay_steps="auto",
    ensemble_interval_from: str = "global",
    ensemble_final_update: bool = True,
    ensemble_restart: bool = False,
    log_dir: str | None = None,
    log_sparsity: bool = True,
    validation_data=None,
    val_pgd_steps: int = 10,
) -> list[keras.callbacks.Callback]:
    """The callbacks for `RobustModel.fit`, in the order they must run: ensemble, pruning, logging.

    Pruning (when `sparsity` is given) keeps the top (1 - sparsity) of the fused weights of every
    reparameterized layer, ranked globally by |w|, at the start of epoch `prune_epoch` (`schedule`
    "oneshot"), or ramps up to it by `prune_end_epoch` ("gradual"); `structured` removes whole output
    channels instead (frep_tf.structure says where it can). The steps per epoch are read from `fit`
    unless `steps_per_epoch` is given. The ensemble (paper Eq. 13) averages the fused weights every
    `ensemble_interval` optimizer steps, an interval that grows x10 at each learning-rate decay:
    `lr_decay_steps` "auto" reads them from a PiecewiseConstantDecay learning rate (none otherwise).
    `log_dir` receives each layer's kept fraction when pruning happens (TensorBoard).
    `validation_data` (x, y), arrays of held-out images and integer labels: after every epoch the
    network and its ensemble are attacked with PGD (`val_pgd_steps` steps of 2.5 eps / steps, at the
    RobustModel's epsilon) and the accuracies go into the epoch logs (`val_pgd_acc`,
    `val_ensemble_pgd_acc`, ...); an epoch whose `val_pgd_acc` collapsed while the training adversarial
    accuracy rose prints a catastrophic-overfitting warning (and, with `log_dir`, is recorded there).
    """
    _check_arguments(locals())
    found: list[keras.callbacks.Callback] = []
    if ensemble:
        found.append(
            Ensemble(
                decay=ensemble_decay,
                warmup=ensemble_warmup,
                interval=ensemble_interval,
                decay_steps=lr_decay_steps,
                count_from=ensemble_interval_from,
                final_update=ensemble_final_update,
            )
        )
    if sparsity is not None:
        found.append(
            Pruning(
                sparsity,
                prune_epoch=prune_epoch,
                schedule=schedule,
                prune_end_epoch=prune_end_epoch,
                steps_per_epoch=steps_per_epoch,
                structured=structured,
                # Restarting the ensemble's warm-up is for a one-shot prune (a gradual one prunes often).
                restart_ensemble=ensemble_restart and schedule == "oneshot",
                min_layer_density=min_layer_density,
                log_dir=log_dir,
            )
        )
    if validation_data is not None:
        x_val, y_val = validation_data
        ensemble_cb = next((c for c in found if isinstance(c, Ensemble)), None)
        found.append(Monitor(x_val, y_val, pgd_steps=val_pgd_steps, log_dir=log_dir, ensemble_callback=ensemble_cb))
    if log_sparsity:
        found.append(SparsityLog())
    return found


def _bad(name: str, value, what: str) -> ValueError:
    return ValueError(f"frep_tf.callbacks: `{name}` {what}. Received: {name}={value!r}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def _check_arguments(a: dict) -> None:
    """One clear error for the first bad argument: what is wrong and what is allowed."""
    s = a["sparsity"]
    if s is not None and not (_is_number(s) and 0 <= s < 1):
        raise _bad("sparsity", s, "must be None (no pruning) or lie in [0, 1)")
    for name in ("structured", "ensemble", "ensemble_final_update", "ensemble_restart", "log_sparsity"):
        if not isinstance(a[name], bool):
            raise _bad(name, a[name], "must be True or False")
    if a["structured"] and s is None:
        raise _bad("sparsity", s, "must be given with structured=True")
    if not (_is_int(a["prune_epoch"]) and a["prune_epoch"] >= 0):
        raise _bad("prune_epoch", a["prune_epoch"], "must be an integer >= 0")
    if a["schedule"] not in SCHEDULES:
        raise _bad("schedule", a["schedule"], f"must be one of {', '.join(SCHEDULES)}")
    end = a["prune_end_epoch"]
    if end is not None and not (_is_int(end) and end > a["prune_epoch"]):
        raise _bad("prune_end_epoch", end, "must be None (halfway from prune_epoch to the last epoch) or > prune_epoch")
    if end is not None and a["schedule"] != "gradual":
        raise _bad("prune_end_epoch", end, "is only for schedule='gradual' (oneshot prunes once)")
    density = a["min_layer_density"]
    if not (_is_number(density) and 0 <= density <= 1 - (s or 0)):
        raise _bad("min_layer_density", density, "must lie in [0, 1 - sparsity]")
    steps = a["steps_per_epoch"]
    if steps is not None and not (_is_int(steps) and steps > 0):
        raise _bad("steps_per_epoch", steps, "must be None (read from fit) or a positive integer")
    if not (_is_number(a["ensemble_decay"]) and 0 <= a["ensemble_decay"] < 1):
        raise _bad("ensemble_decay", a["ensemble_decay"], "must lie in [0, 1)")
    if not (_is_number(a["ensemble_warmup"]) and a["ensemble_warmup"] >= 0):
        raise _bad("ensemble_warmup", a["ensemble_warmup"], "must be a number >= 0")
    if not (_is_int(a["ensemble_interval"]) and a["ensemble_interval"] > 0):
        raise _bad("ensemble_interval", a["ensemble_interval"], "must be a positive integer (optimizer steps)")
    decays = a["lr_decay_steps"]
    if decays != "auto" and not (isinstance(decays, (list, tuple)) and all(_is_int(d) and d > 0 for d in decays)):
        raise _bad("lr_decay_steps", decays, "must be 'auto' or a sequence of positive optimizer steps")
    if a["ensemble_interval_from"] not in INTERVAL_FROM:
        raise _bad("ensemble_interval_from", a["ensemble_interval_from"], f"must be one of {', '.join(INTERVAL_FROM)}")
    data = a["validation_data"]
    if data is not None:
        pair = isinstance(data, (list, tuple)) and len(data) == 2
        shapes = [np.shape(v) for v in data] if pair else []
        if not pair or len(shapes[1]) != 1 or not shapes[0] or shapes[0][0] != shapes[1][0] or not shapes[1][0]:
            raise _bad(
                "validation_data",
                type(data).__name__,
                "must be None or a pair (x, y) of arrays: x images with a leading batch axis, y integer labels "
                "of the same length (at least one)",
            )
    if not (_is_int(a["val_pgd_steps"]) and a["val_pgd_steps"] > 0):
        raise _bad("val_pgd_steps", a["val_pgd_steps"], "must be a positive integer")


def require_robust_model(model) -> None:
    """The model `fit` runs on must be a RobustModel around a reparameterized network."""
    if not all(hasattr(model, a) for a in ("reparam", "ensemble", "ensemble_updates", "pruned")):
        raise TypeError(
            f"frep_tf.callbacks work with frep_tf.RobustModel; fit was called on {type(model).__name__} "
            f"{getattr(model, 'name', '')!r}"
        )
    if not model.reparam:
        raise ValueError(
            "frep_tf.callbacks: the RobustModel's network has no reparameterized layer; "
            "build it with frep_tf.reparameterize(model)"
        )


def lr_decay_steps_of(optimizer) -> tuple[int, ...]:
    """The optimizer steps at which a PiecewiseConstantDecay learning rate drops (none for other schedules).
    The step taken when `iterations` is b + 1 is the first at the new rate, as frep_tf.methods.stages has it."""
    rate = optimizer.get_config().get("learning_rate")
    if isinstance(rate, dict) and rate.get("class_name") == "PiecewiseConstantDecay":
        return tuple(int(b) + 1 for b in rate["config"]["boundaries"])
    return ()


class Monitor(EpochMonitor):
    """EpochMonitor that attacks at the RobustModel's own epsilon (read when `fit` starts)."""

    def __init__(self, x_val, y_val, *, pgd_steps: int, **kwargs):
        super().__init__(x_val, y_val, epsilon=0.0, pgd_steps=pgd_steps, **kwargs)

    def on_train_begin(self, logs=None):
        require_robust_model(self.model)
        self.epsilon = float(self.model.epsilon)
        self.step_size = 2.5 * self.epsilon / self.pgd_steps
        self._fns = {}
        super().on_train_begin(logs)


class Ensemble(TemporalEnsemble):
    """TemporalEnsemble that checks its model and can read the learning-rate decays from the optimizer."""

    def __init__(self, *, decay_steps="auto", **kwargs):
        super().__init__(decay_steps=() if decay_steps == "auto" else decay_steps, **kwargs)
        self.auto_decay_steps = decay_steps == "auto"

    def on_train_begin(self, logs=None):
        require_robust_model(self.model)
        if self.model.ensemble is None:
            raise ValueError(
                "frep_tf.callbacks(ensemble=True) needs RobustModel(..., ensemble=True); or pass ensemble=False"
            )
        if self.auto_decay_steps:
            self.decay_steps = lr_decay_steps_of(self.model.optimizer)
        super().on_train_begin(logs)


class Pruning(GlobalPruning):
    """GlobalPruning whose schedule is given in epochs: turned into optimizer steps as soon as the steps
    per epoch are known (at construction, or when `fit` begins)."""

    def __init__(
        self, sparsity, *, prune_epoch, schedule="oneshot", prune_end_epoch=None, steps_per_epoch=None, **kwargs
    ):
        super().__init__(None, **kwargs)
        self.sparsity, self.prune_epoch, self.kind = float(sparsity), prune_epoch, schedule
        self.prune_end_epoch = prune_end_epoch
        if steps_per_epoch and (schedule == "oneshot" or prune_end_epoch is not None):
            self.schedule = self._schedule(steps_per_epoch, prune_end_epoch or prune_epoch + 1)

    def _schedule(self, steps_per_epoch: int, end_epoch: int):
        begin = self.prune_epoch * steps_per_epoch
        return make_schedule(self.kind, self.sparsity, begin, end_epoch * steps_per_epoch, steps_per_epoch)

    def on_train_begin(self, logs=None):
        require_robust_model(self.model)
        if self.structured:
            from frep_tf.structure import channel_graph, check_structured

            check_structured(channel_graph(self.model.network), [layer.name for layer in self.model.reparam])
        if self.schedule is None:
            steps, epochs = self.params.get("steps"), self.params.get("epochs")
            if not steps:
                raise ValueError(
                    "frep_tf.callbacks: this fit does not say how many steps an epoch has (a dataset of unknown "
                    "length); pass steps_per_epoch= to frep_tf.callbacks"
                )
            end = self.prune_end_epoch or max(self.prune_epoch + 1, (self.prune_epoch + epochs) // 2)
            self.schedule = self._schedule(int(steps), end)


class SparsityLog(keras.callbacks.Callback):
    """Puts the network's `sparsity` (zeros among its fused kernels) and the ensemble's update count into
    the epoch logs, for History and for a TensorBoard callback listed after it."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        model = self.model
        kernels = [np.asarray(layer.fused_kernel()) for layer in getattr(model, "reparam", [])]
        total = sum(k.size for k in kernels)
        logs["sparsity"] = float(sum(int(np.count_nonzero(k == 0)) for k in kernels) / max(total, 1))
        if getattr(model, "ensemble", None) is not None:
            logs["ensemble_updates"] = float(model.ensemble_updates.numpy())
