"""ADMM robustness-aware pruning (Ye et al., ICCV 2019; yeshaokai/Robustness-Aware-Pruning-ADMM).

The ADMM stage minimises CE_adv + sum_l rho_l / 2 ||W_l - Z_l + U_l||^2 over the weights, and every
`admm_epoch` epochs (not at epoch 0) does, per layer and in this order, as the original's
`admm_update` with `multi_rho`:

    rho <- rho_factor * rho;   Z <- proj(W + U);   U <- U + W - Z

where proj keeps the per-layer top-k |.| entries (values unchanged). The state starts at the first
epoch of the stage with Z = proj(W), U = 0. After the stage, `hard_prune` sets per-layer masks from
|W| (the original's `masking`, which ranks W, not Z) and masked retraining follows.
Every prunable kernel is pruned, conv and dense, each at the target rate (`admm_layers`). The
original's CIFAR configs list conv weights only and leave the classifier dense; here the classifier is
pruned too, so the exported model keeps exactly the same number of weights over the same kernels as
every other method at the same --sparsity (a dense head would let ADMM keep more weights; on a model
made of dense layers, such as the MLP, ADMM would prune nothing at all).

Z, U, rho and the update count are non-trainable variables of `ADMMState`, a Keras layer: attached to
the trained model, checkpoints carry them, and `catch_up` is idempotent, so a resumed stage neither
repeats nor skips an update.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from frep_tf.config import Config
from frep_tf.layers.reparam import ReparamConv2D, ReparamDense
from frep_tf.methods import masks as masks_lib
from frep_tf.methods.base import Method, Stage, StepHook, pretrain_then, staged_epochs


def admm_layers(layers) -> list:
    """The layers ADMM prunes: every prunable layer, conv and dense (see the module docstring)."""
    return [layer for layer in layers if isinstance(layer, (ReparamConv2D, ReparamDense))]


def project(values, keep: int):
    """Euclidean projection onto tensors with at most `keep` non-zeros: keep the top-k |values|."""
    values = tf.convert_to_tensor(values)
    return values * masks_lib.topk_mask(tf.abs(values), keep)


@keras.saving.register_keras_serializable(package="frep_tf")
class ADMMState(keras.layers.Layer):
    """Z, U and rho of every pruned layer, and how many ADMM updates have been done."""

    def __init__(
        self,
        kernel_shapes,
        sparsity: float,
        *,
        rho: float = 1e-3,
        rho_factor: float = 1.3,
        admm_epoch: int = 20,
        layer_names=None,
        **kwargs,
    ):
        super().__init__(trainable=False, **kwargs)
        self.kernel_shapes = [tuple(int(d) for d in s) for s in kernel_shapes]
        self.sparsity = masks_lib.check_sparsity(sparsity)
        if not rho > 0 or not rho_factor > 0:
            raise ValueError(f"`rho` and `rho_factor` must be > 0. Received: rho={rho!r}, rho_factor={rho_factor!r}")
        if isinstance(admm_epoch, bool) or not isinstance(admm_epoch, int) or admm_epoch <= 0:
            raise ValueError(f"`admm_epoch` must be a positive integer. Received: admm_epoch={admm_epoch!r}")
        self.rho0 = float(rho)
        self.rho_factor = float(rho_factor)
        self.admm_epoch = admm_epoch
        names = layer_names or [f"layer{i}" for i in range(len(self.kernel_shapes))]
        if len(names) != len(self.kernel_shapes):
            raise ValueError(f"One name per kernel. Received: layer_names={layer_names!r}")
        self.layer_names = list(names)
        self.keeps = [masks_lib.keep_count(_size(s), self.sparsity) for s in self.kernel_shapes]
        self.z = [self._state(f"z_{n}", s) for n, s in zip(self.layer_names, self.kernel_shapes, strict=True)]
        self.u = [self._state(f"u_{n}", s) for n, s in zip(self.layer_names, self.kernel_shapes, strict=True)]
        self.rho = self.add_weight(
            name="rho",
            shape=(len(self.kernel_shapes),),
            initializer=keras.initializers.Constant(self.rho0),
            trainable=False,
        )
        self.updates = self.add_weight(name="updates", shape=(), dtype="int64", initializer="zeros", trainable=False)
        self.initialized = self.add_weight(
            name="initialized", shape=(), dtype="bool", initializer="zeros", trainable=False
        )
        self.built = True

    @classmethod
    def for_layers(cls, layers, sparsity: float, **kwargs) -> ADMMState:
        return cls(
            [tuple(layer.mask.shape) for layer in layers],
            sparsity,
            layer_names=[layer.name for layer in layers],
            **kwargs,
        )

    def _state(self, name, shape):
        return self.add_weight(name=name, shape=shape, initializer="zeros", trainable=False)

    # -- the algorithm -------------------------------------------------------------------------
    def initialize(self, kernels) -> None:
        """Z = proj(W), U = 0, rho = rho0 (the start of the ADMM stage)."""
        for z, u, w, keep in zip(self.z, self.u, kernels, self.keeps, strict=True):
            z.assign(project(w, keep))
            u.assign(tf.zeros_like(u))
        self.rho.assign(tf.fill(self.rho.shape, self.rho0))
        self.updates.assign(0)
        self.initialized.assign(True)

    def update(self, kernels) -> None:
        """One ADMM update: rho *= rho_factor, Z = proj(W + U), U = U + W - Z."""
        self.rho.assign(self.rho * self.rho_factor)
        for z, u, w, keep in zip(self.z, self.u, kernels, self.keeps, strict=True):
            w = tf.convert_to_tensor(w)
            z.assign(project(w + u, keep))
            u.assign(u + w - z)
        self.updates.assign_add(1)

    def catch_up(self, epoch: int, kernels_fn) -> None:
        """At the start of stage epoch `epoch` (0-based): initialise once, then do the updates that are
        due (one at every positive multiple of `admm_epoch`). Safe to call again after a resume."""
        if not bool(self.initialized.numpy()):
            self.initialize(kernels_fn())
        while int(self.updates.numpy()) < epoch // self.admm_epoch:
            self.update(kernels_fn())

    def penalty(self, kernels):
        """sum_l rho_l / 2 * ||W_l - Z_l + U_l||^2 (a scalar tensor, differentiable in the kernels).

        Add it to the per-replica loss divided by the number of replicas, like the data term, when
        gradients are summed across replicas."""
        terms = [
            0.5 * self.rho[i] * tf.reduce_sum(tf.square(tf.convert_to_tensor(w) - self.z[i] + self.u[i]))
            for i, w in enumerate(kernels)
        ]
        return tf.add_n(terms) if terms else tf.constant(0.0)

    def get_config(self):
        config = super().get_config()
        config.pop("trainable", None)
        config.update(
            kernel_shapes=self.kernel_shapes,
            sparsity=self.sparsity,
            rho=self.rho0,
            rho_factor=self.rho_factor,
            admm_epoch=self.admm_epoch,
            layer_names=self.layer_names,
        )
        return config


class ADMMUpdates(keras.callbacks.Callback):
    """Drives `ADMMState.catch_up` from fit; keeps no state of its own (it is all in the variables)."""

    def __init__(self, state: ADMMState, layers, first_epoch: int = 0):
        super().__init__()
        self.state = state
        self.layers = list(layers)
        self.first_epoch = first_epoch  # the stage's first epoch in fit's (global) numbering

    def on_epoch_begin(self, epoch, logs=None):
        self.state.catch_up(epoch - self.first_epoch, lambda: masks_lib.kernels(self.layers))


def hard_prune(layers, sparsity: float) -> list:
    """Per-layer top-k |W| masks (exact count per layer), applied to the layers; returns the masks."""
    found = []
    for layer in layers:
        w = tf.abs(layer.fused_kernel())
        found.append(masks_lib.topk_mask(w, masks_lib.keep_count(_size(w.shape), sparsity)).numpy())
    masks_lib.apply_masks(layers, found)
    return found


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


class ADMMPenalty(StepHook):
    """The ADMM stage's step: the loss gains sum_l rho_l / 2 ||W_l - Z_l + U_l||^2."""

    def __init__(self, state: ADMMState, layers):
        self.state, self.layers = state, layers

    def penalty(self, model):
        return self.state.penalty([layer.fused_kernel() for layer in self.layers])


