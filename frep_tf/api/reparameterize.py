"""`frep_tf.reparameterize(model)`: any functional or Sequential Keras 3 model with every Conv2D and Dense
layer replaced by its reparameterized twin (frep_tf.layers.reparam), everything else kept.

The clone keeps each layer's configuration (activation, padding, strides, dilation, groups, bias,
initializers, name) and remembers the original layer (`fuse_into`), so frep_tf.fuse gives back the
user's own Conv2D / Dense. Nested functional and Sequential models are inlined: the result is one flat
graph with the same layers, which is what pruning, the temporal ensemble and fusion match by name.

With `keep_weights=True` (the default) the clone computes the same function as the model: the factors
of a kernel W are hadamard A = sign(W) sqrt|W|, B = sqrt|W|; channel B = W, mix = identity; plain W;
masks are ones and every other weight (bias, BatchNorm, depthwise kernels, ...) is copied.
"""

from __future__ import annotations

import logging

import keras
import numpy as np

from frep_tf.layers.reparam import FACTOR_INITS, PARAMETERIZATIONS, ReparamConv2D, ReparamDense, check_choice

logger = logging.getLogger("frep_tf")

# Layers with weights that are never candidates for factoring, and so are not worth listing.
_NORMALISATION = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.Normalization,
)
_PROBABILITIES = ("softmax", "log_softmax", "sigmoid")


def reparameterize(
    model: keras.Model,
    parameterization: str = "hadamard",
    factor_init: str = "random",
    *,
    keep_weights: bool = True,
    verbose: bool = True,
) -> keras.Model:
    """A clone of `model` whose Conv2D and Dense layers are factored (`parameterization`: hadamard,
    channel or plain).

    keep_weights=True: the clone computes what `model` computes (its factors are set from the kernels).
    keep_weights=False: every weight is drawn afresh, the factors as `factor_init` says (random, equal, ...).
    Layers that are not factored (DepthwiseConv2D, Conv1D, a Conv2D with channels_first, a subclass of
    Conv2D, ...) stay as they are and are listed in one line (printed when `verbose`, logged at INFO on
    the "frep_tf" logger).
    """
    _check_model(model)
    check_choice("parameterization", parameterization, PARAMETERIZATIONS)
    check_choice("factor_init", factor_init, FACTOR_INITS)
    cloner = _Cloner(parameterization, factor_init)
    clone = _clone(model, cloner)
    if not cloner.factored:
        raise ValueError(f"reparameterize: model {model.name!r} has no Conv2D or Dense layer to factor")
    _check_names(clone)
    _check_logits(clone)
    if keep_weights:
        cloner.copy_weights()
    line = cloner.summary(parameterization)
    logger.info(line)
    if verbose:
        print(line)
    return clone


# -- checks ------------------------------------------------------------------------------------------
def _is_graph_model(layer) -> bool:
    """A functional or Sequential model (whose graph can be cloned), not a subclassed one."""
    from keras.src.models.functional import Functional  # clone_model tells them apart the same way

    return isinstance(layer, (keras.Sequential, Functional))


def _check_model(model) -> None:
    if not isinstance(model, keras.Model):
        raise TypeError(f"reparameterize: expected a keras.Model, got {type(model).__name__}")
    if not _is_graph_model(model):
        raise TypeError(
            f"reparameterize: {type(model).__name__} is a subclassed keras.Model; only functional and Sequential "
            "models can be cloned layer by layer"
        )
    if not model.built or not getattr(model, "inputs", None):
        raise ValueError(
            f"reparameterize: model {model.name!r} is not built; give it an input shape (keras.Input) first"
        )
    already = [layer.name for layer in _all_layers(model) if isinstance(layer, (ReparamConv2D, ReparamDense))]
    if already:
        raise ValueError(f"reparameterize: model {model.name!r} is reparameterized already (layer {already[0]!r})")


def _all_layers(model) -> list:
    found = []
    for layer in model.layers:
        found.append(layer)
        if _is_graph_model(layer):
            found.extend(_all_layers(layer))
    return found


def _check_names(clone) -> None:
    seen = set()
    for layer in clone.layers:
        if layer.name in seen:
            raise ValueError(
                f"reparameterize: two layers are named {layer.name!r} once nested models are inlined; "
                "rename one (frep_tf matches layers by name)"
            )
        seen.add(layer.name)


def _check_logits(clone) -> None:
    """frep_tf trains and attacks logits: an output that is already probabilities is refused."""
    for tensor in clone.outputs:
        layer = tensor._keras_history.operation
        activation = getattr(getattr(layer, "activation", None), "__name__", "")
        if activation in _PROBABILITIES or isinstance(layer, keras.layers.Softmax):
            raise ValueError(
                f"reparameterize: output layer {layer.name!r} returns {activation or 'softmax'} probabilities; "
                "frep_tf trains and attacks logits: build the model without the final activation "
                "(keras.applications: classifier_activation=None)"
            )


# -- layer by layer ----------------------------------------------------------------------------------
def why_not_factored(layer) -> str | None:
    """None if `layer` is factored, else why not (shown in the summary line)."""
    kind = type(layer)
    if kind not in (keras.layers.Conv2D, keras.layers.Dense):
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            return f"a subclass of {kind.__mro__[1].__name__}"
        return type(layer).__name__
    if kind is keras.layers.Conv2D and layer.data_format != "channels_last":
        return "Conv2D with data_format='channels_first'"
    for attribute in ("kernel_constraint", "bias_constraint"):
        if getattr(layer, attribute, None) is not None:
            return f"{kind.__name__} with a {attribute} (a constraint on the kernel, not on its factors)"
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
        return f"{kind.__name__} with LoRA or quantization"
    return None


