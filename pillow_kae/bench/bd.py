"""Bjøntegaard delta rate: how many more (or fewer) bits one codec needs for the same quality.

Piecewise cubic Hermite interpolation (PCHIP) of log-rate against quality, integrated
exactly over the quality range both curves cover. This is the method of the JCT-VC and
JVET common-test-condition spreadsheets (JCTVC-L1100, JVET-T2010), which replaced the
cubic polynomial fit of the original VCEG-M33 because the polynomial can swing between
points and give misleading figures; with monotone curves it equals MATLAB's ``pchip`` and
SciPy's ``PchipInterpolator``. Quality is any "higher is better" number in dB: PSNR, or
MS-SSIM as -10 log10(1 - MS-SSIM).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Curve = Sequence[tuple[float, float]]  # (rate, quality) points; rate in any unit, > 0


def envelope(points: Curve) -> list[tuple[float, float]]:
    """The points that no cheaper point matches: rates and qualities both strictly rising.

    Mean curves of real codecs can have a setting that costs more and is no better; such
    a point is not a trade-off anyone would pick, and it would break the interpolation.
    """
    kept: list[tuple[float, float]] = []
    for rate, quality in sorted(points):
        if not (math.isfinite(rate) and math.isfinite(quality)) or rate <= 0:
            continue
        if kept and rate == kept[-1][0]:
            if quality <= kept[-1][1]:
                continue
            kept.pop()
        if not kept or quality > kept[-1][1]:
            kept.append((rate, quality))
    return kept


def _slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """PCHIP derivatives (Fritsch and Carlson; the three-point formula at the ends)."""
    h = np.diff(x)
    delta = np.diff(y) / h
    if len(x) == 2:
        return np.array([delta[0], delta[0]])
    d = np.zeros_like(x)
    w1, w2 = 2 * h[1:] + h[:-1], h[1:] + 2 * h[:-1]
    same_sign = delta[:-1] * delta[1:] > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        harmonic = (w1 + w2) / (w1 / delta[:-1] + w2 / delta[1:])
    d[1:-1] = np.where(same_sign, harmonic, 0.0)
    for end, (h0, h1, m0, m1) in (
        (0, (h[0], h[1], delta[0], delta[1])),
        (-1, (h[-1], h[-2], delta[-1], delta[-2])),
    ):
        slope = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
        if np.sign(slope) != np.sign(m0):
            slope = 0.0
        elif np.sign(m0) != np.sign(m1) and abs(slope) > 3 * abs(m0):
            slope = 3 * m0
        d[end] = slope
    return d


def _piece_area(y0: float, d0: float, c: float, b: float, s: float) -> float:
    """Integral from 0 to s of y0 + d0 t + c t^2 + b t^3."""
    return s * (y0 + s * (d0 / 2 + s * (c / 3 + s * b / 4)))


def _pieces(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(pieces, 4): y0, d0, c, b of each piece y0 + d0 t + c t^2 + b t^3 (t from the piece's
    start) of the PCHIP through (x, y)."""
    d = _slopes(x, y)
    h = np.diff(x)
    delta = np.diff(y) / h
    c = (3 * delta - 2 * d[:-1] - d[1:]) / h
    b = (d[:-1] - 2 * delta + d[1:]) / h**2
    return np.stack([y[:-1], d[:-1], c, b], axis=1)


def _integral(x: np.ndarray, y: np.ndarray, low: float, high: float) -> float:
    """Exact integral from ``low`` to ``high`` of the PCHIP through (x, y)."""
    total = 0.0
    for i, (y0, d0, c, b) in enumerate(_pieces(x, y)):
        s0 = min(max(low, x[i]), x[i + 1]) - x[i]
        s1 = min(max(high, x[i]), x[i + 1]) - x[i]
        if s1 > s0:
            total += _piece_area(y0, d0, c, b, s1) - _piece_area(y0, d0, c, b, s0)
    return total


def _prepare(points: Curve, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(quality, log rate), sorted by quality; both must rise together."""
    ordered = sorted(points, key=lambda p: p[1])
    rates = np.array([p[0] for p in ordered], dtype=np.float64)
    quality = np.array([p[1] for p in ordered], dtype=np.float64)
    if len(ordered) < 2:
        raise ValueError(f"the {name} curve needs at least two points")
    if not (np.all(np.isfinite(rates)) and np.all(np.isfinite(quality)) and np.all(rates > 0)):
        raise ValueError(f"the {name} curve has a non-finite quality or a rate <= 0")
    if np.any(np.diff(quality) <= 0) or np.any(np.diff(rates) <= 0):
        raise ValueError(f"the {name} curve is not monotone (see envelope())")
    return quality, np.log(rates)


def bd_rate(anchor: Curve, test: Curve) -> float:
    """Mean rate difference (%) of ``test`` against ``anchor`` at equal quality.

    Negative means that ``test`` needs fewer bits: -30 is 30 % smaller files on average
    over the quality range both curves reach. Points are (rate, quality).
    """
    qa, ra = _prepare(anchor, "anchor")
    qt, rt = _prepare(test, "test")
    low, high = max(qa[0], qt[0]), min(qa[-1], qt[-1])
    if high <= low:
        raise ValueError("the two curves share no quality range")
    mean_a = _integral(qa, ra, low, high) / (high - low)
    mean_t = _integral(qt, rt, low, high) / (high - low)
    return float((math.exp(mean_t - mean_a) - 1) * 100)


def paired_bd_rate(anchor: Curve, test: Curve) -> float:
    """``bd_rate`` of two curves measured at the same settings (a model before and after
    training, at the same gain steps): a setting off the anchor's envelope is left out of
    both curves, and the test curve is then reduced to its own envelope.

    ``envelope`` on each side alone treats a setting the anchor wastes unfairly: a point
    that improves just enough to join the test's envelope (a model's lowest step, barely
    above the previous model's top) adds a near-vertical piece that only the test curve
    has, and makes it look worse although every setting improved. A setting the test
    makes worse still counts against it: where it falls off the test's envelope, the
    test's curve through its neighbours is what is compared.
    """
    if len(anchor) != len(test):
        raise ValueError("paired curves need one point per setting on each side")
    on_anchor = set(envelope(anchor))
    keep = [i for i, point in enumerate(anchor) if tuple(point) in on_anchor]
    return bd_rate([anchor[i] for i in keep], envelope([test[i] for i in keep]))


def rate_differences(anchor: Curve, points: Curve) -> list[float | None]:
    """How many more bits (%) each (rate, quality) of ``points`` takes than ``anchor`` at
    its quality, on the same interpolation as ``bd_rate``: where along the rate axis a
    codec wins or loses, which the mean over the whole range hides. None where ``anchor``
    does not reach the quality (or the point is not finite)."""
    qa, ra = _prepare(anchor, "anchor")
    pieces = _pieces(qa, ra)
    found: list[float | None] = []
    for rate, quality in points:
        reached = math.isfinite(rate) and rate > 0 and qa[0] <= quality <= qa[-1]
        if not reached:  # also a NaN or infinite quality
            found.append(None)
        else:
            i = int(np.clip(np.searchsorted(qa, quality, side="right") - 1, 0, len(pieces) - 1))
            y0, d0, c, b = pieces[i]
            t = quality - qa[i]
            found.append(float((rate / math.exp(y0 + t * (d0 + t * (c + t * b))) - 1) * 100))
    return found
