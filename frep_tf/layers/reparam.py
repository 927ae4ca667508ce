"""Conv2D and Dense layers whose kernel is a product of two trainable factors (paper III-B).

One class per layer kind; the parameterization is an argument:

- ``hadamard`` (FReP):    kernel = A * B * mask, A and B of the kernel's shape (paper Eq. 4).
- ``channel``  (FReP-CH): kernel = (B contracted with `mix` over the output-channel axis) * mask,
  `mix` is D x D with D the number of output channels (paper Eq. 9).
- ``plain`` ("Ori", and the shape a deployed model has): kernel = W * mask.

The mask always has the kernel's shape, so unstructured and channel pruning both work with every
parameterization (paper Table IV prunes FReP and FReP-CH both ways). It is a non-trainable variable of
the layer, so it is saved, restored and mirrored like any weight. Bias is never factored or masked.
"""

from __future__ import annotations

import keras
from keras import ops

PARAMETERIZATIONS = ("hadamard", "channel", "plain")
FACTOR_INITS = ("random", "equal", "ones", "scaled")  # as frep_tf.config.FACTOR_INITS
PADDINGS = ("same", "valid")


def check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(
            f"Unknown {name}: {value!r}. Allowed: {', '.join(map(str, allowed))}. Received: {name}={value!r}"
        )


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")


def _pair(name: str, value) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"`{name}` must be an int or a pair of ints. Received: {name}={value!r}")
    for v in pair:
        _check_positive_int(name, v)
    return pair


