"""Robustness report of any classifier (DESIGN.md section 7): clean, FGSM, PGD, MIM, Square and
AutoAttack accuracies with sanity checks, a Markdown row shaped like Table I of the FReP paper,
and TFLite models (LiteRT interpreter, no gradients) through Square and transfer attacks.

A model is a callable ``model_fn(x) -> logits`` on float32 inputs in [0, 1]; for a Keras model
pass ``lambda x: model(x, training=False)``. Accuracies count a point as robust only if it is
classified correctly on the clean input and on the attack's output.
"""

import dataclasses
import threading
import time

import numpy as np
import tensorflow as tf

from frep_tf.attacks import autoattack, checks, common, fgsm, pgd, square
from frep_tf.config import EVAL_ATTACKS as ATTACKS
from frep_tf.config import TABLE_I_COLUMNS as TABLE_COLUMNS

ALIASES = {"aa": "autoattack"}
GRADIENT_FREE = ("clean", "square")
SWEEP_MAX_EPS = 0.5  # an L-inf ball of radius 0.5 reaches the constant mid-grey image


def _canonical_attacks(attacks):
    if isinstance(attacks, str):  # "clean,fgsm,pgd" as a flag gives it
        attacks = [a for a in attacks.split(",") if a.strip()]
    names = [ALIASES.get(a.strip().lower(), a.strip().lower()) for a in attacks]
    unknown = [a for a in names if a not in ATTACKS]
    if unknown:
        raise ValueError(f"attacks must be among {ATTACKS}. Received: attacks={list(attacks)}")
    return list(dict.fromkeys(names))  # drops duplicates, keeps the order


def _entry(correct, seconds, **extra):
    accuracy = float(np.mean(correct)) if correct.size else 0.0
    return {"accuracy": accuracy, "samples": int(correct.size), "seconds": round(seconds, 3), **extra}


def _single_attack_fn(name, model_fn, epsilon, s):
    """Batch function (x, y, seed) -> x_adv for the attacks that are not AutoAttack stages."""
    if name == "fgsm":
        return lambda x, y, seed: fgsm.fgsm(model_fn, x, y, eps=epsilon)
    if name in ("pgd", "mim"):
        attack = pgd.pgd if name == "pgd" else pgd.mim
        kwargs = {"decay": s["mim_decay"]} if name == "mim" else {"restarts": s["pgd_restarts"]}
        return lambda x, y, seed: attack(
            model_fn, x, y, eps=epsilon, steps=s[f"{name}_steps"], step_size=s[f"{name}_step_size"], seed=seed, **kwargs
        )
    if name == "square":
        return lambda x, y, seed: square.square(
            model_fn,
            x,
            y,
            eps=epsilon,
            queries=s["square_queries"],
            p_init=s["square_p_init"],
            rescale_schedule=s["square_rescale_schedule"],
            seed=seed,
        )
    raise ValueError(name)


