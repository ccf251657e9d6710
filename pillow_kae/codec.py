"""Pixels <-> tile payloads: the learned transforms plus entropy coding of one tile.

A tile is coded on its own (its own z, y and range-coder stream), which bounds memory on
huge images and lets a decoder work tile by tile. Within a tile:

1. pad to a multiple of 64 (edge replication), y = g_a(x), z = round(h_a(y));
2. code z with one fixed table per channel;
3. run the fixed-point h_s on z (integers only) -> means and scale-table indices;
4. code round(g * (y - mu)) with the Gaussian table of each element's index.

The decoder repeats steps 2-4 in the same order, so every table choice is bit-identical.
"""

from __future__ import annotations

import numpy as np

from pillow_kae.entropy_models.coder import new_decoder, new_encoder
from pillow_kae.entropy_models.fixed_point import ACTIVATION_BITS, scale_indices
from pillow_kae.entropy_models.gaussian_conditional import (
    SCALE_LEVELS,
    SCALE_MAX,
    SCALE_MIN,
)
from pillow_kae.models.hyperprior import HYPER_STRIDE, STRIDE
from pillow_kae.zoo.loader import CodecModel

TILE_SIZE = 1024
MAX_TILE_SIZE = 4096  # a decoder refuses larger tiles: memory per tile stays bounded
PAD = STRIDE * HYPER_STRIDE
GAIN_RATIO = (SCALE_MAX / SCALE_MIN) ** (1.0 / (SCALE_LEVELS - 1))


class TileDecodeError(OSError):
    """The payload of a tile is inconsistent with its model (damaged or forged file)."""


def gain(step: int) -> float:
    """Latent gain of a gain step: one step is one entry of the geometric scale table."""
    return GAIN_RATIO**step


def _padded(size: int) -> int:
    return -(-size // PAD) * PAD


def _params(model: CodecModel, z_hat: np.ndarray, gain_step: int) -> tuple[np.ndarray, np.ndarray]:
    """(means in float, table indices) from integer z_hat, through the integer h_s."""
    out = model.hyper_synthesis(z_hat)
    m = model.latent_channels
    means = out[..., :m].astype(np.float64) / (1 << ACTIVATION_BITS)
    indices = scale_indices(out[..., m:], model.thresholds, gain_step)
    return means, indices


def _z_tables(model: CodecModel, shape: tuple[int, ...]) -> np.ndarray:
    return np.broadcast_to(np.arange(shape[-1], dtype=np.int64), shape)


def encode_tile(model: CodecModel, pixels: np.ndarray, gain_step: int) -> bytes:
    """(h, w, 3) uint8 -> the tile's payload bytes."""
    from keras import ops

    height, width = pixels.shape[:2]
    padded = np.pad(
        pixels,
        ((0, _padded(height) - height), (0, _padded(width) - width), (0, 0)),
        mode="edge",
    )
    x = padded[None].astype(np.float32) / 255.0
    net = model.keras_model
    y = net.g_a(x)
    z_hat = np.rint(ops.convert_to_numpy(net.h_a(y))[0]).astype(np.int64)
    y = ops.convert_to_numpy(y)[0].astype(np.float64)

    encoder = new_encoder()
    model.z_coder.encode(encoder, z_hat, _z_tables(model, z_hat.shape))
    means, indices = _params(model, z_hat, gain_step)
    g = gain(gain_step)
    symbols = np.rint(g * y - g * means)
    model.y_coder.encode(encoder, symbols, indices)
    return np.asarray(encoder.get_compressed(), dtype="<u4").tobytes()


def decode_tile(
    model: CodecModel, payload: bytes, width: int, height: int, gain_step: int
) -> np.ndarray:
    """The tile's payload -> (height, width, 3) uint8."""
    from keras import ops

    if len(payload) % 4:
        raise TileDecodeError("tile payload is not a whole number of 32-bit words")
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    z_shape = (
        _padded(height) // PAD,
        _padded(width) // PAD,
        model.hyper_channels,
    )
    try:
        decoder = new_decoder(words)
        z_hat = model.z_coder.decode(decoder, _z_tables(model, z_shape))
        means, indices = _params(model, z_hat, gain_step)
        symbols = model.y_coder.decode(decoder, indices)
    except (ValueError, RuntimeError, OverflowError, AssertionError) as err:
        # constriction asserts on streams that no encoder could have produced.
        raise TileDecodeError(f"damaged tile payload: {err}") from err
    g = gain(gain_step)
    y_hat = (symbols.astype(np.float64) + g * means) / g
    y_hat = np.clip(y_hat, -1e4, 1e4).astype(np.float32)
    x_hat = ops.convert_to_numpy(model.keras_model.g_s(y_hat[None]))[0, :height, :width]
    return np.clip(np.rint(x_hat * 255.0), 0, 255).astype(np.uint8)


def tiles(width: int, height: int, tile_size: int = TILE_SIZE) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) of each tile in raster order."""
    return [
        (left, top, min(left + tile_size, width), min(top + tile_size, height))
        for top in range(0, height, tile_size)
        for left in range(0, width, tile_size)
    ]


def bits_per_pixel(num_bytes: int, width: int, height: int) -> float:
    return 8.0 * num_bytes / (width * height)


__all__ = [
    "GAIN_RATIO",
    "TILE_SIZE",
    "TileDecodeError",
    "bits_per_pixel",
    "decode_tile",
    "encode_tile",
    "gain",
    "tiles",
]
