"""The architecture zoo, each written once against a layer factory.

CIFAR variants (3x3 stem, no max-pool) as in the robust-pruning literature (HYDRA, MAD, FReP);
global average pooling before the classifier, so 64x64 inputs (Tiny-ImageNet) work unchanged.
Every layer gets a deterministic name, so weights can be matched by name (fusion, inheritance).
Input normalisation is the first layer: attacks and epsilons work on [0, 1] pixels.
"""

from __future__ import annotations

import keras

from frep_tf.layers.factory import LayerFactory, make_layers

# Spec tables: data, not code.
RESNET_SPECS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
WRN_SPECS = {"wrn28_10": (28, 10), "wrn28_4": (28, 4)}
VGG_SPECS = {
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}
SMALL_CNN_FILTERS = (32, 64, 128)
MLP_HIDDEN = (512, 512)  # the CPU proving ground: 784-512-512-10 on Fashion-MNIST

ARCHITECTURES = (*VGG_SPECS, *RESNET_SPECS, *WRN_SPECS, "small_cnn", "mlp")

_BN = dict(momentum=0.9, epsilon=1e-5)  # PyTorch's BatchNorm2d defaults, as in the reference results


def _bn(name):
    return keras.layers.BatchNormalization(name=name, **_BN)


def _relu(name):
    return keras.layers.ReLU(name=name)


def _ch(width: float, channels: int) -> int:
    return max(1, int(round(channels * width)))


# -- ResNet --------------------------------------------------------------------------------------
def _basic_block(x, f: LayerFactory, filters, stride, name):
    shortcut = x
    y = f.conv(filters, 3, stride, name=f"{name}_conv1")(x)
    y = _relu(f"{name}_relu1")(_bn(f"{name}_bn1")(y))
    y = f.conv(filters, 3, 1, name=f"{name}_conv2")(y)
    y = _bn(f"{name}_bn2")(y)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = f.conv(filters, 1, stride, name=f"{name}_shortcut_conv")(x)
        shortcut = _bn(f"{name}_shortcut_bn")(shortcut)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return _relu(f"{name}_out")(y)


def _bottleneck_block(x, f: LayerFactory, filters, stride, name):
    out = 4 * filters
    shortcut = x
    y = f.conv(filters, 1, 1, name=f"{name}_conv1")(x)
    y = _relu(f"{name}_relu1")(_bn(f"{name}_bn1")(y))
    y = f.conv(filters, 3, stride, name=f"{name}_conv2")(y)
    y = _relu(f"{name}_relu2")(_bn(f"{name}_bn2")(y))
    y = f.conv(out, 1, 1, name=f"{name}_conv3")(y)
    y = _bn(f"{name}_bn3")(y)
    if stride != 1 or x.shape[-1] != out:
        shortcut = f.conv(out, 1, stride, name=f"{name}_shortcut_conv")(x)
        shortcut = _bn(f"{name}_shortcut_bn")(shortcut)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return _relu(f"{name}_out")(y)


def _resnet(x, f, num_classes, width, arch):
    kind, depths = RESNET_SPECS[arch]
    block = _basic_block if kind == "basic" else _bottleneck_block
    x = f.conv(_ch(width, 64), 3, 1, name="stem_conv")(x)
    x = _relu("stem_relu")(_bn("stem_bn")(x))
    for stage, (depth, filters) in enumerate(zip(depths, (64, 128, 256, 512), strict=True), start=1):
        for i in range(depth):
            stride = 2 if (stage > 1 and i == 0) else 1
            x = block(x, f, _ch(width, filters), stride, name=f"stage{stage}_block{i + 1}")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return f.dense(num_classes, name="head_dense")(x)


# -- Wide ResNet (pre-activation) ---------------------------------------------------------------
def _wide_block(x, f, filters, stride, name):
    pre = _relu(f"{name}_relu1")(_bn(f"{name}_bn1")(x))
    needs_projection = stride != 1 or x.shape[-1] != filters
    # The projection reads the pre-activated input, as in the reference WRN.
    shortcut = f.conv(filters, 1, stride, name=f"{name}_shortcut_conv")(pre) if needs_projection else x
    y = f.conv(filters, 3, stride, name=f"{name}_conv1")(pre)
    y = _relu(f"{name}_relu2")(_bn(f"{name}_bn2")(y))
    y = f.conv(filters, 3, 1, name=f"{name}_conv2")(y)
    return keras.layers.Add(name=f"{name}_add")([y, shortcut])


