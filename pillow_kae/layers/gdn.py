"""Generalized divisive normalization (Ballé et al. 2016), forward and inverse.

GDN is the nonlinearity of the analysis and synthesis transforms: it Gaussianizes the
latent far better than ReLU at the same width, which is what makes small learned codecs
competitive. Written with ``keras.ops`` only, so it trains under JAX and runs under TensorFlow.
"""

from __future__ import annotations

import keras
from keras import ops

from pillow_kae.ops.parametrizers import PEDESTAL, gdn_beta, gdn_gamma


@keras.saving.register_keras_serializable(package="pillow_kae")
class GDN(keras.layers.Layer):
    """y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2); inverse multiplies instead."""

    def __init__(
        self, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.inverse = inverse
        self.beta_min = beta_min
        self.gamma_init = gamma_init

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels = int(input_shape[-1])
        self.beta = self.add_weight(
            name="beta",
            shape=(channels,),
            initializer=keras.initializers.Constant((1.0 + PEDESTAL) ** 0.5),
        )

        def gamma_initializer(shape: tuple[int, int], dtype: str | None = None) -> object:
            eye = ops.eye(shape[0], dtype=dtype)
            return ops.sqrt(self.gamma_init * eye + PEDESTAL)

        self.gamma = self.add_weight(
            name="gamma", shape=(channels, channels), initializer=gamma_initializer
        )

    def call(self, x: object) -> object:
        beta = gdn_beta(self.beta, self.beta_min, ops)
        gamma = gdn_gamma(self.gamma, ops)
        norm = ops.matmul(ops.square(x), gamma) + beta
        if self.inverse:
            return x * ops.sqrt(norm)
        return x * ops.rsqrt(norm)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(inverse=self.inverse, beta_min=self.beta_min, gamma_init=self.gamma_init)
        return config
