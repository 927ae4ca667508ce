"""APGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness..."), L-inf.

Step-size-free PGD: starts at step 2 * eps with momentum 0.75 and halves the step of a point at
checkpoints p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (fractions of the
iterations) when, since the last checkpoint, its loss rose in at most rho of the steps, or its step
was not just halved and its best loss did not improve; it then restarts from its best point.
APGD-CE maximizes the cross-entropy, APGD-T the targeted DLR loss towards the runner-up classes.
"""

import tensorflow as tf

from frep_tf.attacks import common

LOSSES = ("ce", "dlr")


def checkpoints(steps):
    """Per iteration: whether it closes a checkpoint window, and that window's length."""
    first = max(int(0.22 * steps), 1)
    shortest = max(int(0.06 * steps), 1)
    decrement = max(int(0.03 * steps), 1)
    is_checkpoint, window = [False] * steps, [0] * steps
    k, i = first, first - 1
    while i < steps:
        is_checkpoint[i], window[i] = True, k
        k = max(k - decrement, shortest)
        i += k
    return is_checkpoint, window


def _single_run(model_fn, x, y, loss_fn, *, eps, steps, rho, seed):
    """One APGD run -> (x_adv, fooled). x_adv is the first misclassified iterate if any, else
    the highest-loss one."""
    is_checkpoint, window = checkpoints(steps)
    is_checkpoint = tf.constant(is_checkpoint)
    window = tf.constant(window, tf.float32)

    def as_batch(v):
        return common.broadcast_to_batch(v, x)

    noise = tf.random.stateless_uniform(tf.shape(x), seed, -1.0, 1.0)
    # Scaled so that the largest coordinate of the start perturbation is exactly eps.
    x_adv = tf.clip_by_value(x + eps * noise / as_batch(common.linf_norm(noise) + 1e-12), 0.0, 1.0)
    logits, loss, grad = common.value_and_grad(model_fn, x_adv, loss_fn)
    fooled = tf.argmax(logits, axis=-1, output_type=tf.int32) != y
    step = 2.0 * eps * tf.ones_like(loss)

    def body(
        i,
        x_adv,
        x_prev,
        grad,
        step,
        x_best,
        grad_best,
        loss_best,
        loss_prev,
        n_rises,
        loss_best_last,
        reduced_last,
        x_fooling,
        fooled,
    ):
        alpha = tf.where(i > 0, 0.75, 1.0)
        z = common.project(x_adv + as_batch(step) * tf.sign(grad), x, eps)
        z = common.project(x_adv + (z - x_adv) * alpha + (x_adv - x_prev) * (1.0 - alpha), x, eps)
        x_prev, x_adv = x_adv, z

        logits, loss, grad = common.value_and_grad(model_fn, x_adv, loss_fn)
        wrong = tf.argmax(logits, axis=-1, output_type=tf.int32) != y
        x_fooling = tf.where(as_batch(wrong & ~fooled), x_adv, x_fooling)
        fooled = fooled | wrong

        n_rises += tf.cast(loss > loss_prev, tf.float32)
        loss_prev = loss
        better = loss > loss_best
        x_best = tf.where(as_batch(better), x_adv, x_best)
        grad_best = tf.where(as_batch(better), grad, grad_best)
        loss_best = tf.where(better, loss, loss_best)

        at_checkpoint = is_checkpoint[i]
        oscillating = n_rises <= window[i] * rho
        stalled = ~reduced_last & (loss_best_last >= loss_best)
        reduce = at_checkpoint & (oscillating | stalled)
        step = tf.where(reduce, step / 2.0, step)
        x_adv = tf.where(as_batch(reduce), x_best, x_adv)
        grad = tf.where(as_batch(reduce), grad_best, grad)
        reduced_last = tf.where(at_checkpoint, oscillating | stalled, reduced_last)
        loss_best_last = tf.where(at_checkpoint, loss_best, loss_best_last)
        n_rises = tf.where(at_checkpoint, tf.zeros_like(n_rises), n_rises)
        return (
            i + 1,
            x_adv,
            x_prev,
            grad,
            step,
            x_best,
            grad_best,
            loss_best,
            loss_prev,
            n_rises,
            loss_best_last,
            reduced_last,
            x_fooling,
            fooled,
        )

    init = (
        tf.constant(0),
        x_adv,
        x_adv,
        grad,
        step,
        x_adv,
        grad,
        loss,
        loss,
        tf.zeros_like(loss),
        loss,
        tf.ones_like(fooled),
        x_adv,
        fooled,
    )
    state = tf.while_loop(lambda i, *_: i < steps, body, init, maximum_iterations=steps)
    x_best, x_fooling, fooled = state[5], state[12], state[13]
    return tf.where(as_batch(fooled), x_fooling, x_best), fooled


