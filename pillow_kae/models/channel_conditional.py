"""Channel-conditional entropy model (Minnen & Singh 2020) on the mean-scale hyperprior, Keras 3.

y is cut into ``slices`` groups of channels, coded one after another. Slice i's means and
log-scales are the hyperprior's, corrected by a small network that also sees the slices
already decoded:

    (mu_i, l_i) = h_s(z_hat)[slice i] + slice_i([h_s(z_hat)[slice i], y_hat_0 .. y_hat_{i-1}])

The slice transforms are 'same' stride-1 3x3 convolutions with ReLU, so that
``entropy_models.fixed_point`` can evaluate them in exact integers like h_s, and their last
layer starts at zero: a fresh model codes exactly like the hyperprior it was built on, which
is what lets it be trained on top of the shipped transforms (rate only, ``training/context.py``).
Decoding stays parallel over positions: only the ``slices`` steps are sequential.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from pillow_kae.entropy_models.gaussian_conditional import (
    LOG_SCALE_MAX,
    LOG_SCALE_MIN,
    SCALE_LEVELS,
    gaussian_likelihood,
)
from pillow_kae.models.hyperprior import MeanScaleHyperprior, _ste_round

# log of the ratio between neighbouring scale-table entries: one gain step
LOG_GAIN_RATIO = (LOG_SCALE_MAX - LOG_SCALE_MIN) / (SCALE_LEVELS - 1)


def slice_transform(slice_channels: int, hidden: int, name: str) -> keras.Sequential:
    """Hyper output of the slice + decoded slices -> corrections to its means and log-scales."""

    def conv(filters: int, label: str, **kwargs: object) -> layers.Layer:
        return layers.Conv2D(filters, 3, padding="same", name=label, **kwargs)

    return keras.Sequential(
        [
            conv(hidden, "conv0", activation="relu"),
            conv(hidden, "conv1", activation="relu"),
            conv(2 * slice_channels, "conv2", kernel_initializer="zeros"),
        ],
        name=name,
    )


@keras.saving.register_keras_serializable(package="pillow_kae")
class ChannelConditionalHyperprior(MeanScaleHyperprior):
    """The hyperprior codec with y coded in channel slices, each conditioned on the previous."""

    def __init__(self, slices: int = 6, slice_hidden: int = 96, **kwargs) -> None:
        super().__init__(**kwargs)
        if self.latent_channels % slices:
            raise ValueError("latent_channels must be a multiple of slices")
        self.slices, self.slice_hidden = slices, slice_hidden
        self.slice_channels = self.latent_channels // slices
        self.slice_transforms = [
            slice_transform(self.slice_channels, slice_hidden, f"slice{i}") for i in range(slices)
        ]

    def build(self, input_shape: tuple[int | None, ...] = (None, None, None, 3)) -> None:
        super().build(input_shape)
        batch, c = input_shape[0], self.slice_channels
        for i, transform in enumerate(self.slice_transforms):
            transform.build((batch, None, None, 2 * c + i * c))
        self.built = True

    def slice_params(self, hyper: object, decoded: list[object], i: int) -> tuple[object, object]:
        """(means, log-scales) of slice i from the h_s output and the decoded slices before it."""
        c, m = self.slice_channels, self.latent_channels
        means = hyper[..., i * c : (i + 1) * c]
        log_scales = hyper[..., m + i * c : m + (i + 1) * c]
        delta = self.slice_transforms[i](ops.concatenate([means, log_scales, *decoded], -1))
        return means + delta[..., :c], log_scales + delta[..., c:]

    def latent_bits(self, y: object, hyper: object, gain_steps: object, training: bool) -> tuple:
        """Bits of each element of y (and y_hat) at latent gain r^step, slice by slice.

        ``gain_steps`` broadcasts against y; the gained residual is coded on unit bins with the
        gained scale clipped to the table, as the codec does with table indices.
        """
        gains = ops.exp(gain_steps * LOG_GAIN_RATIO)
        c = self.slice_channels
        decoded, bits = [], []
        for i in range(self.slices):
            y_i = y[..., i * c : (i + 1) * c]
            means, log_scales = self.slice_params(hyper, decoded, i)
            scales = ops.exp(
                ops.clip(log_scales + gain_steps * LOG_GAIN_RATIO, LOG_SCALE_MIN, LOG_SCALE_MAX)
            )
            residual = gains * (y_i - means)
            noisy = residual + self._noise(residual) if training else ops.round(residual)
            bits.append(-ops.log2(gaussian_likelihood(noisy, scales)))
            # What the decoder has: its gradient would only reach the means through a round.
            decoded.append(ops.stop_gradient(means + ops.round(residual) / gains))
        return ops.concatenate(bits, -1), ops.concatenate(decoded, -1)

    def call(self, x: object, training: bool = False) -> dict[str, object]:
        """x in [0, 1], (B, H, W, 3) with H, W multiples of 64 -> {'x_hat', 'bpp'} at gain 1."""
        y = self.g_a(x)
        z = self.h_a(y)
        z_rate = z + self._noise(z) if training else ops.round(z)
        hyper = self.h_s(_ste_round(z))
        bits_y, decoded = self.latent_bits(y, hyper, ops.zeros_like(y[..., :1]), training)
        x_hat = self.g_s(y + ops.stop_gradient(decoded - y))  # straight-through rounding
        shape = ops.shape(x)
        pixels = ops.cast(shape[1] * shape[2], "float32")
        bits_z = ops.sum(-ops.log2(self.entropy_bottleneck(z_rate)), axis=(1, 2, 3))
        return {"x_hat": x_hat, "bpp": (ops.sum(bits_y, axis=(1, 2, 3)) + bits_z) / pixels}

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(slices=self.slices, slice_hidden=self.slice_hidden)
        return config
