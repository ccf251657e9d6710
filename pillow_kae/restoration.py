"""The restoration filter: a Wiener filter the encoder fits to each image and the file carries.

A decoder trained for ~50 k steps leaves structured error in its pixels: grain on flat areas
(where its output wobbles around a smooth original) and softness on texture. Both are linear
enough to undo with a small filter, but which filter depends on the image and the rate, so the
encoder, which has the original, fits it by least squares (as VVC's adaptive loop filter and
AV1's Wiener loop restoration do) and stores it in a ``KRST`` chunk (format version 5).

The filter is a point-symmetric 5x5 diamond of ``len(TAPS)`` coefficients per colour channel
and per *class*; a pixel's class is how busy the decoded image is around it (``activity``),
cut at thresholds the file stores, so flat areas get a smoothing filter and texture a
sharpening one. Everything after the decoded pixels is integer arithmetic:

    out = clip(x + ((sum_k c_k * (x[p + k] + x[p - k] - 2 x[p]) + 128) >> 8), 0, 255)

with c in 1/256ths, so the filter itself is exact on every machine (the pixels it starts from
come from floating-point g_s). Edges replicate, and the image is filtered in strips of rows in
place: memory is a strip, and the result does not depend on the strip height.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = [
    "HALO",
    "MAX_CLASSES",
    "TAPS",
    "Fit",
    "RestorationFilter",
    "activity",
    "apply",
]

#: Offsets (row, column) of one half of the point-symmetric 5x5 diamond; the other half mirrors.
TAPS = ((0, 1), (0, 2), (1, -2), (1, -1), (1, 0), (1, 1), (1, 2), (2, -1), (2, 0), (2, 1))
#: Pixels around a filtered pixel that it depends on: 2 for the taps; 1 + 2 for the activity
#: (a Laplacian summed over a 5x5 window).
HALO = 3
SHAPE_DIAMOND5 = 1  # the only shape so far; the byte leaves room for others
COEFFICIENT_SHIFT = 8  # coefficients are stored in 1/256ths
#: |c| <= 4.0, far beyond any useful filter: with differences of at most 2 * 255 over
#: ``len(TAPS)`` taps, every sum stays below 2**24, exact in float32.
MAX_COEFFICIENT = 1 << 10
MAX_CLASSES = 16
FINE_CLASSES = 32  # activity bins the encoder gathers statistics in, before merging
MAX_THRESHOLD = 25 * 16 * 1020  # activity of a 5x5 window at the most (Laplacian of R+2G+B)
#: What one dB of PSNR is worth, as a fraction of the file's bits: along the quality ladder
#: the rate grows about 20-25 % per dB (Kodak), so a filter whose side information costs more
#: than that share of its gain does not pay.
RATE_PER_DB = 0.2
_STRIP_PIXELS = 1 << 18  # pixels per strip: bounds the int32 work arrays to a few MB each


@dataclass(frozen=True)
class RestorationFilter:
    """Class thresholds on ``activity`` and the integer coefficients of each class's filter."""

    thresholds: tuple[int, ...]
    coefficients: np.ndarray  # (3 channels, classes, len(TAPS)) int32, in 1/256ths

    def __post_init__(self) -> None:
        classes = len(self.thresholds) + 1
        if not 1 <= classes <= MAX_CLASSES:
            raise ValueError(f"{classes} restoration classes, expected 1 to {MAX_CLASSES}")
        if any(not 0 <= t <= MAX_THRESHOLD for t in self.thresholds) or any(
            a >= b for a, b in zip(self.thresholds, self.thresholds[1:], strict=False)
        ):
            raise ValueError("restoration class thresholds must increase within range")
        if self.coefficients.shape != (3, classes, len(TAPS)):
            raise ValueError(f"restoration coefficients of shape {self.coefficients.shape}")
        if np.abs(self.coefficients).max(initial=0) > MAX_COEFFICIENT:
            raise ValueError(f"restoration coefficient beyond +-{MAX_COEFFICIENT}")

    @property
    def classes(self) -> int:
        return len(self.thresholds) + 1

    def pack(self) -> bytes:
        """``KRST`` chunk data (docs/format.md §7): shape, classes, thresholds, coefficients
        as zigzag varints (most take one byte)."""
        head = struct.pack(">BB", SHAPE_DIAMOND5, self.classes)
        thresholds = struct.pack(f">{len(self.thresholds)}I", *self.thresholds)
        return head + thresholds + _varints(self.coefficients.ravel())

    @classmethod
    def unpack(cls, data: bytes) -> RestorationFilter:
        """Parse ``KRST`` chunk data; anything malformed raises ``ValueError``."""
        if len(data) < 2:
            raise ValueError("KRST chunk truncated")
        shape, classes = struct.unpack(">BB", data[:2])
        if shape != SHAPE_DIAMOND5:
            raise ValueError(f"unknown restoration filter shape {shape}")
        if not 1 <= classes <= MAX_CLASSES:
            raise ValueError(f"{classes} restoration classes, expected 1 to {MAX_CLASSES}")
        end = 2 + 4 * (classes - 1)
        if len(data) < end:
            raise ValueError("KRST chunk truncated in the class thresholds")
        thresholds = struct.unpack(f">{classes - 1}I", data[2:end])
        values = _read_varints(data[end:], 3 * classes * len(TAPS))
        coefficients = np.asarray(values, np.int64).reshape(3, classes, len(TAPS))
        return cls(thresholds, coefficients.astype(np.int32))


