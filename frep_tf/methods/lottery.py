"""Adversarial lottery tickets and inverse weights inheritance (Wang et al., "Achieving Adversarial
Robustness via Sparsity"; only the abstract is available, docs/methods.md says how we read it).

Lottery (`--method=lottery`): dense adversarial training that keeps a copy of the weights at
initialisation (`--rewind_epoch=0`) or at a later epoch; then `--lottery_rounds` rounds, each pruning
globally by magnitude to 1 - (1 - s)^(k / n) (the same fraction of what is left every round), resetting
the surviving weights to the copy (weight inheritance) and training again adversarially with the mask
fixed. `--lottery_reinit` is the control: the same masks, fresh random kernels.

IWI (`--method=iwi`): a large network starts from a small sparse robust one (`inherit`) and is then
trained densely and adversarially. Sparse mapping: the same architecture, the sparse weights where they
survive and zero (or tiny random) elsewhere; narrow mapping: a narrower network's channels go into the
first channels of every layer, the rest zero (or tiny random kernels), so with zeros the large network
computes exactly the small one's logits.
"""

from __future__ import annotations

import keras
import numpy as np

from frep_tf.config import Config
from frep_tf.methods import masks as masks_lib
from frep_tf.methods.base import Method, Stage, sequence


def round_sparsities(sparsity: float, rounds: int) -> list[float]:
    """Round k of n prunes to 1 - (1 - s)^(k/n): each round removes the same fraction of what is left."""
    masks_lib.check_sparsity(sparsity)
    return [1.0 - (1.0 - sparsity) ** (k / rounds) for k in range(1, rounds + 1)]


def _snapshot_variables(network) -> list:
    """Every variable of the network but the masks (kernels/factors, biases, BatchNorm, its statistics)."""
    return [v for v in network.weights if not v.path.endswith("/mask")]


