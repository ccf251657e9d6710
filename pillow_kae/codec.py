"""Pixels <-> tile payloads: the learned transforms plus entropy coding per tile.

Format version 2 (seamless). The mean-scale hyperprior sees the whole image, padded to a
multiple of 64 (edge replication, content centred), as one latent grid; only the entropy
coding is cut into tiles:

1. y = g_a(x) of the whole padded image, computed in windows of ``TRANSFORM_WINDOW``
   pixels with ``ANALYSIS_MARGIN`` of context (the same y, in bounded memory);
2. per tile, z = round(h_a(y)) of the tile's y with ``HYPER_CONTEXT`` latents around it,
   coded with one fixed table per channel;
3. the fixed-point h_s (integers only) on the whole z grid, a tile plus
   ``HYPER_SYNTHESIS_MARGIN`` at a time -> means and scale-table indices;
4. round(g * (y - mu)) coded with the Gaussian table of each element's index; with
   ``effort`` above 0 the symbols are instead searched against g_s (``_refine``), and
   nothing else changes.

The decoder reads every tile's z, then every tile's y (every table choice bit-identical:
no tile edge in the means either), assembles y_hat and
runs g_s window by window with ``SYNTHESIS_MARGIN`` latents of context, keeping each
window's centre: the pixels do not depend on tiles or windows. Memory is the image, y_hat
(1/256 of the pixels x 192 channels) and one window's activations.

Version 3 is version 2 with y coded in channel slices (``_SliceContext``); version 4 is
either, at a gain step between whole steps (``fixed_point.scale_indices``); version 5 is
4 plus a restoration filter (``pillow_kae.restoration``) that the encoder fits on what the
decoder synthesises (``fit_restoration``) and the decoder applies to the pixels; version 6
the same with the filter in shape 2 (colour terms and clipping), version 7 in shape 3 (wider
colour terms, filters in a cascade); version 8 codes as 7 in a compact container
(``pillow_kae.container``). Version 1 files
coded each tile on its own, pixels included (visible seams); they still decode. The
seed-dense model codes 48x48 blocks in independent tiles in both versions.

Which rate point codes an image is the encoder's choice (``encode_best``): where the quality
ladder offers the model below as well, both are coded and the better kept; the file names
the model and gain step, so no version changes with it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import EllipsisType

import numpy as np

from pillow_kae import metrics, restoration
from pillow_kae.container import (
    CHANNEL_CONDITIONAL_VERSION,
    FINE_GAIN_VERSION,
    coding_version,
)
from pillow_kae.entropy_models.coder import TableCoder, as_values, new_decoder, new_encoder
from pillow_kae.entropy_models.fixed_point import (
    ACTIVATION_BITS,
    check_gain_step,
    dequantize_fixed,
    inverse_gain_fixed,
    scale_indices,
)
from pillow_kae.entropy_models.gaussian_conditional import (
    SCALE_LEVELS,
    SCALE_MAX,
    SCALE_MIN,
    scale_table,
)
from pillow_kae.restoration import Restoration
from pillow_kae.zoo.loader import CodecModel

TILE_SIZE = 1024
MAX_TILE_SIZE = 4096  # a decoder refuses larger tiles: memory per tile stays bounded
# Context around a window, the transforms' reach: g_a's four 5x5 stride-2 layers see 15
# pixels before a latent's 16 and 30 after; a pixel of g_s's four 5x5 stride-2 transposed
# layers depends on latents from 2.8 before its own (so 2 whole latents) to under 1 after.
ANALYSIS_MARGIN = 32  # pixels, a multiple of 16 so windows stay on the latent grid
SYNTHESIS_MARGIN = 2  # latents: the least that gives the pixels of one pass (tested)
# The transforms run in windows of this many pixels (plus the margins): their activations,
# not the image, bound the memory (a 1024 window made g_a peak near 1 GB on its own).
TRANSFORM_WINDOW = 512
# A padded image this small runs in one window: no context is computed twice (the 768x512
# of a Kodak photo would otherwise take two windows), and its activations are still small.
SINGLE_PASS_PIXELS = 768 * 512
HYPER_CONTEXT = 8  # latents of y around a tile that h_a sees (its reach is 4)
HYPER_SYNTHESIS_MARGIN = 2  # cells of ẑ around a tile that h_s sees (its reach is 1.75)
# Refinement (``effort``): latents around a window that g_s sees while its symbols are
# searched (g_s reaches 3), and latents' worth of pixels beyond the window that are scored.
REFINE_CONTEXT = 4
REFINE_OVERLAP = 2
#: Decoded pixels the encoder fits the restoration filter on, at most (a sample of windows).
RESTORATION_FIT_PIXELS = 1 << 21
#: Where the quality ladder offers several rate points, an image of more pixels than this is
#: judged on its centre square of this side (``encode_best``): the choice costs a bounded
#: time, and the whole photo is coded once.
CHOICE_PIXELS = 1 << 21
CHOICE_SIDE = 1024
GAIN_RATIO = (SCALE_MAX / SCALE_MIN) ** (1.0 / (SCALE_LEVELS - 1))
_DECODE_ERRORS = (ValueError, RuntimeError, OverflowError, AssertionError)


class TileDecodeError(OSError):
    """The payload of a tile is inconsistent with its model (damaged or forged file)."""


def gain(step: float) -> float:
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


def _params(
    model: CodecModel, z_hat: np.ndarray, gain_step: float
) -> tuple[np.ndarray, np.ndarray]:
    """(means in float, table indices) from integer z_hat, through the integer h_s."""
    return _split_params(model, model.hyper_synthesis(z_hat), gain_step)


def _tile_params(
    model: CodecModel, z_grid: np.ndarray, box: tuple[int, int, int, int], gain_step: float
) -> tuple[np.ndarray, np.ndarray]:
    """Means and table indices of one tile's y from h_s on the whole ẑ grid."""
    return _split_params(model, _tile_hyper(model, z_grid, box), gain_step)


