"""Square attack (Andriushchenko et al. 2020), L-inf, score-based black box: needs logits only.

Starts from vertical stripes of +-eps and, per query, proposes flipping the sign of the
perturbation on one random square window per image (all rows of a channel get one sign), keeping
the proposal if the margin z_y - max_{j != y} z_j decreases. The window side shrinks with the
query count following the reference schedule for p (the fraction of pixels in the window).
"""

import tensorflow as tf

from frep_tf.attacks import common

# Iterations after which the reference halves p: p = p_init / 2**(number of boundaries passed).
P_BOUNDARIES = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(iteration, *, p_init, queries, rescale=False):
    """Fraction of the image the window covers at `iteration` (an int or a scalar tensor)."""
    it = tf.cast(iteration, tf.float32)
    if rescale:  # stretch the 10000-query schedule to `queries`
        it = tf.floor(it / queries * 10000.0)
    passed = tf.reduce_sum(tf.cast(it > tf.constant(P_BOUNDARIES, tf.float32), tf.float32))
    return p_init / tf.pow(2.0, passed)


def _as_nhwc(x):
    """Square needs a spatial layout: [B, D] -> [B, 1, D, 1], [B, H, W] -> [B, H, W, 1]."""
    if x.shape.rank == 4:
        return x
    if x.shape.rank == 3:
        return x[..., None]
    if x.shape.rank == 2:
        return x[:, None, :, None]
    raise ValueError(f"square expects inputs of rank 2, 3 or 4. Received: shape={x.shape}")


def square(model_fn, x, y, *, eps, queries=5000, p_init=0.8, rescale_schedule=False, seed=0):
    """L-inf Square attack with margin loss; stops early once every point is misclassified.

    Runs `queries` proposals after the initial stripes (the reference counts the same way);
    AutoAttack standard uses queries=5000, p_init=0.8, rescale_schedule=False.
    """
    if queries < 1 or not 0.0 < p_init <= 1.0:
        raise ValueError(f"queries must be >= 1 and p_init in (0, 1]. Received: queries={queries}, p_init={p_init}")
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(y, tf.int32)
    seed = common.as_seed(seed)
    shape = tf.shape(x)
    xs = _as_nhwc(x)
    _, height, width, channels = xs.shape
    if None in (height, width, channels):
        raise ValueError(f"square needs static image dimensions. Received: shape={x.shape}")
    batch = tf.shape(xs)[0]

    def margin_of(images, labels):
        # The model sees its own input layout again.
        original = tf.reshape(images, tf.concat([tf.shape(images)[:1], shape[1:]], 0))
        return common.margin(common.logits_of(model_fn, original), labels)

    # Points misclassified already are returned as they are, like the reference does. A tie
    # (margin 0) is not counted as a success: argmax may still pick the true class.
    margin_clean = margin_of(xs, y)
    signs = tf.sign(tf.random.stateless_uniform([batch, 1, width, channels], seed, -1.0, 1.0))
    x_best = tf.clip_by_value(xs + eps * signs, 0.0, 1.0)
    margin_best = margin_of(x_best, y)
    clean_wrong = margin_clean < 0
    x_best = tf.where(clean_wrong[:, None, None, None], xs, x_best)
    margin_best = tf.where(clean_wrong, margin_clean, margin_best)
    rows = tf.range(height)[None, :, None, None]
    cols = tf.range(width)[None, None, :, None]

    def body(i, x_best, margin_best):
        # Only points not yet misclassified are queried, so late iterations are cheap.
        todo = tf.where(margin_best >= 0)[:, 0]
        x_clean = tf.gather(xs, todo)
        x_curr = tf.gather(x_best, todo)
        n = tf.shape(todo)[0]
        p = p_schedule(i, p_init=p_init, queries=queries, rescale=rescale_schedule)
        side = tf.round(tf.sqrt(p * height * width))
        side = tf.cast(tf.clip_by_value(side, 1.0, float(min(height, width))), tf.int32)
        step_seed = common.fold_seed(seed, i + 1)
        seeds = tf.random.experimental.stateless_split(step_seed, 3)
        top = tf.random.stateless_uniform([n], seeds[0], 0, height - side + 1, tf.int32)
        left = tf.random.stateless_uniform([n], seeds[1], 0, width - side + 1, tf.int32)
        window = (
            (rows >= top[:, None, None, None])
            & (rows < (top + side)[:, None, None, None])
            & (cols >= left[:, None, None, None])
            & (cols < (left + side)[:, None, None, None])
        )
        flip = tf.sign(tf.random.stateless_uniform([n, 1, 1, channels], seeds[2], -1.0, 1.0))
        proposal = tf.where(window, x_curr + 2.0 * eps * flip, x_curr)
        proposal = common.project(proposal, x_clean, eps)
        margin_new = margin_of(proposal, tf.gather(y, todo))
        better = margin_new < tf.gather(margin_best, todo)
        idx = todo[:, None]
        x_best = tf.tensor_scatter_nd_update(x_best, idx, tf.where(better[:, None, None, None], proposal, x_curr))
        margin_best = tf.tensor_scatter_nd_update(
            margin_best, idx, tf.minimum(margin_new, tf.gather(margin_best, todo))
        )
        return i + 1, x_best, margin_best

    def running(i, x_best, margin_best):
        return (i < queries) & tf.reduce_any(margin_best >= 0)

    _, x_best, _ = tf.while_loop(running, body, (tf.constant(0), x_best, margin_best), maximum_iterations=queries)
    return tf.reshape(x_best, shape)
