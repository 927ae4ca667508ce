"""Targeted FAB (Croce & Hein 2020, "Minimally distorted adversarial examples with a fast
adaptive boundary attack"), L-inf, as used in AutoAttack (FAB-T).

FAB looks for the smallest perturbation that changes the decision: it linearizes the boundary
between the true and the target class at the current iterate, projects both the iterate and the
clean input onto that hyperplane (within the [0, 1] box), takes a biased convex combination of the
two projections with an overshoot, and after every success steps back towards the clean input.
A point counts as fooled only if the smallest perturbation found is within eps.
"""

import numpy as np
import tensorflow as tf

from frep_tf.attacks import common


def project_linf_hyperplane(p, w, b):
    """Smallest L-inf step d with <w, p + d> = b and p + d in [0, 1], for each row of p [N, D].

    With r_i the room coordinate i has towards the hyperplane, moving every coordinate by
    min(lam, r_i) changes <w, p> by D(lam) = sum_i |w_i| min(lam, r_i), piecewise linear and
    increasing: lam is read off the first breakpoint where D reaches |<w, p> - b|. Where the box
    makes the hyperplane unreachable, the step goes to the box corner that gets closest.
    """
    gap = tf.reduce_sum(w * p, axis=1) - b
    direction = -tf.sign(w) * tf.sign(gap)[:, None]
    room = tf.where(direction > 0, 1.0 - p, tf.where(direction < 0, p, tf.zeros_like(p)))
    need = tf.abs(gap)

    order = tf.argsort(room, axis=1)
    r = tf.gather(room, order, batch_dims=1)
    weight = tf.gather(tf.abs(w), order, batch_dims=1)
    cum_w = tf.cumsum(weight, axis=1)
    cum_wr = tf.cumsum(weight * r, axis=1)
    total = cum_w[:, -1:]
    reach = cum_wr + r * (total - cum_w)  # D at each breakpoint r_k

    enough = reach >= need[:, None]
    k = tf.argmax(tf.cast(enough, tf.int32), axis=1, output_type=tf.int32)
    prev = tf.maximum(k - 1, 0)
    cum_w_prev = tf.where(k > 0, tf.gather(cum_w, prev, batch_dims=1), 0.0)
    cum_wr_prev = tf.where(k > 0, tf.gather(cum_wr, prev, batch_dims=1), 0.0)
    lam = (need - cum_wr_prev) / tf.maximum(total[:, 0] - cum_w_prev, 1e-12)
    lam = tf.where(enough[:, -1], lam, np.inf)
    return direction * tf.minimum(lam[:, None], room)


def _single_run(model_fn, x, y, y_target, x_start, *, steps, alpha_max, eta, beta):
    """One FAB run -> (smallest adversarial found, its L-inf distance; inf if none)."""
    batch = tf.shape(x)[0]
    x0 = tf.reshape(x, [batch, -1])

    def as_batch(v):
        return common.broadcast_to_batch(v, x)

    def body(i, x1, adv, dist):
        with tf.GradientTape() as tape:
            tape.watch(x1)
            logits = common.logits_of(model_fn, x1)
            # Positive once the target class beats the true one.
            f = tf.gather(logits, y_target, axis=1, batch_dims=1) - tf.gather(logits, y, axis=1, batch_dims=1)
        w = tf.reshape(common.input_gradient(tape, f, x1), [batch, -1])
        x1_flat = tf.reshape(x1, [batch, -1])
        # Linearized boundary f(x1) + <w, z - x1> = 0, i.e. <w, z> = <w, x1> - f(x1).
        b = tf.reduce_sum(w * x1_flat, axis=1) - f
        d = project_linf_hyperplane(tf.concat([x1_flat, x0], 0), tf.concat([w, w], 0), tf.concat([b, b], 0))
        d1 = tf.reshape(d[:batch], tf.shape(x))
        d2 = tf.reshape(d[batch:], tf.shape(x))
        a1 = tf.maximum(common.linf_norm(d1), 1e-8)
        a2 = tf.maximum(common.linf_norm(d2), 1e-8)
        # Bias towards the projection of the clean input keeps the perturbation small.
        alpha = as_batch(tf.clip_by_value(a1 / (a1 + a2), 0.0, alpha_max))
        x1 = tf.clip_by_value((x1 + eta * d1) * (1.0 - alpha) + (x + eta * d2) * alpha, 0.0, 1.0)

        wrong = common.predict(model_fn, x1) != y
        norm = common.linf_norm(x1 - x)
        better = wrong & (norm < dist)
        adv = tf.where(as_batch(better), x1, adv)
        dist = tf.where(better, norm, dist)
        x1 = tf.where(as_batch(wrong), x + (x1 - x) * beta, x1)
        return i + 1, x1, adv, dist

    init = (tf.constant(0), x_start, x, tf.fill([batch], np.float32(np.inf)))
    _, _, adv, dist = tf.while_loop(lambda i, *_: i < steps, body, init, maximum_iterations=steps)
    return adv, dist


