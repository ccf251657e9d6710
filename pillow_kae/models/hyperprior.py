"""Mean-scale hyperprior autoencoder (Ballé et al. 2018; Minnen et al. 2018), Keras 3.

    x -> g_a -> y -> h_a -> z -> [Q] -> z_hat -> h_s -> (mu, log sigma)
                 y -> [Q around mu] -> y_hat -> g_s -> x_hat

Four stride-2 5x5 convolutions with GDN give y at 1/16 of the resolution; two more stride-2
layers give z at 1/64. Everything is written with ``keras.ops`` so training runs under JAX
on an accelerator while the runtime uses TensorFlow on the CPU.

The hyper-synthesis h_s uses only 'same' stride-1 convolutions, depth-to-space and ReLU so
that ``entropy_models.fixed_point`` can evaluate it in exact integer arithmetic: the scale
index that selects a coding table must be identical on every machine.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from pillow_kae.entropy_models.entropy_bottleneck import EntropyBottleneck
from pillow_kae.entropy_models.gaussian_conditional import (
    LOG_SCALE_MAX,
    LOG_SCALE_MIN,
    SCALE_LEVELS,
    gaussian_likelihood,
)
from pillow_kae.layers import GDN, SubpixelConv2D

STRIDE = 16
HYPER_STRIDE = 4
# log of the ratio between neighbouring scale-table entries: what one gain step multiplies
LOG_GAIN_RATIO = (LOG_SCALE_MAX - LOG_SCALE_MIN) / (SCALE_LEVELS - 1)


def _ste_round(x: object) -> object:
    """Round in the forward pass, identity gradient in the backward pass."""
    return x + ops.stop_gradient(ops.round(x) - x)


@keras.saving.register_keras_serializable(package="pillow_kae")
class MeanScaleHyperprior(keras.Model):
    """The conv codec. ``call`` returns the training view: reconstruction and bits per pixel."""

    def __init__(
        self, channels: int = 128, latent_channels: int = 192, hyper_channels: int = 128, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        n, m, nz = channels, latent_channels, hyper_channels
        self.channels, self.latent_channels, self.hyper_channels = n, m, nz

        def conv(filters: int, kernel: int, stride: int, name: str) -> layers.Layer:
            return layers.Conv2D(filters, kernel, strides=stride, padding="same", name=name)

        def deconv(filters: int, name: str) -> layers.Layer:
            return layers.Conv2DTranspose(filters, 5, strides=2, padding="same", name=name)

        self.g_a = keras.Sequential(
            [
                conv(n, 5, 2, "conv0"),
                GDN(name="gdn0"),
                conv(n, 5, 2, "conv1"),
                GDN(name="gdn1"),
                conv(n, 5, 2, "conv2"),
                GDN(name="gdn2"),
                conv(m, 5, 2, "conv3"),
            ],
            name="g_a",
        )
        self.g_s = keras.Sequential(
            [
                deconv(n, "deconv0"),
                GDN(inverse=True, name="igdn0"),
                deconv(n, "deconv1"),
                GDN(inverse=True, name="igdn1"),
                deconv(n, "deconv2"),
                GDN(inverse=True, name="igdn2"),
                deconv(3, "deconv3"),
            ],
            name="g_s",
        )
        self.h_a = keras.Sequential(
            [
                conv(n, 3, 1, "conv0"),
                layers.ReLU(),
                conv(n, 3, 2, "conv1"),
                layers.ReLU(),
                conv(nz, 3, 2, "conv2"),
            ],
            name="h_a",
        )
        self.h_s = keras.Sequential(
            [
                SubpixelConv2D(n, 3, name="up0"),
                layers.ReLU(),
                SubpixelConv2D(n, 3, name="up1"),
                layers.ReLU(),
                conv(2 * m, 3, 1, "conv2"),
            ],
            name="h_s",
        )
        self.entropy_bottleneck = EntropyBottleneck(name="entropy_bottleneck")
        self.noise_seed = keras.random.SeedGenerator(1234, name="noise_seed")

    def build(self, input_shape: tuple[int | None, ...] = (None, None, None, 3)) -> None:
        batch = input_shape[0]
        self.g_a.build((batch, None, None, 3))
        self.g_s.build((batch, None, None, self.latent_channels))
        self.h_a.build((batch, None, None, self.latent_channels))
        self.h_s.build((batch, None, None, self.hyper_channels))
        self.entropy_bottleneck.build((batch, None, None, self.hyper_channels))
        self.built = True

    def split_params(self, params: object) -> tuple[object, object]:
        """h_s output -> (means, log-scales)."""
        m = self.latent_channels
        return params[..., :m], params[..., m:]

    def _noise(self, like: object) -> object:
        return keras.random.uniform(ops.shape(like), -0.5, 0.5, seed=self.noise_seed)

    def latent_bits(
        self, y: object, hyper: object, gain_steps: object, training: bool
    ) -> tuple[object, object]:
        """Bits of each element of y, and y_hat, when y is coded at latent gain r^step.

        ``gain_steps`` broadcasts against y (zeros: the rate the model is trained for).
        """
        means, log_scales = self.split_params(hyper)
        return self.code_latents(y, means, log_scales, gain_steps, training)

    def code_latents(
        self, y: object, means: object, log_scales: object, gain_steps: object, training: bool
    ) -> tuple[object, object]:
        """(bits, y_hat) of y given its means and log-scales, as the codec codes it.

        The residual around the means is multiplied by the gain and coded on unit bins, with
        the scale-table index shifted by the step (so the gained scale is clipped to the
        table); y_hat divides the gain back out. Training adds uniform noise for the rate.
        """
        log_gains = gain_steps * LOG_GAIN_RATIO
        gains = ops.exp(log_gains)
        scales = ops.exp(ops.clip(log_scales + log_gains, LOG_SCALE_MIN, LOG_SCALE_MAX))
        residual = gains * (y - means)
        rounded = ops.round(residual)
        noisy = residual + self._noise(residual) if training else rounded
        y_hat = means + rounded / gains
        return -ops.log2(gaussian_likelihood(noisy, scales)), ops.stop_gradient(y_hat)

    def call(self, inputs: object, training: bool = False) -> dict[str, object]:
        """x in [0, 1], (B, H, W, 3) with H, W multiples of 64 -> {'x_hat', 'bpp'}.

        ``inputs`` is x, or (x, gain steps of shape (B, 1, 1, 1)) to train at several rates
        at once, as the quality ladder uses the model.
        """
        x, gain_steps = inputs if isinstance(inputs, tuple | list) else (inputs, None)
        y = self.g_a(x)
        z = self.h_a(y)
        z_rate = z + self._noise(z) if training else ops.round(z)
        hyper = self.h_s(_ste_round(z))
        if gain_steps is None:
            gain_steps = ops.zeros_like(y[..., :1])
        bits_y, y_hat = self.latent_bits(y, hyper, gain_steps, training)
        x_hat = self.g_s(y + ops.stop_gradient(y_hat - y))  # straight-through rounding
        shape = ops.shape(x)
        pixels = ops.cast(shape[1] * shape[2], "float32")
        bits_z = ops.sum(-ops.log2(self.entropy_bottleneck(z_rate)), axis=(1, 2, 3))
        return {"x_hat": x_hat, "bpp": (ops.sum(bits_y, axis=(1, 2, 3)) + bits_z) / pixels}

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            channels=self.channels,
            latent_channels=self.latent_channels,
            hyper_channels=self.hyper_channels,
        )
        return config
