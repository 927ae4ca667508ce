"""APGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness..."), L-inf.

Step-size-free PGD: starts at step 2 * eps with momentum 0.75 and halves the step of a point at
checkpoints p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (fractions of the
iterations) when, since the last checkpoint, its loss rose in at most rho of the steps, or its step
was not just halved and its best loss did not improve; it then restarts from its best point.
APGD-CE maximizes the cross-entropy, APGD-T the targeted DLR loss towards the runner-up classes.
"""

from typing import NamedTuple

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


class _State(NamedTuple):
    """What one APGD iteration hands to the next (per point, except the iteration counter)."""

    i: tf.Tensor  # the iteration
    x_adv: tf.Tensor
    x_prev: tf.Tensor  # the iterate before (for the momentum)
    grad: tf.Tensor
    step: tf.Tensor
    x_best: tf.Tensor  # the highest-loss iterate so far, its gradient and loss
    grad_best: tf.Tensor
    loss_best: tf.Tensor
    loss_prev: tf.Tensor
    n_rises: tf.Tensor  # steps that raised the loss since the last checkpoint
    loss_best_last: tf.Tensor  # the best loss at the last checkpoint
    reduced_last: tf.Tensor  # whether the step was halved at the last checkpoint
    x_fooling: tf.Tensor  # the first misclassified iterate
    fooled: tf.Tensor


class _Run(NamedTuple):
    """The constants of one APGD run."""

    model_fn: object
    x: tf.Tensor
    y: tf.Tensor
    loss_fn: object
    eps: float
    rho: float
    is_checkpoint: tf.Tensor
    window: tf.Tensor

    def as_batch(self, v):
        return common.broadcast_to_batch(v, self.x)


def _single_run(model_fn, x, y, loss_fn, *, eps, steps, rho, seed):
    """One APGD run -> (x_adv, fooled). x_adv is the first misclassified iterate if any, else
    the highest-loss one."""
    is_checkpoint, window = checkpoints(steps)
    run = _Run(model_fn, x, y, loss_fn, eps, rho, tf.constant(is_checkpoint), tf.constant(window, tf.float32))
    noise = tf.random.stateless_uniform(tf.shape(x), seed, -1.0, 1.0)
    # Scaled so that the largest coordinate of the start perturbation is exactly eps.
    x_adv = tf.clip_by_value(x + eps * noise / run.as_batch(common.linf_norm(noise) + 1e-12), 0.0, 1.0)
    logits, loss, grad = common.value_and_grad(model_fn, x_adv, loss_fn)
    fooled = tf.argmax(logits, axis=-1, output_type=tf.int32) != y
    step = 2.0 * eps * tf.ones_like(loss)
    init = _State(
        i=tf.constant(0),
        x_adv=x_adv,
        x_prev=x_adv,
        grad=grad,
        step=step,
        x_best=x_adv,
        grad_best=grad,
        loss_best=loss,
        loss_prev=loss,
        n_rises=tf.zeros_like(loss),
        loss_best_last=loss,
        reduced_last=tf.ones_like(fooled),
        x_fooling=x_adv,
        fooled=fooled,
    )
    state = tf.while_loop(
        lambda i, *_: i < steps,
        lambda *s: tuple(_iteration(run, _State(*s))),
        tuple(init),
        maximum_iterations=steps,
    )
    final = _State(*state)
    return tf.where(run.as_batch(final.fooled), final.x_fooling, final.x_best), final.fooled


def _iteration(run: _Run, s: _State) -> _State:
    """One APGD step: the momentum step, the new iterate's loss and gradient, the best point so far, and
    at a checkpoint the step-size halving with its restart from the best point."""
    as_batch = run.as_batch
    alpha = tf.where(s.i > 0, 0.75, 1.0)
    z = common.project(s.x_adv + as_batch(s.step) * tf.sign(s.grad), run.x, run.eps)
    z = common.project(s.x_adv + (z - s.x_adv) * alpha + (s.x_adv - s.x_prev) * (1.0 - alpha), run.x, run.eps)
    x_prev, x_adv = s.x_adv, z

    logits, loss, grad = common.value_and_grad(run.model_fn, x_adv, run.loss_fn)
    wrong = tf.argmax(logits, axis=-1, output_type=tf.int32) != run.y
    x_fooling = tf.where(as_batch(wrong & ~s.fooled), x_adv, s.x_fooling)
    fooled = s.fooled | wrong

    n_rises = s.n_rises + tf.cast(loss > s.loss_prev, tf.float32)
    loss_prev = loss
    better = loss > s.loss_best
    x_best = tf.where(as_batch(better), x_adv, s.x_best)
    grad_best = tf.where(as_batch(better), grad, s.grad_best)
    loss_best = tf.where(better, loss, s.loss_best)

    at_checkpoint = run.is_checkpoint[s.i]
    oscillating = n_rises <= run.window[s.i] * run.rho
    stalled = ~s.reduced_last & (s.loss_best_last >= loss_best)
    reduce = at_checkpoint & (oscillating | stalled)
    return _State(
        i=s.i + 1,
        x_adv=tf.where(as_batch(reduce), x_best, x_adv),
        x_prev=x_prev,
        grad=tf.where(as_batch(reduce), grad_best, grad),
        step=tf.where(reduce, s.step / 2.0, s.step),
        x_best=x_best,
        grad_best=grad_best,
        loss_best=loss_best,
        loss_prev=loss_prev,
        n_rises=tf.where(at_checkpoint, tf.zeros_like(n_rises), n_rises),
        loss_best_last=tf.where(at_checkpoint, loss_best, s.loss_best_last),
        reduced_last=tf.where(at_checkpoint, oscillating | stalled, s.reduced_last),
        x_fooling=x_fooling,
        fooled=fooled,
    )


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
