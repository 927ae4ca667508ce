"""validate(cfg): every flag value and combination checked before any heavy work; a bad one raises
ConfigError with one line naming the flag, its value and what is allowed (the vocabularies and defaults
live in frep_tf.config)."""

from __future__ import annotations

import dataclasses
import math
import os

from frep_tf.config import (
    EVAL_ATTACKS,
    EXPORT_FORMATS,
    SECTIONS,
    SINGLE_STEP_OBJECTIVES,
    Config,
    ConfigError,
    TrainConfig,
)


def _bad(flag: str, value, allowed: str) -> ConfigError:
    return ConfigError(f"--{flag}={value}: {allowed}")


def validate(cfg: Config) -> Config:
    """Check every value and combination before any heavy work; raise ConfigError naming the flag."""
    _check_types(cfg)
    _check_training(cfg)
    _check_method(cfg)
    _check_pruning(cfg)
    _check_evaluation(cfg)
    _check_run(cfg)
    return cfg


def _check_types(cfg: Config) -> None:
    """Every field: one of its choices, of its type, finite."""
    for section in SECTIONS:
        obj = getattr(cfg, section)
        for field in dataclasses.fields(obj):
            choices = field.metadata.get("choices")
            value = getattr(obj, field.name)
            if choices and value not in choices:
                raise _bad(field.name, value, f"allowed values are {', '.join(choices)}")
            expected = type(field.default)
            ok = isinstance(value, expected) or (expected is float and isinstance(value, int))
            if not ok or (expected is not bool and isinstance(value, bool)):
                raise _bad(field.name, value, f"must be of type {expected.__name__}")
            # absl parses "nan" and "inf" as floats; NaN passes every `x < 0` style check below.
            if expected is float and not math.isfinite(value):
                raise _bad(field.name, value, "must be a finite number")


def _check_training(cfg: Config) -> None:
    """Data, model, training objective and optimizer, ensemble, sparsity."""
    d, t, e, p = cfg.data, cfg.train, cfg.ensemble, cfg.prune
    if not d.dataset.strip():
        raise _bad("dataset", "''", "name a dataset (digits, synthetic, cifar10, ...)")
    for flag, value in [("batch_size", d.batch_size), ("eval_batch_size", d.eval_batch_size), ("epochs", t.epochs)]:
        if value < 1:
            raise _bad(flag, value, "must be a positive integer")
    if not (0 <= d.val_size < 1 or (d.val_size >= 1 and float(d.val_size).is_integer())):
        raise _bad("val_size", d.val_size, "a fraction in [0, 1) or a whole count >= 1")
    if d.train_samples < 0:
        raise _bad("train_samples", d.train_samples, "must be >= 0 (0 = every training example)")
    if d.image_size < 0:
        raise _bad("image_size", d.image_size, "must be >= 0 (0 keeps the images' own size)")
    if cfg.model.width <= 0:
        raise _bad("width", cfg.model.width, "must be a positive number")
    if not 0 <= t.epsilon <= 1:
        raise _bad("epsilon", t.epsilon, "must lie in [0, 1] (pixels are in [0, 1]; 8/255 = 0.0314 is usual)")
    if t.objective != "natural" and t.epsilon == 0:
        raise _bad("epsilon", t.epsilon, f"must be > 0 for --objective={t.objective} (or use --objective=natural)")
    if not 0 <= t.step_size <= 1:
        raise _bad("step_size", t.step_size, "must lie in [0, 1]; 0 means epsilon")
    if t.perturbation != "fgsm_rs" and t.objective not in SINGLE_STEP_OBJECTIVES:
        raise _bad(
            "perturbation",
            t.perturbation,
            f"only for the single-step objectives ({', '.join(SINGLE_STEP_OBJECTIVES)}); --objective={t.objective} "
            "perturbs with its own multi-step attack: drop --perturbation",
        )
    if t.nfgsm_noise < 0:
        raise _bad("nfgsm_noise", t.nfgsm_noise, "must be >= 0 (the noise is uniform in +-nfgsm_noise x epsilon)")
    if t.nfgsm_noise != TrainConfig.nfgsm_noise and t.perturbation != "nfgsm":
        raise _bad("nfgsm_noise", t.nfgsm_noise, "only with --perturbation=nfgsm")
    if t.sre_lambda < 0:
        raise _bad("sre_lambda", t.sre_lambda, "must be >= 0")
    if t.pgd_steps < 1:
        raise _bad("pgd_steps", t.pgd_steps, "must be a positive integer")
    if not 0 < t.pgd_step_size <= 1:
        raise _bad("pgd_step_size", t.pgd_step_size, "must lie in (0, 1]")
    if t.trades_beta < 0:
        raise _bad("trades_beta", t.trades_beta, "must be >= 0")
    if not t.lr > 0:
        raise _bad("lr", t.lr, "must be > 0")
    if not 0 <= t.momentum < 1:
        raise _bad("momentum", t.momentum, "must lie in [0, 1)")
    if t.weight_decay < 0:
        raise _bad("weight_decay", t.weight_decay, "must be >= 0")
    if not 0 <= e.ensemble_decay < 1:
        raise _bad("ensemble_decay", e.ensemble_decay, "must lie in [0, 1)")
    if e.ensemble_warmup < 0:
        raise _bad("ensemble_warmup", e.ensemble_warmup, "must be >= 0")
    if e.ensemble_interval < 1:
        raise _bad("ensemble_interval", e.ensemble_interval, "must be a positive integer")
    if not 0 <= p.sparsity < 1:
        raise _bad("sparsity", p.sparsity, "must lie in [0, 1) (0.99 removes 99 % of the weights)")


