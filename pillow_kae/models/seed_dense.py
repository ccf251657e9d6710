"""The seed's dense autoencoder, made into a real codec.

The blog experiment this project grew from squeezed 48x48 RGB kitten photos through
Flatten -> BatchNorm -> Dense(3456, relu) -> Dense(1728, relu) | BatchNorm ->
Dense(3456, relu) -> Dense(6912, sigmoid). Its 1728-value bottleneck stayed float, so it
never saved a byte. Here the bottleneck is rounded to integers and coded with a learned
per-channel prior (the factorized prior of ``EntropyBottleneck``); images are cut into
48x48 blocks. ``hidden`` is a parameter because the blog's 3456 makes 60 M weights, too
many to ship; the shipped model keeps the topology with a narrower hidden layer.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from pillow_kae.entropy_models.entropy_bottleneck import EntropyBottleneck

BLOCK = 48


@keras.saving.register_keras_serializable(package="pillow_kae")
class SeedDense(keras.Model):
    """48x48x3 block -> ``bottleneck`` non-negative latents -> block. ``call`` as the conv model.

    With ``quantized=False`` it is exactly the blog's model (MSE only, float bottleneck).
    """

    def __init__(
        self,
        hidden: int = 3456,
        bottleneck: int = 1728,
        block: int = BLOCK,
        quantized: bool = True,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self.hidden, self.bottleneck, self.block, self.quantized = (
            hidden,
            bottleneck,
            block,
            quantized,
        )
        self.encoder = keras.Sequential(
            [
                layers.Flatten(),
                layers.BatchNormalization(name="bn0"),
                layers.Dense(hidden, activation="relu", name="dense0"),
                layers.Dense(bottleneck, activation="relu", name="dense1"),
            ],
            name="encoder",
        )
        self.decoder = keras.Sequential(
            [
                layers.BatchNormalization(name="bn1"),
                layers.Dense(hidden, activation="relu", name="dense2"),
                layers.Dense(block * block * 3, activation="sigmoid", name="dense3"),
                layers.Reshape((block, block, 3)),
            ],
            name="decoder",
        )
        self.entropy_bottleneck = EntropyBottleneck(name="entropy_bottleneck")
        self.noise_seed = keras.random.SeedGenerator(4321, name="noise_seed")

    def build(self, input_shape: tuple[int | None, ...] | None = None) -> None:
        self.encoder.build((None, self.block, self.block, 3))
        self.decoder.build((None, self.bottleneck))
        self.entropy_bottleneck.build((None, 1, 1, self.bottleneck))
        self.built = True

    def call(self, x: object, training: bool = False) -> dict[str, object]:
        """x: (B, 48, 48, 3) in [0, 1] -> {'x_hat', 'bpp'} (bits per pixel of each block)."""
        y = self.encoder(x, training=training)
        if not self.quantized:
            x_hat = self.decoder(y, training=training)
            return {"x_hat": x_hat, "bpp": ops.zeros((ops.shape(x)[0],))}
        if training:
            noise = keras.random.uniform(ops.shape(y), -0.5, 0.5, seed=self.noise_seed)
            y_rate = y + noise
        else:
            y_rate = ops.round(y)
        y_hat = y + ops.stop_gradient(ops.round(y) - y)
        likelihood = self.entropy_bottleneck(y_rate[:, None, None, :])
        bits = ops.sum(-ops.log2(likelihood), axis=(1, 2, 3))
        x_hat = self.decoder(y_hat, training=training)
        return {"x_hat": x_hat, "bpp": bits / float(self.block * self.block)}

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            hidden=self.hidden,
            bottleneck=self.bottleneck,
            block=self.block,
            quantized=self.quantized,
        )
        return config
