"""The restoration filter: a Wiener filter the encoder fits to each image and the file carries.

A decoder trained for ~50 k steps leaves structured error in its pixels: grain on flat areas
(where its output wobbles around a smooth original) and softness on texture. Both are linear
enough to undo with a small filter, but which filter depends on the image and the rate, so the
encoder, which has the original, fits it by least squares (as VVC's adaptive loop filter and
AV1's Wiener loop restoration do) and stores it in a ``KRST`` chunk (format version 5).

Each pixel gets a *class* from the decoded image around it: how busy it is (``activity``, cut
into bins at thresholds the file stores) and which way its detail runs (``direction``). The
file maps every class to one of a few filters; a filter is, per colour channel, a
point-symmetric 5x5 diamond on the channel itself plus the nearest horizontal and vertical
second differences of the two other channels. So flat areas get a smoothing filter, texture a
sharpening one, edges one along the edge, and each channel may borrow detail from the others.
Everything after the decoded pixels is integer arithmetic:

    out = clip(x + ((sum_k c_k * d_k + 128) >> 8), 0, 255),  d = x[p + k] + x[p - k] - 2 x[p]

with c in 1/256ths, so the filter itself is exact on every machine (the pixels it starts from
come from floating-point g_s). Edges replicate, and the image is filtered in strips of rows in
place: memory is a strip, and the result does not depend on the strip height.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = [
    "HALO",
    "TAPS",
    "Fit",
    "RestorationFilter",
    "activity",
    "apply",
    "classes",
]

#: Offsets (row, column) of one half of the point-symmetric 5x5 diamond; the other half mirrors.
TAPS = ((0, 1), (0, 2), (1, -2), (1, -1), (1, 0), (1, 1), (1, 2), (2, -1), (2, 0), (2, 1))
#: The taps of ``TAPS`` each channel also takes from the two other channels: (0, 1), (1, 0).
CROSS_TAPS = (0, 4)
#: Coefficients of one filter for one channel: its own taps, then those of the next channel
#: and of the one after it (R: G then B; G: B then R; B: R then G).
COEFFICIENTS = len(TAPS) + 2 * len(CROSS_TAPS)
#: Pixels around a filtered pixel that it depends on: 2 for the taps; 1 + 2 for the activity
#: and direction (second differences summed over a 5x5 window).
HALO = 3
DIRECTIONS = 3  # no clear direction, mostly horizontal detail, mostly vertical detail
SHAPE = 1  # the only filter shape so far; the byte leaves room for others
COEFFICIENT_SHIFT = 8  # coefficients are stored in 1/256ths
#: |c| <= 4.0, far beyond any useful filter: with differences of at most 2 * 255 over
#: ``COEFFICIENTS`` taps, every sum stays below 2**24, exact in float32.
MAX_COEFFICIENT = 1 << 10
MAX_BINS = 16  # activity bins
MAX_FILTERS = 16
MAX_ACTIVITY = 25 * 4 * 4 * 255  # a 5x5 window of |Laplacian| of R+2G+B, at the most
#: What one dB of PSNR is worth, as a fraction of the file's bits: along the quality ladder
#: the rate grows about 20-25 % per dB (Kodak), so a filter whose side information costs more
#: than that share of its gain does not pay.
RATE_PER_DB = 0.2
#: Pixels the fit needs per filter: 42 coefficients fitted on fewer would fit the noise.
PIXELS_PER_FILTER = 1024
_STRIP_PIXELS = 1 << 18  # pixels per strip: bounds the work arrays to a few MB each


@dataclass(frozen=True)
class RestorationFilter:
    """Activity thresholds, the filter of each (activity bin, direction) class, the filters."""

    thresholds: tuple[int, ...]
    mapping: np.ndarray  # (bins, DIRECTIONS) uint8: the filter of each class
    coefficients: np.ndarray  # (3 channels, filters, COEFFICIENTS) int32, in 1/256ths

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
        if self.mapping.shape != (bins, DIRECTIONS) or self.mapping.max() >= filters:
            raise ValueError("restoration class map does not fit the filters")
        if self.coefficients.shape != (3, filters, COEFFICIENTS):
            raise ValueError(f"restoration coefficients of shape {self.coefficients.shape}")
        if np.abs(self.coefficients).max() > MAX_COEFFICIENT:
            raise ValueError(f"restoration coefficient beyond +-{MAX_COEFFICIENT}")

    def pack(self) -> bytes:
        """``KRST`` chunk data (docs/format.md §7): shape, counts, the thresholds as varints
        of their increments, the class map, the coefficients as zigzag varints."""
        bins, filters = len(self.thresholds) + 1, self.coefficients.shape[1]
        increments = np.diff((0, *self.thresholds))
        return b"".join(
            (
                struct.pack(">BBB", SHAPE, bins, filters),
                _varints(increments, signed=False),
                self.mapping.astype(np.uint8).tobytes(),
                _varints(self.coefficients.ravel(), signed=True),
            )
        )

    @classmethod
    def unpack(cls, data: bytes) -> RestorationFilter:
        """Parse ``KRST`` chunk data; anything malformed raises ``ValueError``."""
        if len(data) < 3:
            raise ValueError("KRST chunk truncated")
        shape, bins, filters = struct.unpack(">BBB", data[:3])
        if shape != SHAPE:
            raise ValueError(f"unknown restoration filter shape {shape}")
        if not 1 <= bins <= MAX_BINS or not 1 <= filters <= MAX_FILTERS:
            raise ValueError(f"{bins} activity bins and {filters} filters: out of range")
        increments, offset = _read_varints(data, 3, bins - 1, signed=False)
        end = offset + bins * DIRECTIONS
        if len(data) < end:
            raise ValueError("KRST chunk truncated in the class map")
        mapping = np.frombuffer(data[offset:end], np.uint8).reshape(bins, DIRECTIONS)
        values, offset = _read_varints(data, end, 3 * filters * COEFFICIENTS, signed=True)
        if offset != len(data):
            raise ValueError(f"KRST chunk has {len(data) - offset} bytes after the coefficients")
        thresholds = tuple(int(t) for t in np.cumsum(increments, dtype=np.int64))
        coefficients = np.asarray(values, np.int64).reshape(3, filters, COEFFICIENTS)
        return cls(thresholds, mapping.copy(), coefficients.astype(np.int32))


def _varints(values: np.ndarray, signed: bool) -> bytes:
    """LEB128 varints; ``signed`` ones zigzagged first (0, -1, 1, -2 ... -> 0, 1, 2, 3 ...)."""
    out = bytearray()
    for value in np.asarray(values).tolist():
        n = (2 * value if value >= 0 else -2 * value - 1) if signed else value
        while n >= 0x80:
            out.append(n & 0x7F | 0x80)
            n >>= 7
        out.append(n)
    return bytes(out)


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
        values.append((n >> 1 if not n & 1 else -(n >> 1) - 1) if signed else n)
    return values, offset


# -- pixels ---------------------------------------------------------------------------------


def _box_sum(x: np.ndarray, size: int) -> np.ndarray:
    """Sum over each size x size window that fits (valid part only), via a summed-area table."""
    sat = np.zeros((x.shape[0] + 1, x.shape[1] + 1), np.int64)
    np.cumsum(np.cumsum(x, 0, dtype=np.int64), 1, out=sat[1:, 1:])
    return sat[size:, size:] - sat[:-size, size:] - sat[size:, :-size] + sat[:-size, :-size]


def _luma(block: np.ndarray) -> np.ndarray:
    wide = block.astype(np.int32)
    return wide[..., 0] + 2 * wide[..., 1] + wide[..., 2]


def activity(block: np.ndarray) -> np.ndarray:
    """How busy the picture is around each pixel: |Laplacian| of R+2G+B summed over 5x5.

    ``block`` is (h + 2 HALO, w + 2 HALO, 3) uint8 (the pixels plus their halo); the result is
    (h, w) int64, exact.
    """
    luma = _luma(block)
    centre = luma[1:-1, 1:-1]
    laplacian = np.abs(
        4 * centre - luma[:-2, 1:-1] - luma[2:, 1:-1] - luma[1:-1, :-2] - luma[1:-1, 2:]
    )
    return _box_sum(laplacian, 2 * (HALO - 1) + 1)


def classes(block: np.ndarray, thresholds: tuple[int, ...] | np.ndarray) -> np.ndarray:
    """Each pixel's class, activity bin * DIRECTIONS + direction, (h * w,) int64.

    Direction compares the 5x5 sums of |horizontal| and |vertical| second differences of
    R+2G+B: 1 where the horizontal ones are more than twice the vertical, 2 the other way
    round, else 0.
    """
    luma = _luma(block)
    centre = luma[1:-1, 1:-1]
    across = _box_sum(np.abs(2 * centre - luma[1:-1, :-2] - luma[1:-1, 2:]), 2 * HALO - 1)
    down = _box_sum(np.abs(2 * centre - luma[:-2, 1:-1] - luma[2:, 1:-1]), 2 * HALO - 1)
    direction = np.where(across > 2 * down, 1, np.where(down > 2 * across, 2, 0))
    bins = np.searchsorted(np.asarray(thresholds, np.int64), activity(block), side="right")
    return (bins * DIRECTIONS + direction).ravel()


def _differences(block: np.ndarray) -> np.ndarray:
    """(3, len(TAPS), h * w) float32: x[p + k] + x[p - k] - 2 x[p] of the block's inner
    pixels, per channel (small integers, exact in float32)."""
    h, w = block.shape[0] - 2 * HALO, block.shape[1] - 2 * HALO
    x = np.ascontiguousarray(np.moveaxis(block, -1, 0), dtype=np.float32)
    centre = x[:, HALO : HALO + h, HALO : HALO + w]
    out = np.empty((3, len(TAPS), h, w), np.float32)
    for i, (dy, dx) in enumerate(TAPS):
        np.add(
            x[:, HALO + dy : HALO + dy + h, HALO + dx : HALO + dx + w],
            x[:, HALO - dy : HALO - dy + h, HALO - dx : HALO - dx + w],
            out=out[:, i],
        )
        out[:, i] -= 2 * centre
    return out.reshape(3, len(TAPS), h * w)


def _features(differences: np.ndarray, channel: int) -> np.ndarray:
    """(COEFFICIENTS, h * w): the channel's own taps, then the cross taps of the next two."""
    others = [differences[(channel + i) % 3, list(CROSS_TAPS)] for i in (1, 2)]
    return np.concatenate([differences[channel], *others])