def _tile_hyper(
    model: CodecModel, z_grid: np.ndarray, box: tuple[int, int, int, int]
) -> np.ndarray:
    """The integer h_s output over one tile's y, from h_s on the whole ẑ grid.

    h_s runs on the tile's ẑ plus ``HYPER_SYNTHESIS_MARGIN`` cells of its neighbours (zero
    beyond the image), which gives exactly the values of h_s on the whole grid: a tile's
    edge is predicted as if there were no tiles, so no seam comes from the means.
    """
    multiple, stride = model.pad_multiple, model.stride
    image = (0, 0, z_grid.shape[1] * multiple, z_grid.shape[0] * multiple)
    context = _expand(box, HYPER_SYNTHESIS_MARGIN * multiple, image[2], image[3])
    out = model.hyper_synthesis(z_grid[_inner(context, image, multiple)])
    return out[_inner(box, context, stride)]


class _SliceContext:
    """Means and table indices of a tile's y, group after group (channel-conditional models).

    Slice i's parameters are the h_s output corrected by the integer slice transform, which
    also sees the slices before it as the decoder has them (fixed point, ``dequantize_fixed``):
    the encoder feeds it exactly what the decoder will, so every table choice matches. With a
    checkerboard, a slice is two groups: its anchors ((row + column) even, from the tile's
    corner), then the rest with the parameters corrected again by the spatial transform,
    which sees the decoded anchors' residuals from their means. The transforms see the tile
    alone (zero beyond it), so tiles stay independent.
    """

    def __init__(self, model: CodecModel, hyper: np.ndarray, gain_step: float) -> None:
        self.model, self.hyper, self.gain_step = model, hyper, gain_step
        self.steps = model.slices * (2 if model.checkerboard else 1)  # groups of symbols
        self.decoded: list[np.ndarray] = []  # finished slices, fixed point
        self.y_hat: list[np.ndarray] = []  # finished slices, as g_s gets them
        rows, cols = np.indices(hyper.shape[:2])
        self.anchors = (rows + cols) % 2 == 0
        self.positions: np.ndarray | EllipsisType = ...  # of the group params() gave
        self.params_full: tuple[np.ndarray, np.ndarray] | None = None  # (means, log-scales)
        self.first_half: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def params(self) -> tuple[np.ndarray, np.ndarray, slice, np.ndarray | EllipsisType]:
        """(integer means, table indices, channels, positions) of the next group: its means
        and indices are those at ``positions`` (``...``: the whole slice; else a mask of the
        tile's latent positions), in C order."""
        model, i = self.model, len(self.decoded)
        c, m = model.latent_channels // model.slices, model.latent_channels
        channels = slice(i * c, (i + 1) * c)
        if self.first_half is None:
            means = self.hyper[..., channels]
            log_scales = self.hyper[..., m + i * c : m + (i + 1) * c]
            inputs = np.concatenate([means, log_scales, *self.decoded], axis=-1)
            delta = model.slice_transforms(i, inputs)
            self.positions = self.anchors if model.checkerboard else ...
        else:
            means, log_scales, symbols = self.first_half
            first = dequantize_fixed(means, symbols, inverse_gain_fixed(self.gain_step)) - means
            inputs = np.concatenate([means, log_scales, first * self.anchors[..., None]], -1)
            delta = model.spatial_transforms(i, inputs)
            self.positions = ~self.anchors
        means, log_scales = means + delta[..., :c], log_scales + delta[..., c:]
        self.params_full = means, log_scales
        where = self.positions
        indices = scale_indices(log_scales[where], model.thresholds, self.gain_step)
        return means[where], indices, channels, where

    def add(self, symbols: np.ndarray) -> None:
        """Record the group just coded (``symbols`` shaped like its means), as the decoder
        reconstructs it."""
        means, log_scales = self.params_full
        if self.positions is ...:
            self._finish(means, symbols)
            return
        if self.first_half is None:
            full = np.zeros(means.shape, np.int64)
            full[self.positions] = symbols
            self.first_half = means, log_scales, full
            return
        first_means, _, full = self.first_half
        full[self.positions] = symbols
        self.first_half = None
        self._finish(np.where(self.anchors[..., None], first_means, means), full)

    def _finish(self, means: np.ndarray, symbols: np.ndarray) -> None:
        self.decoded.append(dequantize_fixed(means, symbols, inverse_gain_fixed(self.gain_step)))
        self.y_hat.append(_dequantize(symbols, means / (1 << ACTIVATION_BITS), self.gain_step))

    def reconstruction(self) -> np.ndarray:
        """ŷ of the tile once every group is coded."""
        return np.concatenate(self.y_hat, axis=-1)


