"""A layer factory: every architecture is written once against it."""

from __future__ import annotations

import dataclasses

from frep_tf.layers.reparam import FACTOR_INITS, PARAMETERIZATIONS, ReparamConv2D, ReparamDense, check_choice


@dataclasses.dataclass(frozen=True)
class LayerFactory:
    """Constructors for the conv and dense layers of one parameterization."""

    parameterization: str
    factor_init: str = "random"
    kernel_initializer: str = "he_normal"

    def __post_init__(self):
        check_choice("parameterization", self.parameterization, PARAMETERIZATIONS)
        check_choice("factor_init", self.factor_init, FACTOR_INITS)

    def conv(self, filters, kernel_size=3, strides=1, *, name, use_bias=False, padding="same"):
        return ReparamConv2D(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            use_bias=use_bias,
            parameterization=self.parameterization,
            factor_init=self.factor_init,
            kernel_initializer=self.kernel_initializer,
            name=name,
        )

    def dense(self, units, *, name, use_bias=True):
        return ReparamDense(
            units,
            use_bias=use_bias,
            parameterization=self.parameterization,
            factor_init=self.factor_init,
            kernel_initializer=self.kernel_initializer,
            name=name,
        )


def make_layers(parameterization: str, factor_init: str = "random") -> LayerFactory:
    """The factory for `parameterization` in {'hadamard', 'channel', 'plain'}."""
    return LayerFactory(parameterization, factor_init)
