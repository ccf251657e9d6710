"""A run's checkpoint in parts small enough for the device tool's 16 MB file limit.

A wide model's checkpoint outgrows the limit on what a lent GPU machine sends back, so
``split`` cuts it into parts there and ``join`` puts it back here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from training.lineage import CHECKPOINT

log = logging.getLogger(__name__)
LIMIT = 15 * 2**20


def split(run: Path, limit: int = LIMIT) -> list[Path]:
    """Replace ``run``'s checkpoint by ``checkpoint.partN.npz`` files, each under ``limit``
    bytes, when it exceeds ``limit`` (whole arrays, in order; an array over it gets a part)."""
    whole = run / CHECKPOINT
    if not whole.is_file() or whole.stat().st_size <= limit:
        return []
    groups: list[dict[str, np.ndarray]] = [{}]
    size = 0
    with np.load(whole) as arrays:
        for key in arrays.files:
            value = arrays[key]
            if groups[-1] and size + value.nbytes > limit:
                groups.append({})
                size = 0
            groups[-1][key] = value
            size += value.nbytes
    parts = []
    for index, group in enumerate(groups):
        part = run / f"checkpoint.part{index}.npz"
        np.savez(part, **group)
        parts.append(part)
    whole.unlink()
    log.info("split %s into %d parts", whole, len(parts))
    return parts


def join(run: Path) -> Path:
    """Put ``run``'s checkpoint back together from its parts (and remove them)."""
    parts = sorted(run.glob("checkpoint.part*.npz"))
    if not parts:
        raise FileNotFoundError(f"{run}: no checkpoint parts")
    arrays: dict[str, np.ndarray] = {}
    for part in parts:
        with np.load(part) as loaded:
            arrays.update({key: loaded[key] for key in loaded.files})
    np.savez(run / CHECKPOINT, **arrays)
    for part in parts:
        part.unlink()
    return run / CHECKPOINT
