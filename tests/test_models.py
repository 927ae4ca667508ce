"""Architecture zoo: pinned parameter counts, names, input sizes, argument errors."""

import numpy as np
import pytest

from frep_tf.layers import reparam_layers
from frep_tf.models import ARCHITECTURES, build_model

# Trainable parameters of the `plain` variants, as in the usual PyTorch CIFAR implementations
# (kuangliu/pytorch-cifar ResNets and VGG16 with BatchNorm, the reference WideResNet).
PINNED_PLAIN_PARAMS = {
    "resnet18": 11_173_962,
    "resnet34": 21_282_122,
    "resnet50": 23_520_842,
    "wrn28_10": 36_479_194,
    "vgg16": 14_728_266,
    "wrn28_4": 5_849_050,
}


def _trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


@pytest.mark.parametrize("arch", sorted(PINNED_PLAIN_PARAMS))
def test_plain_parameter_counts_are_pinned(arch):
    assert _trainable(build_model(arch, parameterization="plain")) == PINNED_PLAIN_PARAMS[arch]


def test_factored_models_hold_two_factors_per_kernel():
    plain = build_model("resnet18", parameterization="plain", width=0.25)
    hadamard = build_model("resnet18", parameterization="hadamard", width=0.25)
    kernels = sum(int(np.prod(layer.mask.shape)) for layer in reparam_layers(plain))
    assert _trainable(hadamard) == _trainable(plain) + kernels
    channel = build_model("resnet18", parameterization="channel", width=0.25)
    mixes = sum(layer.mask.shape[-1] ** 2 for layer in reparam_layers(plain))
    assert _trainable(channel) == _trainable(plain) + mixes


def test_layer_names_are_deterministic():
    a = [layer.name for layer in build_model("resnet18", width=0.125).layers]
    b = [layer.name for layer in build_model("resnet18", width=0.125).layers]
    assert a == b
    assert "stage2_block1_shortcut_conv" in a and a[1] == "normalize"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_arch_accepts_64x64_inputs(arch):
    model = build_model(arch, num_classes=200, input_shape=(64, 64, 3), width=0.0625)
    out = model(np.zeros((2, 64, 64, 3), "float32"))
    assert out.shape == (2, 200)


def test_small_cnn_takes_digits_and_mnist_shapes():
    for shape in [(8, 8, 1), (28, 28, 1)]:
        assert build_model("small_cnn", input_shape=shape)(np.zeros((1, *shape), "float32")).shape == (1, 10)


def test_normalization_is_inside_the_model():
    model = build_model("small_cnn", input_shape=(8, 8, 1), mean=(0.3,), std=(0.2,))
    norm = model.get_layer("normalize")
    np.testing.assert_allclose(np.asarray(norm(np.full((1, 8, 8, 1), 0.5, "float32"))), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(arch="resnet19"), r"Unknown arch: 'resnet19'. Allowed: vgg16, resnet18"),
        (dict(arch="resnet18", parameterization="dense"), "parameterization"),
        (dict(arch="resnet18", width=0), "width=0"),
        (dict(arch="resnet18", width=-1.5), "width=-1.5"),
        (dict(arch="resnet18", input_shape=()), r"input_shape=\(\)"),
        (dict(arch="resnet18", input_shape=5), "input_shape=5"),
        (dict(arch="resnet18", input_shape=(32, 32)), "input_shape"),
        (dict(arch="resnet18", num_classes=1), "num_classes=1"),
        (dict(arch="small_cnn", input_shape=(8, 8, 1), mean=(0.1, 0.2)), "mean"),
    ],
)
def test_bad_model_arguments(kwargs, match):
    arch = kwargs.pop("arch")
    with pytest.raises(ValueError, match=match):
        build_model(arch, **kwargs)