def _targeted(model_fn, x, y, target_rank, *, eps, steps, restarts, alpha_max, eta, beta, seed):
    """-> (x_adv, fooled) for one target rank."""
    if steps < 1 or restarts < 1:
        raise ValueError(f"steps and restarts must be >= 1. Received: steps={steps}, restarts={restarts}")
    logits = common.logits_of(model_fn, x)
    correct = tf.argmax(logits, axis=-1, output_type=tf.int32) == y
    y_target = common.ranked_class(logits, target_rank)
    seed = common.as_seed(seed)
    best, best_dist = x, tf.fill(tf.shape(y), np.float32(np.inf))
    for restart in range(restarts):
        x_start = x
        if restart > 0:  # the reference starts the first run at x, later ones at random
            t = tf.random.stateless_uniform(tf.shape(x), common.fold_seed(seed, restart), -1.0, 1.0)
            t = t / common.broadcast_to_batch(common.linf_norm(t) + 1e-12, x)
            x_start = tf.clip_by_value(x + 0.5 * eps * t, 0.0, 1.0)
        adv, dist = _single_run(model_fn, x, y, y_target, x_start, steps=steps, alpha_max=alpha_max, eta=eta, beta=beta)
        closer = dist < best_dist
        best = tf.where(common.broadcast_to_batch(closer, x), adv, best)
        best_dist = tf.where(closer, dist, best_dist)
    fooled = correct & (best_dist <= eps)
    x_adv = tf.where(common.broadcast_to_batch(fooled, x), common.project(best, x, eps), x)
    return x_adv, fooled | ~correct


def fab_targeted(
    model_fn, x, y, *, eps, target_rank=2, steps=100, restarts=1, alpha_max=0.1, eta=1.05, beta=0.9, seed=0
):
    """FAB towards each point's `target_rank`-th most likely clean class (2 = runner-up).
    Returns the minimal adversarial example where it is within eps, else x."""
    common.require_gradients(model_fn)
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(y, tf.int32)
    return _targeted(
        model_fn,
        x,
        y,
        target_rank,
        eps=eps,
        steps=steps,
        restarts=restarts,
        alpha_max=alpha_max,
        eta=eta,
        beta=beta,
        seed=seed,
    )[0]


def fab_t(model_fn, x, y, *, eps, n_target_classes=9, steps=100, restarts=1, alpha_max=0.1, eta=1.05, beta=0.9, seed=0):
    """FAB-T: `fab_targeted` towards the 2nd, 3rd, ... most likely classes in turn, each run
    only on the points no earlier target has fooled."""

    def run_rank(xs, ys, rank, rank_seed):
        return _targeted(
            model_fn,
            xs,
            ys,
            rank,
            eps=eps,
            steps=steps,
            restarts=restarts,
            alpha_max=alpha_max,
            eta=eta,
            beta=beta,
            seed=rank_seed,
        )

    return common.over_target_classes(model_fn, x, y, n_target_classes=n_target_classes, seed=seed, run_rank=run_rank)
