"""Training data: photos downscaled by a random factor, then random crops.

The cat and BSDS photos are JPEG-compressed at source; downscaling with antialiasing first
removes the 8x8 block structure so that the codec learns images, not JPEG artefacts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def list_images(dirs: Sequence[str | Path]) -> list[Path]:
    paths: list[Path] = []
    for directory in dirs:
        found = sorted(p for p in Path(directory).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise FileNotFoundError(f"no images under {directory}")
        paths.extend(found)
    return paths


def parallel_map(function: Callable[[T], R], jobs: Sequence[T], workers: int) -> list[R]:
    """Map over a process pool (spawn, not fork: the parent may run JAX/TF threads)."""
    if workers <= 1:
        return [function(job) for job in jobs]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        return list(pool.map(function, jobs, chunksize=32))


def _load_downscaled(args: tuple[str, float, int]) -> np.ndarray | None:
    path, factor, min_side = args
    with Image.open(path) as im:
        im = im.convert("RGB")
        short = min(im.size)
        factor = min(1.0, max(factor, min_side / short))
        if short * factor < min_side:
            return None
        size = (max(1, round(im.width * factor)), max(1, round(im.height * factor)))
        if size != im.size:
            im = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        return np.asarray(im, dtype=np.uint8)


def load_images(
    paths: Sequence[Path],
    min_side: int,
    scale_range: tuple[float, float] = (0.5, 0.8),
    seed: int = 0,
    workers: int = 1,
) -> list[np.ndarray]:
    """Decode and downscale each image once, by a random factor in ``scale_range``."""
    rng = np.random.default_rng(seed)
    jobs = [(str(p), float(rng.uniform(*scale_range)), min_side) for p in paths]
    images = parallel_map(_load_downscaled, jobs, workers)
    kept = [im for im in images if im is not None]
    log.info("loaded %d images (%d too small)", len(kept), len(images) - len(kept))
    return kept


def random_crops(
    groups: Sequence[Sequence[np.ndarray]],
    patch: int,
    batch: int,
    weights: Sequence[float] | None = None,
    seed: int = 0,
) -> Iterator[np.ndarray]:
    """Endless batches (batch, patch, patch, 3) float32 in [0, 1] with random horizontal flips.

    Each crop first picks a group (one per data folder) with probability ``weights`` (default:
    proportional to its size), so a small general set is not drowned by a large one.
    """
    rng = np.random.default_rng(seed)
    sizes = np.array([len(g) for g in groups], dtype=np.float64)
    p = sizes if weights is None else np.asarray(weights, dtype=np.float64)
    p = p / p.sum()
    out = np.empty((batch, patch, patch, 3), dtype=np.uint8)
    while True:
        for i, group in enumerate(rng.choice(len(groups), batch, p=p)):
            images = groups[group]
            image = images[rng.integers(0, len(images))]
            top = rng.integers(0, image.shape[0] - patch + 1)
            left = rng.integers(0, image.shape[1] - patch + 1)
            crop = image[top : top + patch, left : left + patch]
            out[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
        yield out.astype(np.float32) / 255.0
