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

With ``checkerboard`` (He et al. 2021, as ELIC combines it with slices), each slice is coded
in two halves: the anchors ((row + column) even, counted from the tile's corner) with the
parameters above, then the other half with those corrected once more by ``spatial_i``,
which sees the slice's decoded anchors (as residuals from their means) around each position.
Two parallel steps per slice.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from pillow_kae.models.hyperprior import MeanScaleHyperprior


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
class SpatialContext(layers.Layer):
    """Slice parameters + the anchors' residuals -> corrections for the other half.

    The three-layer network of a slice transform, plus a direct (linear) 3x3 convolution of
    the residuals alone: what the neighbours say about a position is mostly linear in their
    residuals, which the network, its inputs dominated by the means and log-scales, finds
    only slowly. Both start at zero."""

    def __init__(self, slice_channels: int, hidden: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.slice_channels, self.hidden = slice_channels, hidden

        def conv(filters: int, label: str, **options: object) -> layers.Layer:
            return layers.Conv2D(filters, 3, padding="same", name=label, **options)

        self.conv0 = conv(hidden, "conv0", activation="relu")
        self.conv1 = conv(hidden, "conv1", activation="relu")
        self.conv2 = conv(2 * slice_channels, "conv2", kernel_initializer="zeros")
        self.direct = conv(2 * slice_channels, "direct", kernel_initializer="zeros")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        batch, c, hidden = input_shape[0], self.slice_channels, self.hidden
        self.conv0.build((batch, None, None, 3 * c))
        self.conv1.build((batch, None, None, hidden))
        self.conv2.build((batch, None, None, hidden))
        self.direct.build((batch, None, None, c))
        self.built = True

    def call(self, inputs: object) -> object:
        """inputs: means, log-scales and the anchors' residuals of the slice, concatenated."""
        network = self.conv2(self.conv1(self.conv0(inputs)))
        return network + self.direct(inputs[..., 2 * self.slice_channels :])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(slice_channels=self.slice_channels, hidden=self.hidden)
        return config


@keras.saving.register_keras_serializable(package="pillow_kae")
class ChannelConditionalHyperprior(MeanScaleHyperprior):
    """The hyperprior codec with y coded in channel slices, each conditioned on the previous
    (and, with ``checkerboard``, each slice's second half on its first)."""

    def __init__(
        self, slices: int = 6, slice_hidden: int = 96, checkerboard: bool = False, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        if self.latent_channels % slices:
            raise ValueError("latent_channels must be a multiple of slices")
        self.slices, self.slice_hidden, self.checkerboard = slices, slice_hidden, checkerboard
        self.slice_channels = self.latent_channels // slices
        self.slice_transforms = [
            slice_transform(self.slice_channels, slice_hidden, f"slice{i}") for i in range(slices)
        ]
        self.spatial_transforms = [
            SpatialContext(self.slice_channels, slice_hidden, name=f"spatial{i}")
            for i in range(slices if checkerboard else 0)
        ]

    def build(self, input_shape: tuple[int | None, ...] = (None, None, None, 3)) -> None:
        super().build(input_shape)
        batch, c = input_shape[0], self.slice_channels
        for i, transform in enumerate(self.slice_transforms):
            transform.build((batch, None, None, 2 * c + i * c))
        for transform in self.spatial_transforms:
            transform.build((batch, None, None, 3 * c))
        self.built = True

    def slice_params(self, hyper: object, decoded: list[object], i: int) -> tuple[object, object]:
        """(means, log-scales) of slice i from the h_s output and the decoded slices before it."""
        c, m = self.slice_channels, self.latent_channels
        means = hyper[..., i * c : (i + 1) * c]
        log_scales = hyper[..., m + i * c : m + (i + 1) * c]
        delta = self.slice_transforms[i](ops.concatenate([means, log_scales, *decoded], -1))
        return means + delta[..., :c], log_scales + delta[..., c:]

    def latent_bits(
        self, y: object, hyper: object, gain_steps: object, training: bool
    ) -> tuple[object, object]:
        """As the hyperprior's, slice after slice: each slice's parameters see the previous
        slices as the decoder has them."""
        c = self.slice_channels
        decoded, bits = [], []
        for i in range(self.slices):
            means, log_scales = self.slice_params(hyper, decoded, i)
            y_i = y[..., i * c : (i + 1) * c]
            slice_bits, y_hat = self.code_latents(y_i, means, log_scales, gain_steps, training)
            if self.checkerboard:
                slice_bits, y_hat = self._second_half(
                    i, y_i, means, log_scales, slice_bits, y_hat, gain_steps, training
                )
            bits.append(slice_bits)
            decoded.append(y_hat)
        return ops.concatenate(bits, -1), ops.concatenate(decoded, -1)

    def _second_half(
        self,
        i: int,
        y_i: object,
        means: object,
        log_scales: object,
        bits: object,
        y_hat: object,
        gain_steps: object,
        training: bool,
    ) -> tuple[object, object]:
        """(bits, y_hat) of slice i with its non-anchors coded again on the spatial context:
        ``spatial_i`` sees the anchors' decoded residuals y_hat - means (zero at the
        non-anchors: a conv cannot tell the two apart, so it gets what predicts, not y_hat
        beside means) and the slice's parameters, and corrects the non-anchors' parameters."""
        c = self.slice_channels
        anchors = anchor_mask(y_i)
        context = ops.concatenate([means, log_scales, (y_hat - means) * anchors], -1)
        delta = self.spatial_transforms[i](context)
        second_bits, second_hat = self.code_latents(
            y_i, means + delta[..., :c], log_scales + delta[..., c:], gain_steps, training
        )
        return (
            anchors * bits + (1 - anchors) * second_bits,
            anchors * y_hat + (1 - anchors) * second_hat,
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            slices=self.slices, slice_hidden=self.slice_hidden, checkerboard=self.checkerboard
        )
        return config


def anchor_mask(like: object) -> object:
    """(1, H, W, 1): 1 where (row + column) is even, the half of a slice coded first."""
    rows = ops.arange(ops.shape(like)[1])[:, None]
    cols = ops.arange(ops.shape(like)[2])[None, :]
    return ops.cast(ops.equal((rows + cols) % 2, 0), like.dtype)[None, :, :, None]
