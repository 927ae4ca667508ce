"""Reparameterized model -> standard Keras model with identical outputs (paper Fig. 1a)."""

from __future__ import annotations

import keras

from frep_tf.layers.reparam import REPARAM_LAYERS, ReparamConv2D, ReparamDense


def _deploy_layer(layer):
    """The standard Keras layer a reparameterized layer fuses into; other layers are copied."""
    if isinstance(layer, ReparamConv2D):
        return keras.layers.Conv2D(
            layer.filters,
            layer.kernel_size,
            strides=layer.strides,
            padding=layer.padding,
            use_bias=layer.use_bias,
            name=layer.name,
        )
    if isinstance(layer, ReparamDense):
        return keras.layers.Dense(layer.units, use_bias=layer.use_bias, name=layer.name)
    return layer.__class__.from_config(layer.get_config())


def deploy_structure(model: keras.Model) -> keras.Model:
    """The same graph made of standard layers only (weights freshly initialised)."""
    model = getattr(model, "network", model)
    return keras.models.clone_model(model, clone_function=_deploy_layer)


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
        elif layer.weights:
            dst.set_weights(layer.get_weights())


def fuse(model: keras.Model) -> keras.Model:
    """A model of standard Keras layers (no custom classes, no masks) computing the same function."""
    fused = deploy_structure(model)
    copy_fused_weights(model, fused)
    return fused
