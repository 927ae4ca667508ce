"""PGD (Madry et al. 2018) and its momentum variant MIM (Dong et al. 2018), L-inf.

Both return, per point, the first iterate that is misclassified (any iterate of any restart
counts, as in the reference implementations), else the last iterate.
"""

import tensorflow as tf

from frep_tf.attacks import common

LOSSES = ("ce", "margin")


def _loss_fn(loss, y):
    if loss == "ce":
        return lambda logits: common.cross_entropy(logits, y)
    if loss == "margin":
        # CW-style: maximizing -(z_y - max_other) does not saturate like the cross-entropy.
        return lambda logits: -common.margin(logits, y)
    raise ValueError(f"loss must be one of {LOSSES}. Received: loss={loss!r}")


def _check_args(eps, steps, step_size, restarts):
    if steps < 1 or restarts < 1:
        raise ValueError(f"steps and restarts must be >= 1. Received: steps={steps}, restarts={restarts}")
    # eps and step_size may be tensors (one trace for an eps sweep); those go unchecked.
    numbers = all(isinstance(v, (int, float)) for v in (eps, step_size))
    if numbers and (eps < 0 or step_size <= 0):
        raise ValueError(f"eps must be >= 0 and step_size > 0. Received: eps={eps}, step_size={step_size}")


def _single_run(model_fn, x, y, x_start, *, eps, steps, step_size, loss_fn, decay):
    """One run from x_start -> (x_adv, fooled). decay=None is PGD, else MIM's momentum."""
    batch_axes = list(range(1, x.shape.rank))

    def body(i, x_adv, momentum, best, fooled):
        logits, _, grad = common.value_and_grad(model_fn, x_adv, loss_fn)
        wrong = tf.argmax(logits, axis=-1, output_type=tf.int32) != y
        best = tf.where(common.broadcast_to_batch(wrong & ~fooled, x), x_adv, best)
        fooled = fooled | wrong
        if decay is None:
            direction = tf.sign(grad)
        else:
            l1 = tf.reduce_sum(tf.abs(grad), axis=batch_axes, keepdims=True)
            momentum = decay * momentum + grad / (l1 + 1e-12)
            direction = tf.sign(momentum)
        x_adv = common.project(x_adv + step_size * direction, x, eps)
        return i + 1, x_adv, momentum, best, fooled

    init = (tf.constant(0), x_start, tf.zeros_like(x), x_start, tf.zeros(tf.shape(y), tf.bool))
    _, x_last, _, best, fooled = tf.while_loop(lambda i, *_: i < steps, body, init, maximum_iterations=steps)
    # The last iterate has not been looked at yet.
    wrong = common.predict(model_fn, x_last) != y
    best = tf.where(common.broadcast_to_batch(wrong & ~fooled, x), x_last, best)
    fooled = fooled | wrong
    return tf.where(common.broadcast_to_batch(fooled, x), best, x_last), fooled


def _attack(model_fn, x, y, *, eps, steps, step_size, random_start, restarts, loss, seed, decay):
    common.require_gradients(model_fn)
    _check_args(eps, steps, step_size, restarts)
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(y, tf.int32)
    seed = common.as_seed(seed)
    loss_fn = _loss_fn(loss, y)
    x_adv, fooled = x, tf.zeros(tf.shape(y), tf.bool)
    for restart in range(restarts):
        x_start = x
        if random_start:
            noise = tf.random.stateless_uniform(tf.shape(x), common.fold_seed(seed, restart), -eps, eps)
            x_start = common.project(x + noise, x, eps)
        candidate, success = _single_run(
            model_fn, x, y, x_start, eps=eps, steps=steps, step_size=step_size, loss_fn=loss_fn, decay=decay
        )
        # An earlier restart's success is kept; otherwise the newest run is returned.
        x_adv = tf.where(common.broadcast_to_batch(fooled, x), x_adv, candidate)
        fooled = fooled | success
    return x_adv


def pgd(model_fn, x, y, *, eps, steps, step_size, random_start=True, restarts=1, loss="ce", seed=0):
    """L-inf PGD with uniform random start and restarts; loss "ce" or "margin"."""
    return _attack(
        model_fn,
        x,
        y,
        eps=eps,
        steps=steps,
        step_size=step_size,
        random_start=random_start,
        restarts=restarts,
        loss=loss,
        seed=seed,
        decay=None,
    )


def mim(model_fn, x, y, *, eps, steps, step_size, decay=1.0, random_start=False, restarts=1, loss="ce", seed=0):
    """Momentum iterative method: sign of an L1-normalized gradient accumulated with `decay`."""
    return _attack(
        model_fn,
        x,
        y,
        eps=eps,
        steps=steps,
        step_size=step_size,
        random_start=random_start,
        restarts=restarts,
        loss=loss,
        seed=seed,
        decay=decay,
    )
