"""Shared pieces of the rate-distortion benchmarks: test images, coding, BD-rate."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.jpeg import jpeg_psnr_at
from training.evaluate import code_image, psnr

log = logging.getLogger(__name__)

KODAK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak"
SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"


def test_images(folder: Path | None = None, every: int = 1) -> tuple[str, list[Path]]:
    """Kodak when ../shared is there, else the repository's sample images; says which."""
    if folder is None:
        folder = KODAK if KODAK.is_dir() else SAMPLES
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in {".png", ".jpg"})
    return str(folder), paths[::every]


@dataclass
class Point:
    """Mean per-image figures of one codec setting."""

    label: str
    bpp: float
    psnr: float
    jpeg_psnr: float  # Pillow JPEG's PSNR at the same bytes, per image, averaged

    @property
    def gain_db(self) -> float:
        return self.psnr - self.jpeg_psnr


def measure(paths: list[Path], label: str, **save_args: object) -> Point:
    bpps, psnrs, jpegs = [], [], []
    for path in paths:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        size, decoded = code_image(rgb, **save_args)
        bpps.append(8 * size / (rgb.width * rgb.height))
        psnrs.append(psnr(np.asarray(rgb), decoded))
        jpegs.append(jpeg_psnr_at(rgb, size))
    return Point(label, float(np.mean(bpps)), float(np.mean(psnrs)), float(np.mean(jpegs)))


def jpeg_points(paths: list[Path], qualities: list[int]) -> list[tuple[float, float]]:
    """(mean bpp, mean PSNR) of Pillow's JPEG at each quality."""
    from benchmarks.jpeg import jpeg_curve

    curves = []
    for path in paths:
        with Image.open(path) as im:
            sizes, psnrs = jpeg_curve(im)
            pixels = im.width * im.height
        curves.append((8 * sizes / pixels, psnrs))
    points = []
    for q in qualities:
        # jpeg_curve is sorted by bytes; find each image's entry for this quality.
        bpps = [c[0][q - 1] for c in curves]
        ps = [c[1][q - 1] for c in curves]
        points.append((float(np.mean(bpps)), float(np.mean(ps))))
    return points


def bd_rate(anchor: list[tuple[float, float]], test: list[tuple[float, float]]) -> float:
    """Bjontegaard delta rate (%) of ``test`` against ``anchor``: negative = fewer bits.

    Cubic fit of log-rate against PSNR, integrated over the PSNR range both curves cover.
    """
    ra, pa = np.log([p[0] for p in anchor]), np.array([p[1] for p in anchor])
    rt, pt = np.log([p[0] for p in test]), np.array([p[1] for p in test])
    fit_a, fit_t = np.polyfit(pa, ra, 3), np.polyfit(pt, rt, 3)
    low, high = max(pa.min(), pt.min()), min(pa.max(), pt.max())
    if high <= low:
        raise ValueError("the two curves share no PSNR range")
    int_a, int_t = np.polyint(fit_a), np.polyint(fit_t)
    area_a = np.polyval(int_a, high) - np.polyval(int_a, low)
    area_t = np.polyval(int_t, high) - np.polyval(int_t, low)
    return float((np.exp((area_t - area_a) / (high - low)) - 1) * 100)
