"""Sparse-Init: a plain kernel drawn as A * B has the distribution of FReP's fused hadamard init."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from frep_tf.layers.reparam import ReparamConv2D
from frep_tf.methods import sparse_init

SHAPE_IN = (1, 6, 6, 32)
FILTERS = 64  # kernel (3, 3, 32, 64): 18432 entries per sample
# Two-sample Kolmogorov-Smirnov at alpha = 0.001: D_crit = 1.95 * sqrt(2 / n) ~ 0.020 for n = 18432.
ALPHA = 1e-3


def _layer(parameterization):
    layer = ReparamConv2D(FILTERS, 3, parameterization=parameterization, use_bias=False)
    layer(tf.zeros(SHAPE_IN))
    return layer


def test_product_init_has_the_fused_hadamard_distribution():
    keras.utils.set_random_seed(0)
    fused = np.asarray(_layer("hadamard").fused_kernel()).ravel()
    plain = _layer("plain")
    ordinary = np.asarray(plain.kernel).ravel()
    sparse_init.apply([plain], seed=7)
    product = np.asarray(plain.kernel).ravel()
    same = stats.ks_2samp(product, fused)
    assert same.pvalue > ALPHA, same
    # The variances multiply: Var(A * B) = Var(A) Var(B) for independent zero-mean draws.
    np.testing.assert_allclose(product.var(), ordinary.var() ** 2, rtol=0.1)
    # The test can tell the distributions apart: an ordinary plain init fails it by far.
    different = stats.ks_2samp(ordinary, fused)
    assert different.pvalue < 1e-6 and different.statistic > 5 * same.statistic, (same, different)


def test_product_draw_is_seeded_and_its_factors_independent():
    a = sparse_init.product_draw("he_normal", (4, 5), seed=3)
    np.testing.assert_array_equal(a, sparse_init.product_draw("he_normal", (4, 5), seed=3))
    assert not np.allclose(a, sparse_init.product_draw("he_normal", (4, 5), seed=5))
    # Independent factors: A * B is not A^2 (which would be non-negative).
    assert (a < 0).any()


def test_only_plain_layers():
    with pytest.raises(ValueError, match="parameterization='hadamard'"):
        sparse_init.apply([_layer("hadamard")])