def _varints(values: np.ndarray) -> bytes:
    out = bytearray()
    for value in values.tolist():
        n = 2 * value if value >= 0 else -2 * value - 1  # zigzag
        while n >= 0x80:
            out.append(n & 0x7F | 0x80)
            n >>= 7
        out.append(n)
    return bytes(out)


def _read_varints(data: bytes, count: int) -> list[int]:
    values, n, shift = [], 0, 0
    for byte in data:
        if shift > 14:  # no coefficient needs more than 3 bytes
            raise ValueError("KRST coefficient too long")
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            values.append(n >> 1 if not n & 1 else -(n >> 1) - 1)
            n, shift = 0, 0
    if shift or len(values) != count:
        raise ValueError(f"KRST chunk holds {len(values)} coefficients, expected {count}")
    return values


# -- pixels ---------------------------------------------------------------------------------


def _box_sum(x: np.ndarray, size: int) -> np.ndarray:
    """Sum over each size x size window that fits (valid part only), via a summed-area table."""
    sat = np.zeros((x.shape[0] + 1, x.shape[1] + 1), np.int64)
    np.cumsum(np.cumsum(x, 0, dtype=np.int64), 1, out=sat[1:, 1:])
    return sat[size:, size:] - sat[:-size, size:] - sat[size:, :-size] + sat[:-size, :-size]


def activity(block: np.ndarray) -> np.ndarray:
    """How busy the picture is around each pixel: |Laplacian| of R+2G+B summed over 5x5.

    ``block`` is (h + 2 HALO, w + 2 HALO, 3) uint8 (the pixels plus their halo); the result is
    (h, w) int64, exact.
    """
    wide = block.astype(np.int32)
    luma = wide[..., 0] + 2 * wide[..., 1] + wide[..., 2]
    centre = luma[1:-1, 1:-1]
    laplacian = np.abs(
        4 * centre - luma[:-2, 1:-1] - luma[2:, 1:-1] - luma[1:-1, :-2] - luma[1:-1, 2:]
    )
    return _box_sum(laplacian, 2 * (HALO - 1) + 1)