def _strips(height: int, width: int) -> Iterator[tuple[int, int]]:
    rows = max(1, _STRIP_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        yield top, min(top + rows, height)


def _edge_rows(pixels: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of ``pixels``, rows outside the image replicated from its edge."""
    return pixels[np.clip(np.arange(start, stop), 0, pixels.shape[0] - 1)]


def apply(pixels: np.ndarray, restoration: RestorationFilter) -> None:
    """Filter (h, w, 3) uint8 ``pixels`` in place, strip by strip."""
    height, width = pixels.shape[:2]
    above = _edge_rows(pixels, -HALO, 0)
    table = restoration.coefficients.astype(np.float32)
    mapping = restoration.mapping.ravel().astype(np.int64)
    for top, bottom in _strips(height, width):
        rows = np.concatenate(
            [above, pixels[top:bottom], _edge_rows(pixels, bottom, bottom + HALO)]
        )
        block = np.pad(rows, ((0, 0), (HALO, HALO), (0, 0)), mode="edge")
        # The HALO unfiltered rows above the next strip (some may lie in earlier strips).
        above = rows[bottom - top : bottom - top + HALO].copy()
        which = mapping[classes(block, restoration.thresholds)][None]
        differences = _differences(block)
        for c in range(3):
            # Every filter's response, then each pixel's own. The products are integers and
            # every partial sum stays below 2**24, so float32 (and BLAS, in any order)
            # computes them exactly.
            own, cross = table[c, :, : len(TAPS)], table[c, :, len(TAPS) :]
            responses = own @ differences[c]
            for i, other in enumerate(((c + 1) % 3, (c + 2) % 3)):
                taps = slice(i * len(CROSS_TAPS), (i + 1) * len(CROSS_TAPS))
                responses += cross[:, taps] @ differences[other, list(CROSS_TAPS)]
            correction = np.take_along_axis(responses, which, 0).reshape(bottom - top, width)
            rounded = (correction.astype(np.int32) + (1 << (COEFFICIENT_SHIFT - 1))) >> (
                COEFFICIENT_SHIFT
            )
            centre = block[HALO:-HALO, HALO:-HALO, c].astype(np.int32)
            pixels[top:bottom, :, c] = np.clip(centre + rounded, 0, 255)


class Fit:
    """Least-squares statistics of decoded pixels against the original, then the filter.

    ``add`` takes a decoded block with its halo and the original inner pixels (any number of
    blocks: the encoder may sample windows of a large image); ``solve`` picks the activity
    bins, the classes' filters and their number, whose gain best pays for its bytes.
    """

    def __init__(self) -> None:
        self._blocks: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, block: np.ndarray, original: np.ndarray) -> None:
        """``block``: decoded (h + 2 HALO, w + 2 HALO, 3) uint8; ``original``: (h, w, 3)."""
        self._blocks.append((block, original))

    def solve(self, file_bits: float) -> RestorationFilter | None:
        """The filter with the best gain net of its side bits, valued at ``RATE_PER_DB`` of
        ``file_bits`` per dB; None if no filter pays."""
        if not self._blocks:
            return None
        levels = np.concatenate([activity(block).ravel() for block, _ in self._blocks])
        cuts = np.quantile(levels, np.arange(1, MAX_BINS) / MAX_BINS, method="higher")
        thresholds = np.unique(np.minimum(cuts.astype(np.int64), MAX_ACTIVITY))
        thresholds = thresholds[thresholds > 0]
        fine = (len(thresholds) + 1) * DIRECTIONS
        normal = np.zeros((fine, 3, COEFFICIENTS, COEFFICIENTS))
        right = np.zeros((fine, 3, COEFFICIENTS))
        error = 0.0
        for block, original in self._blocks:
            which = classes(block, thresholds)
            order = np.argsort(which, kind="stable")  # each class's pixels contiguous
            bounds = np.searchsorted(which[order], np.arange(fine + 1))
            differences = _differences(block)
            for c in range(3):
                x = _features(differences, c).T[order].astype(np.float64)
                inner = block[HALO:-HALO, HALO:-HALO, c].ravel()[order]
                target = original[..., c].ravel()[order].astype(np.float64) - inner
                error += float(target @ target)
                for k in range(fine):
                    rows = slice(bounds[k], bounds[k + 1])
                    normal[k, c] += x[rows].T @ x[rows]
                    right[k, c] += x[rows].T @ target[rows]
        return _merge(thresholds, normal, right, error, file_bits, len(levels))


def _solve(normal: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched least squares: (..., 3, C, C), (..., 3, C) -> coefficients rounded to 1/256ths
    (..., 3, C) and the squared error they remove (...,), before pixel rounding."""
    ridge = 1e-3 * np.eye(COEFFICIENTS)
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
    file_bits: float,
    pixels: int,
) -> RestorationFilter | None:
    """Merge classes greedily, the pair whose merge loses the least first (as ALF encoders
    do), and keep the number of filters whose gain best pays for its bytes."""
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
            candidate = _as_filter(thresholds, groups, a, b)
            gain_db = 10 * np.log10(error / (error - removed.sum()))
            value = RATE_PER_DB * file_bits * gain_db - 8 * (len(candidate.pack()) + 12)
            if value > best_value:
                best, best_value = candidate, value
        if len(groups) == 1:
            return best
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
    thresholds: np.ndarray, groups: list[list[int]], normal: np.ndarray, right: np.ndarray
) -> RestorationFilter:
    """The filter of a grouping (``normal``, ``right``: each group's summed statistics),
    without the thresholds between activity bins that map alike."""
    mapping = np.zeros(sum(map(len, groups)), int)  # the groups cover every class once
    for index, members in enumerate(groups):
        mapping[members] = index
    mapping = mapping.reshape(-1, DIRECTIONS)
    keep = [i for i in range(1, len(mapping)) if (mapping[i] != mapping[i - 1]).any()]
    coefficients, _ = _solve(normal, right)
    return RestorationFilter(
        tuple(int(thresholds[i - 1]) for i in keep),
        mapping[[0, *keep]].astype(np.uint8),
        np.ascontiguousarray(np.moveaxis(coefficients, 0, 1)),
    )
