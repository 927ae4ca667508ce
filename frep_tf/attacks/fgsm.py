"""FGSM (Goodfellow et al. 2015): one signed-gradient step of size eps on the cross-entropy."""

import tensorflow as tf

from frep_tf.attacks import common


def fgsm(model_fn, x, y, *, eps):
    """Returns x + eps * sign(grad CE), clipped to [0, 1]."""
    common.require_gradients(model_fn)
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(y, tf.int32)
    _, _, grad = common.value_and_grad(model_fn, x, lambda z: common.cross_entropy(z, y))
    return common.project(x + eps * tf.sign(grad), x, eps)
