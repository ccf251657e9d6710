"""Pixels <-> tile payloads: the learned transforms plus entropy coding of one tile.

A tile is coded on its own (its own latents and range-coder stream), which bounds memory on
huge images and lets a decoder work tile by tile. For the mean-scale hyperprior:

1. pad to a multiple of 64 (edge replication, content centred), y = g_a(x),
   z = round(h_a(y));
2. code z with one fixed table per channel;
3. run the fixed-point h_s on z (integers only) -> means and scale-table indices;
4. code round(g * (y - mu)) with the Gaussian table of each element's index.

The decoder repeats steps 2-4 in the same order, so every table choice is bit-identical.
The seed-dense model cuts the tile into 48x48 blocks and codes each block's rounded
bottleneck with one fixed table per channel.
"""

from __future__ import annotations

import numpy as np

from pillow_kae.entropy_models.coder import TableCoder, new_decoder, new_encoder
from pillow_kae.entropy_models.fixed_point import ACTIVATION_BITS, scale_indices
from pillow_kae.entropy_models.gaussian_conditional import (
    SCALE_LEVELS,
    SCALE_MAX,
    SCALE_MIN,
)
from pillow_kae.zoo.loader import CodecModel

TILE_SIZE = 1024
MAX_TILE_SIZE = 4096  # a decoder refuses larger tiles: memory per tile stays bounded
GAIN_RATIO = (SCALE_MAX / SCALE_MIN) ** (1.0 / (SCALE_LEVELS - 1))
_DECODE_ERRORS = (ValueError, RuntimeError, OverflowError, AssertionError)


class TileDecodeError(OSError):
    """The payload of a tile is inconsistent with its model (damaged or forged file)."""


def gain(step: int) -> float:
    """Latent gain of a gain step: one step is one entry of the geometric scale table."""
    return GAIN_RATIO**step


