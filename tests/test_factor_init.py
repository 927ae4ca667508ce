"""--factor_init=scaled: the fused kernel starts with the kernel initializer's standard deviation (He normal:
sqrt(2 / fan_in)), where `random` starts it sqrt(fan_in / 2) times smaller (hadamard: the product of two He
draws has std (sqrt(2 / fan_in))^2) or sqrt(2) times larger (channel: D products of a He B and a He mix).

The expected values are computed from the layer's fan-in, not pinned: a factor scaled by the wrong power,
or only one of the two factors scaled, fails here.
"""

import keras
import numpy as np
import pytest

from frep_tf import config
from frep_tf.layers import ReparamConv2D, ReparamDense
from frep_tf.layers.reparam import FACTOR_INITS
from frep_tf.validation import validate


def _conv(parameterization, factor_init, in_channels, filters, seed=0):
    keras.utils.set_random_seed(seed)
    layer = ReparamConv2D(filters, 3, parameterization=parameterization, factor_init=factor_init)
    layer.build((None, 8, 8, in_channels))
    return layer


def _he_std(fan_in: int) -> float:
    return (2.0 / fan_in) ** 0.5


def test_the_vocabulary_is_the_same_in_config_and_layers():
    assert config.FACTOR_INITS == FACTOR_INITS
    assert "scaled" in FACTOR_INITS
    assert validate(config.Config.from_flat({"factor_init": "scaled"})).model.factor_init == "scaled"


@pytest.mark.parametrize("parameterization", ["hadamard", "channel"])
def test_scaled_fused_kernel_has_he_std_on_a_large_conv(parameterization):
    in_channels = 256
    layer = _conv(parameterization, "scaled", in_channels, 256)
    fused = np.asarray(layer.fused_kernel())
    target = _he_std(9 * in_channels)
    assert fused.std() == pytest.approx(target, rel=0.03)
    assert abs(fused.mean()) < 0.01 * target
    if parameterization == "hadamard":
        a, b = np.asarray(layer.factor_a), np.asarray(layer.factor_b)
        # Each factor carries the square root of the kernel's std, with random signs, independently.
        for factor in (a, b):
            assert factor.std() == pytest.approx(target**0.5, rel=0.03)
            assert np.mean(factor > 0) == pytest.approx(0.5, abs=0.01)
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.01
        assert np.mean(fused > 0) == pytest.approx(0.5, abs=0.01)
    else:
        mix = np.asarray(layer.mix)
        assert mix.std() == pytest.approx(256**-0.5, rel=0.03)  # variance 1 / D
        assert np.asarray(layer.factor_b).std() == pytest.approx(target, rel=0.03)  # B drawn as the plain kernel


def test_scaled_dense_kernel_has_he_std():
    keras.utils.set_random_seed(0)
    layer = ReparamDense(1024, parameterization="hadamard", factor_init="scaled")
    layer.build((None, 512))
    assert np.asarray(layer.fused_kernel()).std() == pytest.approx(_he_std(512), rel=0.03)


def test_random_hadamard_starts_sqrt_fan_in_over_2_times_smaller_than_he():
    # A 3x3 conv with 16 input channels: fan-in 144, He std 0.118, the product of two such draws 0.0139,
    # a ratio of sqrt(144 / 2) = 8.5 (a 3x3 conv over 8 channels: 6).
    in_channels = 16
    fan_in = 9 * in_channels
    he = _he_std(fan_in)
    random_std = np.asarray(_conv("hadamard", "random", in_channels, 512).fused_kernel()).std()
    scaled_std = np.asarray(_conv("hadamard", "scaled", in_channels, 512).fused_kernel()).std()
    plain_std = np.asarray(_conv("plain", "random", in_channels, 512).fused_kernel()).std()
    assert plain_std == pytest.approx(he, rel=0.03)
    assert he / random_std == pytest.approx((fan_in / 2) ** 0.5, rel=0.05)
    assert scaled_std == pytest.approx(he, rel=0.05)
    # channel / random: each fused weight sums D products of a He B and a He D x D mix: sqrt(2) x He.
    channel_std = np.asarray(_conv("channel", "random", in_channels, 512).fused_kernel()).std()
    assert channel_std / he == pytest.approx(2**0.5, rel=0.05)


def test_scaled_needs_a_variance_scaling_initializer():
    layer = ReparamDense(4, parameterization="hadamard", factor_init="scaled", kernel_initializer="zeros")
    with pytest.raises(ValueError, match="needs a VarianceScaling kernel_initializer"):
        layer.build((None, 3))
