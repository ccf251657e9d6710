"""The restoration filter: a Wiener filter the encoder fits to each image and the file carries.

A decoder trained for ~50 k steps leaves structured error in its pixels: grain on flat areas
(where its output wobbles around a smooth original), softness on texture, and colours a
little off (washed out, shifted in the shadows). All three are linear enough to undo with a
small filter, but which filter depends on the image and the rate, so the encoder, which has
the original, fits it by least squares (as VVC's adaptive loop filter and AV1's Wiener loop
restoration do) and stores it in a ``KRST`` chunk (docs/format.md §7).

Each pixel gets a *class* from the decoded image around it: how busy it is (``activity``, cut
into bins at thresholds the file stores), which way its detail runs (``direction``) and, in
shape 2, whether it is dark or bright. The file maps every class to one of a few filters; a
filter is, per colour channel, a point-symmetric diamond on the channel itself plus the
nearest horizontal and vertical second differences of the two other channels, and in shape 2
an offset and a colour matrix. So flat areas get a smoothing filter, texture a sharpening one,
edges one along the edge, and each channel may borrow detail from the others. Everything after
the decoded pixels is integer arithmetic:

    out = clip(x + ((sum_k c_k * d_k + 16 c_o + sum_j m_j (x_j - 128) + 128) >> 8), 0, 255)
    d = clip(x[p + k] - x[p], -C, C) + clip(x[p - k] - x[p], -C, C)

with c, c_o and m in 1/256ths (shape 1: no offset, no colour matrix, no clipping), so the
filter itself is exact on every machine (the pixels it starts from come from floating-point
g_s). Clipping the differences keeps an edge from leaking into the flat area beside it (ALF's
non-linear filter). Edges replicate, and the image is filtered in strips of rows in place:
memory is a strip per core, and the result does not depend on the strip height.
"""

from __future__ import annotations

import contextlib
import functools
import os
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import ThreadpoolController

from pillow_kae.container import (
    CASCADE_RESTORATION_VERSION,
    COLOUR_RESTORATION_VERSION,
    COMPACT_VERSION,
    RESTORATION_VERSION,
)
from pillow_kae.runtime.session import threads

__all__ = [
    "HALO",
    "LATEST",
    "SHAPES",
    "Fit",
    "Restoration",
    "RestorationFilter",
    "Shape",
    "activity",
    "apply",
    "classes",
    "fit_cascade",
    "rate_per_db",
]

#: Offsets (row, column) of one half of the point-symmetric 5x5 diamond; the other half mirrors.
TAPS_5X5 = ((0, 1), (0, 2), (1, -2), (1, -1), (1, 0), (1, 1), (1, 2), (2, -1), (2, 0), (2, 1))
#: Pixels around a filtered pixel that it depends on: 3 for the widest taps; 1 + 2 for the
#: activity and direction (second differences summed over a 5x5 window).
HALO = 3
DIRECTIONS = 3  # no clear direction, mostly horizontal detail, mostly vertical detail
#: A pixel is bright when its R + 2G + B is at least this (shape 2's two luma bands).
BRIGHT = 4 * 128
COEFFICIENT_SHIFT = 8  # coefficients are stored in 1/256ths
OFFSET_UNIT = 16  # the offset's input: c_o in 1/256ths of 16 is in 1/16ths of a level
#: |c| <= 4.0, far beyond any useful filter. With differences of at most 2 * 255, offsets of
#: 16 and colour inputs of at most 128 over a shape's coefficients, every sum stays below
#: 2**24, exact in float32 (``Shape.__post_init__`` checks it).
MAX_COEFFICIENT = 1 << 10
MAX_BINS = 16  # activity bins
MAX_FILTERS = 16
MAX_ACTIVITY = 25 * 4 * 4 * 255  # a 5x5 window of |Laplacian| of R+2G+B, at the most
NO_CLIP = 255  # differences of 8-bit pixels never exceed it
MAX_GOLOMB_ORDER = 15  # Exp-Golomb orders of compact shapes' coefficients
#: Longest zero prefix of an Exp-Golomb code: any coefficient within +-MAX_COEFFICIENT needs
#: at most 11 zeros (order 0); a longer prefix is a broken file, not a long read.
MAX_GOLOMB_ZEROS = 12
#: The clips the encoder tries: none, then tighter ones that stop edges leaking. Adding 8
#: gained 0.20 % in BD-rate on 4 Kodak images and 0.44 % on 4 clean photos (at the ladder's
#: 19 anchors, the same decoded pixels; adding 64 as well gained less).
CLIPS = (NO_CLIP, 32, 16, 8)
#: Pixels the fit needs per filter: coefficients fitted on fewer would fit the noise.
PIXELS_PER_FILTER = 1024
#: Pixels per class the fit asks for on average: a small image gets fewer activity bins, so
#: its classes are not a handful of pixels each (statistics of noise, and a merge of up to
#: 96 classes that costs more time than the image's own coding).
PIXELS_PER_CLASS = 256
#: Activity bins the encoder cuts (the format allows ``MAX_BINS``): with two filters in a
#: cascade, 8 do as well as 16 (on the decoded pixels of 4 Kodak and 4 clean photos at
#: three qualities) and halve the time of the merge.
FIT_BINS = 8
#: Images up to this many pixels are also fitted with shape 1 (see ``Fit``).
SMALL_IMAGE_PIXELS = 1 << 18
#: The encoder picks the clip on one pixel in this many, then fits on all of them. The sample
#: is scattered at random (seeded, so files reproduce): every n-th pixel in raster order is
#: every n-th column, and g_s's error differs between columns (its stride-2 layers).
CLIP_SAMPLE = 4
_STRIP_PIXELS = 1 << 15  # pixels per strip: the work arrays stay in cache


