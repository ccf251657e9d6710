"""The encoder's rate-distortion optimised rounding, weight by weight, against plain rounding.

    python -m benchmarks.rounding [--folder DIR] [--every 3] [--qualities 1,17,34,51,61,78,100]
                                  [--weights 25,32,40,50,80,160]

Saves each image at each quality through ``Image.save`` (``benchmarks.quality``'s sweep) with
``pillow_kae.entropy_models.rounding.WEIGHT`` set to each weight (``inf`` is plain
rounding), decodes it with ``Image.open``, and prints mean bpp / PSNR per quality and the
BD-rate at equal PSNR of each weight against plain rounding. The decoder is the same for
every weight. Kodak when ../shared is there, else the sample images; it says which.
"""

from __future__ import annotations

import argparse
import math

import pillow_kae  # noqa: F401  (registers the plugin)
from benchmarks import quality
from benchmarks.rd import test_images
from pillow_kae.bench.bd import paired_bd_rate
from pillow_kae.entropy_models import rounding


def sweep(paths: list, qualities: list[int], weight: float) -> list[tuple[float, float]]:
    """Mean (bpp, PSNR) per quality with the rounding weight ``weight``."""
    rounding.WEIGHT = weight
    means = quality.sweep(paths, qualities)
    return [(means[q]["bpp"], means[q]["psnr"]) for q in qualities]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default=None)
    parser.add_argument("--every", type=int, default=3, help="every N-th image")
    parser.add_argument("--qualities", default="1,17,34,51,61,78,100")
    parser.add_argument("--weights", default="25,32,40,50,80,160")
    args = parser.parse_args(argv)
    folder, paths = test_images(args.folder, args.every)
    qualities = [int(v) for v in args.qualities.split(",")]
    weights = [float(v) for v in args.weights.split(",")]
    print(f"{len(paths)} images from {folder}; qualities {qualities}")
    shipped = rounding.WEIGHT
    plain = sweep(paths, qualities, math.inf)
    print("| weight | " + " | ".join(f"q{q} bpp / dB" for q in qualities) + " | BD-rate |")
    print("|---:|" + "---:|" * (len(qualities) + 1))
    print("| plain | " + " | ".join(f"{b:.4f} / {p:.3f}" for b, p in plain) + " | — |")
    for weight in weights:
        points = sweep(paths, qualities, weight)
        change = paired_bd_rate(plain, points)
        cells = " | ".join(f"{b:.4f} / {p:.3f}" for b, p in points)
        print(f"| {weight:g} | {cells} | {change:+.2f} % |")
    rounding.WEIGHT = shipped


if __name__ == "__main__":
    main()
