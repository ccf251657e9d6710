"""Encode/decode time and peak memory on a large image (tiling keeps memory bounded).

    python -m benchmarks.speed [--size 4096x3072] [--quality 75]

Runs each step in a fresh subprocess so that the peak RSS it reports is that step's own.
The test image is a Kodak photo tiled up to the requested size (or a synthetic one).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

# One step in a fresh process. A tiny image goes through the codec first, so TensorFlow's
# import and the model build are timed apart ("startup") from the step itself.
STEP = r"""
import io, json, resource, sys, time
from PIL import Image
import pillow_kae
Image.MAX_IMAGE_PIXELS = None
step, src, dst, quality = sys.argv[1:5]
start = time.perf_counter()
warm = io.BytesIO()
Image.new("RGB", (64, 64), "gray").save(warm, "KAE", quality=int(quality))
warm.seek(0)
Image.open(warm).load()
startup = time.perf_counter() - start
if step == "encode":
    with Image.open(src) as im:
        im.load()
        start = time.perf_counter()
        im.save(dst, "KAE", quality=int(quality))
else:
    start = time.perf_counter()
    with Image.open(src) as im:
        im.load()
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "startup_seconds": startup, "peak_rss_mb": peak}))
"""


def make_image(width: int, height: int, path: Path) -> str:
    from PIL import Image

    from benchmarks.rd import KODAK

    sources = sorted(KODAK.glob("*.png")) if KODAK.is_dir() else []
    canvas = Image.new("RGB", (width, height))
    if sources:
        tiles = [Image.open(p).convert("RGB") for p in sources[:8]]
        i = 0
        for top in range(0, height, 512):
            for left in range(0, width, 768):
                canvas.paste(tiles[i % len(tiles)], (left, top))
                i += 1
        what = f"Kodak images tiled to {width}x{height}"
    else:
        import numpy as np

        y, x = np.mgrid[0:height, 0:width]
        rgb = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1)
        canvas = Image.fromarray(rgb.astype(np.uint8), "RGB")
        what = f"synthetic gradient {width}x{height}"
    canvas.save(path)
    return what


def run(step: str, src: Path, dst: Path, quality: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", STEP, step, str(src), str(dst), str(quality)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="4096x3072")
    parser.add_argument("--quality", type=int, default=75)
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "big.png", Path(tmp) / "big.kae"
        what = make_image(width, height, src)
        encode = run("encode", src, dst, args.quality)
        decode = run("decode", dst, dst, args.quality)
        size = dst.stat().st_size
    pixels = width * height
    raw_mb = pixels * 3 / 2**20
    print(
        f"image: {what} ({pixels / 1e6:.1f} Mpixel, {raw_mb:.0f} MiB as RGB), "
        f"quality {args.quality}"
    )
    print(f"file: {size} bytes, {8 * size / pixels:.3f} bpp")
    for name, r in (("encode", encode), ("decode", decode)):
        print(
            f"{name}: {r['seconds']:.1f} s ({pixels / 1e6 / r['seconds']:.2f} Mpixel/s) after "
            f"{r['startup_seconds']:.1f} s of start-up (imports, model build), "
            f"peak RSS {r['peak_rss_mb']:.0f} MiB"
        )


if __name__ == "__main__":
    main()