@dataclass(frozen=True)
class Shape:
    """What a filter sees: its taps, the classes its pixels fall in, whether it clips.

    The shape byte of ``KRST`` names one; each shape belongs to one format version, so a
    decoder that predates a shape refuses its files by their version.
    """

    code: int  # the KRST shape byte
    version: int  # the KHDR format version of files that carry it
    taps: tuple[tuple[int, int], ...]  # one half of the point-symmetric diamond
    cross_taps: tuple[int, ...]  # the taps (indices) each channel takes from the other two
    colour: bool  # an offset and a 3x3 colour matrix per filter
    bands: int  # luma bands per activity bin and direction: 1, or 2 (dark, bright)
    clipped: bool  # the file sets the clip C; without, C = 255 (no clipping)
    max_stages: int = 1  # filters of this shape one KRST chunk may cascade
    #: class map in 4-bit nibbles and coefficients in Exp-Golomb codes (else bytes, varints)
    compact: bool = False

    def __post_init__(self) -> None:
        radius = max(max(abs(dy), abs(dx)) for dy, dx in self.taps)
        bound = (len(self.taps) + 2 * len(self.cross_taps)) * 2 * 255 + (
            OFFSET_UNIT + 3 * 128 if self.colour else 0
        )
        if radius > HALO or bound * MAX_COEFFICIENT + (1 << COEFFICIENT_SHIFT) >= 1 << 24:
            raise ValueError(f"restoration shape {self.code} is not exact in float32")
        if any(dy < 0 or (dy == 0 and dx <= 0) for dy, dx in self.taps):
            raise ValueError(f"restoration shape {self.code}: taps must be the lower half")

    @property
    def coefficients(self) -> int:
        """Coefficients per filter and channel: own taps, cross taps, then offset and colour."""
        return len(self.taps) + 2 * len(self.cross_taps) + (4 if self.colour else 0)

    @property
    def classes(self) -> int:
        """Classes per activity bin: direction, and within it the luma band."""
        return DIRECTIONS * self.bands


#: Format version 5: the 5x5 diamond, differences unclipped.
SHAPE_1 = Shape(1, RESTORATION_VERSION, TAPS_5X5, (0, 4), colour=False, bands=1, clipped=False)
#: Format version 6: a 7x7 diamond's axis taps added, offset and colour matrix, dark and
#: bright classes, clipped differences (2.4 % fewer bits than shape 1 on Kodak, 5.9 % on
#: clean photos).
SHAPE_2 = Shape(
    2,
    COLOUR_RESTORATION_VERSION,
    (*TAPS_5X5, (0, 3), (3, 0)),
    (0, 4),
    colour=True,
    bands=2,
    clipped=True,
)
#: Format version 7: shape 2 with the second differences of the two other channels at the
#: three nearest pixels on each axis (not one), and up to four filters in a cascade,
#: each fitted on the output of the ones before: the second filter classifies the first's
#: output afresh and reaches twice as far. On the same decoded pixels of every third Kodak
#: image (``python -m benchmarks.restoration --every 3``): shape 3 alone -0.68 % bits at
#: equal PSNR against shape 2, the encoder's cascade -1.20 %.
SHAPE_3 = Shape(
    3,
    CASCADE_RESTORATION_VERSION,
    SHAPE_2.taps,
    (0, 1, 10, 4, 8, 11),
    colour=True,
    bands=2,
    clipped=True,
    max_stages=4,
    compact=True,
)
SHAPES = {shape.code: shape for shape in (SHAPE_1, SHAPE_2, SHAPE_3)}
LATEST = SHAPE_3  # what the encoder writes
#: Filters the encoder cascades at most. A third, where it pays, gained 0.15 % in BD-rate on
#: 4 Kodak images and 0.56 % on 4 clean photos (with the clip 8: 0.97 % there), from 0.6 bpp
#: up; a fourth would have to pay for a fourth pass of the decoder.
STAGES = 3


