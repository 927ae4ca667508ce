"""Transfer attacks: PGD crafted on a float model, evaluated on models without gradients (TFLite files)."""

import time

import numpy as np

from frep_tf.attacks import common, pgd


def transfer_accuracy(source_model_fn, target_model_fn, x, y, **kwargs):
    """Accuracy of target_model_fn (e.g. a TFLite model) on PGD examples crafted on
    source_model_fn (e.g. the float Keras model it was exported from); see transfer_accuracies."""
    return transfer_accuracies(source_model_fn, {"target": target_model_fn}, x, y, **kwargs)["target"]


def transfer_accuracies(
    source_model_fn,
    targets,
    x,
    y,
    *,
    epsilon,
    steps=50,
    step_size=None,
    restarts=1,
    batch_size=256,
    seed=0,
    progress=True,
):
    """PGD examples crafted once on source_model_fn, evaluated on each of `targets` ({name: model_fn}).

    Returns {name: {"accuracy": target correct on clean and adversarial input, "clean_accuracy",
    "source_accuracy": the source model's own PGD accuracy, "samples", "seconds"}}.
    """
    common.require_gradients(source_model_fn)
    start = time.perf_counter()
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32).reshape(-1)
    step_size = epsilon / 4 if step_size is None else step_size
    compiled = common.compile_batch_fn(
        lambda xb, yb, s: pgd.pgd(
            source_model_fn, xb, yb, eps=epsilon, steps=steps, step_size=step_size, restarts=restarts, seed=s
        ),
        x.shape,
        model_fn=source_model_fn,
    )
    x_adv, source_ok = common.run_batched(
        compiled, x, y, batch_size=batch_size, seed=seed, desc="transfer pgd", progress=progress
    )
    source_clean = common.predictor(source_model_fn, x.shape)(x, batch_size) == y
    source_accuracy = float(np.mean(source_clean & source_ok))
    crafted = time.perf_counter() - start
    out = {}
    for name, target_model_fn in targets.items():
        t = time.perf_counter()
        predict_target = common.predictor(target_model_fn, x.shape)
        target_clean = predict_target(x, batch_size) == y
        target_adv = predict_target(x_adv, batch_size) == y
        out[name] = {
            "accuracy": float(np.mean(target_clean & target_adv)),
            "clean_accuracy": float(np.mean(target_clean)),
            "source_accuracy": source_accuracy,
            "samples": int(len(y)),
            "seconds": round(crafted + time.perf_counter() - t, 3),
        }
    return out
