"""Pieces every attack shares: losses on logits, input gradients, projection, seeds, batching.

A model is any callable ``model_fn(x) -> logits`` on float32 images in [0, 1]. Attacks are pure
functions of such a callable and one batch of tensors; `run_batched` drives one over a dataset.
"""

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm


class NotDifferentiableError(TypeError):
    """The model gives no input gradient (a TFLite interpreter, numpy code, ...)."""


def as_seed(seed):
    """An int or a shape-[2] tensor -> the int64 [2] seed the stateless random ops take."""
    if isinstance(seed, (int, np.integer)):
        return tf.constant([int(seed), 0], tf.int64)
    return tf.reshape(tf.cast(seed, tf.int64), [2])


def fold_seed(seed, data):
    """A new seed derived from `seed` and an integer, so sub-streams never overlap."""
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(data, tf.int64))


def project(x_adv, x, eps):
    """Projection onto the L-inf ball of radius eps around x, intersected with [0, 1]."""
    return tf.clip_by_value(tf.clip_by_value(x_adv, x - eps, x + eps), 0.0, 1.0)


def linf_norm(v):
    """Per-example L-inf norm of a batch of any rank."""
    return tf.reduce_max(tf.abs(tf.reshape(v, [tf.shape(v)[0], -1])), axis=1)


def broadcast_to_batch(v, like):
    """Reshapes a per-example vector [B] so it broadcasts against `like` [B, ...]."""
    # Static rank keeps static shapes, which tf.while_loop needs to match across iterations.
    return tf.reshape(v, [-1] + [1] * (like.shape.rank - 1))


def logits_of(model_fn, x):
    logits = model_fn(x)
    # Mixed-precision models return float16; every loss below is computed in float32.
    return tf.cast(logits, tf.float32)


def predict(model_fn, x):
    """Predicted class ids of a batch."""
    return tf.argmax(logits_of(model_fn, x), axis=-1, output_type=tf.int32)


def cross_entropy(logits, y):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)


def _mask_out(logits, y):
    """Logits with the true class pushed to -inf, so max() ranges over the others only."""
    n_classes = tf.shape(logits)[-1]
    return tf.where(tf.one_hot(y, n_classes, on_value=True, off_value=False), -np.inf, logits)


def margin(logits, y):
    """z_y - max_{j != y} z_j: positive iff the point is classified correctly."""
    z_y = tf.gather(logits, y, axis=1, batch_dims=1)
    return z_y - tf.reduce_max(_mask_out(logits, y), axis=-1)


def dlr(logits, y):
    """Difference-of-logits-ratio loss (Croce & Hein 2020), to be maximized; scale invariant."""
    z_sorted = tf.sort(logits, axis=-1, direction="DESCENDING")
    return -margin(logits, y) / (z_sorted[:, 0] - z_sorted[:, 2] + 1e-12)


def dlr_targeted(logits, y, y_target):
    """Targeted DLR loss, to be maximized: pushes z_target above z_y."""
    z_sorted = tf.sort(logits, axis=-1, direction="DESCENDING")
    z_y = tf.gather(logits, y, axis=1, batch_dims=1)
    z_t = tf.gather(logits, y_target, axis=1, batch_dims=1)
    return -(z_y - z_t) / (z_sorted[:, 0] - 0.5 * (z_sorted[:, 2] + z_sorted[:, 3]) + 1e-12)


def ranked_class(logits, rank):
    """The class with the `rank`-th largest logit per example (rank 1 is the prediction)."""
    order = tf.argsort(logits, axis=-1, direction="DESCENDING", stable=True)
    return tf.cast(tf.gather(order, tf.cast(rank, tf.int32) - 1, axis=1), tf.int32)


def num_classes(model_fn, x):
    """Number of classes, read from one forward pass on a single example."""
    return int(logits_of(model_fn, x[:1]).shape[-1])


def require_gradients(model_fn):
    """Fails early for callables that declare themselves non-differentiable (TFLite wrappers)."""
    if getattr(model_fn, "differentiable", True) is False:
        raise NotDifferentiableError(
            f"{model_fn!r} has no input gradients, so gradient-based attacks cannot run on it; "
            "use the black-box `square` attack or `transfer_accuracy` (PGD on a float model)."
        )


def input_gradient(tape, target, x):
    """d target / d x from a tape watching x; raises instead of returning None."""
    grad = tape.gradient(target, x)
    if grad is None:
        # A silent zero here would report the model as perfectly robust.
        raise NotDifferentiableError(
            "the model output has no gradient with respect to its input (an op without a "
            "gradient such as tf.round, a numpy/TFLite call, or an output detached from the "
            "input); use `square` or `transfer_accuracy` instead of gradient attacks."
        )
    return grad