class _FactoredKernelLayer(keras.layers.Layer):
    """Holds the factors and the mask of one kernel; subclasses say how the kernel is applied."""

    def __init__(
        self,
        parameterization: str = "hadamard",
        factor_init: str = "random",
        use_bias: bool = True,
        kernel_initializer="he_normal",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_choice("parameterization", parameterization, PARAMETERIZATIONS)
        check_choice("factor_init", factor_init, FACTOR_INITS)
        self.parameterization = parameterization
        self.factor_init = factor_init
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    # -- weights -------------------------------------------------------------------------------
    def _fresh_kernel_initializer(self):
        # Each factor needs its own draw: a shared seeded initializer would make A == B.
        config = keras.initializers.serialize(self.kernel_initializer)
        init = keras.initializers.deserialize(config)
        if hasattr(init, "seed") and getattr(init, "seed", None) is not None:
            init.seed = None
        return init

    def _build_kernel(self, kernel_shape: tuple[int, ...]) -> None:
        out_dim = kernel_shape[-1]
        p, how = self.parameterization, self.factor_init

        def kernel_std() -> float:
            """The standard deviation of the kernel initializer's draws (He normal: sqrt(2 / fan_in))."""
            init = self.kernel_initializer
            if not isinstance(init, keras.initializers.VarianceScaling):
                raise ValueError(
                    "factor_init='scaled' needs a VarianceScaling kernel_initializer (he_normal, glorot_uniform, "
                    f"...). Received: kernel_initializer={type(init).__name__}"
                )
            receptive = 1
            for d in kernel_shape[:-2]:
                receptive *= int(d)
            fan_in, fan_out = receptive * kernel_shape[-2], receptive * kernel_shape[-1]
            fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[init.mode]
            return (init.scale / max(1.0, fan)) ** 0.5

        def scaled(init, gain):
            return lambda shape, dtype=None: init(shape, dtype=dtype) * gain

        if p == "plain":
            self.kernel = self.add_weight(
                name="kernel", shape=kernel_shape, initializer=self._fresh_kernel_initializer()
            )
        elif p == "hadamard":
            a_init = self._fresh_kernel_initializer()
            if how == "scaled":
                # Both factors drawn as the kernel (std s), times 1 / sqrt(s): each has std sqrt(s), and the
                # product of two independent zero-mean factors has std sqrt(s) * sqrt(s) = s, the kernel's.
                gain = kernel_std() ** -0.5
                a_init = scaled(a_init, gain)
            self.factor_a = self.add_weight(name="factor_a", shape=kernel_shape, initializer=a_init)
            if how == "random":
                b_init = self._fresh_kernel_initializer()
            elif how == "scaled":
                b_init = scaled(self._fresh_kernel_initializer(), gain)
            elif how == "equal":
                a = self.factor_a
                b_init = lambda shape, dtype=None: ops.abs(ops.convert_to_tensor(a))  # noqa: E731
            else:  # ones
                b_init = "ones"
            self.factor_b = self.add_weight(name="factor_b", shape=kernel_shape, initializer=b_init)
        else:  # channel
            self.factor_b = self.add_weight(
                name="factor_b", shape=kernel_shape, initializer=self._fresh_kernel_initializer()
            )
            # `random` draws the D x D mixing matrix like the kernel of a D -> D dense layer;
            # `equal` and `ones` start from the identity, i.e. the fused kernel starts equal to B;
            # `scaled` draws it with variance 1 / D (LeCun normal): each fused weight sums D products,
            # so its variance is D * var(B) / D = var(B), the kernel initializer's.
            if how == "random":
                mix_init = self._fresh_kernel_initializer()
            elif how == "scaled":
                mix_init = keras.initializers.LecunNormal()
                mix_init.seed = None  # the global stream, as the factors
            else:
                mix_init = "identity"
            self.mix = self.add_weight(name="mix", shape=(out_dim, out_dim), initializer=mix_init)
        self.mask = self.add_weight(name="mask", shape=kernel_shape, initializer="ones", trainable=False)
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(out_dim,), initializer=self.bias_initializer)
        else:
            self.bias = None

    def fused_kernel(self):
        """The kernel the layer applies: what a plain Conv2D/Dense would hold after fusion."""
        p = self.parameterization
        if p == "plain":
            w = self.kernel
        elif p == "hadamard":
            w = self.factor_a * self.factor_b
        else:
            w = ops.tensordot(self.factor_b, self.mix, axes=[[len(self.mask.shape) - 1], [0]])
        return ops.cast(w * self.mask, self.compute_dtype)

    def prunable_weights(self) -> list:
        """The trainable variables that make up the (prunable) kernel; bias is excluded."""
        p = self.parameterization
        if p == "plain":
            return [self.kernel]
        if p == "hadamard":
            return [self.factor_a, self.factor_b]
        return [self.mix, self.factor_b]

    def project_factors(self) -> None:
        """Zero the factor entries under a pruned mask position (hadamard and plain).

        The fused kernel is exactly zero there anyway (the mask multiplies it); zeroing the factors
        as well stops weight decay and momentum from moving dead entries, so pruned weights are never
        updated. FReP-CH mixes output channels, so its factors cannot be masked entry-wise.
        """
        if self.parameterization == "channel":
            return
        for v in self.prunable_weights():
            v.assign(v * ops.cast(self.mask, v.dtype))

    def _add_bias(self, y):
        if self.bias is not None:
            y = y + ops.cast(self.bias, y.dtype)
        return y

    def get_config(self):
        config = super().get_config()
        config.update(
            parameterization=self.parameterization,
            factor_init=self.factor_init,
            use_bias=self.use_bias,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
        )
        return config


def _activation(activation):
    """The Keras activation function for `activation` (a name, a function or None: linear)."""
    return keras.activations.get(activation)


def _activate(activation, y):
    return y if activation is keras.activations.linear else activation(y)


def _check_fuse_into(fuse_into) -> None:
    if fuse_into is not None and not (isinstance(fuse_into, dict) and "class_name" in fuse_into):
        raise ValueError(
            "`fuse_into` must be None or a serialized Keras layer (keras.saving.serialize_keras_object). "
            f"Received: fuse_into={fuse_into!r}"
        )


