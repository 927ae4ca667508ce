"""HYDRA score learning (Sehwag et al., NeurIPS 2020; inspire-group/hydra).

Every conv/dense layer gets an importance score per weight. During score learning the weights (and
biases) are frozen, BatchNorm stays trainable, and the layer applies W * m with m the exact per-layer
top-k of |score| (the original's `GetSubnet` on `popup_scores.abs()`); the gradient passes straight
through the top-k to |score| (and by the chain rule, times sign(score), to the score).
Scores start at sqrt(6 / fan_in) * W / max|W| (`initialize_scaled_score`), so the first mask is the
per-layer magnitude mask. Finetuning then trains the weights with `fixed_masks` applied.

How the scores reach the forward pass without another layer type: the layer's own (non-trainable)
mask variable carries the binary mask. A score-learning step is

    scores.assign_masks(layers)                    # mask := top-k(|s|), factors left untouched
    with tf.GradientTape() as tape:
        tape.watch([l.mask.value for l in layers])
        loss = ...forward...
    mask_grads = tape.gradient(loss, [l.mask.value for l in layers])
    score_grads = scores.score_gradients(mask_grads)   # straight-through, `straight_through_topk`

which is the original's estimator exactly: the forward is W * top-k(|s|) and d loss / d|s| is
d loss / d mask. Do not project factors during score learning (a weight masked now may come back).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from frep_tf.config import Config
from frep_tf.methods import masks as masks_lib
from frep_tf.methods.base import Method, Stage, StepHook, pretrain_then, staged_epochs


def fan_in(shape) -> int:
    """Inputs per output unit of a Keras kernel: kh * kw * in for conv, in for dense."""
    return int(np.prod(shape[:-1]))


def scaled_score_init(kernel) -> tf.Tensor:
    """sqrt(6 / fan_in) * W / max|W|: ordered like |W|, scaled like a Kaiming-uniform draw."""
    w = tf.convert_to_tensor(kernel, tf.float32)
    return math.sqrt(6.0 / fan_in(w.shape)) * w / tf.reduce_max(tf.abs(w))


def straight_through_topk(values, keep: int):
    """top-k(values) as a 0/1 mask in the forward pass; the identity in the backward pass."""

    @tf.custom_gradient
    def _mask(v):
        def grad(upstream):
            return upstream

        return masks_lib.topk_mask(v, keep), grad

    return _mask(tf.convert_to_tensor(values))


def freeze_weights(layers) -> None:
    """Score learning trains scores (and BatchNorm), not the layers' kernels, factors or biases."""
    for layer in layers:
        for v in layer.prunable_weights() + ([layer.bias] if layer.bias is not None else []):
            v.trainable = False


def unfreeze_weights(layers) -> None:
    for layer in layers:
        for v in layer.prunable_weights() + ([layer.bias] if layer.bias is not None else []):
            v.trainable = True