def evaluate_model(
    model_fn,
    x,
    y,
    *,
    epsilon,
    attacks=("clean", "fgsm", "pgd", "mim"),
    batch_size=256,
    seed=0,
    pgd_steps=50,
    pgd_step_size=None,
    pgd_restarts=1,
    mim_steps=50,
    mim_step_size=None,
    mim_decay=1.0,
    square_queries=5000,
    square_p_init=0.8,
    square_rescale_schedule=None,
    autoattack_settings=autoattack.STANDARD,
    sanity=True,
    sweep_factors=(1, 2, 4, 8),
    sweep_samples=100,
    sweep_steps=20,
    progress=True,
    per_point=None,
):
    """Robust accuracy of model_fn on (x, y) under each of `attacks` (L-inf, radius epsilon).

    Returns {attack: {"accuracy", "samples", "seconds"}, "worst_case": the same over all attacks
    run, "sanity": {"passed", "checks"} (if sanity), "config": the settings used}; "clean" is
    always reported and "autoattack" adds "after": its robust accuracy after each stage. Step
    sizes default to epsilon / 4 (2/255 at 8/255, the usual PGD-50 setting); "autoattack" uses the
    published standard settings unless autoattack_settings says otherwise. Square's window schedule
    (made for 10000 queries) is stretched to the budget when `square_rescale_schedule` is True; None
    stretches it for budgets below AutoAttack's 5000 queries (where the unstretched schedule would
    keep large windows to the end) and keeps it as AutoAttack runs it otherwise. The sanity eps sweep
    runs PGD-`sweep_steps` on the first `sweep_samples` points at epsilon times `sweep_factors`
    (capped at 0.5). A dict passed as `per_point` receives, per attack, the boolean array of the
    points still classified correctly (for per-point comparisons with other implementations).
    """
    names = _canonical_attacks(attacks)
    differentiable = getattr(model_fn, "differentiable", True) is not False
    needs_gradients = [a for a in names if a not in GRADIENT_FREE]
    if needs_gradients and not differentiable:
        raise common.NotDifferentiableError(
            f"{needs_gradients} need input gradients, which this model does not have; on a "
            f"TFLite model run {GRADIENT_FREE} or use transfer_accuracy."
        )
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0. Received: epsilon={epsilon}")
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32).reshape(-1)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must be non-empty and of equal length. Received: {len(x)} inputs, {len(y)} labels")
    settings = {
        "epsilon": float(epsilon),
        "batch_size": batch_size,
        "seed": seed,
        "pgd_steps": pgd_steps,
        "pgd_restarts": pgd_restarts,
        "pgd_step_size": epsilon / 4 if pgd_step_size is None else pgd_step_size,
        "mim_steps": mim_steps,
        "mim_decay": mim_decay,
        "mim_step_size": epsilon / 4 if mim_step_size is None else mim_step_size,
        "square_queries": square_queries,
        "square_p_init": square_p_init,
        "square_rescale_schedule": (
            square_queries < autoattack.STANDARD.square_queries
            if square_rescale_schedule is None
            else bool(square_rescale_schedule)
        ),
    }

    results, max_perturbation = {}, {}
    start = time.perf_counter()
    clean_correct = common.predictor(model_fn, x.shape)(x, batch_size) == y
    results["clean"] = _entry(clean_correct, time.perf_counter() - start)
    worst = clean_correct.copy()
    aa_after, square_found = None, None
    for name in names:
        if name == "clean":
            continue
        start, extra = time.perf_counter(), {}
        if name in ("autoattack", "apgd-ce", "apgd-t", "fab-t"):
            stages = autoattack.ATTACKS if name == "autoattack" else (name,)
            res = autoattack.run(
                model_fn,
                x,
                y,
                eps=epsilon,
                attacks=stages,
                settings=autoattack_settings,
                batch_size=batch_size,
                seed=seed,
                progress=progress,
                clean_correct=clean_correct,
            )
            x_adv, correct = res.x_adv, res.robust
            if name == "autoattack":
                aa_after = extra["after"] = res.accuracy_after
                square_found = res.broken_by.get("square")
                settings["autoattack"] = dataclasses.asdict(autoattack_settings)
        else:
            fn = _single_attack_fn(name, model_fn, epsilon, settings)
            compiled = common.compile_batch_fn(fn, x.shape, model_fn=model_fn)
            # The seed stream is tied to the attack, not to its position in `attacks`.
            x_adv, still_correct = common.run_batched(
                compiled,
                x,
                y,
                batch_size=batch_size,
                seed=seed,
                stream=ATTACKS.index(name),
                desc=name,
                progress=progress,
            )
            correct = clean_correct & still_correct
        results[name] = _entry(correct, time.perf_counter() - start, **extra)
        max_perturbation[name] = float(np.max(np.abs(x_adv - x)))
        worst &= correct
        if per_point is not None:
            per_point[name] = correct
    if per_point is not None:
        per_point["clean"] = clean_correct
    if len(results) > 1:
        results["worst_case"] = _entry(worst, sum(r["seconds"] for r in results.values()))

    if sanity:
        results["sanity"] = _sanity(
            model_fn,
            x,
            y,
            clean_correct,
            results,
            aa_after,
            square_found,
            max_perturbation,
            epsilon=epsilon,
            batch_size=batch_size,
            seed=seed,
            differentiable=differentiable,
            sweep_factors=sweep_factors,
            sweep_samples=sweep_samples,
            sweep_steps=sweep_steps,
            progress=progress,
        )
    results["config"] = settings
    return results