class ADMM(Method):
    """pretrain -> admm -> retrain (Table V: 100 + 100 + 100)."""

    name = "admm"
    finetune_epochs = 100

    def plan(self, cfg: Config) -> list[Stage]:
        m = cfg.method
        admm = dict(
            name="admm", epochs=staged_epochs(cfg, m.admm_epochs), step="admm", lr=m.finetune_lr, schedule="cosine"
        )
        return pretrain_then(cfg, admm, self.finetune_epochs, last="retrain")

    def state(self, cfg: Config, network) -> dict:
        from frep_tf.layers.reparam import reparam_layers

        m = cfg.method
        layers = admm_layers(reparam_layers(network))
        state = ADMMState.for_layers(
            layers, cfg.prune.sparsity, rho=m.admm_rho, admm_epoch=update_interval(cfg), name="admm_state"
        )
        return {"admm_state": state}

    def step_hook(self, stage: Stage, model):
        if stage.step != "admm":
            return None
        return ADMMPenalty(model.method_state["admm_state"], admm_layers(model.reparam))

    def begin(self, stage: Stage, model, cfg: Config):
        if stage.name != "retrain":
            return None
        layers = admm_layers(model.reparam)
        hard_prune(layers, cfg.prune.sparsity)  # per layer, by |W| (the original's `masking`)
        return layers

    def callbacks(self, stage: Stage, model, cfg: Config) -> list:
        if stage.step != "admm":
            return []
        return [ADMMUpdates(model.method_state["admm_state"], admm_layers(model.reparam), first_epoch=stage.start)]


def update_interval(cfg: Config) -> int:
    """Epochs between ADMM updates, scaled with the stages (--epoch_scale), so a shrunk ADMM stage
    still makes the same number of updates (the original: every 20 of 200 epochs, 10 updates)."""
    return staged_epochs(cfg, cfg.method.admm_interval)
