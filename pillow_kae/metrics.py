"""Distortion metrics on RGB pixels: PSNR, MS-SSIM and the seam score, in NumPy only.

One home for the metrics every benchmark and the training evaluation report, so that a
figure means the same thing wherever it is printed.
"""

from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)

MAX_VALUE = 255.0

# Wang, Simoncelli and Bovik, "Multi-scale structural similarity for image quality
# assessment" (Asilomar 2003): the weights of the five scales, finest first, and the
# constants and window of Wang et al., "Image quality assessment: from error visibility
# to structural similarity" (IEEE TIP 2004).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over all samples of two uint8 images (inf if equal)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(MAX_VALUE**2 / mse))


def _gaussian(size: int) -> np.ndarray:
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(coords**2) / (2 * SIGMA**2))
    return (g / g.sum()).astype(np.float32)


def _filter_axis(x: np.ndarray, g: np.ndarray, axis: int) -> np.ndarray:
    """'Valid' correlation with the symmetric kernel ``g`` along ``axis`` (0 or 1).

    Symmetric taps are added before multiplying, and buffers are reused: this is where
    MS-SSIM spends its time.
    """
    n, half = len(g), len(g) // 2
    size = x.shape[axis] - n + 1

    def part(k: int) -> np.ndarray:
        return x[k : k + size] if axis == 0 else x[:, k : k + size]

    out = part(half) * g[half]
    tmp = np.empty_like(out)
    for k in range(half):
        np.add(part(k), part(n - 1 - k), out=tmp)
        tmp *= g[k]
        out += tmp
    return out


def _ssim_terms(x: np.ndarray, y: np.ndarray, g: np.ndarray) -> tuple[float, float]:
    """Mean SSIM and mean contrast-structure term of one channel (float32 planes).

    Pixels are centred on 128 before squaring, so that float32 keeps the variances
    accurate (the contrast-structure term only needs sigma_x^2 + sigma_y^2 and sigma_xy:
    four filtered maps, not five).
    """
    c1, c2 = (K1 * MAX_VALUE) ** 2, (K2 * MAX_VALUE) ** 2
    xc, yc = x - 128, y - 128
    maps = np.stack([xc, yc, xc * xc + yc * yc, xc * yc], axis=2)  # H x W x 4
    mu_x, mu_y, sq, xy = np.moveaxis(_filter_axis(_filter_axis(maps, g, 0), g, 1), 2, 0)
    variance = sq - mu_x * mu_x - mu_y * mu_y
    covariance = xy - mu_x * mu_y
    mu_x, mu_y = mu_x + 128, mu_y + 128
    luminance = (2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    cs = (2 * covariance + c2) / (variance + c2)
    return float((luminance * cs).mean(dtype=np.float64)), float(cs.mean(dtype=np.float64))


def _downsample(x: np.ndarray) -> np.ndarray:
    """2x2 average; an odd side is first padded by mirroring its last row or column."""
    x = np.pad(x, [(0, x.shape[0] % 2), (0, x.shape[1] % 2)], mode="symmetric")
    return (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2]) / 4


def _ms_ssim_plane(x: np.ndarray, y: np.ndarray, weights: np.ndarray, g: np.ndarray) -> float:
    """MS-SSIM of one channel: contrast-structure at every scale but the coarsest, where
    it is the full SSIM; each clipped at zero and raised to its weight."""
    terms = []
    for scale in range(len(weights)):
        if scale:
            x, y = _downsample(x), _downsample(y)
        ssim, cs = _ssim_terms(x, y, g)
        terms.append(cs if scale < len(weights) - 1 else ssim)
    return float(np.prod(np.maximum(terms, 0.0) ** weights))


def scales_for(height: int, width: int) -> int:
    """How many of the five scales keep at least an 11x11 window (at least one)."""
    count, side = 0, min(height, width)
    while count < len(MS_SSIM_WEIGHTS) and side >= WINDOW:
        count += 1
        side = (side + 1) // 2
    return max(count, 1)


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Multi-scale SSIM of two uint8 images (H x W or H x W x C), mean over channels.

    Wang et al. 2003 with the standard weights, an 11x11 Gaussian window (sigma 1.5),
    K1 = 0.01, K2 = 0.03 and 2x2 average down-sampling; negative terms are clipped at
    zero, as in TensorFlow's ``tf.image.ssim_multiscale``, which it matches. On RGB
    images it is computed per channel and averaged (not on luma). Images under 161 px on
    a side cannot fit the window at all five scales: they use the scales that fit, with
    those scales' weights renormalised to sum to one (a single-scale SSIM below 21 px,
    with the window shrunk to the image below 11 px).
    """
    x = a.reshape(a.shape[0], a.shape[1], -1)
    y = b.reshape(b.shape[0], b.shape[1], -1)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {a.shape} and {b.shape}")
    count = scales_for(*x.shape[:2])
    weights = np.asarray(MS_SSIM_WEIGHTS[:count])
    if count < len(MS_SSIM_WEIGHTS):
        log.debug("MS-SSIM of a %dx%d image on %d scales", x.shape[1], x.shape[0], count)
        weights = weights / weights.sum()
    size = min(WINDOW, *x.shape[:2])
    g = _gaussian(size - (1 - size % 2))  # odd, so that the filter is centred
    channels = [
        _ms_ssim_plane(x[..., c].astype(np.float32), y[..., c].astype(np.float32), weights, g)
        for c in range(x.shape[2])  # one at a time: a large photo needs less memory
    ]
    return min(float(np.mean(channels)), 1.0)  # float32 rounding can pass 1 by 1e-8


def ms_ssim_db(value: float) -> float:
    """MS-SSIM on a dB scale, -10 log10(1 - MS-SSIM), where equal steps look alike."""
    return float("inf") if value >= 1 else -10 * math.log10(1 - value)


def boundary_scores(original: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    """Per column boundary (x, x + 1): the edge energy a codec adds, in deviations.

    The mean |horizontal gradient| of the decoded image minus the original's, per column,
    in median absolute deviations from the median over all columns: a tile seam stands
    out by tens. Transpose both images (rows first) for the row boundaries.
    """
    o = original.astype(np.float64).mean(axis=-1)
    d = decoded.astype(np.float64).mean(axis=-1)
    extra = np.abs(np.diff(d, axis=1)).mean(axis=0) - np.abs(np.diff(o, axis=1)).mean(axis=0)
    median = np.median(extra)
    mad = np.median(np.abs(extra - median))
    return (extra - median) / max(mad, 1e-9)