@keras.saving.register_keras_serializable(package="frep_tf")
class HydraScores(keras.layers.Layer):
    """One trainable score tensor per pruned layer, and the per-layer keep counts."""

    def __init__(self, kernel_shapes, sparsity: float, *, layer_names=None, **kwargs):
        super().__init__(**kwargs)
        self.kernel_shapes = [tuple(int(d) for d in s) for s in kernel_shapes]
        self.sparsity = masks_lib.check_sparsity(sparsity)
        names = layer_names or [f"layer{i}" for i in range(len(self.kernel_shapes))]
        if len(names) != len(self.kernel_shapes):
            raise ValueError(f"One name per kernel. Received: layer_names={layer_names!r}")
        self.layer_names = list(names)
        self.keeps = [masks_lib.keep_count(int(np.prod(s)), self.sparsity) for s in self.kernel_shapes]
        self.scores = [
            self.add_weight(name=f"score_{n}", shape=s, initializer="zeros")
            for n, s in zip(self.layer_names, self.kernel_shapes, strict=True)
        ]
        self.built = True

    @classmethod
    def for_layers(cls, layers, sparsity: float, **kwargs) -> HydraScores:
        return cls(
            [tuple(layer.mask.shape) for layer in layers],
            sparsity,
            layer_names=[layer.name for layer in layers],
            **kwargs,
        )

    def initialize(self, kernels) -> None:
        for s, w in zip(self.scores, kernels, strict=True):
            s.assign(scaled_score_init(w))

    def masks(self) -> list:
        """The current exact per-layer top-k of |score| (no gradient)."""
        return [masks_lib.topk_mask(tf.abs(s), k) for s, k in zip(self.scores, self.keeps, strict=True)]

    def assign_masks(self, layers) -> None:
        """Put the current masks into the layers' mask variables for a score-learning forward pass."""
        for layer, mask in zip(layers, self.masks(), strict=True):
            layer.mask.assign(mask)

    def score_gradients(self, mask_grads) -> list:
        """d loss / d score from d loss / d mask, through the straight-through top-k of |score|."""
        with tf.GradientTape() as tape:
            masks = [straight_through_topk(tf.abs(s), k) for s, k in zip(self.scores, self.keeps, strict=True)]
        return tape.gradient(masks, [s.value for s in self.scores], output_gradients=list(mask_grads))

    def fixed_masks(self, layers) -> list[np.ndarray]:
        """Learnt scores -> the fixed masks of finetuning, applied to the layers (factors projected)."""
        found = [m.numpy() for m in self.masks()]
        for layer in layers:
            layer.mask.assign(tf.ones_like(layer.mask))
        masks_lib.apply_masks(layers, found)
        return found

    def get_config(self):
        config = super().get_config()
        config.update(kernel_shapes=self.kernel_shapes, sparsity=self.sparsity, layer_names=self.layer_names)
        return config


class ScoreStep(StepHook):
    """The score stage's step: the forward pass applies top-k(|score|) through the layers' mask
    variables, and the masks' gradients reach the scores straight through the top-k."""

    def __init__(self, scores: HydraScores):
        self.scores = scores

    def before(self, model) -> None:
        self.scores.assign_masks(model.reparam)

    def trainable(self, model, variables: list) -> list:
        return [v for v in variables if not any(v is s for s in self.scores.scores)]

    def watched(self, model) -> list:
        return [layer.mask.value for layer in model.reparam]

    def routed(self, model, watched_grads: list) -> tuple[list, list]:
        return list(self.scores.score_gradients(watched_grads)), list(self.scores.scores)


class HYDRA(Method):
    """pretrain -> score -> finetune (Table V: 100 + 20 + 100)."""

    name = "hydra"
    finetune_epochs = 100

    def plan(self, cfg: Config) -> list[Stage]:
        score = dict(
            name="score",
            epochs=staged_epochs(cfg, cfg.method.score_epochs),
            step="score",
            lr=cfg.train.lr,
            schedule="cosine",
        )
        return pretrain_then(cfg, score, self.finetune_epochs)

    def state(self, cfg: Config, network) -> dict:
        from frep_tf.layers.reparam import reparam_layers

        scores = HydraScores.for_layers(reparam_layers(network), cfg.prune.sparsity, name="hydra_scores")
        scores.trainable = False  # trained only in the score stage
        return {"hydra_scores": scores}

    # The state layer holding what the learning stage trains, and that stage's name (= its step). HARP
    # subclasses HYDRA with its own (frep_tf.methods.harp).
    state_name, learn_stage = "hydra_scores", "score"

    def configure(self, stage: Stage, model) -> None:
        state = model.method_state[self.state_name]
        if stage.step == self.learn_stage:
            freeze_weights(model.reparam)
            state.trainable = True
        else:
            unfreeze_weights(model.reparam)
            state.trainable = False

    def step_hook(self, stage: Stage, model):
        return ScoreStep(model.method_state["hydra_scores"]) if stage.step == "score" else None

    def begin(self, stage: Stage, model, cfg: Config):
        state = model.method_state[self.state_name]
        if stage.name == self.learn_stage:
            state.initialize(masks_lib.kernels(model.reparam))
        elif stage.name == "finetune":
            state.fixed_masks(model.reparam)
            return model.reparam
        return None
