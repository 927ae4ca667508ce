"""Sanity checks that say when a robust accuracy is not to be trusted (after fra31/auto-attack's
checks.py and Carlini et al. 2019, "On evaluating adversarial robustness").

Every check returns a JSON-ready dict {"passed": True | False | None, "message": str, ...};
None means the check did not apply (e.g. the attacks it compares were not run).
"""

import numpy as np
import tensorflow as tf

from frep_tf.attacks import apgd, common

# Stronger attacks must not leave more points robust than the weaker ones they extend.
ORDER = ("autoattack", "pgd", "fgsm", "clean")
# AutoAttack is not among them: it ends with Square; check_square_in_autoattack covers it.
WHITE_BOX = ("fgsm", "pgd", "mim", "apgd-ce", "apgd-t", "fab-t")


def _result(passed, message, **details):
    return {"passed": passed, "message": message, **details}


def all_passed(checks):
    """False if any check failed; checks that did not apply do not count."""
    return all(c["passed"] is not False for c in checks.values())


def check_order(accuracies, *, tol=0.0):
    """AA <= PGD <= FGSM <= clean, over the attacks present."""
    present = [(k, accuracies[k]) for k in ORDER if k in accuracies]
    if len(present) < 2:
        return _result(None, "fewer than two of " + ", ".join(ORDER) + " were run")
    broken = [
        f"{a} {va:.2%} > {b} {vb:.2%}" for (a, va), (b, vb) in zip(present, present[1:], strict=False) if va > vb + tol
    ]
    chain = " <= ".join(f"{k} {v:.2%}" for k, v in present)
    if broken:
        return _result(
            False,
            "stronger attack left more points robust: " + "; ".join(broken) + " (gradient masking or a broken attack)",
        )
    return _result(True, chain)


def check_eps_sweep(eps_values, accuracies, *, final_max=0.05, tol=0.02):
    """Accuracy must not rise with eps (beyond tol) and must end near 0 at the largest eps."""
    pairs = sorted(zip(map(float, eps_values), map(float, accuracies), strict=True))
    if len(pairs) < 2:
        return _result(None, "needs at least two eps values")
    listing = ", ".join(f"{e:.4g}: {a:.2%}" for e, a in pairs)
    rises = [f"{e1:.4g} -> {e2:.4g}" for (e1, a1), (e2, a2) in zip(pairs, pairs[1:], strict=False) if a2 > a1 + tol]
    details = {"eps": [e for e, _ in pairs], "accuracy": [a for _, a in pairs]}
    if rises:
        return _result(False, f"accuracy rises with eps ({', '.join(rises)}): {listing}", **details)
    if pairs[-1][1] > final_max:
        return _result(
            False,
            f"accuracy stays above {final_max:.0%} at eps {pairs[-1][0]:.4g} (gradient masking?): {listing}",
            **details,
        )
    return _result(True, listing, **details)


def _gap_is_real(gap, samples, tol, min_points):
    return gap > tol and gap * samples >= min_points - 1e-9


def check_black_box(accuracies, *, samples, black_box="square", tol=0.002, min_points=2):
    """The black-box attack must not beat the best white-box one (else: gradient masking)."""
    white = {k: v for k, v in accuracies.items() if k in WHITE_BOX}
    if black_box not in accuracies or not white:
        return _result(None, f"needs {black_box} and at least one white-box attack")
    best = min(white, key=white.get)
    gap = white[best] - accuracies[black_box]
    text = f"{black_box} {accuracies[black_box]:.2%} vs {best} {white[best]:.2%}"
    if _gap_is_real(gap, samples, tol, min_points):
        return _result(
            False,
            f"black box beats white box: {text}; gradients are masked or the white-box attacks are too weak",
            gap=gap,
        )
    return _result(True, text, gap=gap)


def check_square_in_autoattack(accuracy_after, *, samples, tol=0.002, min_points=2):
    """Within AutoAttack, Square (last) should find (almost) nothing the gradient attacks missed."""
    names = list(accuracy_after)
    if "square" not in names or names.index("square") == 0:
        return _result(None, "Square did not run after other attacks in AutoAttack")
    before = accuracy_after[names[names.index("square") - 1]]
    gap = before - accuracy_after["square"]
    text = f"Square lowered AutoAttack's robust accuracy by {gap:.2%}"
    if _gap_is_real(gap, samples, tol, min_points):
        return _result(False, text + "; the gradient-based evaluation is unreliable", gap=gap)
    return _result(True, text, gap=gap)


