"""Rate-distortion of a shipped model through real files (bytes on disk, decoded pixels)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image

import pillow_kae  # noqa: F401  (registers the format)
from training.data import list_images

log = logging.getLogger(__name__)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def code_image(image: Image.Image, **save_args: object) -> tuple[int, np.ndarray]:
    """Save as KAE in memory and decode it again: (bytes, decoded RGB array)."""
    buffer = io.BytesIO()
    image.save(buffer, "KAE", **save_args)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return buffer.getbuffer().nbytes, np.asarray(decoded.convert("RGB"))


def evaluate_model(
    name: str,
    folder: str | Path,
    max_images: int | None = None,
    quality: int = 75,
    gain_step: int = 0,
) -> dict:
    """Mean bpp and PSNR per image over ``folder`` (default: gain 1, the trained rate point)."""
    paths = list_images([folder])[:max_images]
    bpps, psnrs = [], []
    for path in paths:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        size, decoded = code_image(rgb, model=name, quality=quality, gain_step=gain_step)
        bpps.append(8 * size / (rgb.width * rgb.height))
        psnrs.append(psnr(np.asarray(rgb), decoded))
    return {
        "images": f"{folder} ({len(paths)} images)",
        "bpp": round(float(np.mean(bpps)), 4),
        "psnr": round(float(np.mean(psnrs)), 3),
    }