def _differences(channel: np.ndarray) -> np.ndarray:
    """(len(TAPS), h * w) float32: x[p + k] + x[p - k] - 2 x[p] of the block's inner pixels
    (small integers, exact in float32)."""
    h, w = channel.shape[0] - 2 * HALO, channel.shape[1] - 2 * HALO
    x = channel.astype(np.float32)
    centre = x[HALO : HALO + h, HALO : HALO + w]
    out = np.empty((len(TAPS), h, w), np.float32)
    for i, (dy, dx) in enumerate(TAPS):
        np.add(
            x[HALO + dy : HALO + dy + h, HALO + dx : HALO + dx + w],
            x[HALO - dy : HALO - dy + h, HALO - dx : HALO - dx + w],
            out=out[i],
        )
        out[i] -= 2 * centre
    return out.reshape(len(TAPS), h * w)


def _strips(height: int, width: int) -> Iterator[tuple[int, int]]:
    rows = max(1, _STRIP_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        yield top, min(top + rows, height)


def _with_halo(rows: np.ndarray, above: np.ndarray, below: np.ndarray) -> np.ndarray:
    """Stack halo rows around ``rows`` and replicate the outer columns HALO times."""
    block = np.concatenate([above, rows, below])
    return np.pad(block, ((0, 0), (HALO, HALO), (0, 0)), mode="edge")


def _edge_rows(pixels: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of ``pixels``, rows outside the image replicated from its edge."""
    return pixels[np.clip(np.arange(start, stop), 0, pixels.shape[0] - 1)]


def apply(pixels: np.ndarray, restoration: RestorationFilter) -> None:
    """Filter (h, w, 3) uint8 ``pixels`` in place, strip by strip."""
    height, width = pixels.shape[:2]
    above = _edge_rows(pixels, -HALO, 0)
    table = restoration.coefficients.astype(np.float32)
    thresholds = np.asarray(restoration.thresholds, np.int64)
    for top, bottom in _strips(height, width):
        block = _with_halo(pixels[top:bottom], above, _edge_rows(pixels, bottom, bottom + HALO))
        # The HALO unfiltered rows above the next strip (some may lie in earlier strips).
        above = block[bottom - top : bottom - top + HALO, HALO:-HALO].copy()
        classes = np.searchsorted(thresholds, activity(block), side="right").reshape(1, -1)
        for c in range(3):
            # Every class's filter response, then each pixel's own. The products are integers
            # and every partial sum stays below 2**24, so float32 (and BLAS, in any order)
            # computes them exactly.
            responses = table[c] @ _differences(block[..., c])
            correction = np.take_along_axis(responses, classes, 0).reshape(bottom - top, width)
            centre = block[HALO:-HALO, HALO:-HALO, c].astype(np.int32)
            shifted = (
                correction.astype(np.int32) + (1 << (COEFFICIENT_SHIFT - 1))
            ) >> COEFFICIENT_SHIFT
            pixels[top:bottom, :, c] = np.clip(centre + shifted, 0, 255)


class Fit:
    """Least-squares statistics of decoded pixels against the original, then the filter.

    ``add`` takes a decoded block with its halo and the original inner pixels (any number of
    blocks: the encoder may sample windows of a large image); ``solve`` picks the number of
    classes whose gain pays for its bytes at the file's rate.
    """

    def __init__(self) -> None:
        self._activity: list[np.ndarray] = []
        self._blocks: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, block: np.ndarray, original: np.ndarray) -> None:
        """``block``: decoded (h + 2 HALO, w + 2 HALO, 3) uint8; ``original``: (h, w, 3)."""
        self._activity.append(activity(block).ravel())
        self._blocks.append((block, original))

    def solve(self, file_bits: float) -> RestorationFilter | None:
        """The filter (1 to ``MAX_CLASSES`` classes) with the best gain net of its side bits,
        valued at ``RATE_PER_DB`` of ``file_bits`` per dB; None if no filter pays."""
        if not self._blocks:
            return None
        levels = np.concatenate(self._activity)
        fine = _fine_thresholds(levels)
        normal = np.zeros((3, len(fine) + 1, len(TAPS), len(TAPS)))
        right = np.zeros((3, len(fine) + 1, len(TAPS)))
        error = 0.0
        for (block, original), act in zip(self._blocks, self._activity, strict=True):
            classes = np.searchsorted(fine, act, side="right")
            order = np.argsort(classes, kind="stable")  # each class's pixels contiguous
            bounds = np.searchsorted(classes[order], np.arange(len(fine) + 2))
            for c in range(3):
                x = _differences(block[..., c]).T[order].astype(np.float64)
                inner = block[HALO:-HALO, HALO:-HALO, c].ravel()[order]
                target = original[..., c].ravel()[order].astype(np.float64) - inner
                error += float(target @ target)
                for k, (start, stop) in enumerate(itertools.pairwise(bounds)):
                    normal[c, k] += x[start:stop].T @ x[start:stop]
                    right[c, k] += x[start:stop].T @ target[start:stop]
        return _merge_classes(fine, normal, right, error, file_bits)


def _fine_thresholds(levels: np.ndarray) -> np.ndarray:
    """Up to ``FINE_CLASSES - 1`` distinct activity thresholds splitting ``levels`` evenly."""
    cuts = np.quantile(levels, np.arange(1, FINE_CLASSES) / FINE_CLASSES, method="higher")
    return np.unique(np.minimum(cuts.astype(np.int64), MAX_THRESHOLD))


def _merge_classes(
    fine: np.ndarray, normal: np.ndarray, right: np.ndarray, error: float, file_bits: float
) -> RestorationFilter | None:
    """Merge adjacent fine classes greedily, the pair whose merge loses the least first (as
    ALF encoders do), and keep the class count whose gain best pays for its bytes."""
    solved: dict[tuple[int, int], tuple[np.ndarray, float]] = {}

    def solve(span: tuple[int, int]) -> tuple[np.ndarray, float]:
        if span not in solved:
            solved[span] = _solve_span(normal[:, span[0] : span[1]], right[:, span[0] : span[1]])
        return solved[span]

    spans = [(k, k + 1) for k in range(len(fine) + 1)]
    best, best_value = None, 0.0
    while True:
        if len(spans) <= MAX_CLASSES:
            reduction = sum(solve(span)[1] for span in spans)
            if 0 < reduction < error:
                candidate = RestorationFilter(
                    tuple(int(fine[stop - 1]) for _, stop in spans[:-1]),
                    np.stack([solve(span)[0] for span in spans], axis=1),
                )
                gain_db = 10 * np.log10(error / (error - reduction))
                value = RATE_PER_DB * file_bits * gain_db - 8 * (len(candidate.pack()) + 12)
                if value > best_value:
                    best, best_value = candidate, value
        if len(spans) == 1:
            return best
        losses = [
            solve(a)[1] + solve(b)[1] - solve((a[0], b[1]))[1] for a, b in itertools.pairwise(spans)
        ]
        i = int(np.argmin(losses))
        spans[i : i + 2] = [(spans[i][0], spans[i + 1][1])]


def _solve_span(normal: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, float]:
    """One class made of fine classes: per channel, the least-squares coefficients rounded
    to 1/256ths, (3, len(TAPS)), and the squared error they remove (before pixel rounding)."""
    scale = float(1 << COEFFICIENT_SHIFT)
    coefficients = np.zeros((3, len(TAPS)), np.int32)
    reduction = 0.0
    for c in range(3):
        a, b = normal[c].sum(0), right[c].sum(0)
        solution = np.linalg.lstsq(a + 1e-6 * np.eye(len(TAPS)), b, rcond=None)[0]
        q = np.clip(np.rint(solution * scale), -MAX_COEFFICIENT, MAX_COEFFICIENT)
        coefficients[c] = q
        w = q / scale
        reduction += float(2 * w @ b - w @ a @ w)
    return coefficients, reduction
