"""The ``effort`` table: BD-rate gain and encode seconds per image of each effort level.

    python -m benchmarks.effort [--efforts 0,1,2,4] [--qualities 12,29,51,89,100]
                                [--folder DIR] [--every N] [--out out/effort.json]

Every image is saved through Pillow (``img.save(..., quality=q, effort=e)``) at each ladder
quality and effort, and read back with ``Image.open``: real files, the one decoder. The
BD-rate of each level is against effort 0 over the same qualities. Encode seconds are wall
time per image, averaged over the qualities; refinement compiles its search once per image
geometry and process, and the first encode, which pays for that, is reported apart
(``first encode s``), as a user converting a folder pays it once. Kodak when ../shared is
there, else the sample images.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

import pillow_kae  # noqa: F401  (registers the plugin)
from benchmarks.rd import test_images
from pillow_kae.bench.bd import paired_bd_rate
from pillow_kae.metrics import psnr
from pillow_kae.refinement import EFFORT_STEPS
from pillow_kae.zoo import quality as ladder

# Five anchors of the default ladder, about 0.12 to 3 bpp on Kodak: each model at the rate
# it was trained for, and both ends, so that a level's gain is seen at every rate. Named by
# rate point, so that a new ladder moves their qualities (or fails here) rather than
# silently measuring other points.
DEFAULT_POINTS = (
    ("kae-low", -6),
    ("kae-low", 0),
    ("kae-mid", 0),
    ("kae-xhigh", 0),
    ("kae-xhigh", 4),
)


def default_qualities() -> list[int]:
    """The qualities of ``DEFAULT_POINTS`` on today's ladder."""
    quality_of = {(model, step): quality for quality, model, step in ladder.anchor_qualities()}
    return [quality_of[point] for point in DEFAULT_POINTS]


def code(image: Image.Image, quality: int, effort: int) -> tuple[int, float, float]:
    """(bytes, PSNR, encode seconds) of one image at one quality and effort."""
    buffer = io.BytesIO()
    start = time.perf_counter()
    image.save(buffer, "KAE", quality=quality, effort=effort)
    seconds = time.perf_counter() - start
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        pixels = np.asarray(decoded.convert("RGB"))
    return buffer.getbuffer().nbytes, psnr(np.asarray(image), pixels), seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--efforts", default="0,1,2,4", help="effort levels; 0 is the anchor")
    parser.add_argument(
        "--qualities", default=",".join(map(str, default_qualities())), help="save qualities"
    )
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--every", type=int, default=1, help="every N-th image")
    parser.add_argument("--out", type=Path, default=Path("out/effort.json"))
    args = parser.parse_args(argv)
    efforts = sorted({0, *(int(e) for e in args.efforts.split(","))})
    qualities = [int(q) for q in args.qualities.split(",")]
    folder, paths = test_images(args.folder, args.every)
    images = [Image.open(p).convert("RGB") for p in paths]
    pixels = sum(im.width * im.height for im in images)
    print(f"{len(images)} images from {folder}; qualities {qualities}; efforts {efforts}")

    results: dict[int, dict[str, object]] = {}
    for effort in efforts:
        curve, seconds, first = [], [], None
        for quality in qualities:
            total_bytes, scores = 0, []
            for image in tqdm(images, desc=f"effort {effort} q{quality}", leave=False):
                size, score, spent = code(image, quality, effort)
                if first is None:
                    first = spent
                else:
                    seconds.append(spent)
                total_bytes += size
                scores.append(score)
            curve.append((8 * total_bytes / pixels, float(np.mean(scores))))
        results[effort] = {
            "steps": EFFORT_STEPS[effort],
            "curve": curve,
            "encode_s": float(np.mean(seconds)) if seconds else float(first or 0.0),
            "first_encode_s": first,
        }
    anchor = results[0]["curve"]
    print("| effort | Adam steps | BD-rate vs effort 0 | encode s/image | first encode s |")
    print("|---:|---:|---:|---:|---:|")
    for effort, r in results.items():
        r["bd_rate"] = 0.0 if effort == 0 else paired_bd_rate(anchor, r["curve"])
        print(
            f"| {effort} | {r['steps']} | {r['bd_rate']:+.2f} % | {r['encode_s']:.2f} "
            f"| {r['first_encode_s']:.2f} |"
        )
    print()
    print("| quality | rate point | " + " | ".join(f"effort {e} bpp / dB" for e in results) + " |")
    print("|---:|---|" + "---|" * len(results))
    for i, quality in enumerate(qualities):
        model, step = ladder.choose(quality)
        cells = " | ".join(
            f"{r['curve'][i][0]:.4f} / {r['curve'][i][1]:.3f}" for r in results.values()
        )
        print(f"| {quality} | {model} {step:+g} | {cells} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"images": folder, "count": len(images), "qualities": qualities, "efforts": results}
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