def _wrn(x, f, num_classes, width, arch):
    depth, k = WRN_SPECS[arch]
    n = (depth - 4) // 6
    x = f.conv(_ch(width, 16), 3, 1, name="stem_conv")(x)
    for stage, filters in enumerate((16 * k, 32 * k, 64 * k), start=1):
        for i in range(n):
            stride = 2 if (stage > 1 and i == 0) else 1
            x = _wide_block(x, f, _ch(width, filters), stride, name=f"stage{stage}_block{i + 1}")
    x = _relu("final_relu")(_bn("final_bn")(x))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return f.dense(num_classes, name="head_dense")(x)


# -- VGG with BatchNorm ---------------------------------------------------------------------------
def _vgg(x, f, num_classes, width, arch):
    conv_i, pool_i = 0, 0
    for item in VGG_SPECS[arch]:
        if item == "M":
            pool_i += 1
            x = keras.layers.MaxPooling2D(2, name=f"pool{pool_i}")(x)
            continue
        conv_i += 1
        x = f.conv(_ch(width, item), 3, 1, use_bias=True, name=f"conv{conv_i}")(x)
        x = _relu(f"relu{conv_i}")(_bn(f"bn{conv_i}")(x))
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return f.dense(num_classes, name="head_dense")(x)


# -- A small CNN for 8x8 and 28x28 inputs -------------------------------------------------------
def _small_cnn(x, f, num_classes, width, arch):
    del arch
    for i, filters in enumerate(SMALL_CNN_FILTERS, start=1):
        stride = 1 if i == 1 else 2
        x = f.conv(_ch(width, filters), 3, stride, name=f"conv{i}")(x)
        x = _relu(f"relu{i}")(_bn(f"bn{i}")(x))
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return f.dense(num_classes, name="head_dense")(x)


# -- An MLP: the CPU proving ground -------------------------------------------------------------
def _mlp(x, f, num_classes, width, arch):
    """Flatten, then Dense -> BN -> ReLU per hidden layer (no hidden bias: the BN offset is the bias),
    and a plain Dense head: "BatchNorm after every prunable layer but the classifier", as in ResNet."""
    del arch
    x = keras.layers.Flatten(name="flatten")(x)
    for i, units in enumerate(MLP_HIDDEN, start=1):
        x = f.dense(_ch(width, units), use_bias=False, name=f"dense{i}")(x)
        x = _relu(f"relu{i}")(_bn(f"bn{i}")(x))
    return f.dense(num_classes, name="head_dense")(x)


_BUILDERS = {
    **{a: _vgg for a in VGG_SPECS},
    **{a: _resnet for a in RESNET_SPECS},
    **{a: _wrn for a in WRN_SPECS},
    "small_cnn": _small_cnn,
    "mlp": _mlp,
}


def build_model(
    arch: str,
    *,
    num_classes: int = 10,
    input_shape=(32, 32, 3),
    parameterization: str = "hadamard",
    factor_init: str = "random",
    width: float = 1.0,
    mean=None,
    std=None,
) -> keras.Model:
    """Build `arch` as a functional Keras model taking [0, 1] images and returning logits.

    `width` multiplies every channel count (tests use small widths); `mean`/`std` (per channel)
    parameterize the normalisation layer, default 0.5 / 0.25.
    """
    if arch not in _BUILDERS:
        raise ValueError(f"Unknown arch: {arch!r}. Allowed: {', '.join(ARCHITECTURES)}. Received: arch={arch!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an integer >= 2. Received: num_classes={num_classes!r}")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise ValueError(f"`width` must be a positive number. Received: width={width!r}")
    shape = tuple(input_shape) if hasattr(input_shape, "__len__") else ()
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(
            f"`input_shape` must be (height, width, channels) of positive integers. Received: input_shape={input_shape!r}"
        )
    factory = make_layers(parameterization, factor_init)
    channels = shape[-1]
    mean = (0.5,) * channels if mean is None else tuple(float(m) for m in mean)
    std = (0.25,) * channels if std is None else tuple(float(s) for s in std)
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ValueError(
            f"`mean` and `std` need one value per channel ({channels}), std > 0. Received: mean={mean}, std={std}"
        )
    inputs = keras.Input(shape=shape, name="image")
    x = keras.layers.Normalization(mean=mean, variance=[s * s for s in std], name="normalize")(inputs)
    logits = _BUILDERS[arch](x, factory, num_classes, width, arch)
    return keras.Model(inputs, logits, name=f"{arch}_{parameterization}")
