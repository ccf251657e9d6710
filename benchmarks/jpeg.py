"""Pillow's JPEG as the reference curve: PSNR at exactly the bytes another codec spent."""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image

from pillow_kae.metrics import psnr

QUALITIES = tuple(range(1, 101))


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
    return np.asarray(sizes, np.float64), np.asarray(psnrs)


def jpeg_curve(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, PSNR) of Pillow's JPEG at qualities 1..100, in quality order."""
    rgb = image.convert("RGB")
    return _curve(rgb.tobytes(), rgb.size)


def jpeg_psnr_at(image: Image.Image, num_bytes: float) -> float:
    """JPEG's PSNR at ``num_bytes``, linearly interpolated on its curve (clamped at the ends)."""
    sizes, psnrs = jpeg_curve(image)
    order = np.argsort(sizes, kind="stable")
    return float(np.interp(num_bytes, sizes[order], psnrs[order]))
