"""Sparse-Init (paper Table VI): a plain kernel initialised as the product of two independent draws.

This is the distribution of FReP's fused kernel at initialisation (hadamard, `factor_init=random`:
A and B drawn independently like a plain kernel, kernel = A * B), given to a plain layer that is then
trained plainly, to separate FReP's initialisation from its parameterization.
"""

from __future__ import annotations

import keras
import numpy as np


def product_draw(initializer, shape, seed: int) -> np.ndarray:
    """A * B with A and B drawn independently from `initializer` (seeds `seed` and `seed + 1`)."""
    config = keras.initializers.serialize(keras.initializers.get(initializer))
    draws = []
    for s in (seed, seed + 1):
        seeded = dict(config, config=dict(config.get("config") or {}))
        if "seed" in seeded["config"]:
            seeded["config"]["seed"] = s
        init = keras.initializers.deserialize(seeded)
        draws.append(np.asarray(init(shape, dtype="float32")))
    return draws[0] * draws[1]


def apply(layers, seed: int = 0) -> None:
    """Re-initialise every plain layer's kernel as a product draw from its own kernel initializer."""
    for i, layer in enumerate(layers):
        if layer.parameterization != "plain":
            raise ValueError(
                f"Sparse-Init re-initialises plain kernels. Received: layer {layer.name!r} with "
                f"parameterization={layer.parameterization!r}"
            )
        shape = tuple(layer.kernel.shape)
        layer.kernel.assign(product_draw(layer.kernel_initializer, shape, seed + 2 * i))