def _with_restarts(model_fn, x, y, loss_fn, *, eps, steps, restarts, rho, seed):
    if steps < 1 or restarts < 1:
        raise ValueError(f"steps and restarts must be >= 1. Received: steps={steps}, restarts={restarts}")
    seed = common.as_seed(seed)
    x_adv, fooled = x, tf.zeros(tf.shape(y), tf.bool)
    for restart in range(restarts):
        candidate, success = _single_run(
            model_fn, x, y, loss_fn, eps=eps, steps=steps, rho=rho, seed=common.fold_seed(seed, restart)
        )
        x_adv = tf.where(common.broadcast_to_batch(fooled, x), x_adv, candidate)
        fooled = fooled | success
    return x_adv, fooled


def apgd(model_fn, x, y, *, eps, steps=100, restarts=1, loss="ce", rho=0.75, seed=0):
    """Untargeted APGD on the cross-entropy ("ce", APGD-CE) or the DLR loss ("dlr")."""
    common.require_gradients(model_fn)
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(y, tf.int32)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}. Received: loss={loss!r}")

    def loss_fn(logits):
        return common.cross_entropy(logits, y) if loss == "ce" else common.dlr(logits, y)

    return _with_restarts(model_fn, x, y, loss_fn, eps=eps, steps=steps, restarts=restarts, rho=rho, seed=seed)[0]


def _targeted(model_fn, x, y, target_rank, *, eps, steps, restarts, rho, seed):
    logits = common.logits_of(model_fn, x)
    n_classes = logits.shape[-1]
    if n_classes is not None and n_classes < 4:
        raise ValueError(f"the targeted DLR loss needs at least 4 classes. Received a model with {n_classes} outputs")
    y_target = common.ranked_class(logits, target_rank)

    def loss_fn(z):
        return common.dlr_targeted(z, y, y_target)

    return _with_restarts(model_fn, x, y, loss_fn, eps=eps, steps=steps, restarts=restarts, rho=rho, seed=seed)


def apgd_targeted(model_fn, x, y, *, eps, target_rank=2, steps=100, restarts=1, rho=0.75, seed=0):
    """APGD on the targeted DLR loss towards each point's `target_rank`-th most likely class
    on the clean input (2 = runner-up). `target_rank` may be a tensor (one trace for all)."""
    common.require_gradients(model_fn)
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(y, tf.int32)
    return _targeted(model_fn, x, y, target_rank, eps=eps, steps=steps, restarts=restarts, rho=rho, seed=seed)[0]


def apgd_t(model_fn, x, y, *, eps, n_target_classes=9, steps=100, restarts=1, rho=0.75, seed=0):
    """APGD-T: `apgd_targeted` towards the 2nd, 3rd, ... most likely classes in turn, each run
    only on the points no earlier target has fooled."""

    def run_rank(xs, ys, rank, rank_seed):
        return _targeted(model_fn, xs, ys, rank, eps=eps, steps=steps, restarts=restarts, rho=rho, seed=rank_seed)

    return common.over_target_classes(model_fn, x, y, n_target_classes=n_target_classes, seed=seed, run_rank=run_rank)
