"""What a lent GPU call carries besides the repository: training photos and Keras wheels.

The device tool copies the working tree plus at most 64 MiB of ignored paths, and a lent
machine lasts about 15 minutes, so both are prepared here, before the first call:
``data_bundle/NAME/`` holds COUNT photos drawn at random (seeded) from each source folder,
JPEG files copied as they are and any other format (the clean PNGs) re-saved as JPEG at
quality 97 without chroma subsampling, near-lossless at a fraction of the bytes.
``device_train.sh`` reads them with ``FOLDERS="NAME ..."``. ``.whl/`` holds the wheels of
Keras and the two needs the lent machines lack (its JAX and NumPy are there), at the
versions installed here, built for their Python 3.12; ``device_train.sh`` installs them.
"""

from __future__ import annotations

import importlib.metadata
import logging
import random
import shutil
import subprocess
import sys
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
DEVICE_WHEELS = ("keras", "namex", "optree")  # what the lent machines lack for training
DEVICE_PYTHON = "3.12"
DEVICE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64")


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


def wheels(out: Path) -> list[Path]:
    """Download ``DEVICE_WHEELS`` at this environment's versions into ``out`` (emptied
    first: two versions of one package stop the device's install); returns the files."""
    if out.exists():
        shutil.rmtree(out)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in DEVICE_WHEELS]
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    argv += ["--python-version", DEVICE_PYTHON, "--implementation", "cp", "-d", str(out)]
    for platform in DEVICE_PLATFORMS:
        argv += ["--platform", platform]
    result = subprocess.run([*argv, *pins], capture_output=True, text=True)
    if result.returncode:
        raise OSError(f"pip download {' '.join(pins)} failed: {result.stderr.strip()[-2000:]}")
    files = sorted(out.glob("*.whl"))
    log.info("%s: %s", out, ", ".join(p.name for p in files))
    return files