def eps_sweep(model_fn, x, y, eps_values, *, steps, batch_size, seed=0, progress=True, clean_correct=None):
    """PGD-`steps` robust accuracy (step eps/4) at each eps; one graph trace for all of them."""
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    if clean_correct is None:
        clean_correct = common.predictor(model_fn, x.shape)(x, batch_size) == y
    compiled = common.compile_batch_fn(
        lambda xb, yb, s, eps: pgd.pgd(model_fn, xb, yb, eps=eps, steps=steps, step_size=eps / 4, seed=s),
        x.shape,
        (tf.TensorSpec((), tf.float32),),
        model_fn=model_fn,
    )
    accuracies = []
    for i, eps in enumerate(eps_values):
        _, ok = common.run_batched(
            compiled,
            x,
            y,
            batch_size=batch_size,
            seed=seed,
            stream=100 + i,
            extra=(np.float32(eps),),
            desc=f"sweep eps={eps:.3g}",
            progress=progress,
        )
        accuracies.append(float(np.mean(clean_correct & ok)))
    return accuracies


def _sanity(
    model_fn,
    x,
    y,
    clean_correct,
    results,
    aa_after,
    square_found,
    max_perturbation,
    *,
    epsilon,
    batch_size,
    seed,
    differentiable,
    sweep_factors,
    sweep_samples,
    sweep_steps,
    progress,
):
    n = len(y)
    accuracies = {k: v["accuracy"] for k, v in results.items() if k in ATTACKS}
    head = slice(0, min(n, max(batch_size, 1)))
    found = {
        "order": checks.check_order(accuracies),
        "black_box": checks.check_black_box(accuracies, samples=n),
        "square_in_autoattack": (
            checks.check_square_in_autoattack(aa_after, samples=n)
            if aa_after
            else {"passed": None, "message": "AutoAttack was not run"}
        ),
        "perturbation": checks.check_perturbation(max_perturbation, epsilon),
        "zero_gradients": checks.check_zero_gradients(model_fn, x[head], y[head]),
        "deterministic": checks.check_deterministic(model_fn, x[head]),
        "logits": checks.check_logits(model_fn, x[head]),
    }
    if differentiable and square_found is not None:
        checks.explain_square_finds(
            found["square_in_autoattack"],
            model_fn,
            x[square_found],
            y[square_found],
            eps=epsilon,
            batch_size=batch_size,
            seed=seed,
        )
    if differentiable and sweep_factors and sweep_samples > 0 and epsilon > 0:
        eps_values = sorted({min(float(f) * epsilon, SWEEP_MAX_EPS) for f in sweep_factors})
        sub = slice(0, min(n, sweep_samples))
        sweep_acc = eps_sweep(
            model_fn,
            x[sub],
            y[sub],
            eps_values,
            steps=sweep_steps,
            batch_size=batch_size,
            seed=seed,
            progress=progress,
            clean_correct=clean_correct[sub],
        )
        found["eps_sweep"] = checks.check_eps_sweep(eps_values, sweep_acc)
    else:
        found["eps_sweep"] = {"passed": None, "message": "not run (no gradients, or disabled)"}
    return {"passed": checks.all_passed(found), "checks": found}


def markdown_table(results, *, name="model"):
    """One row like Table I of the FReP paper (accuracies in %), then any failed sanity check."""
    header = "| " + " | ".join(["Model", *(title for _, title in TABLE_COLUMNS)]) + " |"
    rule = "|" + "---|" * (len(TABLE_COLUMNS) + 1)
    cells = [f"{100 * results[k]['accuracy']:.1f}" if k in results else "-" for k, _ in TABLE_COLUMNS]
    lines = [header, rule, "| " + " | ".join([name, *cells]) + " |"]
    sanity = results.get("sanity")
    if sanity is not None:
        lines.append("")
        failed = {k: c for k, c in sanity["checks"].items() if c["passed"] is False}
        if failed:
            lines += [f"- sanity check failed, {k}: {c['message']}" for k, c in failed.items()]
        else:
            lines.append("Sanity checks: all passed.")
    return "\n".join(lines) + "\n"