@dataclass(frozen=True)
class RestorationFilter:
    """Activity thresholds, the filter of each class, the filters, their shape and clip."""

    thresholds: tuple[int, ...]
    mapping: np.ndarray  # (bins, shape.classes) uint8: the filter of each class
    coefficients: np.ndarray  # (3 channels, filters, shape.coefficients) int32, in 1/256ths
    shape: Shape = LATEST
    clip: int = NO_CLIP  # C, 1..255

    def __post_init__(self) -> None:
        bins = len(self.thresholds) + 1
        filters = self.coefficients.shape[1] if self.coefficients.ndim == 3 else 0
        if not 1 <= bins <= MAX_BINS:
            raise ValueError(f"{bins} restoration activity bins, expected 1 to {MAX_BINS}")
        if not 1 <= filters <= MAX_FILTERS:
            raise ValueError(f"{filters} restoration filters, expected 1 to {MAX_FILTERS}")
        steps = np.diff((-1, *self.thresholds))
        if (steps <= 0).any() or any(t > MAX_ACTIVITY for t in self.thresholds):
            raise ValueError("restoration activity thresholds must increase within range")
        if self.mapping.shape != (bins, self.shape.classes) or self.mapping.max() >= filters:
            raise ValueError("restoration class map does not fit the filters")
        if self.coefficients.shape != (3, filters, self.shape.coefficients):
            raise ValueError(f"restoration coefficients of shape {self.coefficients.shape}")
        if np.abs(self.coefficients).max() > MAX_COEFFICIENT:
            raise ValueError(f"restoration coefficient beyond +-{MAX_COEFFICIENT}")
        if not 1 <= self.clip <= NO_CLIP or (self.clip != NO_CLIP and not self.shape.clipped):
            raise ValueError(f"restoration clip {self.clip} out of range for its shape")

    def pack(self) -> bytes:
        """``KRST`` chunk data (docs/format.md §7): shape, counts, the clip (shapes that
        clip), the thresholds as varints of their increments, the class map, the
        coefficients: bytes and zigzag varints, or (compact shapes) nibbles and zigzag
        Exp-Golomb codes of the order that takes fewest bytes."""
        bins, filters = len(self.thresholds) + 1, self.coefficients.shape[1]
        increments = np.diff((0, *self.thresholds))
        head = b"".join(
            (
                struct.pack(">BBB", self.shape.code, bins, filters),
                bytes([self.clip]) if self.shape.clipped else b"",
                _varints(increments, signed=False),
            )
        )
        if not self.shape.compact:
            mapping = self.mapping.astype(np.uint8).tobytes()
            return head + mapping + _varints(self.coefficients.ravel(), signed=True)
        values = self.coefficients.ravel()
        orders = range(MAX_GOLOMB_ORDER + 1)
        order = min(orders, key=lambda k: -(-_exp_golomb_bits(values, k) // 8))
        return head + _nibbles(self.mapping.ravel()) + bytes([order]) + _exp_golomb(values, order)

    @classmethod
    def unpack(cls, data: bytes) -> RestorationFilter:
        """Parse the data of a ``KRST`` chunk that holds one filter; anything malformed
        raises ``ValueError``."""
        filt, offset = cls.read(data, 0)
        if offset != len(data):
            raise ValueError(f"KRST chunk has {len(data) - offset} bytes after the coefficients")
        return filt

    @classmethod
    def read(cls, data: bytes, start: int) -> tuple[RestorationFilter, int]:
        """The filter packed at ``start`` of ``data``, and the offset just after it."""
        if len(data) < start + 3:
            raise ValueError("KRST chunk truncated")
        code, bins, filters = struct.unpack(">BBB", data[start : start + 3])
        if code not in SHAPES:
            raise ValueError(f"unknown restoration filter shape {code}")
        shape = SHAPES[code]
        if not 1 <= bins <= MAX_BINS or not 1 <= filters <= MAX_FILTERS:
            raise ValueError(f"{bins} activity bins and {filters} filters: out of range")
        offset, clip = start + 3, NO_CLIP
        if shape.clipped:
            if len(data) < start + 4:
                raise ValueError("KRST chunk truncated before the clip")
            offset, clip = start + 4, data[start + 3]
        increments, offset = _read_varints(data, offset, bins - 1, signed=False)
        count = 3 * filters * shape.coefficients
        if shape.compact:
            end = offset + bins * shape.classes // 2  # compact shapes have even classes
            if len(data) <= end:
                raise ValueError("KRST chunk truncated in the class map")
            mapping = _read_nibbles(data[offset:end])
            order = data[end]
            if order > MAX_GOLOMB_ORDER:
                raise ValueError(f"KRST Exp-Golomb order {order} beyond {MAX_GOLOMB_ORDER}")
            values, offset = _read_exp_golomb(data, end + 1, count, order)
        else:
            end = offset + bins * shape.classes
            if len(data) < end:
                raise ValueError("KRST chunk truncated in the class map")
            mapping = np.frombuffer(data[offset:end], np.uint8)
            values, offset = _read_varints(data, end, count, signed=True)
        mapping = mapping.reshape(bins, shape.classes)
        thresholds = tuple(int(t) for t in np.cumsum(increments, dtype=np.int64))
        coefficients = np.asarray(values, np.int64).reshape(3, filters, shape.coefficients)
        filt = cls(thresholds, mapping.copy(), coefficients.astype(np.int32), shape, clip)
        return filt, offset


@dataclass(frozen=True)
class Restoration:
    """What a file's ``KRST`` chunk holds: one filter, or (shape 3) a cascade of filters of
    one shape that the decoder applies one after another."""

    stages: tuple[RestorationFilter, ...]

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a restoration needs at least one filter")
        if any(stage.shape is not self.shape for stage in self.stages):
            raise ValueError("the filters of a restoration cascade must have one shape")
        if len(self.stages) > self.shape.max_stages:
            raise ValueError(
                f"{len(self.stages)} restoration filters of shape {self.shape.code}, "
                f"at most {self.shape.max_stages}"
            )

    @property
    def shape(self) -> Shape:
        return self.stages[0].shape

    @property
    def version(self) -> int:
        """The KHDR format version of files that carry it."""
        return self.shape.version

    def check_version(self, version: int) -> None:
        """Raise ``ValueError`` unless a file of format ``version`` may carry these filters:
        up to version 7 each shape belongs to its own version, from version 8 any shape does."""
        if version < COMPACT_VERSION and version != self.version:
            raise ValueError(
                f"a shape {self.shape.code} restoration filter in a version {version} file"
            )

    def pack(self) -> bytes:
        """``KRST`` chunk data: the filters, packed one after another (docs/format.md §7)."""
        return b"".join(stage.pack() for stage in self.stages)

    @classmethod
    def unpack(cls, data: bytes) -> Restoration:
        """Parse ``KRST`` chunk data; anything malformed raises ``ValueError``."""
        first, offset = RestorationFilter.read(data, 0)
        stages = [first]
        while offset < len(data):
            if len(stages) == first.shape.max_stages:
                raise ValueError(
                    f"KRST chunk has {len(data) - offset} bytes after the coefficients"
                )
            stage, offset = RestorationFilter.read(data, offset)
            stages.append(stage)
        return cls(tuple(stages))

    def apply(self, pixels: np.ndarray) -> None:
        """Filter (h, w, 3) uint8 ``pixels`` in place, stage after stage."""
        for stage in self.stages:
            apply(pixels, stage)


def _varints(values: np.ndarray, signed: bool) -> bytes:
    """LEB128 varints; ``signed`` ones zigzagged first."""
    out = bytearray()
    for value in np.asarray(values).tolist():
        n = _zigzag(value) if signed else value
        while n >= 0x80:
            out.append(n & 0x7F | 0x80)
            n >>= 7
        out.append(n)
    return bytes(out)


def _zigzag(value: int) -> int:
    """0, -1, 1, -2 ... -> 0, 1, 2, 3 ..."""
    return 2 * value if value >= 0 else -2 * value - 1


def _unzigzag(n: int) -> int:
    return n >> 1 if not n & 1 else -(n >> 1) - 1


def _exp_golomb(values: np.ndarray, order: int) -> bytes:
    """Zigzagged ``values`` as Exp-Golomb codes of ``order``, most significant bit first:
    n = zigzag + 2**order in binary after as many zeros as it has bits beyond order + 1.
    Zero bits pad the last byte."""
    bits = []
    for value in np.asarray(values).tolist():
        n = _zigzag(value) + (1 << order)
        bits.append("0" * (n.bit_length() - 1 - order) + format(n, "b"))
    code = "".join(bits)
    code += "0" * (-len(code) % 8)
    return int(code, 2).to_bytes(len(code) // 8, "big") if code else b""


def _exp_golomb_bits(values: np.ndarray, order: int) -> int:
    """Bits of ``_exp_golomb(values, order)`` before its padding, without building it: the
    encoder compares every order (and packs filters often while it fits them)."""
    zigzag = np.asarray(values, np.int64) * 2
    zigzag = np.where(zigzag < 0, -zigzag - 1, zigzag)
    bit_lengths = np.frexp((zigzag + (1 << order)).astype(np.float64))[1]  # exact integers
    return int((2 * bit_lengths.astype(np.int64) - 1 - order).sum())


def _read_exp_golomb(data: bytes, offset: int, count: int, order: int) -> tuple[list[int], int]:
    """``count`` values coded by ``_exp_golomb`` at ``data[offset:]``, and the offset after
    the byte that holds their last bit."""
    longest = count * (2 * MAX_GOLOMB_ZEROS + order + 1)  # bits: a forged chunk reads no more
    bits = "".join(format(byte, "08b") for byte in data[offset : offset + -(-longest // 8)])
    values, at = [], 0
    for _ in range(count):
        zeros = 0
        while at + zeros < len(bits) and bits[at + zeros] == "0":
            zeros += 1
            if zeros > MAX_GOLOMB_ZEROS:
                raise ValueError("KRST Exp-Golomb code too long")
        end = at + 2 * zeros + order + 1
        if end > len(bits):
            raise ValueError(f"KRST chunk truncated after {len(values)} of {count} values")
        values.append(_unzigzag(int(bits[at + zeros : end], 2) - (1 << order)))
        at = end
    if "1" in bits[at : -(-at // 8) * 8]:
        raise ValueError("KRST Exp-Golomb padding is not zero")
    return values, offset + -(-at // 8)


def _nibbles(values: np.ndarray) -> bytes:
    """An even number of values below 16, two per byte, the first in the high nibble."""
    pairs = np.asarray(values, np.uint8).reshape(-1, 2)
    return (pairs[:, 0] << 4 | pairs[:, 1]).astype(np.uint8).tobytes()


def _read_nibbles(data: bytes) -> np.ndarray:
    pairs = np.frombuffer(data, np.uint8)
    return np.stack([pairs >> 4, pairs & 0x0F], axis=1).ravel()


def _read_varints(data: bytes, offset: int, count: int, signed: bool) -> tuple[list[int], int]:
    """``count`` varints from ``data[offset:]`` (at most 3 bytes each) and the offset after."""
    values = []
    for _ in range(count):
        n = 0
        for shift in (0, 7, 14, None):
            if shift is None:
                raise ValueError("KRST value longer than 3 bytes")
            if offset >= len(data):
                raise ValueError(f"KRST chunk truncated after {len(values)} of {count} values")
            byte = data[offset]
            offset += 1
            n |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
        values.append(_unzigzag(n) if signed else n)
    return values, offset


# -- pixels ---------------------------------------------------------------------------------


def _box_sum(x: np.ndarray, size: int) -> np.ndarray:
    """Sum over each size x size window that fits (valid part only), in ``x``'s dtype:
    separable running sums of shifted views, cheaper than a summed-area table."""
    h, w = x.shape[0] - size + 1, x.shape[1] - size + 1
    rows = x[:h].copy()
    for i in range(1, size):
        rows += x[i : i + h]
    out = rows[:, :w].copy()
    for j in range(1, size):
        out += rows[:, j : j + w]
    return out


def _luma(block: np.ndarray) -> np.ndarray:
    wide = block.astype(np.int32)
    return wide[..., 0] + 2 * wide[..., 1] + wide[..., 2]


def activity(block: np.ndarray) -> np.ndarray:
    """How busy the picture is around each pixel: |Laplacian| of R+2G+B summed over 5x5.

    ``block`` is (h + 2 HALO, w + 2 HALO, 3) uint8 (the pixels plus their halo); the result is
    (h, w) int32, exact.
    """
    return _activity(_luma(block))


def _activity(luma: np.ndarray) -> np.ndarray:
    across, down = _second_differences(luma)
    return _box_sum(np.abs(across + down), 2 * (HALO - 1) + 1)


def _second_differences(luma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The horizontal and vertical second differences of ``luma``'s inner pixels (one fewer
    on each side), int32; their sum is the Laplacian. At most 4 * 4 * 255 in magnitude, so
    any 5x5 sum is exact."""
    centre = 2 * luma[1:-1, 1:-1]
    across = centre - luma[1:-1, :-2]
    across -= luma[1:-1, 2:]
    down = centre - luma[:-2, 1:-1]
    down -= luma[2:, 1:-1]
    return across, down


def _kinds(block: np.ndarray, shape: Shape) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's activity and its class within an activity bin, both (h * w,) int64.

    Direction compares the 5x5 sums of |horizontal| and |vertical| second differences of
    R+2G+B: 1 where the horizontal ones are more than twice the vertical, 2 the other way
    round, else 0. With two bands, a pixel is bright when its own R+2G+B is at least
    ``BRIGHT``.
    """
    luma = _luma(block)
    second_across, second_down = _second_differences(luma)
    levels = _box_sum(np.abs(second_across + second_down), 2 * (HALO - 1) + 1)
    across = _box_sum(np.abs(second_across), 2 * HALO - 1)
    down = _box_sum(np.abs(second_down), 2 * HALO - 1)
    kind = np.where(across > 2 * down, 1, np.where(down > 2 * across, 2, 0))
    if shape.bands == 2:
        kind = 2 * kind + (luma[HALO:-HALO, HALO:-HALO] >= BRIGHT)
    return levels.ravel().astype(np.int64), kind.ravel().astype(np.int64)


def _classes(levels: np.ndarray, kinds: np.ndarray, thresholds, shape: Shape) -> np.ndarray:
    bins = np.searchsorted(np.asarray(thresholds, np.int64), levels, side="right")
    return bins * shape.classes + kinds


def classes(
    block: np.ndarray, thresholds: tuple[int, ...] | np.ndarray, shape: Shape
) -> np.ndarray:
    """Each pixel's class, activity bin * ``shape.classes`` + its class within the bin,
    (h * w,) int64."""
    return _classes(*_kinds(block, shape), thresholds, shape)


def _inputs(block: np.ndarray, shape: Shape, clip: int) -> np.ndarray:
    """Every channel's filter inputs at each inner pixel of ``block``, (rows, h * w) float32
    (small integers, exact): for each channel and tap k of the shape, clip(x[p + k] - x[p])
    + clip(x[p - k] - x[p]) (row channel * taps + k), then (shapes with colour) the offset's
    input and R, G and B - 128. A channel's filter takes some of these rows
    (``_rows_of_channels``), so one product of all of them serves the three channels.

    The clip is odd, so clip(x[p - k] - x[p]) = -d(p - k) with d(q) = clip(x[q + k] - x[q]):
    one difference and one clip per tap, over the inner pixels and their shift by -k.
    """
    h, w = block.shape[0] - 2 * HALO, block.shape[1] - 2 * HALO
    x = np.moveaxis(block, -1, 0).astype(np.int16)
    taps = len(shape.taps)
    out = np.empty((_input_rows(shape), h, w), np.float32)
    for k, (dy, dx) in enumerate(shape.taps):  # dy >= 0: one half of the diamond
        left, right = max(dx, 0), -min(dx, 0)  # d's extra columns on each side
        here = x[:, HALO - dy : HALO + h, HALO - left : HALO + w + right]
        d = x[:, HALO : HALO + h + dy, HALO - left + dx : HALO + w + right + dx] - here
        if clip < NO_CLIP:
            np.clip(d, -clip, clip, out=d)
        ahead, behind = d[:, dy:, left : left + w], d[:, :h, right : right + w]
        np.subtract(ahead, behind, out=out[k : 3 * taps : taps])
    if shape.colour:
        out[3 * taps] = OFFSET_UNIT
        np.subtract(x[:, HALO : HALO + h, HALO : HALO + w], 128, out=out[3 * taps + 1 :])
    return out.reshape(len(out), h * w)


def _gathered_inputs(
    block: np.ndarray, shape: Shape, clips: tuple[int, ...], at: np.ndarray
) -> list[np.ndarray]:
    """``_inputs``'s rows at the inner pixels ``at`` of ``block`` (indices in raster order),
    for each of ``clips``: (len(at), rows) float64, a pixel's inputs in a row (exact).

    The fit needs the inputs of a sample of pixels under several clips: gathering the
    neighbours of those pixels once, and clipping their differences for each clip, costs
    less than every clip's inputs at every pixel.
    """
    stride = block.shape[1]
    planes = np.moveaxis(block, -1, 0).reshape(3, -1).astype(np.int16)
    row, column = np.divmod(at, stride - 2 * HALO)
    centre = (row + HALO) * stride + column + HALO
    here = np.take(planes, centre, 1)
    taps = len(shape.taps)
    outs = [np.empty((_input_rows(shape), len(at))) for _ in clips]
    for k, (dy, dx) in enumerate(shape.taps):
        ahead = np.take(planes, centre + (dy * stride + dx), 1) - here
        behind = np.take(planes, centre - (dy * stride + dx), 1) - here
        for clip, out in zip(clips, outs, strict=True):
            if clip < NO_CLIP:
                np.add(
                    np.clip(ahead, -clip, clip),
                    np.clip(behind, -clip, clip),
                    out=out[k : 3 * taps : taps],
                )
            else:
                np.add(ahead, behind, out=out[k : 3 * taps : taps])
    for out in outs if shape.colour else ():
        out[3 * taps] = OFFSET_UNIT
        np.subtract(here, 128, out=out[3 * taps + 1 :])
    return [out.T for out in outs]


def _input_rows(shape: Shape) -> int:
    return 3 * len(shape.taps) + (4 if shape.colour else 0)


@functools.cache
def _rows_of_channels(shape: Shape) -> tuple[np.ndarray, ...]:
    """For each channel, the rows of ``_inputs`` its filter's coefficients apply to, in
    their order: its own taps, the cross taps of the next two channels, then the offset's
    input and the colour terms."""
    taps, cross = len(shape.taps), list(shape.cross_taps)
    colour = [3 * taps + i for i in range(4)] if shape.colour else []
    return tuple(
        np.array(
            [c * taps + k for k in range(taps)]
            + [(c + 1) % 3 * taps + k for k in cross]
            + [(c + 2) % 3 * taps + k for k in cross]
            + colour
        )
        for c in range(3)
    )


def _strips(height: int, width: int) -> Iterator[tuple[int, int]]:
    """Row ranges of about ``_STRIP_PIXELS`` pixels each."""
    rows = max(1, _STRIP_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        yield top, min(top + rows, height)


def _edge_rows(pixels: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of ``pixels``, rows outside the image replicated from its edge."""
    return pixels[np.clip(np.arange(start, stop), 0, pixels.shape[0] - 1)]


def apply(pixels: np.ndarray, restoration: RestorationFilter) -> None:
    """Filter (h, w, 3) uint8 ``pixels`` in place, strip by strip, a strip per core at once
    (numpy releases the GIL in the arithmetic; the result does not depend on the order)."""
    height, width = pixels.shape[:2]
    shape = restoration.shape
    mapping = restoration.mapping.ravel().astype(np.int64)
    filters = restoration.coefficients.shape[1]
    # Every channel's filters, one below the other, spread over the rows of ``_inputs``
    # (zero elsewhere): one product gives every filter's response for the three channels.
    table = np.zeros((3, filters, _input_rows(shape)), np.float32)
    for c, rows in enumerate(_rows_of_channels(shape)):
        table[c][:, rows] = restoration.coefficients[c]
    table = table.reshape(3 * filters, -1)

    def filter_strip(top: int, rows: np.ndarray) -> None:
        """Filter the strip whose unfiltered ``rows`` (with HALO more above and below)
        start at row ``top``."""
        block = np.pad(rows, ((0, 0), (HALO, HALO), (0, 0)), mode="edge")
        which = mapping[classes(block, restoration.thresholds, shape)]
        # The products are integers and every partial sum stays below 2**24, so float32
        # (and BLAS, in any order) computes them exactly.
        responses = (table @ _inputs(block, shape, restoration.clip)).reshape(3, filters, -1)
        pixel = np.arange(len(which))
        own = rows[HALO:-HALO].reshape(-1, 3)
        for c in range(3):  # each pixel's own filter's response
            out = responses[c, which, pixel].astype(np.int32)
            out += 1 << (COEFFICIENT_SHIFT - 1)
            out >>= COEFFICIENT_SHIFT
            out += own[:, c]
            np.clip(out, 0, 255, out=out)
            pixels[top : top + len(rows) - 2 * HALO, :, c] = out.reshape(-1, width)

    strips = list(_strips(height, width))
    workers = min(_workers(), len(strips))
    above = _edge_rows(pixels, -HALO, 0)
    with ThreadPoolExecutor(workers) as pool, _one_blas_thread():
        for first in range(0, len(strips), workers):
            # Each strip of a batch copies its unfiltered rows and halo before any is filtered.
            batch = []
            for top, bottom in strips[first : first + workers]:
                rows = np.concatenate(
                    [above, pixels[top:bottom], _edge_rows(pixels, bottom, bottom + HALO)]
                )
                # The HALO unfiltered rows above the next strip (some may lie in earlier ones).
                above = rows[bottom - top : bottom - top + HALO].copy()
                batch.append((top, rows))
            for done in [pool.submit(filter_strip, top, rows) for top, rows in batch]:
                done.result()


@functools.cache
def _blas() -> ThreadpoolController:
    """numpy's BLAS, found once per process (threadpoolctl looks through the loaded libraries)."""
    return ThreadpoolController()


def _one_blas_thread() -> contextlib.AbstractContextManager:
    """numpy's BLAS on one thread while the strips go one per core: its products here are
    small, and its own threads would only compete with the strips' (on 2 cores: Kodak decode
    0.55 -> 0.49 s, the fit's statistics about 2x faster beside another busy process)."""
    return _blas().limit(limits=1, user_api="blas")


def _workers() -> int:
    """Strips filtered at once: ``KAE_NUM_THREADS`` if set, else the cores this process may
    run on."""
    if threads():
        return threads()
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def rate_per_db(bpp: float) -> float:
    """What one dB of PSNR is worth, as a fraction of a file's bits, at ``bpp``: the slope of
    the quality ladder, d ln(bits) / d PSNR, which falls as the rate rises (on Kodak, 2026-12-03:
    0.33-0.35 up to 0.34 bpp, 0.23-0.25 around 0.6 bpp, 0.14-0.16 from 1.2 bpp up), as a line
    in log2 of the rate. A filter whose side information costs more than that share of the
    bits its gain is worth does not pay."""
    return float(np.clip(0.24 - 0.1 * np.log2(max(bpp, 1e-9) / 0.6), 0.14, 0.35))


class Fit:
    """Least-squares statistics of decoded pixels against the original, then the filter.

    ``add`` takes a decoded block with its halo and the original inner pixels (any number of
    blocks: the encoder may sample windows of a large image); ``solve`` picks the shape, the
    clip, the activity bins, the classes' filters and their number, whose gain best pays for
    its bytes. ``shapes`` are those it may pick from; by default the latest, and on images of
    at most ``SMALL_IMAGE_PIXELS`` also shape 1, whose fewer coefficients may pay better
    where the file is small; ``clips`` those it tries (by default ``CLIPS``).
    """

    def __init__(
        self, shapes: tuple[Shape, ...] | None = None, clips: tuple[int, ...] | None = None
    ) -> None:
        self.shapes = shapes
        self.clips = clips or CLIPS
        self._blocks: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, block: np.ndarray, original: np.ndarray) -> None:
        """``block``: decoded (h + 2 HALO, w + 2 HALO, 3) uint8; ``original``: (h, w, 3)."""
        self._blocks.append((block, original))

    def solve(self, file_bits: float, image_pixels: int | None = None) -> RestorationFilter | None:
        """The filter with the best gain net of its side bits for a file of ``file_bits`` over
        ``image_pixels`` (by default the pixels added), a dB valued at ``rate_per_db`` of the
        file's bits; None if no filter pays."""
        pixels = sum(original.shape[0] * original.shape[1] for _, original in self._blocks)
        bits_per_db = rate_per_db(file_bits / (image_pixels or max(pixels, 1))) * file_bits
        shapes = self.shapes or ((LATEST, SHAPE_1) if pixels <= SMALL_IMAGE_PIXELS else (LATEST,))
        best, best_value = None, 0.0
        for shape in shapes if pixels >= PIXELS_PER_FILTER else ():  # else no filter pays
            found, value = self._solve(shape, bits_per_db)
            if value > best_value:
                best, best_value = found, value
        return best

    def _solve(self, shape: Shape, bits_per_db: float) -> tuple[RestorationFilter | None, float]:
        kinds = [_kinds(block, shape) for block, _ in self._blocks]
        levels = np.concatenate([level for level, _ in kinds])
        bins = min(FIT_BINS, max(1, len(levels) // (PIXELS_PER_CLASS * shape.classes)))
        cuts = np.quantile(levels, np.arange(1, bins) / bins, method="higher")
        thresholds = np.unique(np.minimum(cuts.astype(np.int64), MAX_ACTIVITY))
        thresholds = thresholds[thresholds > 0]
        which = [_classes(level, kind, thresholds, shape) for level, kind in kinds]
        fine = (len(thresholds) + 1) * shape.classes
        clip = NO_CLIP
        if shape.clipped:  # the clip that removes most error, judged on a sample
            normals, rights, _ = self._statistics(shape, which, fine, self.clips, CLIP_SAMPLE)
            removed = [_solve(n, r)[1].sum() for n, r in zip(normals, rights, strict=True)]
            clip = self.clips[int(np.argmax(removed))]
        (normal,), (right,), error = self._statistics(shape, which, fine, (clip,), 1)
        return _merge(thresholds, normal, right, error, bits_per_db, len(levels), shape, clip)

    def _statistics(
        self,
        shape: Shape,
        which: list[np.ndarray],
        fine: int,
        clips: tuple[int, ...],
        every: int,
    ) -> tuple[list[np.ndarray], list[np.ndarray], float]:
        """Over about one pixel in ``every``, for each of ``clips``: each class's normal equations
        and right-hand sides per channel; and the error before filtering.

        Strip by strip, so that gathering each class's pixels stays in cache, a share of the
        strips per core. Every product and sum is of small integers, below 2**53: exact in
        float64, so neither the order of the sums nor the shares change them.
        """
        sample = np.random.default_rng(0)  # the same sample on every run: files reproduce
        strips = []  # (decoded rows with their halo, original rows, classes, pixels taken)
        for (block, original), classes_ in zip(self._blocks, which, strict=True):
            height, width = original.shape[:2]
            picked = sample.random(len(classes_)) * every < 1 if every > 1 else None
            for top, bottom in _strips(height, width):
                here = slice(top * width, bottom * width)
                strips.append(
                    (
                        block[top : bottom + 2 * HALO],
                        original[top:bottom],
                        classes_[here],
                        None if picked is None else picked[here],
                    )
                )
        workers = max(1, min(_workers(), len(strips)))
        count = functools.partial(_strip_statistics, shape, fine, clips)
        with ThreadPoolExecutor(workers) as pool, _one_blas_thread():
            shares = list(pool.map(count, [strips[i::workers] for i in range(workers)]))
        grams = [sum(share[0][i] for share in shares) for i in range(len(clips))]
        products = [sum(share[1][i] for share in shares) for i in range(len(clips))]
        error = sum(share[2] for share in shares)
        taken = _rows_of_channels(shape)  # each channel's own part of the products
        normals = [np.stack([gram[:, t[:, None], t] for t in taken], axis=1) for gram in grams]
        rights = [
            np.stack([product[:, c, t] for c, t in enumerate(taken)], axis=1)
            for product in products
        ]
        return normals, rights, error


def _strip_statistics(
    shape: Shape,
    fine: int,
    clips: tuple[int, ...],
    strips: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]],
) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """``Fit._statistics`` over some of the strips: per clip, each class's X^T X and X^T
    (original - decoded) over all of the filter's input rows, and the error."""
    rows = _input_rows(shape)
    grams = [np.zeros((fine, rows, rows)) for _ in clips]
    products = [np.zeros((fine, 3, rows)) for _ in clips]
    error = 0.0
    for strip, original, classes_, picked in strips:
        at = np.arange(len(classes_)) if picked is None else np.flatnonzero(picked)
        at = at[np.argsort(classes_[at], kind="stable")]  # classes together
        bounds = np.searchsorted(classes_[at], np.arange(fine + 1))
        target = original.reshape(-1, 3)[at].T.astype(np.float64)
        target -= strip[HALO:-HALO, HALO:-HALO].reshape(-1, 3)[at].T
        error += float(np.sum(target * target))
        every_clip = _gathered_inputs(strip, shape, clips, at)
        for inputs, gram, product in zip(every_clip, grams, products, strict=True):
            for k in np.flatnonzero(np.diff(bounds)):  # the classes present
                chunk = slice(bounds[k], bounds[k + 1])
                gram[k] += inputs[chunk].T @ inputs[chunk]
                product[k] += target[:, chunk] @ inputs[chunk]
    return grams, products, error


def _solve(normal: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched least squares: (..., 3, C, C), (..., 3, C) -> coefficients rounded to 1/256ths
    (..., 3, C) and the squared error they remove (...,), before pixel rounding."""
    ridge = 1e-3 * np.eye(normal.shape[-1])
    solution = np.linalg.solve(normal + ridge, right[..., None])[..., 0]
    scale = float(1 << COEFFICIENT_SHIFT)
    q = np.clip(np.rint(solution * scale), -MAX_COEFFICIENT, MAX_COEFFICIENT)
    w = q / scale
    removed = 2 * np.einsum("...i,...i->...", w, right) - np.einsum(
        "...i,...ij,...j->...", w, normal, w
    )
    return q.astype(np.int32), removed.sum(-1)


def _merge(
    thresholds: np.ndarray,
    normal: np.ndarray,
    right: np.ndarray,
    error: float,
    bits_per_db: float,
    pixels: int,
    shape: Shape,
    clip: int,
) -> tuple[RestorationFilter | None, float]:
    """Merge classes greedily, the pair whose merge loses the least first (as ALF encoders
    do), and keep the number of filters whose gain best pays for its bytes: that filter
    (None if none pays) and what it is worth, in bits."""
    groups = [[k] for k in range(len(normal))]
    a, b = normal.copy(), right.copy()  # each group's summed statistics
    _, removed = _solve(a, b)
    together = np.full((len(groups), len(groups)), -np.inf)  # what a merged pair removes
    i, j = np.triu_indices(len(groups), 1)
    together[i, j] = _solve(a[i] + a[j], b[i] + b[j])[1]
    best, best_value = None, 0.0
    while True:
        enough = len(groups) * PIXELS_PER_FILTER <= pixels  # no overfitting tiny images
        if len(groups) <= MAX_FILTERS and enough and 0 < removed.sum() < error:
            candidate = _as_filter(thresholds, groups, a, b, shape, clip)
            gain_db = 10 * np.log10(error / (error - removed.sum()))
            value = bits_per_db * gain_db - 8 * (len(candidate.pack()) + 12)
            if value > best_value:
                best, best_value = candidate, value
        if len(groups) == 1:
            return best, best_value
        loss = removed[:, None] + removed[None, :] - together  # +inf off the upper triangle
        first, second = np.unravel_index(int(np.argmin(loss)), loss.shape)
        groups[first] += groups.pop(second)
        a[first] += a[second]
        b[first] += b[second]
        removed[first] = together[first, second]
        a, b, removed = (np.delete(v, second, 0) for v in (a, b, removed))
        together = np.delete(np.delete(together, second, 0), second, 1)
        others = np.arange(len(groups)) != first
        merged = _solve(a[first] + a[others], b[first] + b[others])[1]
        row, column = together[first].copy(), together[:, first].copy()
        row[others], column[others] = merged, merged
        together[first] = np.where(np.arange(len(groups)) > first, row, -np.inf)
        together[:, first] = np.where(np.arange(len(groups)) < first, column, -np.inf)


def _as_filter(
    thresholds: np.ndarray,
    groups: list[list[int]],
    normal: np.ndarray,
    right: np.ndarray,
    shape: Shape,
    clip: int,
) -> RestorationFilter:
    """The filter of a grouping (``normal``, ``right``: each group's summed statistics),
    without the thresholds between activity bins that map alike."""
    mapping = np.zeros(sum(map(len, groups)), int)  # the groups cover every class once
    for index, members in enumerate(groups):
        mapping[members] = index
    mapping = mapping.reshape(-1, shape.classes)
    keep = [i for i in range(1, len(mapping)) if (mapping[i] != mapping[i - 1]).any()]
    coefficients, _ = _solve(normal, right)
    return RestorationFilter(
        tuple(int(thresholds[i - 1]) for i in keep),
        mapping[[0, *keep]].astype(np.uint8),
        np.ascontiguousarray(np.moveaxis(coefficients, 0, 1)),
        shape,
        clip,
    )


def fit_cascade(
    windows: list[tuple[tuple[int, int, int, int], np.ndarray]],
    original: np.ndarray,
    coded_bits: float,
    most: int | None = None,
    clips: tuple[int, ...] | None = None,
) -> Restoration | None:
    """The filters for an image of ``original`` (h, w, 3) pixels whose decoded pixels are
    ``windows`` ((left, top, right, bottom) box, (h, w, 3) uint8: the whole image, or a
    sample of windows of it), coded in ``coded_bits``; None if none pays.

    Each further stage of the cascade is fitted on the windows as the stages before it
    filtered them (in place), while it pays, up to ``most`` (by default ``STAGES``); each
    stage clips at the best of ``clips`` (by default ``CLIPS``), if its shape clips.
    """
    stages: list[RestorationFilter] = []
    for _ in range(STAGES if most is None else most):
        if stages:  # the next stage sees the windows as the stages before leave them
            if len(stages) == stages[-1].shape.max_stages:
                break
            for _, window in windows:
                apply(window, stages[-1])
        fit = Fit((stages[-1].shape,) if stages else None, clips)
        for box, window in windows:
            block = _window_block(box, window, original, len(stages))
            if block is not None:
                fit.add(*block)
        found = fit.solve(coded_bits, original.shape[0] * original.shape[1])
        if found is None:
            break
        stages.append(found)
    return Restoration(tuple(stages)) if stages else None


def _window_block(
    box: tuple[int, int, int, int], window: np.ndarray, original: np.ndarray, stages: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """A window's pixels after ``stages`` filters as a ``Fit`` block with its halo, and the
    original pixels they stand for; None if too few are left.

    Image edges replicate, as the decoder's filter does. At a side inside the image, each
    stage filtered the window's last ``HALO`` pixels without their true neighbours, and the
    next ``HALO`` pixels need theirs: those are not fitted on.
    """
    left, top, right, bottom = box
    height, width = original.shape[:2]
    top_in, left_in, bottom_in, right_in = (
        (stages + 1) * HALO if distance else 0
        for distance in (top, left, height - bottom, width - right)
    )
    if bottom - top <= top_in + bottom_in or right - left <= left_in + right_in:
        return None
    valid = window[
        max(top_in - HALO, 0) : window.shape[0] - max(bottom_in - HALO, 0),
        max(left_in - HALO, 0) : window.shape[1] - max(right_in - HALO, 0),
    ]
    block = np.pad(
        valid,
        (
            (HALO - min(top_in, HALO), HALO - min(bottom_in, HALO)),
            (HALO - min(left_in, HALO), HALO - min(right_in, HALO)),
            (0, 0),
        ),
        mode="edge",
    )
    return block, original[top + top_in : bottom - bottom_in, left + left_in : right - right_in]
