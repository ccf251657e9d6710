"""``kae bench`` on Kodak (or the sample images), and the rate-distortion benchmarks' helpers.

    python -m benchmarks.rd [FOLDER] [--codecs kae,jpeg,...] [--out DIR] [--limit N]

Without FOLDER: ../shared/data/kodak when it is there, else sample_images/ (it says
which). The options are those of ``kae bench`` (``pillow_kae/bench``), which does the work.
The helpers below (test images, ``measure``, JPEG points) serve kodak, ladder and seed.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.jpeg import jpeg_curve, jpeg_psnr_at
from pillow_kae import cli
from pillow_kae.bench.codecs import roundtrip
from pillow_kae.metrics import psnr

log = logging.getLogger(__name__)

KODAK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak"
SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"


def test_images(
    folder: Path | None = None, every: int = 1, first: int = 0
) -> tuple[str, list[Path]]:
    """Kodak when ../shared is there, else the repository's sample images; says which.
    Every ``every``-th image from the ``first``."""
    if folder is None:
        folder = KODAK if KODAK.is_dir() else SAMPLES
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in {".png", ".jpg"})
    return str(folder), paths[first::every]


@dataclass
class Point:
    """Mean per-image figures of one codec setting."""

    label: str
    bpp: float
    psnr: float
    jpeg_psnr: float  # Pillow JPEG's PSNR at the same bytes, per image, averaged
    # Images where even JPEG quality 1 is larger than the coded file: there JPEG's PSNR is
    # that of quality 1, at more bytes than the codec spent (it favours JPEG).
    jpeg_clamped: int = 0

    @property
    def gain_db(self) -> float:
        return self.psnr - self.jpeg_psnr


def measure(paths: list[Path], label: str, **save_args: object) -> Point:
    bpps, psnrs, jpegs, clamped = [], [], [], 0
    for path in paths:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        coded = roundtrip(rgb, "KAE", **save_args)
        bpps.append(8 * coded.size / (rgb.width * rgb.height))
        psnrs.append(psnr(np.asarray(rgb), coded.decoded))
        jpegs.append(jpeg_psnr_at(rgb, coded.size))
        clamped += coded.size < jpeg_curve(rgb)[0].min()
    return Point(label, float(np.mean(bpps)), float(np.mean(psnrs)), float(np.mean(jpegs)), clamped)


def jpeg_points(paths: list[Path], qualities: list[int]) -> list[tuple[float, float]]:
    """(mean bpp, mean PSNR) of Pillow's JPEG at each quality."""
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


def main(argv: list[str] | None = None) -> int:
    """``kae bench`` on FOLDER, by default on Kodak when present, else the sample images."""
    args = sys.argv[1:] if argv is None else argv
    if "-h" in args or "--help" in args:
        print(__doc__)
        return cli.main(["bench", "--help"])
    if args and not args[0].startswith("-"):
        folder, rest = Path(args[0]), args[1:]
    else:
        folder, rest = (KODAK if KODAK.is_dir() else SAMPLES), args
        print(f"no FOLDER given: using {folder}")
    return cli.main(["bench", str(folder), *rest])


if __name__ == "__main__":
    sys.exit(main())