def _split_params(
    model: CodecModel, out: np.ndarray, gain_step: float
) -> tuple[np.ndarray, np.ndarray]:
    m = model.latent_channels
    means = out[..., :m].astype(np.float64) / (1 << ACTIVATION_BITS)
    indices = scale_indices(out[..., m:], model.thresholds, gain_step)
    return means, indices


def analysis(model: CodecModel, pixels: np.ndarray, centred: bool = False) -> np.ndarray:
    """y = g_a(x) of a padded tile, (H/16, W/16, C) float32.

    The codec pads ``centred``; the public features pad bottom-right so that latent (i, j)
    covers pixels [16i, 16i + 16) x [16j, 16j + 16).
    """
    padded = (_pad_centred if centred else _pad)(pixels, model.pad_multiple)
    return model.transform("g_a")(padded[None].astype(np.float32) / 255.0)[0]


def _encode_image_hyperprior(
    model: CodecModel, pixels: np.ndarray, gain_step: float, tile_size: int, effort: int = 0
) -> tuple[list[bytes], np.ndarray]:
    """Each tile's payload: its ẑ, then its y around the means h_s gives from the ẑ grid,
    each residual rounded for rate and distortion together (``TableCoder.round``); and ŷ
    of the whole padded image exactly as the decoder will reconstruct it from them."""
    y, z_grid = _latent_grids(model, pixels, tile_size)
    if effort:
        y = _refine(model, pixels, y, z_grid, gain_step, effort)
    stride, multiple = model.stride, model.pad_multiple
    image = (0, 0, y.shape[1] * stride, y.shape[0] * stride)
    g = gain(gain_step)
    y_hat = np.empty(y.shape, np.float32)
    payloads = []
    for box in tiles(image[2], image[3], tile_size):
        encoder = new_encoder()
        z_hat = z_grid[_inner(box, image, multiple)]
        model.z_coder.encode(encoder, z_hat, _channel_tables(z_hat.shape))
        hyper = _tile_hyper(model, z_grid, box)
        where = _inner(box, image, stride)
        y_tile = y[where].astype(np.float64)
        if model.slices:
            context = _SliceContext(model, hyper, gain_step)
            for _ in range(context.steps):
                means, indices, channels, positions = context.params()
                residual = y_tile[..., channels][positions] - means / (1 << ACTIVATION_BITS)
                symbols = as_values(model.y_coder.round(g * residual, indices))
                model.y_coder.encode(encoder, symbols, indices)
                context.add(symbols)
            y_hat[where] = context.reconstruction()
        else:
            means, indices = _split_params(model, hyper, gain_step)
            symbols = as_values(model.y_coder.round(g * y_tile - g * means, indices))
            model.y_coder.encode(encoder, symbols, indices)
            y_hat[where] = _dequantize(symbols, means, gain_step)
        payloads.append(np.asarray(encoder.get_compressed(), dtype="<u4").tobytes())
    return payloads, y_hat


