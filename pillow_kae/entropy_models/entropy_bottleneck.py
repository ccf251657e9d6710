"""Factorized prior for the side information z (Ballé et al. 2018, appendix 6.1).

Each channel of z gets its own learned, monotone cumulative function built from a tiny
per-channel network. Training uses it as a differentiable likelihood; export samples it once
into integer tables (``tables.py``), so the coder never evaluates it at run time.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

LIKELIHOOD_BOUND = 1e-9


@keras.saving.register_keras_serializable(package="pillow_kae")
class EntropyBottleneck(keras.layers.Layer):
    """Per-channel learned density of z, as a cumulative of a small monotone network."""

    def __init__(
        self, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.filters = tuple(filters)
        self.init_scale = init_scale

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels = int(input_shape[-1])
        dims = (1, *self.filters, 1)
        scale = self.init_scale ** (1.0 / (len(self.filters) + 1))
        self.matrices, self.biases, self.factors = [], [], []
        for i in range(len(dims) - 1):
            init = math.log(math.expm1(1.0 / scale / dims[i + 1]))
            self.matrices.append(
                self.add_weight(
                    name=f"matrix{i}",
                    shape=(channels, dims[i + 1], dims[i]),
                    initializer=keras.initializers.Constant(init),
                )
            )
            self.biases.append(
                self.add_weight(
                    name=f"bias{i}",
                    shape=(channels, dims[i + 1], 1),
                    initializer=keras.initializers.RandomUniform(-0.5, 0.5),
                )
            )
            if i < len(dims) - 2:
                self.factors.append(
                    self.add_weight(
                        name=f"factor{i}", shape=(channels, dims[i + 1], 1), initializer="zeros"
                    )
                )

    def logits_cumulative(self, values: object) -> object:
        """values: (C, 1, N) -> logits of the cumulative at those points, (C, 1, N)."""
        logits = values
        for i, (matrix, bias) in enumerate(zip(self.matrices, self.biases, strict=True)):
            logits = ops.matmul(ops.softplus(matrix), logits) + bias
            if i < len(self.factors):
                logits = logits + ops.tanh(self.factors[i]) * ops.tanh(logits)
        return logits

    def call(self, z: object) -> object:
        """Likelihood of each element of z (already noisy or rounded), same shape as z."""
        shape = ops.shape(z)
        channels = shape[-1]
        values = ops.reshape(ops.transpose(ops.reshape(z, (-1, channels))), (channels, 1, -1))
        lower = self.logits_cumulative(values - 0.5)
        upper = self.logits_cumulative(values + 0.5)
        sign = ops.stop_gradient(-ops.sign(lower + upper))
        likelihood = ops.abs(ops.sigmoid(sign * upper) - ops.sigmoid(sign * lower))
        likelihood = ops.maximum(likelihood, LIKELIHOOD_BOUND)
        return ops.reshape(ops.transpose(ops.reshape(likelihood, (channels, -1))), shape)

    def pmf(self, low: int, high: int) -> np.ndarray:
        """Probability of every integer in [low, high] per channel, (C, high-low+1), float64.

        Evaluated once at export time; the result is quantized into fixed integer tables.
        """
        points = np.arange(low, high + 1, dtype="float32")
        channels = int(self.matrices[0].shape[0])
        values = np.broadcast_to(points, (channels, 1, points.size)).astype("float32")
        lower = ops.convert_to_numpy(self.logits_cumulative(values - 0.5)).astype("float64")
        upper = ops.convert_to_numpy(self.logits_cumulative(values + 0.5)).astype("float64")
        sign = -np.sign(lower + upper)

        def sigmoid(v: np.ndarray) -> np.ndarray:
            with np.errstate(over="ignore"):  # exp(-v) = inf far in a tail: exactly 0 there
                return 1.0 / (1.0 + np.exp(-v))

        return np.abs(sigmoid(sign * upper) - sigmoid(sign * lower))[:, 0, :]

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(filters=list(self.filters), init_scale=self.init_scale)
        return config