def _check_pruning(cfg: Config) -> None:
    """When and how pruning happens."""
    p = cfg.prune
    scale_note = f" (after --epoch_scale={cfg.method.epoch_scale:g})" if cfg.method.epoch_scale != 1 else ""
    if p.sparsity > 0 and cfg.method.method in ("frep", "lwm"):
        if p.prune_epoch < 0 or not cfg.prune_epoch < cfg.epochs:
            raise _bad("prune_epoch", p.prune_epoch, f"must lie in [0, --epochs={cfg.epochs}){scale_note}")
        if p.prune_schedule == "gradual":
            end = cfg.prune_end_epoch
            if not cfg.prune_epoch < end <= cfg.epochs:
                raise _bad(
                    "prune_end_epoch", p.prune_end_epoch, f"must lie in ({cfg.prune_epoch}, {cfg.epochs}]{scale_note}"
                )
        elif p.prune_end_epoch:
            raise _bad("prune_end_epoch", p.prune_end_epoch, "only with --prune_schedule=gradual (oneshot prunes once)")
    if not 0 <= p.min_layer_density <= 1 - p.sparsity:
        raise _bad(
            "min_layer_density",
            p.min_layer_density,
            f"must lie in [0, 1 - --sparsity] = [0, {1 - p.sparsity:.4g}] (it is taken from the global budget)",
        )
    if p.min_layer_density and p.structured:
        raise _bad(
            "min_layer_density",
            p.min_layer_density,
            "only for unstructured pruning (--structured keeps a channel per layer)",
        )


def _check_evaluation(cfg: Config) -> None:
    """The final evaluation's attacks and sample counts."""
    ev = cfg.eval
    attacks = cfg.attacks
    if not attacks or any(a not in EVAL_ATTACKS for a in attacks):
        raise _bad("eval_attacks", ev.eval_attacks, f"a comma-separated subset of {', '.join(EVAL_ATTACKS)}")
    for flag, value in [
        ("eval_pgd_steps", ev.eval_pgd_steps),
        ("val_pgd_steps", ev.val_pgd_steps),
        ("tflite_square_queries", ev.tflite_square_queries),
    ]:
        if value < 1:
            raise _bad(flag, value, "must be a positive integer")
    if ev.eval_pgd_restarts < 1:
        raise _bad("eval_pgd_restarts", ev.eval_pgd_restarts, "must be a positive integer")
    for flag, value in [
        ("eval_samples", ev.eval_samples),
        ("val_samples", ev.val_samples),
        ("eval_autoattack_samples", ev.eval_autoattack_samples),
    ]:
        if value < 0:
            raise _bad(flag, value, "must be >= 0 (0 = all)")


