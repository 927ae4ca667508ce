"""The final evaluation protocol of a run (DESIGN §7): the exported model's attacks, and every exported
TFLite file on the LiteRT interpreter. Configured by a Config; used by frep_tf.pipeline."""

from __future__ import annotations

import os
import sys

from frep_tf.config import Config


def progress_bars(cfg: Config) -> bool:
    """Keras-style progress bars: --verbose=1, or --verbose=-1 on a terminal."""
    return cfg.run.verbose == 1 or (cfg.run.verbose < 0 and sys.stdout.isatty())


def evaluate_classifier(model_fn, x, y, cfg: Config):
    from frep_tf import evaluation

    n = cfg.eval.eval_samples
    if n:
        x, y = x[:n], y[:n]
    return evaluation.evaluate_model(
        model_fn,
        x,
        y,
        attacks=cfg.attacks,
        epsilon=cfg.train.epsilon,
        batch_size=cfg.data.eval_batch_size,
        seed=cfg.run.seed,
        pgd_steps=cfg.eval.eval_pgd_steps,
        mim_steps=cfg.eval.eval_pgd_steps,
        progress=progress_bars(cfg),
    )


def evaluate_deployed(paths: dict, source_model_fn, x, y, cfg: Config, num_classes: int) -> dict:
    """Every exported TFLite file, on the LiteRT interpreter: clean accuracy, Square run on the
    interpreter itself, and PGD crafted once on the float model and transferred to each file (a
    quantised file can look robust to white-box attacks because its gradients are masked; these two
    do not use its gradients). `paths` maps export format -> file."""
    from frep_tf import evaluation
    from frep_tf.model_io import load_classifier

    n = cfg.eval.eval_samples
    if n:
        x, y = x[:n], y[:n]
    targets = {
        fmt: load_classifier(path, input_shape=x.shape[1:], num_classes=num_classes) for fmt, path in paths.items()
    }
    transfer = transfer_pgd(source_model_fn, targets, x, y, cfg)
    out = {}
    for fmt, path in paths.items():
        ev = evaluation.evaluate_model(
            targets[fmt],
            x,
            y,
            attacks=("clean", "square"),
            epsilon=cfg.train.epsilon,
            batch_size=cfg.data.eval_batch_size,
            seed=cfg.run.seed,
            square_queries=cfg.eval.tflite_square_queries,
            sanity=False,
            progress=progress_bars(cfg),
        )
        out[fmt] = {
            "path": os.path.relpath(path, cfg.run.workdir or "."),
            "clean": ev["clean"],
            "square": ev["square"] | {"queries": cfg.eval.tflite_square_queries},
            "transfer_pgd": transfer[fmt],
        }
    return out


def transfer_pgd(source_model_fn, targets: dict, x, y, cfg: Config) -> dict:
    """PGD (--eval_pgd_steps) crafted on `source_model_fn`, evaluated on each of `targets`."""
    from frep_tf import evaluation

    return evaluation.transfer_accuracies(
        source_model_fn,
        targets,
        x,
        y,
        epsilon=cfg.train.epsilon,
        steps=cfg.eval.eval_pgd_steps,
        batch_size=cfg.data.eval_batch_size,
        seed=cfg.run.seed,
        progress=progress_bars(cfg),
    )
