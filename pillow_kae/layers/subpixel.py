"""Sub-pixel (depth-to-space) upsampling convolution.

The hyper-synthesis transform upsamples with a stride-1 convolution followed by
depth-to-space rather than a transposed convolution: both have an exact, unambiguous
definition (symmetric 'same' padding, fixed channel order), so the fixed-point copy in
``entropy_models.fixed_point`` reproduces it bit for bit with plain integer math.
"""

from __future__ import annotations

import keras
from keras import ops


def depth_to_space(x: object, block: int) -> object:
    """(B, H, W, b*b*C) -> (B, H*b, W*b, C); channel index = (row_in_block*b + col)*C + c."""
    batch, height, width, channels = ops.shape(x)
    out_channels = channels // (block * block)
    x = ops.reshape(x, (batch, height, width, block, block, out_channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (batch, height * block, width * block, out_channels))


@keras.saving.register_keras_serializable(package="pillow_kae")
class SubpixelConv2D(keras.layers.Layer):
    """A k x k 'same' convolution to block^2 * filters channels, then depth-to-space."""

    def __init__(self, filters: int, kernel_size: int = 3, block: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        if kernel_size % 2 != 1:
            raise ValueError("kernel_size must be odd so that 'same' padding is symmetric")
        self.filters = filters
        self.kernel_size = kernel_size
        self.block = block
        self.conv = keras.layers.Conv2D(
            filters * block * block, kernel_size, padding="same", name="conv"
        )

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.conv.build(input_shape)

    def call(self, x: object) -> object:
        return depth_to_space(self.conv(x), self.block)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple:
        batch, height, width, _ = input_shape
        scale = self.block
        return (
            batch,
            None if height is None else height * scale,
            None if width is None else width * scale,
            self.filters,
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size, block=self.block)
        return config
