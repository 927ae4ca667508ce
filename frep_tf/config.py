"""Frozen configuration dataclasses: the one place where defaults live, and their validation.

Defaults marked (paper) come from the FReP paper (IV-A); the rest are our choices, explained inline.
`flags/` derives every absl flag (name, default, help) from these fields, so defaults are never
declared twice.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

OBJECTIVES = ("sre", "fgsm", "pgd", "trades", "mart", "natural")
PARAMETERIZATIONS = ("hadamard", "channel", "plain")
FACTOR_INITS = ("random", "equal", "ones", "scaled")
# How the single-step objectives (sre, fgsm) perturb a batch: fgsm_rs is Wong et al.'s random start in
# the eps-ball, a step, projection back to the ball (paper Eq. 12); nfgsm is de Jorge et al.'s N-FGSM
# (NeurIPS 2022), noise of 2 x eps, a step, no projection (docs/design_notes.md).
PERTURBATIONS = ("fgsm_rs", "nfgsm")
SINGLE_STEP_OBJECTIVES = ("sre", "fgsm")
ARCHITECTURES = ("vgg16", "resnet18", "resnet34", "resnet50", "wrn28_10", "wrn28_4", "small_cnn", "mlp")
PRUNE_SCHEDULES = ("oneshot", "gradual")
ATTACK_BN_MODES = ("train", "eval")
EXPORT_FORMATS = ("keras", "saved_model", "tflite", "tflite_sparse", "tflite_int8", "tflite_int8_dense", "compact")
EVAL_ATTACKS = ("clean", "fgsm", "pgd", "mim", "square", "autoattack", "apgd-ce", "apgd-t", "fab-t")
# The columns of the FReP paper's Table I (attack, title); summary tables append other attacks after them.
TABLE_I_COLUMNS = (
    ("clean", "Clean"),
    ("fgsm", "FGSM"),
    ("pgd", "PGD"),
    ("mim", "MIM"),
    ("square", "Square"),
    ("autoattack", "AA"),
)
DISTRIBUTIONS = ("none", "mirrored", "multi_worker")
ENSEMBLE_INTERVAL_FROM = ("global", "decay")
MODES = ("train", "evaluate", "predict", "experiment", "report", "cost")
# frep: the paper's method (and Ori with --parameterization=plain); the baselines of Tables I/II/V;
# posthoc: the Fig. 8 ablation (train to the end, prune once, no fine-tuning).
METHODS = ("frep", "lwm", "admm", "hydra", "mad", "posthoc", "lottery", "iwi", "harp")
IWI_SOURCES = ("lottery", "frep", "lwm", "admm", "hydra", "mad", "posthoc")
IWI_MAPPINGS = ("sparse", "narrow")
IWI_FILLS = ("zero", "tiny")
# What a baseline trains with unless its flag is given (docs/methods.md): plain layers, PGD-10, no ensemble.
BASELINE_DEFAULTS = {"parameterization": "plain", "objective": "pgd", "ensemble": False}
BASELINES = ("lwm", "admm", "hydra", "mad", "lottery", "iwi", "harp")


class ConfigError(ValueError):
    """A flag value or combination that is not allowed; the message is one line naming the flag."""


class FlagParseError(ConfigError):
    """A flag that does not exist, or a value its flag cannot parse (before any value is validated)."""


def _f(default, help: str, **meta):
    return dataclasses.field(default=default, metadata={"help": help, **meta})


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = _f(
        "cifar10",
        "digits | synthetic | fashion_mnist | cifar10 | cifar100 | svhn | tiny_imagenet | folder:PATH | npz:PATH",
    )
    data_dir: str = _f(
        "",
        "tfds data directory (prepared datasets, manual downloads), or a directory of Fashion-MNIST IDX files; "
        "empty = tfds default",
    )
    batch_size: int = _f(128, "training batch size (global, over all replicas) (paper)")
    eval_batch_size: int = _f(256, "batch size for validation and evaluation attacks")
    train_samples: int = _f(
        0, "train on a fixed random subset of this many training examples (same for every seed); 0 = all"
    )
    val_size: float = _f(0.02, "training examples carved out for validation: a fraction in (0, 1) or a count >= 1")
    augment: bool = _f(True, "dataset-standard augmentation (crop+flip for CIFAR/Tiny-ImageNet, crop for SVHN)")
    image_size: int = _f(0, "resize user images to this size (folder: datasets); 0 = keep")
    svhn_extra: bool = _f(False, "add SVHN's extra split to its training data")
    download: bool = _f(False, "let tfds download missing datasets (needs a network)")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    arch: str = _f("resnet18", "architecture", choices=ARCHITECTURES)
    parameterization: str = _f(
        "hadamard", "hadamard (FReP) | channel (FReP-CH) | plain (Ori)", choices=PARAMETERIZATIONS
    )
    factor_init: str = _f(
        "random",
        "factor initialisation (paper Table VIII: random, equal, ones); scaled: random with the fused kernel's "
        "standard deviation equal to the kernel initializer's (He), docs/design_notes.md",
        choices=FACTOR_INITS,
    )
    width: float = _f(1.0, "channel-count multiplier (1.0 = the published architecture)")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    objective: str = _f("sre", "training objective", choices=OBJECTIVES)
    epsilon: float = _f(8 / 255, "L-inf perturbation radius on [0, 1] pixels (paper: 8/255)")
    step_size: float = _f(0.0, "single-step attack step size; 0 = epsilon (paper Eq. 12)")
    perturbation: str = _f(
        "fgsm_rs",
        "single-step perturbation of --objective=sre|fgsm: fgsm_rs (random start in the eps-ball, one step, "
        "projected back: paper Eq. 12) | nfgsm (N-FGSM: noise in +-nfgsm_noise x eps, one step, no projection, "
        "clipped to [0, 1] only)",
        choices=PERTURBATIONS,
    )
    nfgsm_noise: float = _f(2.0, "--perturbation=nfgsm: the noise is uniform in +-this x epsilon (N-FGSM's k = 2)")
    sre_lambda: float = _f(4.0, "weight of the SRE consistency term (paper Eq. 16)")
    pgd_steps: int = _f(10, "attack steps for the pgd / trades / mart objectives")
    pgd_step_size: float = _f(2 / 255, "step size of those multi-step attacks")
    trades_beta: float = _f(6.0, "TRADES / MART regularisation weight")
    attack_bn: str = _f(
        "train",
        "BatchNorm mode while the training perturbation is computed (train: as Algorithm 1; docs/design_notes.md: measured)",
        choices=ATTACK_BN_MODES,
    )
    epochs: int = _f(
        100,
        "epochs of the method's main training stage (paper: 100): frep, lwm, posthoc, iwi's large network, and "
        "lottery's dense stage and each of its rounds; admm / hydra / harp / mad use their stage flags",
    )
    lr: float = _f(0.1, "initial learning rate, divided by 10 at 70 % and 85 % of training (paper)")
    momentum: float = _f(0.9, "SGD momentum (paper)")
    weight_decay: float = _f(2e-4, "L2 weight decay on every trainable factor, PyTorch-style (paper)")


@dataclasses.dataclass(frozen=True)
class EnsembleConfig:
    ensemble: bool = _f(True, "keep the temporal ensemble and evaluate/export it (paper Eq. 13)")
    ensemble_decay: float = _f(0.99, "tau0, the largest EMA decay")
    ensemble_warmup: float = _f(10.0, "c in tau = min(tau0, i / (i + c)), i = ensemble updates so far")
    ensemble_interval: int = _f(100, "optimizer steps between ensemble updates; x10 at each lr decay (paper)")
    ensemble_restart: bool = _f(
        False, "restart the ensemble warm-up when pruning (one-shot) changes the network (off: as Algorithm 1)"
    )
    ensemble_interval_from: str = _f(
        "global",
        "where the ensemble interval is counted from: the global step, or the last learning-rate decay",
        choices=ENSEMBLE_INTERVAL_FROM,
    )
    ensemble_final_update: bool = _f(
        True, "also update the ensemble at the end of the last epoch, so the exported ensemble has seen it"
    )


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    sparsity: float = _f(0.99, "fraction of prunable weights (or of channels with --structured) removed")
    structured: bool = _f(False, "prune whole output channels (ranked globally by L2 norm, paper Eq. 17)")
    prune_epoch: int = _f(30, "epoch at which one-shot pruning happens (paper: 30 of 100)")
    prune_schedule: str = _f("oneshot", "oneshot (paper) | gradual (TF-MOT polynomial)", choices=PRUNE_SCHEDULES)
    prune_end_epoch: int = _f(0, "gradual schedule: epoch where the target sparsity is reached; 0 = halfway to the end")
    min_layer_density: float = _f(
        0.0,
        "unstructured pruning: every layer keeps at least this fraction of its weights, taken from the global "
        "budget; 0 = pure global ranking, refused if a layer would keep less than 1/50 of the overall density",
    )


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    method: str = _f(
        "frep",
        "frep (this paper; Ori with --parameterization=plain) | lwm | admm | hydra | mad (baselines) | posthoc "
        "(prune once after training, no fine-tuning) | lottery (adversarial lottery ticket) | iwi (inverse weights "
        "inheritance)",
        choices=METHODS,
    )
    # Stage lengths: 0 never leaves a stage out. --pretrain_epochs, --admm_epochs and --score_epochs must be
    # >= 1 (as --epochs); --finetune_epochs=0, its default, stands for the method's own count.
    pretrain_epochs: int = _f(
        100,
        "admm / hydra / harp / mad: dense adversarial pre-training epochs (paper Table V), >= 1 (0 is refused, "
        "not a skipped stage); lottery uses --epochs",
    )
    admm_epochs: int = _f(100, "admm: epochs of the ADMM stage (Table V: 100 + 100 + 100), >= 1")
    admm_interval: int = _f(
        10, "admm: epochs between ADMM updates (rho *= 1.3, Z = proj(W + U), U += W - Z); scaled by --epoch_scale"
    )
    admm_rho: float = _f(1e-3, "admm: initial penalty rho of every layer")
    score_epochs: int = _f(20, "hydra: score-learning epochs (Table V: 100 + 20 + 100); harp: its prune stage; >= 1")
    finetune_epochs: int = _f(
        0,
        "admm / hydra / harp / mad: masked fine-tuning epochs; 0 (the default) = the method's own count (admm 100, "
        "hydra 100, harp 100, mad 139)",
    )
    finetune_lr: float = _f(
        0.01, "admm / hydra / harp / mad: learning rate of the ADMM, retraining and fine-tuning stages, cosine"
    )
    mad_mask_steps: int = _f(20, "mad: Adam steps on the soft mask per saliency batch (the original's 20)")
    mad_mask_lr: float = _f(0.1, "mad: Adam learning rate of the soft mask (the original's 0.1)")
    mad_batches: int = _f(0, "mad: training batches of the saliency pass; 0 = one epoch")
    mad_beta: float = _f(0.5, "mad: MART weight of the fine-tuning loss")
    epoch_scale: float = _f(
        1.0, "multiply every stage's epochs and --prune_epoch by this (rounded, at least 1): shrinks all methods alike"
    )
    baseline_variant: bool = _f(
        False,
        "let a baseline (lwm, admm, hydra, mad, lottery, iwi) train with a --parameterization, --objective or "
        "--ensemble other than its paper's (plain, pgd, no ensemble); without it such a value is refused",
    )
    sparse_init: bool = _f(
        False, "Sparse-Init (Table VI): plain kernels initialised as the product of two independent draws"
    )
    rewind_epoch: int = _f(0, "lottery: the epoch of dense training whose weights the ticket inherits (0 = init)")
    # lottery: the dense stage and each round are --epochs long (its main training stage, as for every method).
    lottery_rounds: int = _f(1, "lottery: pruning rounds, each removing the same fraction of what is left")
    lottery_reinit: bool = _f(False, "lottery: the control, the same masks with fresh random weights")
    iwi_source: str = _f(
        "lottery",
        "iwi: the method that makes the small sparse network (stage 1, in <workdir>/source)",
        choices=IWI_SOURCES,
    )
    iwi_from: str = _f("", "iwi: take the small network from this exported .keras model instead of training it")
    iwi_mapping: str = _f(
        "sparse",
        "iwi: sparse (same architecture, sparse weights, zero elsewhere) | narrow (a --iwi_source_width network "
        "into the first channels)",
        choices=IWI_MAPPINGS,
    )
    iwi_source_width: float = _f(0.5, "iwi --iwi_mapping=narrow: the small network's --width")
    iwi_fill: str = _f("zero", "iwi: what the large network holds where the small one has no weight", choices=IWI_FILLS)
    iwi_tiny: float = _f(1e-3, "iwi --iwi_fill=tiny: uniform in +-iwi_tiny * max|W| of the source layer")
    harp_gamma: float = _f(
        0.01,
        "harp: weight of the budget term at the start of the prune stage; it grows step-wise to (p + 1) x this in "
        "run p of --harp_gamma_steps and is frozen once the budget is met (the original's --gamma 0.01)",
    )
    harp_gamma_steps: int = _f(
        20,
        "harp: equal runs of optimizer steps the prune stage (--score_epochs long; pretrain and finetune as hydra's) "
        "is cut into for gamma (the original: its 20 epochs)",
    )
    harp_init_density: float = _f(
        0.1,
        "harp: every layer's kept fraction when rate learning starts, at least 1 - --sparsity (the original's "
        "uniform 0.1 for a 1 % target)",
    )


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    eval_attacks: str = _f("clean,fgsm,pgd", "comma-separated attacks for the final evaluation")
    eval_pgd_steps: int = _f(50, "PGD and MIM steps of the final evaluation (paper: 50)")
    eval_samples: int = _f(0, "test examples attacked; 0 = the full test split")
    eval_pgd_restarts: int = _f(
        1, "random restarts of the final PGD (a point counts as robust only if every restart fails)"
    )
    eval_autoattack_samples: int = _f(
        0,
        "AutoAttack (and apgd-ce / apgd-t / fab-t) on the first this-many of the attacked test examples, with clean "
        "and PGD on the same subset for its sanity checks; 0 = all of them",
    )
    val_pgd_steps: int = _f(10, "PGD steps of the per-epoch validation robustness (TensorBoard)")
    val_samples: int = _f(512, "validation examples attacked each epoch")
    model: str = _f("", "--mode=evaluate|predict: a .keras file, SavedModel directory or .tflite file")
    images: str = _f("", "--mode=predict: a folder of images or a .npz file to classify")
    predictions: str = _f("", "--mode=predict: write the predictions to this CSV file (default: print them)")
    transfer_from: str = _f(
        "", "--mode=evaluate on a .tflite model: float model (.keras / SavedModel) to craft transfer PGD on"
    )
    eval_tflite: bool = _f(
        True, "train mode: also evaluate every exported TFLite file (clean, transfer PGD, Square on the interpreter)"
    )
    tflite_square_queries: int = _f(1000, "train mode: Square queries per image on each exported TFLite file")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    mode: str = _f(
        "train",
        "train: one run; evaluate: attack a saved model; predict: classify images with an exported model; "
        "experiment: a grid of runs (--experiment) and its report; report: report.md + figures of an experiment "
        "--workdir; cost: each row of an experiment's training cost, measured side by side in one process "
        "(<workdir>/cost.json)",
        choices=MODES,
    )
    workdir: str = _f(
        "runs/default",
        "output directory (config.json, tb/, export/, results.json); --mode=evaluate writes results.json only "
        "when --workdir is given",
    )
    experiment: str = _f(
        "",
        "--mode=experiment and --mode=cost: the experiment file (base flags + axes + claims; see "
        "configs/experiments/); --mode=report: first replace the workdir's experiment.json by this file's (its "
        "cells and claims)",
    )
    experiment_shard: str = _f("", "--mode=experiment: i/n runs every n-th cell starting at cell i (0-based)")
    experiment_results: str = _f(
        "",
        "--mode=experiment: where each finished cell's evidence (config, results, per-epoch scalars, commit) is "
        "kept, and cells with evidence there count as done; empty = benchmarks/results/<experiment name>",
    )
    cost_steps: int = _f(
        20, "--mode=cost: optimizer steps timed per stage and round (a stage that is a pass over the data: batches)"
    )
    cost_rounds: int = _f(5, "--mode=cost: measurement rounds; each times every row's every stage once, in turn")
    seed: int = _f(0, "random seed (weights, data order, perturbations)")
    export: str = _f("keras,saved_model,tflite,tflite_sparse", "comma-separated export formats")
    deterministic: bool = _f(False, "TF op determinism: identical results on the same machine, slower")
    distribution: str = _f("none", "tf.distribute strategy", choices=DISTRIBUTIONS)
    jit_compile: bool = _f(False, "XLA for the train step (measured slower on CPU; try it on GPU)")
    verbose: int = _f(-1, "Keras progress output: -1 auto (bar on a terminal, a line per epoch otherwise), 0, 1, 2")
    overwrite: bool = _f(
        False,
        "start afresh in a --workdir that holds an earlier run (its config.json, checkpoint/, tb/, export/ and "
        "results.json are deleted); without it an interrupted run resumes and a finished one prints its results",
    )


SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "ensemble": EnsembleConfig,
    "prune": PruneConfig,
    "method": MethodConfig,
    "eval": EvalConfig,
    "run": RunConfig,
}


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    prune: PruneConfig = PruneConfig()
    method: MethodConfig = MethodConfig()
    eval: EvalConfig = EvalConfig()
    run: RunConfig = RunConfig()

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> Config:
        """Build from flat {field: value} (as flags give them); unknown keys are refused."""
        known = {f.name: section for section, klass in SECTIONS.items() for f in dataclasses.fields(klass)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
        parts = {section: {} for section in SECTIONS}
        for key, value in values.items():
            parts[known[key]][key] = value
        return cls(**{section: SECTIONS[section](**kw) for section, kw in parts.items()})

    def flat(self) -> dict[str, Any]:
        return {k: v for section in self.to_dict().values() for k, v in section.items()}

    @property
    def epochs(self) -> int:
        """Training epochs of a single-stage method (frep, lwm, posthoc): --epochs times --epoch_scale."""
        return scaled_epochs(self.train.epochs, self.method.epoch_scale)

    @property
    def prune_epoch(self) -> int:
        return scaled_epochs(self.prune.prune_epoch, self.method.epoch_scale)

    @property
    def prune_end_epoch(self) -> int:
        """Gradual schedule: the epoch where the target sparsity is reached (0 = halfway to the end)."""
        if self.prune.prune_end_epoch:
            return scaled_epochs(self.prune.prune_end_epoch, self.method.epoch_scale)
        return (self.prune_epoch + self.epochs) // 2

    @property
    def step_size(self) -> float:
        return self.train.step_size or self.train.epsilon

    @property
    def export_formats(self) -> tuple[str, ...]:
        return _csv(self.run.export)

    @property
    def attacks(self) -> tuple[str, ...]:
        return _csv(self.eval.eval_attacks)


def scaled_epochs(epochs: int, scale: float, minimum: int = 1) -> int:
    """round(epochs * scale), at least `minimum` (a stage of 0 epochs stays skipped)."""
    if epochs <= 0:
        return 0
    return max(minimum, int(round(epochs * scale)))


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())
