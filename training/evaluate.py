"""Rate-distortion of a shipped model through real files (bytes on disk, decoded pixels)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from pillow_kae.bench.codecs import roundtrip
from pillow_kae.metrics import psnr
from training.data import list_images

log = logging.getLogger(__name__)


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
        coded = roundtrip(rgb, "KAE", model=name, quality=quality, gain_step=gain_step)
        bpps.append(8 * coded.size / (rgb.width * rgb.height))
        psnrs.append(psnr(np.asarray(rgb), coded.decoded))
    return {
        "images": f"{folder} ({len(paths)} images)",
        "bpp": round(float(np.mean(bpps)), 4),
        "psnr": round(float(np.mean(psnrs)), 3),
    }