def _check_run(cfg: Config) -> None:
    """Exports, modes, model files, workdir, distribution."""
    ev, r = cfg.eval, cfg.run
    formats = cfg.export_formats
    if any(f not in EXPORT_FORMATS for f in formats):
        raise _bad("export", r.export, f"a comma-separated subset of {', '.join(EXPORT_FORMATS)} (or empty)")
    if r.mode == "evaluate" and not ev.model:
        raise _bad(
            "model", "''", "--mode=evaluate needs --model=PATH (a .keras file, SavedModel directory or .tflite file)"
        )
    if r.mode == "evaluate" and ev.model.endswith(".tflite"):
        gradient = [a for a in cfg.attacks if a not in ("clean", "square")]
        if gradient:
            raise _bad(
                "eval_attacks",
                ev.eval_attacks,
                f"{', '.join(gradient)} need gradients, which a .tflite model has not: use clean, square "
                "(and --transfer_from=FLOAT_MODEL for transfer PGD)",
            )
    if r.mode == "predict":
        for flag, value, what in (
            ("model", ev.model, "an exported model file"),
            ("images", ev.images, "a folder or .npz"),
        ):
            if not value:
                raise _bad(flag, "''", f"--mode=predict needs --{flag}=PATH ({what})")
        if not os.path.exists(ev.images):
            raise _bad("images", ev.images, "no such file or directory")
    elif ev.images or ev.predictions:
        flag = "images" if ev.images else "predictions"
        raise _bad(flag, getattr(ev, flag), "only with --mode=predict")
    if ev.predictions and not os.path.isdir(os.path.dirname(os.path.abspath(ev.predictions))):
        raise _bad("predictions", ev.predictions, "its directory does not exist")
    model_flag_used = r.mode in ("evaluate", "predict")
    for flag, path in (("model", ev.model if model_flag_used else ""), ("transfer_from", ev.transfer_from)):
        if path and not os.path.exists(path):
            raise _bad(flag, path, "no such file or directory")
    if ev.transfer_from and not ev.model.endswith(".tflite"):
        raise _bad("transfer_from", ev.transfer_from, "only with --mode=evaluate --model=FILE.tflite")
    if ev.transfer_from.endswith(".tflite"):
        raise _bad(
            "transfer_from", ev.transfer_from, "must be a float model (.keras or SavedModel): PGD needs gradients"
        )
    if r.mode in ("experiment", "report", "cost") and not r.workdir.strip():
        raise _bad("workdir", "''", f"--mode={r.mode} needs the experiment's --workdir")
    if r.mode in ("experiment", "cost") and not r.experiment:
        raise _bad("experiment", "''", f"--mode={r.mode} needs --experiment=FILE (see configs/experiments/)")
    if r.mode not in ("experiment", "report", "cost") and r.experiment:
        raise _bad("experiment", r.experiment, "only with --mode=experiment, --mode=cost or --mode=report (its claims)")
    for flag, what in (("cost_steps", "optimizer steps timed per stage and round"), ("cost_rounds", "rounds")):
        if getattr(r, flag) < 1:
            raise _bad(flag, getattr(r, flag), f"must be an integer >= 1 ({what} of --mode=cost)")
    if r.mode != "experiment" and (r.experiment_shard or r.experiment_results):
        flag = next(f for f in ("experiment_shard", "experiment_results") if getattr(r, f))
        raise _bad(flag, getattr(r, flag), "only with --mode=experiment")
    if r.mode == "report" and not os.path.isdir(r.workdir):
        raise _bad("workdir", r.workdir, "--mode=report needs an existing experiment workdir")
    if r.mode == "train" and ev.model:
        raise _bad("model", ev.model, "only with --mode=evaluate (train mode exports its own model)")
    if r.mode == "train" and not r.workdir.strip():
        raise _bad("workdir", "''", "name an output directory")
    if r.workdir:
        _check_workdir(r.workdir)
    if r.jit_compile and r.distribution == "mirrored":
        raise _bad(
            "jit_compile",
            True,
            "not with --distribution=mirrored (XLA compilation of the replicated train step fails); drop one of them",
        )
    if r.verbose not in (-1, 0, 1, 2):
        raise _bad("verbose", r.verbose, "allowed values are -1, 0, 1, 2")
    if r.seed < 0:
        raise _bad("seed", r.seed, "must be >= 0")


