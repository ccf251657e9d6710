"""Pillow's JPEG as the reference curve: PSNR at exactly the bytes another codec spent."""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image

QUALITIES = tuple(range(1, 101))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 arrays (RGB), peak 255."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    """JPEG as a careful user would make it: 4:2:0, optimized Huffman tables."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality, subsampling=2, optimize=True)
    return buffer.getvalue()


@lru_cache(maxsize=64)
def _curve(key: bytes, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    image = Image.frombytes("RGB", size, key)
    reference = np.asarray(image)
    sizes, psnrs = [], []
    for q in QUALITIES:
        data = jpeg_bytes(image, q)
        decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        sizes.append(len(data))
        psnrs.append(psnr(reference, decoded))
    order = np.argsort(sizes, kind="stable")
    return np.asarray(sizes, np.float64)[order], np.asarray(psnrs)[order]


def jpeg_curve(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, PSNR) of Pillow's JPEG at every quality, sorted by bytes."""
    rgb = image.convert("RGB")
    return _curve(rgb.tobytes(), rgb.size)


def jpeg_psnr_at(image: Image.Image, num_bytes: float) -> float:
    """JPEG's PSNR at ``num_bytes``, linearly interpolated on its curve (clamped at the ends)."""
    sizes, psnrs = jpeg_curve(image)
    return float(np.interp(num_bytes, sizes, psnrs))
