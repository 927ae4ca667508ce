"""The final evaluation protocol of a run (docs/evaluation.md): the exported model's attacks, and every exported
TFLite file on the LiteRT interpreter, configured by a Config (a training run's end, frep_tf.run.finish, uses
it too); and `--mode=evaluate`, the same protocol on any saved model."""

from __future__ import annotations

import os
import sys

from frep_tf.config import Config
from frep_tf.data.splits import dataset_arrays
from frep_tf.io_utils import write_json_atomic
from frep_tf.results import RESULTS_SCHEMA_VERSION, info_dict, summary_table
from frep_tf.run.setup import load_data, setup_tf
from frep_tf.run.timing import Stages, enter_stage
from frep_tf.workdir import results_path


def progress_bars(cfg: Config) -> bool:
    """Keras-style progress bars: --verbose=1, or --verbose=-1 on a terminal."""
    return cfg.run.verbose == 1 or (cfg.run.verbose < 0 and sys.stdout.isatty())


AUTOATTACK_FAMILY = ("autoattack", "apgd-ce", "apgd-t", "fab-t")


def evaluate_classifier(model_fn, x, y, cfg: Config):
    """The final evaluation: every --eval_attacks attack on the first --eval_samples test examples;
    with --eval_autoattack_samples, the AutoAttack family runs on a fixed leading subset instead, in a
    second evaluation that repeats clean and PGD on that subset (so its sanity checks compare attacks on
    the same points). That evaluation is kept under "autoattack_subset"; its AutoAttack entries are
    copied to the top level (their "samples" says how many points they saw)."""
    n = cfg.eval.eval_samples
    if n:
        x, y = x[:n], y[:n]
    subset = cfg.eval.eval_autoattack_samples
    attacks = cfg.attacks
    family = [a for a in attacks if a in AUTOATTACK_FAMILY]
    split = bool(family) and 0 < subset < len(y)
    main = _evaluate(model_fn, x, y, cfg, [a for a in attacks if a not in family] if split else attacks)
    if not split:
        return main
    aa = _evaluate(model_fn, x[:subset], y[:subset], cfg, ["clean", "pgd", *family])
    for name in family:
        main[name] = aa[name]
    main["autoattack_subset"] = aa
    if "sanity" in main and "sanity" in aa:  # the run's verdict covers both evaluations
        passed = bool(aa["sanity"]["passed"])
        main["sanity"]["checks"]["autoattack_subset"] = {"passed": passed, "samples": int(subset)}
        main["sanity"]["passed"] = bool(main["sanity"]["passed"]) and passed
    return main


def _evaluate(model_fn, x, y, cfg: Config, attacks):
    from frep_tf import evaluation

    return evaluation.evaluate_model(
        model_fn,
        x,
        y,
        attacks=attacks,
        epsilon=cfg.train.epsilon,
        batch_size=cfg.data.eval_batch_size,
        seed=cfg.run.seed,
        pgd_steps=cfg.eval.eval_pgd_steps,
        pgd_restarts=cfg.eval.eval_pgd_restarts,
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


def input_gradient_l1(model_fn, x, y, batch_size: int = 256, limit: int = 1000) -> dict:
    """Mean L1 norm of the gradient of the margin (logit of the label minus the largest other logit)
    with respect to the input, over the first `limit` test points: a local Lipschitz proxy that the
    sparsity-robustness theory ties to robust accuracy."""
    import numpy as np
    import tensorflow as tf

    x, y = x[:limit], y[:limit]
    norms = []
    for i in range(0, len(x), batch_size):
        xb = tf.convert_to_tensor(x[i : i + batch_size], tf.float32)
        yb = tf.convert_to_tensor(y[i : i + batch_size], tf.int32)
        with tf.GradientTape() as tape:
            tape.watch(xb)
            logits = tf.convert_to_tensor(model_fn(xb))
            onehot = tf.one_hot(yb, tf.shape(logits)[-1])
            true = tf.reduce_sum(logits * onehot, -1)
            other = tf.reduce_max(logits - 1e9 * onehot, -1)
            margin = tf.reduce_sum(true - other)
        grad = tape.gradient(margin, xb)
        norms.append(tf.reduce_sum(tf.abs(tf.reshape(grad, [tf.shape(grad)[0], -1])), -1).numpy())
    values = np.concatenate(norms) if norms else np.zeros(0)
    return {"mean": float(values.mean()) if values.size else None, "samples": int(values.size)}


def run_evaluate(cfg: Config) -> dict:
    """`--mode=evaluate`: --model (and --transfer_from's PGD) on the test split; results.json when there is a
    --workdir."""
    from frep_tf import resume
    from frep_tf.model_io import load_classifier

    stages = Stages()
    with stages("setup"):
        setup_tf(cfg)
    with stages("data"):
        splits = load_data(cfg)
        info = splits.info
        x_test, y_test = dataset_arrays(splits.test)
    with stages("load"):
        model_fn = load_classifier(cfg.eval.model, input_shape=info.image_shape, num_classes=info.num_classes)
        source = None
        if cfg.eval.transfer_from:
            source = load_classifier(
                cfg.eval.transfer_from, input_shape=info.image_shape, num_classes=info.num_classes, flag="transfer_from"
            )
    with stages("evaluate"):
        evaluation = evaluate_classifier(model_fn, x_test, y_test, cfg)
        if source is not None:
            n = cfg.eval.eval_samples or None
            evaluation["transfer_pgd"] = transfer_pgd(source, {"model": model_fn}, x_test[:n], y_test[:n], cfg)["model"]
    enter_stage("results")
    results = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "mode": "evaluate",
        "dataset": info_dict(info),
        "model": {"evaluated_path": os.path.abspath(cfg.eval.model)},
        "evaluation": evaluation,
        "timings": stages.seconds | {"total": stages.total()},
    }
    if cfg.run.workdir:
        # Nothing is written before the evaluation is done: a bad model file leaves no trace.
        resume.prepare(cfg)
        write_json_atomic(results_path(cfg.run.workdir), results)
    print(summary_table(results))
    return results