def value_and_grad(model_fn, x, loss_fn):
    """Logits, per-example loss and its input gradient; loss_fn(logits) -> [B]."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = logits_of(model_fn, x)
        loss = loss_fn(logits)
    return logits, loss, input_gradient(tape, loss, x)


def compile_fn(fn, input_signature):
    """tf.function of fn, traced without autograph: the attacks use tf.while_loop and tf.where
    only, and autograph makes tracing them several times slower. A model whose own code needs
    autograph (Python control flow on tensors) gets it on the first failure."""
    compiled = tf.function(fn, input_signature=input_signature, autograph=False)

    def call(*args):
        nonlocal compiled
        try:
            return compiled(*args)
        except tf.errors.OperatorNotAllowedInGraphError:
            compiled = tf.function(fn, input_signature=input_signature)
            return compiled(*args)

    return call


def compile_batch_fn(attack_fn, x_shape, extra_specs=(), *, model_fn):
    """Compiled attack_fn(x, y, seed, *extra) -> x_adv that also returns whether the model still
    classifies each x_adv correctly, judged in the same batch the attack saw.

    The batch dimension is left free so batches of any size, the last smaller one included,
    share one trace.
    """
    signature = (
        tf.TensorSpec((None, *x_shape[1:]), tf.float32),
        tf.TensorSpec((None,), tf.int32),
        tf.TensorSpec((2,), tf.int64),
        *extra_specs,
    )

    return compile_fn(_AttackAndCheck(attack_fn, model_fn), signature)


class _AttackAndCheck:
    """(x, y, seed, *extra) -> (x_adv, still correct). A class rather than a closure because TF
    counts traces per code object and would call one trace per attack "excessive retracing"."""

    def __init__(self, attack_fn, model_fn):
        self.attack_fn, self.model_fn = attack_fn, model_fn

    def __call__(self, x, y, seed, *extra):
        x_adv = self.attack_fn(x, y, seed, *extra)
        return x_adv, predict(self.model_fn, x_adv) == y


class _Predict:
    def __init__(self, model_fn):
        self.model_fn = model_fn

    def __call__(self, x):
        return predict(self.model_fn, x)


def run_batched(batch_fn, x, y, *, batch_size, seed=0, stream=0, extra=(), desc=None, progress=True):
    """Runs a `compile_batch_fn` function over a dataset -> (x_adv, still_correct), numpy.

    Batch i gets the seed (seed, stream * 2**20 + i): deterministic, and distinct per call site.
    """
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    x_adv = np.empty_like(x)
    correct = np.zeros(len(x), bool)
    starts = range(0, len(x), batch_size)
    bar = tqdm(starts, desc=desc, disable=not progress, leave=False, unit="batch")
    for i, start in enumerate(bar):
        stop = start + batch_size
        batch_seed = tf.constant([seed, stream * 2**20 + i], tf.int64)
        adv, ok = batch_fn(x[start:stop], y[start:stop], batch_seed, *extra)
        x_adv[start:stop], correct[start:stop] = np.asarray(adv), np.asarray(ok)
    return x_adv, correct


def predictor(model_fn, x_shape):
    """Compiled (once) predict_classes(x, batch_size) -> class ids for numpy datasets."""
    compiled = compile_fn(_Predict(model_fn), (tf.TensorSpec((None, *x_shape[1:]), tf.float32),))

    def predict_classes(x, batch_size):
        x = np.asarray(x, np.float32)
        out = np.zeros([len(x)], np.int32)
        for start in range(0, len(x), batch_size):
            out[start : start + batch_size] = np.asarray(compiled(x[start : start + batch_size]))
        return out

    return predict_classes


def over_target_classes(model_fn, x, y, *, n_target_classes, seed, run_rank):
    """Run a targeted attack towards the 2nd, 3rd, ... most likely classes in turn, each time only on
    the points no earlier target has fooled (as APGD-T and FAB-T do in the reference AutoAttack).

    `run_rank(x_sub, y_sub, rank, seed) -> (candidate, success)` attacks one target rank.
    """
    require_gradients(model_fn)
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(y, tf.int32)
    seed = as_seed(seed)
    n_classes = logits_of(model_fn, x[:1]).shape[-1]
    x_adv = x
    fooled = predict(model_fn, x) != y
    for rank in range(2, min(n_target_classes, n_classes - 1) + 2):
        todo = tf.where(~fooled)[:, 0]
        if tf.executing_eagerly() and int(tf.size(todo)) == 0:
            break  # every point fooled: an empty batch would reach the model (TF's CPU conv mis-shapes it)
        candidate, success = run_rank(tf.gather(x, todo), tf.gather(y, todo), rank, fold_seed(seed, rank))
        hit = tf.boolean_mask(todo, success)[:, None]
        x_adv = tf.tensor_scatter_nd_update(x_adv, hit, tf.boolean_mask(candidate, success))
        fooled = tf.tensor_scatter_nd_update(fooled, hit, tf.ones(tf.shape(hit)[:1], tf.bool))
    return x_adv