@keras.saving.register_keras_serializable(package="frep_tf")
class LotteryState(keras.layers.Layer):
    """The rewind copy of the network's weights and whether it has been taken."""

    def __init__(self, shapes, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.copies = [
            self.add_weight(name=f"rewind_{i}", shape=s, initializer="zeros", trainable=False)
            for i, s in enumerate(self.shapes)
        ]
        self.taken = self.add_weight(name="taken", shape=(), dtype="bool", initializer="zeros", trainable=False)
        self.built = True

    @classmethod
    def for_network(cls, network, **kwargs) -> LotteryState:
        return cls([tuple(v.shape) for v in _snapshot_variables(network)], **kwargs)

    def take(self, network) -> None:
        for copy, v in zip(self.copies, _snapshot_variables(network), strict=True):
            copy.assign(v)
        self.taken.assign(True)

    def rewind(self, network) -> None:
        """Every weight back to the copy (masks untouched)."""
        for copy, v in zip(self.copies, _snapshot_variables(network), strict=True):
            v.assign(copy)

    def get_config(self):
        config = super().get_config()
        config.pop("trainable", None)
        config.update(shapes=self.shapes)
        return config


def reinit_kernels(layers, seed: int) -> None:
    """The control: every prunable weight drawn afresh from its layer's initializer (seeded)."""
    for i, layer in enumerate(layers):
        config = keras.initializers.serialize(layer.kernel_initializer)
        for j, v in enumerate(layer.prunable_weights()):
            seeded = dict(config, config=dict(config.get("config") or {}))
            if "seed" in seeded["config"]:
                seeded["config"]["seed"] = int(seed) * 1000 + 10 * i + j
            v.assign(keras.initializers.deserialize(seeded)(tuple(v.shape), dtype="float32"))


def prune_round(layers, sparsity: float, min_density: float = 0.0) -> list[np.ndarray]:
    """Masks for one round: global magnitude over the fused kernels (pruned entries are zero, so they
    stay pruned), combined with the current masks. Refused like FReP's prune if a layer would be cut."""
    from frep_tf.training.pruning import check_layer_densities, global_unstructured_masks, layer_densities

    kernels = [np.asarray(k) for k in masks_lib.kernels(layers)]
    found = global_unstructured_masks(kernels, sparsity, min_density)
    found = [m * np.asarray(layer.mask) for m, layer in zip(found, layers, strict=True)]
    check_layer_densities(layer_densities([la.name for la in layers], found), sparsity, min_density)
    return found


class RewindAt(keras.callbacks.Callback):
    """Takes the rewind copy at the start of global epoch `epoch` (once; a resumed run has it already)."""

    def __init__(self, state: LotteryState, network, epoch: int):
        super().__init__()
        self.state, self.network, self.epoch = state, network, epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch and not bool(self.state.taken.numpy()):
            self.state.take(self.network)


# -- inverse weights inheritance --------------------------------------------------------------------
def _embed(small: np.ndarray, shape, fill: np.ndarray) -> np.ndarray:
    """`small` in the leading corner of an array of `shape`, `fill` elsewhere."""
    out = np.array(fill, np.float32, copy=True)
    out[tuple(slice(0, d) for d in small.shape)] = small
    return out


def inherit(network, source, *, fill: str = "zero", tiny: float = 1e-3, seed: int = 0) -> dict:
    """Initialise the large plain `network` from the exported `source` model (standard layers, the same
    layer names; equal or narrower channel counts). Kernels and biases go into the leading slices; the
    rest is zero, or for kernels with `fill="tiny"` uniform in +-tiny * max|W| of the source layer
    (so that the new weights can start to learn: a zero channel whose next layer reads it through
    zero weights gets no gradient). Extra BatchNorm channels get gamma 1, beta 0, mean 0, variance 1,
    so that a zero channel stays zero. Returns {layer: "copied" | "embedded"}."""
    rng = np.random.default_rng(seed)
    by_name = {layer.name: layer for layer in source.layers}
    done = {}
    for layer in network.layers:
        if not layer.weights:
            continue
        src = by_name.get(layer.name)
        if src is None:
            raise ValueError(f"--iwi_from: the source model has no layer {layer.name!r} (another architecture?)")
        if hasattr(layer, "prunable_weights"):
            if layer.parameterization != "plain":
                raise ValueError("inverse weights inheritance initialises plain kernels")
            w = np.asarray(src.kernel)
            shape = tuple(layer.kernel.shape)
            background = np.zeros(shape, np.float32)
            if fill == "tiny":
                background = rng.uniform(-1, 1, shape).astype(np.float32) * tiny * float(np.abs(w).max() or 1.0)
            kernel = _embed(w, shape, background)
            if fill == "tiny" and w.shape == shape:
                kernel = np.where(w != 0, w, background)  # the sparse network's zeros get tiny values
            layer.kernel.assign(kernel)
            layer.mask.assign(np.ones(shape, np.float32))
            if layer.bias is not None:
                layer.bias.assign(_embed(np.asarray(src.bias), tuple(layer.bias.shape), np.zeros(layer.bias.shape)))
        elif isinstance(layer, keras.layers.BatchNormalization):
            for name, value in (("gamma", 1.0), ("beta", 0.0), ("moving_mean", 0.0), ("moving_variance", 1.0)):
                dst, s = getattr(layer, name), getattr(src, name)
                dst.assign(_embed(np.asarray(s), tuple(dst.shape), np.full(tuple(dst.shape), value, np.float32)))
        else:
            for dst, s in zip(layer.weights, src.weights, strict=True):
                dst.assign(_embed(np.asarray(s), tuple(dst.shape), np.zeros(tuple(dst.shape), np.float32)))
        same = all(tuple(a.shape) == tuple(b.shape) for a, b in zip(layer.weights, src.weights, strict=False))
        done[layer.name] = "copied" if same else "embedded"
    return done


# -- the method -----------------------------------------------------------------------------------------
class Lottery(Method):
    """dense, then round1..n (prune, rewind, train), each --epochs long: --epochs is the main training
    stage of every method, and a ticket's retraining is as long as the dense training it came from."""

    name = "lottery"

    def plan(self, cfg: Config) -> list[Stage]:
        specs = [dict(name="dense", epochs=cfg.epochs, lr=cfg.train.lr)]
        for k in range(1, cfg.method.lottery_rounds + 1):
            specs.append(dict(name=f"round{k}", epochs=cfg.epochs, lr=cfg.train.lr))
        return sequence(cfg, specs)

    def state(self, cfg: Config, network) -> dict:
        return {"lottery_state": LotteryState.for_network(network, name="lottery_state")}

    def begin(self, stage: Stage, model, cfg: Config):
        state, m = model.method_state["lottery_state"], cfg.method
        if stage.name == "dense":
            if m.rewind_epoch == 0:
                state.take(model.network)  # the ticket inherits the initialisation
            return None
        k = int(stage.name.removeprefix("round"))
        target = round_sparsities(cfg.prune.sparsity, m.lottery_rounds)[k - 1]
        masks = prune_round(model.reparam, target, cfg.prune.min_layer_density)  # ranked on trained weights
        if not bool(state.taken.numpy()):
            raise RuntimeError("the lottery ticket's rewind copy was never taken")
        state.rewind(model.network)  # weight inheritance
        if m.lottery_reinit:
            reinit_kernels(model.reparam, seed=cfg.run.seed + 7919 * k)  # the control
        masks_lib.apply_masks(model.reparam, masks)
        return model.reparam

    def callbacks(self, stage: Stage, model, cfg: Config) -> list:
        if stage.name == "dense" and cfg.method.rewind_epoch > 0:
            return [RewindAt(model.method_state["lottery_state"], model.network, cfg.method.rewind_epoch)]
        return []