def _refine(
    model: CodecModel,
    pixels: np.ndarray,
    y: np.ndarray,
    z_grid: np.ndarray,
    gain_step: float,
    effort: int,
) -> np.ndarray:
    """ŷ (float64) whose symbols refinement chose, window by window (the ``effort`` option).

    ẑ stays, so the means and tables are the decoder's. Each window's symbols are searched
    with g_s seeing ``REFINE_CONTEXT`` latents around it (as the decoder will have them:
    refined before it, rounded after) and its pixels plus ``REFINE_OVERLAP`` latents' worth
    beyond it scored, so that windows meet without a seam; memory stays one window's.
    A window keeps the search's symbols only if, decoded by g_s, they cost less than those
    effort 0 codes: more effort never makes a window worse by what refinement minimises.
    A channel-conditional model is searched on its hyperprior's means and tables (the slices'
    depend on the symbols being searched); its slice coder then codes the ŷ found as y.
    """
    from pillow_kae import refinement

    steps = refinement.steps_for(effort)
    stride = model.stride
    height, width = pixels.shape[:2]
    padded_h, padded_w = y.shape[0] * stride, y.shape[1] * stride
    top, left = _centre_offsets(height, width, model.pad_multiple)
    image, inside = (0, 0, padded_w, padded_h), (left, top, left + width, top + height)
    g = gain(gain_step)
    windows = _windows(padded_w, padded_h, None)
    means = np.empty(y.shape, np.float64)
    indices = np.empty(y.shape, np.int64)
    for box in windows:
        where = _inner(box, image, stride)
        means[where], indices[where] = _split_params(
            model, _tile_hyper(model, z_grid, box), gain_step
        )
    start = as_values(model.y_coder.round(g * (y - means), indices))  # what effort 0 codes
    y_hat = means + start / g
    scales = scale_table()
    for box in windows:
        where = _inner(box, image, stride)
        context = _expand(box, REFINE_CONTEXT * stride, padded_w, padded_h)
        scored = _intersect(_expand(box, REFINE_OVERLAP * stride, padded_w, padded_h), inside)
        weight = np.zeros((context[3] - context[1], context[2] - context[0], 1), np.float32)
        weight[_inner(scored, context, 1)] = 1.0
        problem = refinement.Problem(
            residual=g * (y[where] - means[where]),
            means=means[where],
            scales=scales[indices[where]],
            gain=g,
            context=y_hat[_inner(context, image, stride)],
            window=_inner(box, context, stride),
            target=_padded_window(pixels, top, left, context).astype(np.float32) / 255.0,
            weight=weight,
            lmbda=refinement.trade_off(model.card.lmbda, g),
        )
        candidates = (refinement.refine(model, problem, steps), start[where])
        costs = []
        for q in candidates:
            context = problem.context.astype(np.float32)
            context[problem.window] = means[where] + q / g
            decoded = _to_uint8(model.transform("g_s")(context[None])[0])
            bits = model.y_coder.bits(q, indices[where])
            costs.append(refinement.window_cost(problem, bits, decoded))
        y_hat[where] = means[where] + candidates[int(np.argmin(costs))] / g
    return y_hat


def _intersect(
    a: tuple[int, int, int, int], b: tuple[int, int, int, int]
) -> tuple[int, int, int, int]:
    return (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))