def explain_square_finds(check, model_fn, x, y, *, eps, restarts=5, steps=100, batch_size=256, seed=0):
    """When Square broke points the gradient attacks missed (`x`, `y`), tells budget from masking:
    APGD-CE and APGD-DLR with `restarts` restarts each attack those points. The ones they break
    have informative gradients (the standard budget was short); the rest only a black box finds.
    Adds the counts to `check` (a failed check stays failed) and returns it."""
    if check.get("passed") is not False or len(y) == 0:
        return check
    robust = np.ones(len(y), bool)
    for n, loss in enumerate(("ce", "dlr")):
        compiled = common.compile_batch_fn(
            lambda xb, yb, s, loss=loss: apgd.apgd(
                model_fn, xb, yb, eps=eps, steps=steps, restarts=restarts, loss=loss, seed=s
            ),
            np.shape(x),
            model_fn=model_fn,
        )
        _, correct = common.run_batched(
            compiled, x, y, batch_size=batch_size, seed=seed, stream=200 + n, progress=False
        )
        robust &= correct
    broken = int(np.sum(~robust))
    if broken == len(y):
        verdict = "the gradients are informative there; the standard white-box budget was too short"
    else:
        verdict = f"{len(y) - broken} of them only the black box finds: gradients are masked there"
    check["message"] += (
        f"; APGD-CE and APGD-DLR with {restarts} restarts break {broken} of the {len(y)} points Square found: {verdict}"
    )
    check["square_found"], check["white_box_with_restarts_broke"] = len(y), broken
    return check


def check_zero_gradients(model_fn, x, y):
    """Points whose margin z_y - max_other has an all-zero input gradient defeat every
    gradient attack. The margin is used because it never saturates like the cross-entropy."""
    if getattr(model_fn, "differentiable", True) is False:
        return _result(None, "the model has no gradients (black-box attacks only)")
    x = tf.convert_to_tensor(np.asarray(x, np.float32))
    y = tf.convert_to_tensor(np.asarray(y, np.int32))
    try:
        _, _, grad = common.value_and_grad(model_fn, x, lambda z: common.margin(z, y))
    except common.NotDifferentiableError as err:
        return _result(False, str(err), zero_fraction=1.0)
    zero = (common.linf_norm(grad) == 0).numpy()
    fraction = float(np.mean(zero)) if zero.size else 0.0
    if zero.any():
        return _result(
            False,
            f"{int(zero.sum())} of {zero.size} points have an all-zero input "
            "gradient: gradient attacks cannot move them",
            zero_fraction=fraction,
        )
    return _result(True, f"no zero gradients on {zero.size} points", zero_fraction=fraction)


def check_deterministic(model_fn, x, *, repeats=3, rtol=1e-5):
    """The same input must give the same logits: randomized defenses need EOT, not this suite."""
    x = tf.convert_to_tensor(np.asarray(x, np.float32))
    outputs = [np.asarray(common.logits_of(model_fn, x)) for _ in range(repeats)]
    scale = max(1.0, float(np.max(np.abs(outputs[0])))) if outputs[0].size else 1.0
    diff = max(float(np.max(np.abs(o - outputs[0]))) if o.size else 0.0 for o in outputs[1:])
    if diff > rtol * scale:
        return _result(
            False,
            f"logits change between identical calls (max difference {diff:.3g})"
            ": randomized model, robust accuracies are not reliable",
            max_diff=diff,
        )
    return _result(True, f"identical logits over {repeats} calls", max_diff=diff)


def check_logits(model_fn, x, *, atol=1e-5):
    """Outputs that already are probabilities flatten the cross-entropy's gradients."""
    out = np.asarray(common.logits_of(model_fn, tf.convert_to_tensor(np.asarray(x, np.float32))))
    if out.size == 0:
        return _result(None, "no inputs")
    looks_like_probabilities = out.min() > -atol and out.max() < 1 + atol and np.allclose(out.sum(-1), 1.0, atol=atol)
    if looks_like_probabilities:
        return _result(False, "the model outputs probabilities, not logits")
    return _result(True, "outputs are logits")


def check_perturbation(max_perturbation, eps):
    """Every returned adversarial input lies within eps (and [0, 1]); guards the attacks
    themselves, since a larger perturbation would make robust accuracies too low."""
    if not max_perturbation:
        return _result(None, "no attack was run")
    worst = max(max_perturbation, key=max_perturbation.get)
    # float32 rounding of x +- eps may overshoot by an ulp.
    if max_perturbation[worst] > eps + 1e-6:
        return _result(False, f"{worst} perturbed by {max_perturbation[worst]:.6g} > eps {eps:.6g}")
    return _result(True, f"largest L-inf perturbation {max_perturbation[worst]:.6g} ({worst}) <= eps {eps:.6g}")