def _check_method(cfg: Config) -> None:
    m, p = cfg.method, cfg.prune
    method = m.method
    if not m.epoch_scale > 0:
        raise _bad("epoch_scale", m.epoch_scale, "must be > 0 (0.1 runs a tenth of every stage's epochs)")
    # A stage's length is never 0: a stage is not left out by a flag (finetune's 0 is its default, the
    # method's own count).
    for flag in ("pretrain_epochs", "admm_epochs", "score_epochs"):
        if getattr(m, flag) < 1:
            raise _bad(
                flag, getattr(m, flag), "must be a positive integer (a stage cannot be left out by giving it 0 epochs)"
            )
    for flag, zero in (("finetune_epochs", "the method's own count"), ("mad_batches", "one epoch")):
        if getattr(m, flag) < 0:
            raise _bad(flag, getattr(m, flag), f"must be >= 0 (0 = {zero})")
    for flag in ("admm_interval", "mad_mask_steps"):
        if getattr(m, flag) < 1:
            raise _bad(flag, getattr(m, flag), "must be a positive integer")
    for flag in ("admm_rho", "finetune_lr", "mad_mask_lr"):
        if not getattr(m, flag) > 0:
            raise _bad(flag, getattr(m, flag), "must be > 0")
    if m.mad_beta < 0:
        raise _bad("mad_beta", m.mad_beta, "must be >= 0")
    if method != "frep" and p.sparsity == 0 and not (method == "iwi" and m.iwi_from):
        raise _bad("sparsity", p.sparsity, f"--method={method} prunes: give --sparsity in (0, 1)")
    if method not in ("frep", "posthoc") and p.structured:
        raise _bad(
            "structured",
            True,
            f"--method={method} prunes single weights; structured pruning is FReP-CH (--method=frep)",
        )
    if method not in ("frep", "posthoc") and cfg.model.parameterization == "channel":
        raise _bad("parameterization", "channel", f"--method={method} masks single weights: use plain or hadamard")
    if method in ("admm", "hydra", "mad") and p.prune_schedule != "oneshot":
        raise _bad("prune_schedule", p.prune_schedule, f"--method={method} has its own pruning stages (oneshot only)")
    if method == "harp" and p.prune_schedule != "oneshot":
        raise _bad("prune_schedule", p.prune_schedule, "--method=harp has its own pruning stages (oneshot only)")
    if not m.harp_gamma > 0:
        raise _bad("harp_gamma", m.harp_gamma, "must be > 0")
    if m.harp_gamma_steps < 1:
        raise _bad("harp_gamma_steps", m.harp_gamma_steps, "must be a positive integer")
    if not 0 < m.harp_init_density <= 1:
        raise _bad("harp_init_density", m.harp_init_density, "must lie in (0, 1]")
    if method not in ("frep", "lwm", "posthoc") and cfg.run.distribution != "none":
        raise _bad(
            "distribution",
            cfg.run.distribution,
            f"--method={method} is tested on one device only (HYDRA's and HARP's masks and MAD's saliency pass assign "
            "variables inside the step); use --distribution=none",
        )
    if m.lottery_rounds < 1:
        raise _bad("lottery_rounds", m.lottery_rounds, "must be a positive integer")
    if method == "lottery" and not 0 <= m.rewind_epoch < cfg.epochs:
        raise _bad("rewind_epoch", m.rewind_epoch, "must lie in [0, --epochs) (0 rewinds to the initialisation)")
    if method in ("lottery", "iwi") and cfg.model.parameterization == "channel":
        raise _bad("parameterization", "channel", f"--method={method} masks or copies single weights: use plain")
    if method == "iwi":
        if cfg.model.parameterization != "plain":
            raise _bad("parameterization", cfg.model.parameterization, "--method=iwi trains a plain large network")
        if m.iwi_from and not os.path.exists(m.iwi_from):
            raise _bad("iwi_from", m.iwi_from, "no such file or directory")
        if m.iwi_mapping == "narrow" and not 0 < m.iwi_source_width < cfg.model.width:
            raise _bad(
                "iwi_source_width",
                m.iwi_source_width,
                f"must lie in (0, --width={cfg.model.width:g}) for the narrow mapping",
            )
        if m.iwi_mapping == "narrow" and m.iwi_fill == "zero":
            raise _bad(
                "iwi_fill",
                "zero",
                "with --iwi_mapping=narrow the zero-filled extra channels get no gradient and never train: "
                "use --iwi_fill=tiny",
            )
        if not m.iwi_tiny > 0:
            raise _bad("iwi_tiny", m.iwi_tiny, "must be > 0")
    elif m.iwi_from:
        raise _bad("iwi_from", m.iwi_from, "only with --method=iwi")
    if m.sparse_init and cfg.model.parameterization != "plain":
        raise _bad("sparse_init", True, "re-initialises plain kernels: use it with --parameterization=plain")


def _check_workdir(workdir: str) -> None:
    """The work directory must be a directory we can create or write into (checked before any work)."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise _bad("workdir", workdir, "exists and is not a directory")
    existing = os.path.abspath(workdir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise _bad("workdir", workdir, f"cannot be created: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _bad("workdir", workdir, f"cannot be written: no write permission in {existing}")