@keras.saving.register_keras_serializable(package="frep_tf")
class ReparamConv2D(_FactoredKernelLayer):
    """A 2-D convolution (NHWC) with a factored, masked kernel of shape (kh, kw, in / groups, filters).

    `dilation_rate`, `groups` and `activation` mean what they mean for keras.layers.Conv2D. `fuse_into` is
    the serialized standard layer (keras.saving.serialize_keras_object) that frep_tf.fuse turns this one
    back into, e.g. the user's own Conv2D that frep_tf.reparameterize replaced; None: a Conv2D of the same
    configuration.
    """

    def __init__(
        self,
        filters: int,
        kernel_size=3,
        strides=1,
        padding: str = "same",
        dilation_rate=1,
        groups: int = 1,
        activation=None,
        fuse_into: dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_positive_int("filters", filters)
        _check_positive_int("groups", groups)
        if filters % groups:
            raise ValueError(f"`filters` must be a multiple of `groups`. Received: filters={filters}, groups={groups}")
        _check_fuse_into(fuse_into)
        self.filters = filters
        self.kernel_size = _pair("kernel_size", kernel_size)
        self.strides = _pair("strides", strides)
        check_choice("padding", padding, PADDINGS)
        self.padding = padding
        self.dilation_rate = _pair("dilation_rate", dilation_rate)
        self.groups = groups
        self.activation = _activation(activation)
        self.fuse_into = fuse_into
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        in_channels = input_shape[-1]
        if in_channels is None:
            raise ValueError(f"The channel dimension of the inputs must be known. Received: input_shape={input_shape}")
        if int(in_channels) % self.groups:
            raise ValueError(
                f"The input channels must be a multiple of `groups`. Received: {in_channels} channels, "
                f"groups={self.groups}"
            )
        self._build_kernel((*self.kernel_size, int(in_channels) // self.groups, self.filters))

    def call(self, inputs):
        # ops.conv infers the groups from the kernel's input-channel axis.
        y = ops.conv(
            inputs, self.fused_kernel(), strides=self.strides, padding=self.padding, dilation_rate=self.dilation_rate
        )
        return _activate(self.activation, self._add_bias(y))

    def compute_output_shape(self, input_shape):
        def out(size, k, s, d):
            if size is None:
                return None
            return -(-size // s) if self.padding == "same" else (size - (k - 1) * d - 1) // s + 1

        n, h, w, _ = input_shape
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.strides, self.dilation_rate
        return (n, out(h, kh, sh, dh), out(w, kw, sw, dw), self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            groups=self.groups,
            activation=keras.activations.serialize(self.activation),
            fuse_into=self.fuse_into,
        )
        return config


@keras.saving.register_keras_serializable(package="frep_tf")
class ReparamDense(_FactoredKernelLayer):
    """A dense layer with a factored, masked kernel of shape (in, units); `activation` and `fuse_into` as
    for ReparamConv2D (None: a Dense of the same configuration)."""

    def __init__(self, units: int, activation=None, fuse_into: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        _check_positive_int("units", units)
        _check_fuse_into(fuse_into)
        self.units = units
        self.activation = _activation(activation)
        self.fuse_into = fuse_into

    def build(self, input_shape):
        in_dim = input_shape[-1]
        if in_dim is None:
            raise ValueError(f"The last dimension of the inputs must be known. Received: input_shape={input_shape}")
        self._build_kernel((int(in_dim), self.units))

    def call(self, inputs):
        return _activate(self.activation, self._add_bias(ops.matmul(inputs, self.fused_kernel())))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units, activation=keras.activations.serialize(self.activation), fuse_into=self.fuse_into
        )
        return config


REPARAM_LAYERS = (ReparamConv2D, ReparamDense)


def reparam_layers(model) -> list:
    """All reparameterized layers of a model, in graph order."""
    found = []
    for layer in model.layers:
        if isinstance(layer, REPARAM_LAYERS):
            found.append(layer)
        elif hasattr(layer, "layers"):  # a nested model
            found.extend(reparam_layers(layer))
    return found
