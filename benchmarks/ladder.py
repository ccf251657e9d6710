"""Sweep every installed model over latent gain steps; the figures behind zoo/quality.LADDER.

python -m benchmarks.ladder [--steps -8 -6 -4 -2 0 2] [--every 2] [--folder DIR]

Steps far above a model's range (``--steps 8 16 24``) show its transforms' ceiling: the
PSNR its g_a and g_s reach when the latents are all but lossless, which no gain step or
entropy model can pass.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from benchmarks.rd import measure, test_images
from pillow_kae.zoo import installed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, nargs="+", default=[-8, -6, -4, -2, 0, 2])
    parser.add_argument("--every", type=int, default=2, help="use every n-th image")
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--folder", type=Path, default=None, help="default: Kodak")
    args = parser.parse_args(argv)
    folder, paths = test_images(args.folder, args.every)
    print(f"images: {folder} ({len(paths)})")
    print(f"{'model':<10} {'step':>5} {'bpp':>7} {'PSNR':>7} {'JPEG':>7} {'gain dB':>8}")
    for name in args.models or sorted(installed()):
        for step in tqdm(args.steps, desc=name, leave=False):
            p = measure(paths, name, model=name, gain_step=step)
            print(
                f"{name:<10} {step:>5} {p.bpp:7.4f} {p.psnr:7.3f} {p.jpeg_psnr:7.3f} "
                f"{p.gain_db:+8.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