def _round_up(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


def _pad(pixels: np.ndarray, multiple: int) -> np.ndarray:
    """Edge-replicate on the bottom and right up to a multiple: latents stay aligned."""
    height, width = pixels.shape[:2]
    pad = ((0, _round_up(height, multiple) - height), (0, _round_up(width, multiple) - width))
    return np.pad(pixels, (*pad, (0, 0)), mode="edge")


def _centre_offsets(height: int, width: int, multiple: int) -> tuple[int, int]:
    """Top and left padding of a tile: half of the padding, rounded down, goes first."""
    return (_round_up(height, multiple) - height) // 2, (_round_up(width, multiple) - width) // 2


def _pad_centred(pixels: np.ndarray, multiple: int) -> np.ndarray:
    """Edge-replicate on all sides up to a multiple, the content in the middle.

    The transforms see zeros beyond the padded tile; centring keeps a small image away
    from that frame on every side (top-left padding left it in the corner, visibly darker).
    """
    height, width = pixels.shape[:2]
    top, left = _centre_offsets(height, width, multiple)
    bottom = _round_up(height, multiple) - height - top
    right = _round_up(width, multiple) - width - left
    return np.pad(pixels, ((top, bottom), (left, right), (0, 0)), mode="edge")


def _channel_tables(shape: tuple[int, ...]) -> np.ndarray:
    return np.broadcast_to(np.arange(shape[-1], dtype=np.int64), shape)


def _stream(payload: bytes) -> object:
    """A range decoder over the payload's 32-bit words.

    An encoder always codes at least one symbol per tile, and a range coder then emits at
    least one word, so an empty payload cannot come from an encoder (docs/format.md §5).
    """
    if not payload:
        raise TileDecodeError("empty tile payload")
    if len(payload) % 4:
        raise TileDecodeError("tile payload is not a whole number of 32-bit words")
    return new_decoder(np.frombuffer(payload, dtype="<u4").astype(np.uint32))


def _decode_symbols(coder: TableCoder, decoder: object, table_index: np.ndarray) -> np.ndarray:
    """Decode one group of symbols; what the payload alone can cause is a TileDecodeError."""
    try:
        return coder.decode(decoder, table_index)
    except _DECODE_ERRORS as err:
        # constriction asserts on streams that no encoder could have produced.
        raise TileDecodeError(f"damaged tile payload: {err}") from err


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


# -- mean-scale hyperprior ------------------------------------------------------------------


def _params(model: CodecModel, z_hat: np.ndarray, gain_step: int) -> tuple[np.ndarray, np.ndarray]:
    """(means in float, table indices) from integer z_hat, through the integer h_s."""
    out = model.hyper_synthesis(z_hat)
    m = model.latent_channels
    means = out[..., :m].astype(np.float64) / (1 << ACTIVATION_BITS)
    indices = scale_indices(out[..., m:], model.thresholds, gain_step)
    return means, indices


def analysis(model: CodecModel, pixels: np.ndarray, centred: bool = False) -> np.ndarray:
    """y = g_a(x) of a padded tile, (H/16, W/16, C) float32.

    The codec pads ``centred``; the public features pad bottom-right so that latent (i, j)
    covers pixels [16i, 16i + 16) x [16j, 16j + 16).
    """
    from keras import ops

    padded = (_pad_centred if centred else _pad)(pixels, model.pad_multiple)
    x = padded[None].astype(np.float32) / 255.0
    return ops.convert_to_numpy(model.keras_model.g_a(x))[0]


def _encode_hyperprior(model: CodecModel, pixels: np.ndarray, gain_step: int) -> bytes:
    from keras import ops

    y = analysis(model, pixels, centred=True)
    z = model.keras_model.h_a(y[None])
    z_hat = np.rint(ops.convert_to_numpy(z)[0]).astype(np.int64)
    encoder = new_encoder()
    model.z_coder.encode(encoder, z_hat, _channel_tables(z_hat.shape))
    means, indices = _params(model, z_hat, gain_step)
    g = gain(gain_step)
    model.y_coder.encode(encoder, np.rint(g * y.astype(np.float64) - g * means), indices)
    return np.asarray(encoder.get_compressed(), dtype="<u4").tobytes()


def _decode_hyperprior(
    model: CodecModel, payload: bytes, width: int, height: int, gain_step: int
) -> np.ndarray:
    from keras import ops

    multiple = model.pad_multiple
    z_shape = (
        _round_up(height, multiple) // multiple,
        _round_up(width, multiple) // multiple,
        model.hyper_channels,
    )
    z_coder, y_coder = model.z_coder, model.y_coder  # model-side errors stay what they are
    decoder = _stream(payload)
    z_hat = _decode_symbols(z_coder, decoder, _channel_tables(z_shape))
    means, indices = _params(model, z_hat, gain_step)
    symbols = _decode_symbols(y_coder, decoder, indices)
    g = gain(gain_step)
    y_hat = np.clip((symbols.astype(np.float64) + g * means) / g, -1e4, 1e4).astype(np.float32)
    top, left = _centre_offsets(height, width, multiple)
    x_hat = ops.convert_to_numpy(model.keras_model.g_s(y_hat[None]))[0]
    return _to_uint8(x_hat[top : top + height, left : left + width])


# -- seed-dense (48x48 blocks) --------------------------------------------------------------


def _blocks(pixels: np.ndarray, block: int) -> tuple[np.ndarray, tuple[int, int]]:
    padded = _pad(pixels, block)
    rows, cols = padded.shape[0] // block, padded.shape[1] // block
    blocks = padded.reshape(rows, block, cols, block, 3).transpose(0, 2, 1, 3, 4)
    return blocks.reshape(rows * cols, block, block, 3), (rows, cols)


def block_latents(model: CodecModel, pixels: np.ndarray) -> np.ndarray:
    """The seed model's bottleneck per 48x48 block, (rows, cols, 1728) float32."""
    from keras import ops

    blocks, (rows, cols) = _blocks(pixels, model.pad_multiple)
    y = model.keras_model.encoder(blocks.astype(np.float32) / 255.0, training=False)
    return ops.convert_to_numpy(y).reshape(rows, cols, -1)


def _encode_blocks(model: CodecModel, pixels: np.ndarray) -> bytes:
    y_hat = np.rint(block_latents(model, pixels).astype(np.float64))
    encoder = new_encoder()
    model.z_coder.encode(encoder, y_hat, _channel_tables(y_hat.shape))
    return np.asarray(encoder.get_compressed(), dtype="<u4").tobytes()


def _decode_blocks(model: CodecModel, payload: bytes, width: int, height: int) -> np.ndarray:
    from keras import ops

    block = model.pad_multiple
    rows, cols = _round_up(height, block) // block, _round_up(width, block) // block
    coder = model.z_coder
    shape = (rows * cols, model.latent_channels)
    y_hat = _decode_symbols(coder, _stream(payload), _channel_tables(shape))
    y_hat = np.clip(y_hat, -1e4, 1e4).astype(np.float32)
    x_hat = ops.convert_to_numpy(model.keras_model.decoder(y_hat, training=False))
    x_hat = x_hat.reshape(rows, cols, block, block, 3).transpose(0, 2, 1, 3, 4)
    return _to_uint8(x_hat.reshape(rows * block, cols * block, 3)[:height, :width])


# -- dispatch -------------------------------------------------------------------------------


def encode_tile(model: CodecModel, pixels: np.ndarray, gain_step: int) -> bytes:
    """(h, w, 3) uint8 -> the tile's payload bytes."""
    if model.kind == "seed-dense":
        if gain_step:
            raise ValueError("the seed-dense model codes only at gain step 0")
        return _encode_blocks(model, pixels)
    return _encode_hyperprior(model, pixels, gain_step)


def decode_tile(
    model: CodecModel, payload: bytes, width: int, height: int, gain_step: int
) -> np.ndarray:
    """The tile's payload -> (height, width, 3) uint8."""
    if model.kind == "seed-dense":
        if gain_step:
            raise TileDecodeError("the seed-dense model codes only at gain step 0")
        return _decode_blocks(model, payload, width, height)
    return _decode_hyperprior(model, payload, width, height, gain_step)


def tiles(width: int, height: int, tile_size: int = TILE_SIZE) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) of each tile in raster order."""
    return [
        (left, top, min(left + tile_size, width), min(top + tile_size, height))
        for top in range(0, height, tile_size)
        for left in range(0, width, tile_size)
    ]
