"""Per-example training losses: SRE (paper Eq. 16), TRADES, MART, cross-entropy.

Every function returns one value per example; the caller reduces them so that the result is scaled
correctly per replica under tf.distribute (see `training.robust_model.replica_mean`).
"""

from __future__ import annotations

import tensorflow as tf


def cross_entropy(logits, y):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(y, tf.int32), logits=logits)


def squared_l2(a, b):
    return tf.reduce_sum(tf.square(a - b), axis=-1)


def sre(logits_clean, logits_adv, y, lam: float):
    """Self-consistent robust error: ||p(x) - onehot(y)||^2 + lam * ||p(x_adv) - p(x)||^2.

    Squared L2 over classes of softmax outputs (Pang et al. 2022, used by FReP), per example.
    """
    p_clean = tf.nn.softmax(logits_clean)
    p_adv = tf.nn.softmax(logits_adv)
    onehot = tf.one_hot(tf.cast(y, tf.int32), tf.shape(logits_clean)[-1], dtype=p_clean.dtype)
    return squared_l2(p_clean, onehot) + lam * squared_l2(p_adv, p_clean)


def kl_divergence(logits_p, logits_q):
    """KL(p || q) per example, from logits (numerically stable log-softmax)."""
    log_p = tf.nn.log_softmax(logits_p)
    log_q = tf.nn.log_softmax(logits_q)
    return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)


def trades(logits_clean, logits_adv, y, beta: float):
    """TRADES (Zhang et al. 2019): CE(clean) + beta * KL(p(x) || p(x_adv))."""
    return cross_entropy(logits_clean, y) + beta * kl_divergence(logits_clean, logits_adv)


def mart(logits_clean, logits_adv, y, beta: float):
    """MART (Wang et al. 2020): boosted CE on x_adv + beta * KL(clean || adv) * (1 - p_y(clean))."""
    y = tf.cast(y, tf.int32)
    num_classes = tf.shape(logits_adv)[-1]
    p_adv = tf.nn.softmax(logits_adv)
    onehot = tf.one_hot(y, num_classes, dtype=p_adv.dtype)
    # Largest wrong-class probability of the adversarial example.
    wrong = tf.reduce_max(p_adv - 1e4 * onehot, axis=-1)
    boosted_ce = cross_entropy(logits_adv, y) - tf.math.log(1.0001 - wrong)
    p_clean = tf.nn.softmax(logits_clean)
    true_clean = tf.reduce_sum(p_clean * onehot, axis=-1)
    kl = tf.reduce_sum(p_clean * (tf.math.log(p_clean + 1e-12) - tf.math.log(p_adv + 1e-12)), axis=-1)
    return boosted_ce + beta * kl * (1.0 - true_clean)