def _decode_latents(
    model: CodecModel, payload: bytes, shape: tuple[int, int], gain_step: float
) -> np.ndarray:
    """A payload -> that tile's y_hat, (rows, cols, C) float32."""
    rows, cols = shape
    z_shape = (rows // model.hyper_stride, cols // model.hyper_stride, model.hyper_channels)
    z_coder, y_coder = model.z_coder, model.y_coder  # model-side errors stay what they are
    decoder = _stream(payload)
    z_hat = _decode_symbols(z_coder, decoder, _channel_tables(z_shape))
    means, indices = _params(model, z_hat, gain_step)
    return _dequantize(_decode_symbols(y_coder, decoder, indices), means, gain_step)


def _dequantize(symbols: np.ndarray, means: np.ndarray, gain_step: float) -> np.ndarray:
    """y_hat = q / g + mu, clipped so that forged symbols cannot overflow g_s."""
    g = gain(gain_step)
    return np.clip((symbols.astype(np.float64) + g * means) / g, -1e4, 1e4).astype(np.float32)


def _padded_window(
    pixels: np.ndarray, top: int, left: int, box: tuple[int, int, int, int]
) -> np.ndarray:
    """``box`` of the image padded centred by edge replication (content at top, left),
    cut without building the padded image."""
    x0, y0, x1, y1 = box
    height, width = pixels.shape[:2]
    rows = np.clip(np.arange(y0, y1) - top, 0, height - 1)
    cols = np.clip(np.arange(x0, x1) - left, 0, width - 1)
    return pixels[rows[:, None], cols[None, :]]


def _expand(
    box: tuple[int, int, int, int], margin: int, width: int, height: int
) -> tuple[int, int, int, int]:
    left, top, right, bottom = box
    return (
        max(left - margin, 0),
        max(top - margin, 0),
        min(right + margin, width),
        min(bottom + margin, height),
    )


def _windows(padded_w: int, padded_h: int, window: int | None) -> list[tuple[int, int, int, int]]:
    """The transform windows of a padded image: one if it is small, else ``window`` squares."""
    if window is None:
        small = padded_w * padded_h <= SINGLE_PASS_PIXELS
        window = max(padded_w, padded_h) if small else TRANSFORM_WINDOW
    return tiles(padded_w, padded_h, window)


def analysis_grid(model: CodecModel, pixels: np.ndarray, window: int | None = None) -> np.ndarray:
    """y = g_a of the image padded centred to a multiple of 64, (H/16, W/16, C) float32.

    Computed in windows of ``window`` pixels (default: ``_windows``) plus ``ANALYSIS_MARGIN``
    around each, so the memory of the transform is bounded by the window and the result does
    not depend on it.
    """
    height, width = pixels.shape[:2]
    multiple, stride = model.pad_multiple, model.stride
    padded_w, padded_h = _round_up(width, multiple), _round_up(height, multiple)
    top, left = _centre_offsets(height, width, multiple)
    image = (0, 0, padded_w, padded_h)
    grid = np.empty((padded_h // stride, padded_w // stride, model.latent_channels), np.float32)
    for box in _windows(padded_w, padded_h, window):
        context = _expand(box, ANALYSIS_MARGIN, padded_w, padded_h)
        x = _padded_window(pixels, top, left, context)[None].astype(np.float32) / 255.0
        y = model.transform("g_a")(x)[0]
        grid[_inner(box, image, stride)] = y[_inner(box, context, stride)]
    return grid


def _latent_grids(
    model: CodecModel, pixels: np.ndarray, tile_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """y of the whole padded image and the integer ẑ grid, z computed tile by tile.

    Each tile's z is h_a of its y with ``HYPER_CONTEXT`` latents of context, so that h_s
    predicts the tile's edges from what lies beyond them.
    """
    y = analysis_grid(model, pixels)
    stride, multiple = model.stride, model.pad_multiple
    padded_h, padded_w = y.shape[0] * stride, y.shape[1] * stride
    image = (0, 0, padded_w, padded_h)
    z_grid = np.zeros((padded_h // multiple, padded_w // multiple, model.hyper_channels), np.int64)
    for box in tiles(padded_w, padded_h, tile_size):
        context = _expand(box, HYPER_CONTEXT * stride, padded_w, padded_h)
        z = model.transform("h_a")(y[_inner(context, image, stride)][None])[0]
        z_grid[_inner(box, image, multiple)] = np.rint(z[_inner(box, context, multiple)])
    return y, z_grid


def _inner(
    box: tuple[int, int, int, int], outer: tuple[int, int, int, int], unit: int
) -> tuple[slice, slice]:
    """Where ``box`` lies in an array covering ``outer`` at ``unit`` pixels per cell."""
    return (
        slice((box[1] - outer[1]) // unit, (box[3] - outer[1]) // unit),
        slice((box[0] - outer[0]) // unit, (box[2] - outer[0]) // unit),
    )


def _decode_latent_grid(
    model: CodecModel,
    payloads: list[bytes],
    width: int,
    height: int,
    gain_step: float,
    tile_size: int,
) -> np.ndarray:
    """The tiles' payloads -> y_hat of the whole padded image (everything before g_s)."""
    stride, multiple = model.stride, model.pad_multiple
    padded_w, padded_h = _round_up(width, multiple), _round_up(height, multiple)
    boxes = tiles(padded_w, padded_h, tile_size)
    image = (0, 0, padded_w, padded_h)
    z_coder, y_coder = model.z_coder, model.y_coder  # model-side errors stay what they are
    # Every tile's ẑ first (each stream pauses after it), then every tile's y.
    decoders = [_stream(payload) for payload in payloads]
    if len(decoders) != len(boxes):
        raise TileDecodeError(f"{len(decoders)} tile payloads for {len(boxes)} tiles")
    z_grid = np.zeros((padded_h // multiple, padded_w // multiple, model.hyper_channels), np.int64)
    for box, decoder in zip(boxes, decoders, strict=True):
        where = _inner(box, image, multiple)
        shape = (where[0].stop - where[0].start, where[1].stop - where[1].start)
        z_grid[where] = _decode_symbols(
            z_coder, decoder, _channel_tables((*shape, model.hyper_channels))
        )
    y_hat = np.empty((padded_h // stride, padded_w // stride, model.latent_channels), np.float32)
    for box, decoder in zip(boxes, decoders, strict=True):
        hyper = _tile_hyper(model, z_grid, box)
        where = _inner(box, image, stride)
        if not model.slices:
            means, indices = _split_params(model, hyper, gain_step)
            symbols = _decode_symbols(y_coder, decoder, indices)
            y_hat[where] = _dequantize(symbols, means, gain_step)
            continue
        context = _SliceContext(model, hyper, gain_step)
        for _ in range(context.steps):
            _, indices, _, _ = context.params()
            context.add(_decode_symbols(y_coder, decoder, indices))
        y_hat[where] = context.reconstruction()
    return y_hat


def synthesis(
    model: CodecModel, y_hat: np.ndarray, width: int, height: int, window: int | None = None
) -> np.ndarray:
    """g_s of the whole latent grid, run window by window: (height, width, 3) uint8.

    ``y_hat`` covers the image padded centred to a multiple of 64; each window's pixels come
    from g_s on its latents plus ``SYNTHESIS_MARGIN`` around them, so the result does not
    depend on ``window`` (up to float rounding).
    """
    out = np.empty((height, width, 3), np.uint8)
    for (left, top, right, bottom), pixels in _synthesis_windows(
        model, y_hat, width, height, window
    ):
        out[top:bottom, left:right] = pixels
    return out


def _synthesis_windows(
    model: CodecModel,
    y_hat: np.ndarray,
    width: int,
    height: int,
    window: int | None = None,
    every: int = 1,
) -> Iterator[tuple[tuple[int, int, int, int], np.ndarray]]:
    """(box in the image, its uint8 pixels) of every ``every``-th synthesis window."""
    stride, multiple = model.stride, model.pad_multiple
    padded_w, padded_h = _round_up(width, multiple), _round_up(height, multiple)
    top, left = _centre_offsets(height, width, multiple)
    image = (left, top, left + width, top + height)
    for box in _windows(padded_w, padded_h, window)[::every]:
        keep = _intersect(box, image)  # the window's pixels that lie inside the image
        if keep[0] >= keep[2] or keep[1] >= keep[3]:
            continue
        context = _expand(box, SYNTHESIS_MARGIN * stride, padded_w, padded_h)
        rows, cols = _inner(context, (0, 0, padded_w, padded_h), stride)
        x_hat = model.transform("g_s")(y_hat[None, rows, cols])[0]
        in_image = (keep[0] - left, keep[1] - top, keep[2] - left, keep[3] - top)
        yield in_image, _to_uint8(x_hat[_inner(keep, context, 1)])


def fit_restoration(
    model: CodecModel,
    pixels: np.ndarray,
    y_hat: np.ndarray | None,
    coded_bits: int,
    windows: list[tuple[tuple[int, int, int, int], np.ndarray]] | None = None,
) -> Restoration | None:
    """The restoration filters for ``pixels`` coded in ``coded_bits`` as ``y_hat`` (the
    decoder's, from ``encode_image_latents``; None for seed-dense), or None if none pays.

    Fitted on exactly what the decoder will synthesise from ``y_hat``: ``windows``, by
    default ``decoded_windows``.
    """
    if y_hat is None:
        return None
    if windows is None:
        windows = decoded_windows(model, y_hat, pixels.shape[1], pixels.shape[0])
    return restoration.fit_cascade(windows, pixels, coded_bits)


def decoded_windows(
    model: CodecModel, y_hat: np.ndarray, width: int, height: int
) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    """(box, uint8 pixels) of the whole synthesis windows the decoder makes from ``y_hat``;
    beyond ``RESTORATION_FIT_PIXELS`` only an even sample of them, so that what the encoder
    measures on them takes bounded time on big photos."""
    padded_w, padded_h = _round_up(width, model.pad_multiple), _round_up(height, model.pad_multiple)
    several = len(_windows(padded_w, padded_h, None)) > 1
    every = max(1, -(-padded_w * padded_h // RESTORATION_FIT_PIXELS)) if several else 1
    return list(_synthesis_windows(model, y_hat, width, height, every=every))


def _quality(
    pixels: np.ndarray, windows: list[tuple[tuple[int, int, int, int], np.ndarray]]
) -> tuple[float, float]:
    """PSNR and MS-SSIM (in dB) of decoded ``windows`` against ``pixels``: MS-SSIM is the
    windows' mean weighted by their pixels, each capped at 100 dB (no error)."""
    error, count, similarity = 0.0, 0, 0.0
    for (left, top, right, bottom), decoded in windows:
        original = pixels[top:bottom, left:right]
        diff = original.astype(np.int32) - decoded
        error += float(np.square(diff, dtype=np.int64).sum())
        count += diff.size
        similarity += metrics.ms_ssim(original, decoded) * diff.size
    if not count:
        return 0.0, 0.0
    psnr = 100.0 if error == 0 else min(100.0, 10 * np.log10(255.0**2 * count / error))
    return psnr, min(100.0, metrics.ms_ssim_db(similarity / count))


@dataclass(frozen=True)
class Encoding:
    """``pixels`` coded at one rate point: the tile payloads, the ŷ the decoder will
    reconstruct (None for seed-dense) and the restoration filters that pay (if fitted)."""

    model: CodecModel
    gain_step: float
    payloads: list[bytes]
    y_hat: np.ndarray | None
    restoration: Restoration | None = None

    @property
    def bits(self) -> int:
        return 8 * sum(map(len, self.payloads))


def encode_best(
    points: Sequence[tuple[CodecModel, float]],
    pixels: np.ndarray,
    tile_size: int = TILE_SIZE,
    effort: int = 0,
    restore: bool = True,
) -> Encoding:
    """``pixels`` coded at the best of ``points`` (model, gain step), with its restoration
    filters unless ``restore`` is false.

    With several points, each is coded and decoded, and each is scored twice, by
    ln(bits) - ``restoration.rate_per_db`` * quality with PSNR and with MS-SSIM (dB) as the
    quality: the fewest bits for each measure, a dB valued at the slope of the quality ladder
    at the first point's rate. Another point replaces the first only if it is better by both
    (by PSNR alone the encoder took the larger model at low gain steps on detailed photos:
    higher PSNR, visibly blurrier texture, lower MS-SSIM); of several, the best by the sum.
    Quality is taken before restoration, on the windows the restoration fit uses. An image
    of more than ``CHOICE_PIXELS`` is judged on its centre ``CHOICE_SIDE`` square, then
    coded once; with ``effort``, the points are judged without it and the winner alone is
    refined.
    """
    if not points:
        raise ValueError("no rate point to code at")
    height, width = pixels.shape[:2]
    if len(points) > 1 and (effort or height * width > CHOICE_PIXELS):
        sample = pixels
        if height * width > CHOICE_PIXELS:
            top, left = max(0, (height - CHOICE_SIDE) // 2), max(0, (width - CHOICE_SIDE) // 2)
            sample = pixels[top : top + CHOICE_SIDE, left : left + CHOICE_SIDE]
        trial, _ = _best_of(points, sample, tile_size)
        points = [(trial.model, trial.gain_step)]
    best, windows = _best_of(points, pixels, tile_size, effort)
    if not restore:
        return best
    filters = fit_restoration(best.model, pixels, best.y_hat, best.bits, windows)
    return Encoding(best.model, best.gain_step, best.payloads, best.y_hat, filters)


def _best_of(
    points: Sequence[tuple[CodecModel, float]],
    pixels: np.ndarray,
    tile_size: int = TILE_SIZE,
    effort: int = 0,
) -> tuple[Encoding, list[tuple[tuple[int, int, int, int], np.ndarray]] | None]:
    """``encode_best``'s choice, without restoration: the encoding and, if it was decoded
    to choose it, its ``decoded_windows``."""
    encodings = (
        Encoding(model, step, *encode_image_latents(model, pixels, step, tile_size, effort))
        for model, step in points
    )
    if len(points) == 1:
        return next(encodings), None
    height, width = pixels.shape[:2]
    best, best_windows, first, best_total, slope = None, None, None, np.inf, 0.0
    for encoding in encodings:
        windows = decoded_windows(encoding.model, encoding.y_hat, width, height)
        if first is None:  # the ladder's own point: its rate sets the slope
            slope = restoration.rate_per_db(encoding.bits / (width * height))
        costs = [np.log(max(encoding.bits, 1)) - slope * q for q in _quality(pixels, windows)]
        if first is None:
            first = costs
        elif not all(c < f for c, f in zip(costs, first, strict=True)):
            continue  # better by one measure only: the ladder's own point stays
        if sum(costs) < best_total:
            best, best_windows, best_total = encoding, windows, sum(costs)
    return best, best_windows


def _decode_tile_v1(
    model: CodecModel, payload: bytes, width: int, height: int, gain_step: float
) -> np.ndarray:
    """Format version 1: the tile was coded on its own, pixels padded centred."""
    multiple = model.pad_multiple
    shape = (
        _round_up(height, multiple) // model.stride,
        _round_up(width, multiple) // model.stride,
    )
    y_hat = _decode_latents(model, payload, shape, gain_step)
    top, left = _centre_offsets(height, width, multiple)
    x_hat = model.transform("g_s")(y_hat[None])[0]
    return _to_uint8(x_hat[top : top + height, left : left + width])


# -- seed-dense (48x48 blocks) --------------------------------------------------------------


def _blocks(pixels: np.ndarray, block: int) -> tuple[np.ndarray, tuple[int, int]]:
    padded = _pad(pixels, block)
    rows, cols = padded.shape[0] // block, padded.shape[1] // block
    blocks = padded.reshape(rows, block, cols, block, 3).transpose(0, 2, 1, 3, 4)
    return blocks.reshape(rows * cols, block, block, 3), (rows, cols)


def block_latents(model: CodecModel, pixels: np.ndarray) -> np.ndarray:
    """The seed model's bottleneck per 48x48 block, (rows, cols, 1728) float32."""
    blocks, (rows, cols) = _blocks(pixels, model.pad_multiple)
    y = model.transform("encoder")(blocks.astype(np.float32) / 255.0)
    return y.reshape(rows, cols, -1)


def _encode_blocks(model: CodecModel, pixels: np.ndarray) -> bytes:
    y_hat = np.rint(block_latents(model, pixels).astype(np.float64))
    encoder = new_encoder()
    model.z_coder.encode(encoder, y_hat, _channel_tables(y_hat.shape))
    return np.asarray(encoder.get_compressed(), dtype="<u4").tobytes()


def _decode_blocks(model: CodecModel, payload: bytes, width: int, height: int) -> np.ndarray:
    block = model.pad_multiple
    rows, cols = _round_up(height, block) // block, _round_up(width, block) // block
    coder = model.z_coder
    shape = (rows * cols, model.latent_channels)
    y_hat = _decode_symbols(coder, _stream(payload), _channel_tables(shape))
    y_hat = np.clip(y_hat, -1e4, 1e4).astype(np.float32)
    x_hat = model.transform("decoder")(y_hat)
    x_hat = x_hat.reshape(rows, cols, block, block, 3).transpose(0, 2, 1, 3, 4)
    return _to_uint8(x_hat.reshape(rows * block, cols * block, 3)[:height, :width])


# -- dispatch -------------------------------------------------------------------------------


def encode_image(
    model: CodecModel,
    pixels: np.ndarray,
    gain_step: float,
    tile_size: int = TILE_SIZE,
    effort: int = 0,
) -> list[bytes]:
    """(h, w, 3) uint8 -> one payload per tile of ``tiles(w, h, tile_size)``, in that order.

    ``effort`` above 0 refines the symbols against the decoder (``pillow_kae.refinement``;
    needs Keras); the decoder is the same for every effort. ``gain_step`` may be a multiple
    of 1/16 (written as format version 4).
    """
    return encode_image_latents(model, pixels, gain_step, tile_size, effort)[0]


def encode_image_latents(
    model: CodecModel,
    pixels: np.ndarray,
    gain_step: float,
    tile_size: int = TILE_SIZE,
    effort: int = 0,
) -> tuple[list[bytes], np.ndarray | None]:
    """``encode_image``'s payloads and the ŷ a decoder reconstructs from them (None for
    seed-dense), which ``fit_restoration`` needs: the encoder knows it already, so it does
    not decode its own payloads again."""
    gain_step = check_gain_step(gain_step)
    height, width = pixels.shape[:2]
    if model.kind == "seed-dense":
        if gain_step:
            raise ValueError("the seed-dense model codes only at gain step 0")
        if effort:
            raise ValueError("the seed-dense model has no effort levels (it has no hyperprior)")
        payloads = [
            _encode_blocks(model, pixels[top:bottom, left:right])
            for left, top, right, bottom in tiles(width, height, tile_size)
        ]
        return payloads, None
    return _encode_image_hyperprior(model, pixels, gain_step, tile_size, effort)


def decode_image(
    model: CodecModel,
    payloads: list[bytes],
    width: int,
    height: int,
    gain_step: float,
    tile_size: int,
    version: int,
    restoration_filters: Restoration | None = None,
) -> np.ndarray:
    """The tiles' payloads -> (height, width, 3) uint8, as format ``version`` defines, then
    ``restoration_filters`` (the file's ``KRST``, versions 5 to 8) applied in place."""
    if model.kind == "seed-dense" and gain_step:
        raise TileDecodeError("the seed-dense model codes only at gain step 0")
    if restoration_filters is not None:
        if model.kind == "seed-dense":
            raise TileDecodeError("restoration filters in a file of the seed-dense model")
        try:
            restoration_filters.check_version(version)
        except ValueError as err:
            raise TileDecodeError(str(err)) from err
    version = coding_version(version)
    fine = version >= FINE_GAIN_VERSION  # codes as the model does, slices or not
    if not fine and bool(model.slices) != (version == CHANNEL_CONDITIONAL_VERSION):
        raise TileDecodeError(
            f"format version {version} does not match model {model.name!r} "
            f"({'with' if model.slices else 'without'} channel slices)"
        )
    if model.kind != "seed-dense" and version >= 2:
        # g_s's graph loads (the first time in a process) while the latents decode.
        with ThreadPoolExecutor(1) as pool:
            synthesis_loaded = pool.submit(model.transform, "g_s")
            y_hat = _decode_latent_grid(model, payloads, width, height, gain_step, tile_size)
            synthesis_loaded.result()
        pixels = synthesis(model, y_hat, width, height)
        if restoration_filters is not None:
            restoration_filters.apply(pixels)
        return pixels
    out = np.empty((height, width, 3), np.uint8)
    boxes = tiles(width, height, tile_size)
    for (left, top, right, bottom), payload in zip(boxes, payloads, strict=True):
        w, h = right - left, bottom - top
        out[top:bottom, left:right] = (
            _decode_blocks(model, payload, w, h)
            if model.kind == "seed-dense"
            else _decode_tile_v1(model, payload, w, h, gain_step)
        )
    return out


def tiles(width: int, height: int, tile_size: int = TILE_SIZE) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) of each tile in raster order."""
    return [
        (left, top, min(left + tile_size, width), min(top + tile_size, height))
        for top in range(0, height, tile_size)
        for left in range(0, width, tile_size)
    ]
