"""What a lent GPU call carries besides the repository: a sample of the training photos.

The device tool copies the working tree plus at most 64 MiB of ignored paths, and a lent
machine lasts about 15 minutes, so the photos are prepared here, before the first call:
``data_bundle/NAME/`` holds COUNT photos drawn at random (seeded) from each source folder,
JPEG files copied as they are and any other format (the clean PNGs) re-saved as JPEG at
quality 97 without chroma subsampling, near-lossless at a fraction of the bytes.
``device_train.sh`` reads them with ``FOLDERS="NAME ..."``.
"""

from __future__ import annotations

import logging
import random
import shutil
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from pillow_kae.atomic import write_atomic
from training.data import list_images

log = logging.getLogger(__name__)

CARRY_LIMIT = 64 * 2**20  # bytes of ignored paths one device call carries
RESAVE_QUALITY = 97


def bundle(
    sources: Sequence[tuple[str, Path, int]], out: Path, seed: int = 0, limit: int = CARRY_LIMIT
) -> int:
    """Fill ``out/NAME`` with COUNT photos of each (NAME, folder, COUNT); returns the bytes.

    A folder that exists already is replaced, so a bundle is always what was asked for.
    Raises ValueError if the bundle would not fit in ``limit`` bytes (it is removed then).
    """
    rng = random.Random(seed)
    total = 0
    for name, folder, count in sources:
        paths = list_images([folder])
        chosen = sorted(rng.sample(paths, min(count, len(paths))))
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for path in tqdm(chosen, desc=name, unit="photo"):
            if path.suffix.lower() in {".jpg", ".jpeg"}:
                data = path.read_bytes()
                destination = target / path.name
            else:
                with Image.open(path) as image:
                    data = _jpeg(image.convert("RGB"))
                destination = target / f"{path.stem}.jpg"
            write_atomic(destination, data)
            total += len(data)
    if total > limit:
        shutil.rmtree(out)
        raise ValueError(f"{total / 2**20:.1f} MiB of photos is over the {limit / 2**20:.0f} MiB")
    log.info("%s: %.1f MiB in %d folders", out, total / 2**20, len(sources))
    return total


def _jpeg(image: Image.Image) -> bytes:
    buffer = BytesIO()
    image.save(buffer, "JPEG", quality=RESAVE_QUALITY, subsampling=0)
    return buffer.getvalue()
