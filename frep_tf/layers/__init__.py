"""Reparameterized layers (hadamard, channel mixing, masked plain) and their factory."""

from frep_tf.layers.factory import LayerFactory, make_layers
from frep_tf.layers.reparam import (
    FACTOR_INITS,
    PARAMETERIZATIONS,
    REPARAM_LAYERS,
    ReparamConv2D,
    ReparamDense,
    reparam_layers,
)

__all__ = [
    "FACTOR_INITS",
    "PARAMETERIZATIONS",
    "REPARAM_LAYERS",
    "LayerFactory",
    "ReparamConv2D",
    "ReparamDense",
    "make_layers",
    "reparam_layers",
]
