"""Reparameterized model -> standard Keras model with identical outputs (paper Fig. 1a).

Each reparameterized layer becomes the standard layer it names in `fuse_into` (the user's own Conv2D or
Dense, with its configuration, when frep_tf.reparameterize made it), or else a Conv2D / Dense of the same
configuration, holding the fused, masked kernel; every other layer is copied with its weights. Layers are
matched by name.

This module is callable: `frep_tf.fuse(model)` is `fuse(model)` (frep_tf.api.callable_module).
"""

from __future__ import annotations

import keras

from frep_tf.api.callable_module import make_callable
from frep_tf.layers.reparam import REPARAM_LAYERS, ReparamConv2D, ReparamDense


def _deploy_layer(layer):
    """The standard Keras layer a reparameterized layer fuses into; other layers are copied."""
    if isinstance(layer, REPARAM_LAYERS) and getattr(layer, "fuse_into", None) is not None:
        return keras.saving.deserialize_keras_object(layer.fuse_into)
    if isinstance(layer, ReparamConv2D):
        return keras.layers.Conv2D(
            layer.filters,
            layer.kernel_size,
            strides=layer.strides,
            padding=layer.padding,
            dilation_rate=layer.dilation_rate,
            groups=layer.groups,
            activation=layer.activation,
            use_bias=layer.use_bias,
            name=layer.name,
        )
    if isinstance(layer, ReparamDense):
        return keras.layers.Dense(layer.units, activation=layer.activation, use_bias=layer.use_bias, name=layer.name)
    return layer.__class__.from_config(layer.get_config())


def deploy_structure(model: keras.Model) -> keras.Model:
    """The same graph made of standard layers only (weights freshly initialised); nested models too."""
    model = getattr(model, "network", model)
    return keras.models.clone_model(model, clone_function=_deploy_layer, recursive=True)


def copy_fused_weights(source: keras.Model, target: keras.Model) -> None:
    """Write `source`'s fused kernels and all other weights into `target`, matching layers by name."""
    source = getattr(source, "network", source)
    by_name = {layer.name: layer for layer in target.layers}
    for layer in source.layers:
        if not layer.weights:  # input layers and the like; clone_model may rename unnamed inputs
            continue
        dst = by_name.get(layer.name)
        if dst is None:
            raise ValueError(f"fuse: layer {layer.name!r} has no counterpart in the target model")
        if isinstance(layer, REPARAM_LAYERS):
            dst.kernel.assign(layer.fused_kernel())
            if layer.use_bias:
                dst.bias.assign(layer.bias)
        elif isinstance(layer, keras.Model) and isinstance(dst, keras.Model):
            copy_fused_weights(layer, dst)
        elif layer.weights:
            dst.set_weights(layer.get_weights())


def fuse(model: keras.Model) -> keras.Model:
    """A model of standard Keras layers (no custom classes, no masks) computing the same function.

    `model` is a reparameterized model or a RobustModel (its trained `network` is fused; its temporal
    ensemble, `model.ensemble`, is a fused model already).
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"fuse: expected a keras.Model or a RobustModel, got {type(model).__name__}")
    fused = deploy_structure(model)
    copy_fused_weights(model, fused)
    return fused


make_callable(__name__, "fuse")