def factored_layer(layer, parameterization: str, factor_init: str):
    """The reparameterized twin of a Conv2D or Dense layer (same configuration, fresh weights)."""
    config = layer.get_config()
    common = dict(
        parameterization=parameterization,
        factor_init=factor_init,
        activation=config["activation"],
        use_bias=config["use_bias"],
        kernel_initializer=config["kernel_initializer"],
        bias_initializer=config["bias_initializer"],
        fuse_into=keras.saving.serialize_keras_object(layer),
        name=config["name"],
        dtype=config["dtype"],
        trainable=config["trainable"],
    )
    if type(layer) is keras.layers.Dense:
        return ReparamDense(config["units"], **common)
    return ReparamConv2D(
        config["filters"],
        config["kernel_size"],
        strides=config["strides"],
        padding=config["padding"],
        dilation_rate=config["dilation_rate"],
        groups=config["groups"],
        **common,
    )


def set_factors(layer, kernel: np.ndarray, bias: np.ndarray | None) -> None:
    """Factors of a built reparameterized layer whose fused kernel is `kernel`; mask all ones."""
    kernel = np.asarray(kernel, np.float32)
    if layer.parameterization == "hadamard":
        root = np.sqrt(np.abs(kernel))
        layer.factor_a.assign(np.sign(kernel) * root)
        layer.factor_b.assign(root)
    elif layer.parameterization == "channel":
        layer.factor_b.assign(kernel)
        layer.mix.assign(np.eye(kernel.shape[-1], dtype=np.float32))
    else:
        layer.kernel.assign(kernel)
    layer.mask.assign(np.ones_like(kernel))
    if bias is not None:
        layer.bias.assign(bias)


def _copy_layer(layer):
    try:
        return layer.__class__.from_config(layer.get_config())
    except Exception as exc:  # a custom layer whose config does not round-trip
        raise ValueError(
            f"reparameterize: cannot copy layer {layer.name!r} ({type(layer).__name__}): "
            f"from_config(get_config()) fails ({type(exc).__name__}: {exc}); give it a complete get_config()"
        ) from None


class _Cloner:
    """The clone function: one new layer per original layer (shared layers stay shared), remembered in
    order so that weights can be copied and the summary line written."""

    def __init__(self, parameterization: str, factor_init: str):
        self.parameterization = parameterization
        self.factor_init = factor_init
        self.pairs: dict[int, tuple] = {}  # id(original) -> (original, clone, why not factored or None)

    def __call__(self, layer):
        if id(layer) not in self.pairs:
            reason = why_not_factored(layer)
            if reason is None:
                clone = factored_layer(layer, self.parameterization, self.factor_init)
            else:
                clone = _copy_layer(layer)
            self.pairs[id(layer)] = (layer, clone, reason)
        return self.pairs[id(layer)][1]

    @property
    def factored(self) -> list:
        return [orig for orig, _, reason in self.pairs.values() if reason is None]

    def copy_weights(self) -> None:
        for orig, clone, reason in self.pairs.values():
            if not orig.weights:
                continue
            if reason is None:
                set_factors(clone, orig.kernel.numpy(), orig.bias.numpy() if orig.use_bias else None)
            else:
                clone.set_weights(orig.get_weights())

    def summary(self, parameterization: str) -> str:
        kept = [
            f"{orig.name} ({reason})"
            for orig, _, reason in self.pairs.values()
            if reason is not None and orig.weights and not isinstance(orig, _NORMALISATION)
        ]
        regularized = [
            orig.name
            for orig in self.factored
            if any(getattr(orig, a, None) is not None for a in ("kernel_regularizer", "bias_regularizer"))
        ]
        line = f"frep_tf.reparameterize: {len(self.factored)} Conv2D/Dense layers factored ({parameterization})"
        line += ("; not factored, kept as they are: " + ", ".join(kept)) if kept else "; no other layer has a kernel"
        if regularized:
            line += "; regularizers not applied to the factors (fuse restores them): " + ", ".join(regularized)
        return line


# -- cloning, with nested models inlined -------------------------------------------------------------
def _clone(model, cloner: _Cloner):
    if not any(_is_graph_model(layer) for layer in model.layers):
        return keras.models.clone_model(model, clone_function=cloner)
    inputs = keras.tree.map_structure(
        lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name), model.input
    )
    outputs = _trace(model, inputs, cloner)
    return keras.Model(inputs, outputs, name=model.name)


def _trace(model, inputs, cloner: _Cloner):
    """Run `model`'s graph on `inputs` with every layer replaced by its clone, nested models inlined."""

    def call(layer, *args, **kwargs):
        if _is_graph_model(layer):
            extra = sorted(k for k, v in kwargs.items() if k != "training" and v is not None)
            if extra:
                raise ValueError(
                    f"reparameterize: nested model {layer.name!r} is called with {extra}; it can only be inlined "
                    "when called on its inputs alone"
                )
            return _trace(layer, args[0], cloner)
        return cloner(layer)(*args, **kwargs)

    if isinstance(model, keras.Sequential):
        x = inputs
        for layer in model.layers:
            x = call(layer, x)
        return x
    # What keras.models.clone_model runs too: the graph, node by node, through `call_fn`.
    return model._run_through_graph(inputs, operation_fn=lambda op: op, call_fn=call)
