"""HARP, holistic adversarially robust pruning (Zhao & Wressnegger, ICLR 2023; intellisec/harp).

HARP learns, for one global target density d = 1 - --sparsity, both how many weights each layer keeps
(a learnt per-layer rate) and which ones (a learnt importance score per weight, as in HYDRA), with the
weights frozen; masked fine-tuning follows. What the original does, and what this module does:

- Every conv and dense layer l (the classifier too) has a score tensor s_l, started at
  sqrt(6 / fan_in) * W / max|W| (HYDRA's scaled init, so the first mask ranks by |W|), and one rate
  parameter a_l. Its kept fraction is r_l = sigmoid(a_l) * (1 - r_min) + r_min with
  r_min = 0.1 * d (the original's `rate_act_func` with `--alpha 0.1`), so no layer goes below a tenth
  of the target density while rates are learnt. Rates start at --harp_init_density (the original's
  uniform strategy `010_uni`: 0.1 per layer for its 1 % target), or at d if that is larger.
- Forward pass of the prune stage: W_l * m_l with m_l the top-k_l of |s_l|,
  k_l = n_l - floor((1 - r_l) n_l) (the original's `GetSubnet`). Backward: straight through, the
  mask's gradient g goes to |s_l| unchanged and sum(g) goes to r_l (the original's
  `return g, g_r`); the chain rule adds sign(s_l) and dr_l / da_l.
- The loss gains gamma * max(sum_l n_l r_l / (N d) - 1, 0) (`hw_loss`: zero once the rates meet
  the budget). Gamma grows step-wise: the original's gamma is (epoch + 1) * --gamma, frozen at its
  value once the budget term rounds to zero at the end of an epoch. So robustness leads while gamma is
  small, the budget takes over as it grows, and after the target is met both count with a fixed
  weight. Here the prune stage is cut into --harp_gamma_steps equal runs of optimizer steps (default
  20: one per epoch of the original's 20 epochs, whatever --epoch_scale does to the stage); at the
  first step of run p, gamma becomes (p + 1) * --harp_gamma unless the budget term is <= 5e-5 (the
  original's rounding to 4 decimals), which freezes it for the rest of the stage.
- Weights and biases are frozen in the prune stage, BatchNorm is trained (the original's
  `harp_prune` without --freeze-bn); scores and rates are trained by SGD at --lr with cosine decay,
  weight decay included (the original's optimizer holds them too).

Deviations, and why:

- Exact global budget. The original fine-tunes with the masks its learnt rates give, whose total is
  the target only as closely as the budget term got there (at or below it). Here fine-tuning starts
  from masks that keep exactly round(d * N) weights over all prunable kernels, like every other
  method in this repository: the learnt per-layer counts r_l n_l are scaled by one common factor,
  each clipped to [1, n_l] (every layer keeps at least one weight), and rounded by largest remainder
  (`allocate`); each layer then keeps its top |s_l|. If round(d * N) is smaller than the number of
  layers, each layer keeps one weight.
- The last prune epoch's scores and rates are used. The original fine-tunes from the prune epoch with
  the best adversarial validation accuracy among those after the budget was met; this pipeline
  selects no checkpoints (no method here does).
- Weight pruning only: the original's channel mode with its FLOPs budget is not implemented
  (--structured is refused, as for every method but FReP).

Scores, rates, gamma, the frozen flag and the step counter are variables of `HarpState`, a Keras layer
attached to the model, so checkpoints carry them and a run killed inside the prune stage resumes
exactly. The step counter, not an epoch callback, drives gamma; the callback only tells the state how
many steps the stage has (epochs x steps per epoch, the same after a resume).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from frep_tf.config import Config
from frep_tf.methods import masks as masks_lib
from frep_tf.methods.base import Stage, StepHook, pretrain_then, staged_epochs
from frep_tf.methods.harp_budget import (
    RATE_FLOOR,
    allocate,
    budget_term,
    keep_counts,
    logits_of,
    next_gamma,
    rank_mask,
    rates_of,
    straight_through_mask,
)
from frep_tf.methods.hydra import HYDRA, scaled_score_init


# -- the state ------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="frep_tf")
class HarpState(keras.layers.Layer):
    """Scores and rate parameters of every pruned layer (trained in the prune stage only), gamma, the
    frozen flag and the prune stage's step counter."""

    def __init__(
        self,
        kernel_shapes,
        sparsity: float,
        *,
        gamma: float = 0.01,
        gamma_steps: int = 20,
        init_density: float = 0.1,
        layer_names=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.kernel_shapes = [tuple(int(d) for d in s) for s in kernel_shapes]
        self.sparsity = masks_lib.check_sparsity(sparsity)
        if self.sparsity == 0:
            raise ValueError("HARP prunes: `sparsity` must be > 0.")
        if not gamma > 0 or isinstance(gamma_steps, bool) or not isinstance(gamma_steps, int) or gamma_steps < 1:
            raise ValueError(f"Need gamma > 0 and gamma_steps >= 1. Received: {gamma!r}, {gamma_steps!r}")
        if not 0 < init_density <= 1:
            raise ValueError(f"`init_density` must lie in (0, 1]. Received: init_density={init_density!r}")
        self.gamma0 = float(gamma)
        self.gamma_steps = gamma_steps
        self.init_density = float(init_density)
        names = layer_names or [f"layer{i}" for i in range(len(self.kernel_shapes))]
        if len(names) != len(self.kernel_shapes):
            raise ValueError(f"One name per kernel. Received: layer_names={layer_names!r}")
        self.layer_names = list(names)
        self.sizes = [math.prod(s) for s in self.kernel_shapes]
        self.target = 1.0 - self.sparsity
        self.floor = RATE_FLOOR * self.target
        self.scores = [
            self.add_weight(name=f"score_{n}", shape=s, initializer="zeros")
            for n, s in zip(self.layer_names, self.kernel_shapes, strict=True)
        ]
        self.rate_logits = self.add_weight(name="rate_logits", shape=(len(self.sizes),), initializer="zeros")
        self.gamma = self.add_weight(name="gamma", shape=(), initializer="zeros", trainable=False)
        self.frozen = self.add_weight(name="gamma_frozen", shape=(), dtype="bool", initializer="zeros", trainable=False)
        self.steps = self.add_weight(name="steps", shape=(), dtype="int64", initializer="zeros", trainable=False)
        self.total_steps = self.add_weight(
            name="total_steps", shape=(), dtype="int64", initializer="zeros", trainable=False
        )
        self.built = True

    @classmethod
    def for_layers(cls, layers, sparsity: float, **kwargs) -> HarpState:
        return cls(
            [tuple(layer.mask.shape) for layer in layers],
            sparsity,
            layer_names=[layer.name for layer in layers],
            **kwargs,
        )

    @property
    def learnt(self) -> list:
        """What the prune stage trains: every score tensor and the rate parameters."""
        return [*self.scores, self.rate_logits]

    def rates(self):
        return rates_of(self.rate_logits, self.floor)

    def budget(self):
        return budget_term(self.rates(), self.sizes, self.target)

    def penalty(self):
        return self.gamma * self.budget()

    def initialize(self, kernels) -> None:
        """The start of the prune stage: scaled scores, every rate at max(init density, target),
        gamma at --harp_gamma, not frozen, no step done."""
        for s, w in zip(self.scores, kernels, strict=True):
            s.assign(scaled_score_init(w))
        start = max(self.init_density, self.target)
        self.rate_logits.assign(logits_of([start] * len(self.sizes), self.floor))
        self.gamma.assign(self.gamma0)
        self.frozen.assign(False)
        self.steps.assign(0)

    def advance(self) -> None:
        """Before each prune step: gamma for this step (`next_gamma`), then count the step."""
        gamma, frozen = next_gamma(
            self.steps, self.total_steps, self.gamma_steps, self.gamma0, self.gamma, self.frozen, self.budget()
        )
        self.gamma.assign(gamma)
        self.frozen.assign(frozen)
        self.steps.assign_add(1)

    def masks(self) -> list:
        """The prune stage's masks at the current rates and scores (no gradient)."""
        keeps = keep_counts(self.rates(), self.sizes)
        return [rank_mask(tf.abs(s), keeps[i]) for i, s in enumerate(self.scores)]

    def assign_masks(self, layers) -> None:
        for layer, mask in zip(layers, self.masks(), strict=True):
            layer.mask.assign(mask)

    def straight_through_gradients(self, mask_grads) -> list:
        """d loss / d (scores, rate parameters) from d loss / d mask of every layer."""
        learnt = [v.value for v in self.learnt]
        with tf.GradientTape() as tape:
            tape.watch(learnt)
            rates = self.rates()
            masks = [
                straight_through_mask(tf.abs(s), rates[i], n)
                for i, (s, n) in enumerate(zip(self.scores, self.sizes, strict=True))
            ]
        return tape.gradient(masks, learnt, output_gradients=list(mask_grads))

    def final_counts(self) -> np.ndarray:
        """The fine-tuning masks' kept count per layer: exactly round(d * N) in all (`allocate`)."""
        keep_total = max(masks_lib.keep_count(sum(self.sizes), self.sparsity), len(self.sizes))
        return allocate(self.rates().numpy(), self.sizes, keep_total)

    def fixed_masks(self, layers) -> list[np.ndarray]:
        """Learnt rates and scores -> the fixed masks of fine-tuning, applied to the layers."""
        found = [
            masks_lib.topk_mask(tf.abs(s), int(c)).numpy()
            for s, c in zip(self.scores, self.final_counts(), strict=True)
        ]
        for layer in layers:
            layer.mask.assign(tf.ones_like(layer.mask))
        masks_lib.apply_masks(layers, found)
        return found

    def get_config(self):
        config = super().get_config()
        config.update(
            kernel_shapes=self.kernel_shapes,
            sparsity=self.sparsity,
            gamma=self.gamma0,
            gamma_steps=self.gamma_steps,
            init_density=self.init_density,
            layer_names=self.layer_names,
        )
        return config


class PruneStep(StepHook):
    """The prune stage's step: gamma for the step, the masks from rates and scores into the layers,
    the budget term in the loss, and the masks' gradients straight through to scores and rates (plus
    the budget term's gradient to the rates)."""

    def __init__(self, state: HarpState):
        self.state = state

    def before(self, model) -> None:
        self.state.advance()
        self.state.assign_masks(model.reparam)

    def trainable(self, model, variables: list) -> list:
        return [v for v in variables if not any(v is s for s in self.state.learnt)]

    def watched(self, model) -> list:
        return [layer.mask.value for layer in model.reparam] + [self.state.rate_logits.value]

    def penalty(self, model):
        return self.state.penalty()

    def routed(self, model, watched_grads: list) -> tuple[list, list]:
        mask_grads, budget_grad = watched_grads[:-1], watched_grads[-1]
        grads = list(self.state.straight_through_gradients(mask_grads))
        if budget_grad is not None:
            grads[-1] = grads[-1] + budget_grad
        return grads, list(self.state.learnt)


class StageSteps(keras.callbacks.Callback):
    """Tells the state how many optimizer steps the prune stage has, and prints gamma and the kept
    fraction after each epoch."""

    def __init__(self, state: HarpState, epochs: int):
        super().__init__()
        self.state, self.epochs = state, epochs

    def on_train_begin(self, logs=None):
        self.state.total_steps.assign(self.epochs * int(self.params["steps"]))

    def on_epoch_end(self, epoch, logs=None):
        s = self.state
        density = float(np.dot(s.sizes, s.rates().numpy()) / sum(s.sizes))
        frozen = " (frozen)" if bool(s.frozen.numpy()) else ""
        print(
            f"[frep_tf] harp: gamma={float(s.gamma.numpy()):.4g}{frozen} kept_fraction={density:.4g} "
            f"target={s.target:.4g} budget_term={float(s.budget().numpy()):.4g}",
            flush=True,
        )


class HARP(HYDRA):
    """pretrain -> prune -> finetune (100 + 20 + 100, as HYDRA's Table V counts)."""

    name = "harp"
    # HYDRA's configure (weights frozen while the state learns) and begin (initialise, then fixed masks).
    state_name, learn_stage = "harp_state", "prune"
    finetune_epochs = 100

    def plan(self, cfg: Config) -> list[Stage]:
        prune = dict(
            name="prune",
            epochs=staged_epochs(cfg, cfg.method.score_epochs),
            step="prune",
            lr=cfg.train.lr,
            schedule="cosine",
        )
        return pretrain_then(cfg, prune, self.finetune_epochs)

    def state(self, cfg: Config, network) -> dict:
        from frep_tf.layers.reparam import reparam_layers

        m = cfg.method
        state = HarpState.for_layers(
            reparam_layers(network),
            cfg.prune.sparsity,
            gamma=m.harp_gamma,
            gamma_steps=m.harp_gamma_steps,
            init_density=m.harp_init_density,
            name="harp_state",
        )
        state.trainable = False  # trained only in the prune stage
        return {"harp_state": state}

    def step_hook(self, stage: Stage, model):
        return PruneStep(model.method_state["harp_state"]) if stage.step == "prune" else None

    def callbacks(self, stage: Stage, model, cfg: Config) -> list:
        if stage.step != "prune":
            return []
        return [StageSteps(model.method_state["harp_state"], stage.epochs)]