def transfer_accuracy(
    source_model_fn,
    target_model_fn,
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
    """Accuracy of target_model_fn (e.g. a TFLite model) on PGD examples crafted on
    source_model_fn (e.g. the float Keras model it was exported from).

    Returns {"accuracy": target correct on clean and adversarial input, "clean_accuracy",
    "source_accuracy": the source model's own PGD accuracy, "samples", "seconds"}.
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
    predict_target = common.predictor(target_model_fn, x.shape)
    target_clean = predict_target(x, batch_size) == y
    target_adv = predict_target(x_adv, batch_size) == y
    return {
        "accuracy": float(np.mean(target_clean & target_adv)),
        "clean_accuracy": float(np.mean(target_clean)),
        "source_accuracy": float(np.mean(source_clean & source_ok)),
        "samples": int(len(y)),
        "seconds": round(time.perf_counter() - start, 3),
    }


class TFLiteModel:
    """A LiteRT interpreter as a model callable: float32 [0, 1] inputs in, float32 logits out.

    Quantized (int8/uint8) inputs and outputs are (de)quantized with the model's own
    parameters; the batch dimension is resized to each call's batch (or, for models that cannot
    be resized, run in slices of their fixed batch). It has no gradients (`differentiable` is
    False); inside tf.function it runs through tf.numpy_function. The XNNPACK delegate is off
    by default because sparse int8 kernels need the plain builtin resolver.
    """

    differentiable = False

    def __init__(self, path, *, num_threads=None, xnnpack=False):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.path = str(path)
        resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        self._interpreter = Interpreter(
            model_path=self.path, num_threads=num_threads, experimental_op_resolver_type=resolver
        )
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._base_shape = tuple(int(d) for d in self._input["shape"])
        self._batch = self._base_shape[0]
        self._resizable = True
        # Interpreter calls are not thread-safe, and TF may run independent ops in parallel.
        self._lock = threading.Lock()
        self.num_classes = int(self._output["shape"][-1])

    def __repr__(self):
        return f"TFLiteModel({self.path!r})"

    def _quantize(self, x):
        dtype = self._input["dtype"]
        scale, zero_point = self._input["quantization"]
        if np.issubdtype(dtype, np.integer) and scale > 0:
            info = np.iinfo(dtype)
            return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)
        return x.astype(dtype)

    def _dequantize(self, out):
        scale, zero_point = self._output["quantization"]
        if np.issubdtype(out.dtype, np.integer) and scale > 0:
            return ((out.astype(np.float32) - zero_point) * scale).astype(np.float32)
        return out.astype(np.float32)

    def _invoke(self, x):
        self._interpreter.set_tensor(self._input["index"], self._quantize(x))
        self._interpreter.invoke()
        return self._dequantize(self._interpreter.get_tensor(self._output["index"]))

    def _resize(self, batch):
        if batch == self._batch:
            return True
        if not self._resizable:
            return False
        try:
            self._interpreter.resize_tensor_input(self._input["index"], [batch, *self._base_shape[1:]])
            self._interpreter.allocate_tensors()
        except (RuntimeError, ValueError):
            self._resizable = False
            self._interpreter.resize_tensor_input(self._input["index"], list(self._base_shape))
            self._interpreter.allocate_tensors()
            self._batch = self._base_shape[0]
            return False
        self._batch = batch
        return True

    def predict_numpy(self, x):
        """Logits of a numpy batch."""
        x = np.asarray(x, np.float32)
        if tuple(x.shape[1:]) != self._base_shape[1:]:
            raise ValueError(f"{self!r} takes inputs of shape {self._base_shape[1:]}. Received: shape={x.shape}")
        if len(x) == 0:
            return np.zeros([0, self.num_classes], np.float32)
        with self._lock:
            if self._resize(len(x)):
                return self._invoke(x)
            # A fixed batch size: run slices of that size, padding the last one.
            step = self._batch
            outs = []
            for start in range(0, len(x), step):
                part = x[start : start + step]
                padded = np.concatenate([part, np.repeat(part[-1:], step - len(part), 0)])
                outs.append(self._invoke(padded)[: len(part)])
            return np.concatenate(outs)

    def __call__(self, x):
        x = tf.convert_to_tensor(x, tf.float32)
        logits = tf.numpy_function(self.predict_numpy, [x], tf.float32)
        logits.set_shape([x.shape[0], self.num_classes])
        return logits


def tflite_model_fn(path, *, num_threads=None, xnnpack=False):
    """A model callable running the .tflite file at `path` with the LiteRT interpreter."""
    return TFLiteModel(path, num_threads=num_threads, xnnpack=xnnpack)
