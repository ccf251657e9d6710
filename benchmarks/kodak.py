"""Rate-distortion of every shipped quality against Pillow's JPEG, and the BD-rate.

    python -m benchmarks.kodak [--folder DIR] [--every N]

Reads ../shared/data/kodak when it is there (else sample_images/, and says so). Figures are
means per image: bpp = file bytes * 8 / pixels, PSNR on RGB. "JPEG" is Pillow's JPEG
(4:2:0, optimize=True) interpolated at exactly the same bytes for each image.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tqdm import tqdm

from benchmarks.rd import jpeg_points, measure, test_images
from pillow_kae.bench.bd import bd_rate
from pillow_kae.bench.codecs import ladder_qualities

JPEG_QUALITIES = list(range(5, 100, 5))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--every", type=int, default=1, help="use every n-th image")
    parser.add_argument("--json", type=Path, default=Path("out/kodak.json"))
    args = parser.parse_args(argv)
    folder, paths = test_images(args.folder, args.every)
    print(f"images: {folder} ({len(paths)} images)")
    rows = []
    for quality, model, step in tqdm(ladder_qualities(), desc="qualities"):
        start = time.perf_counter()
        point = measure(paths, f"q{quality}", quality=quality)
        seconds = (time.perf_counter() - start) / len(paths)
        rows.append((quality, model, step, point, seconds))
    print(
        f"\n{'quality':>7} {'model':<9} {'step':>4} {'bpp':>7} {'PSNR':>7} "
        f"{'JPEG@=bytes':>11} {'gain dB':>8} {'enc+dec s/img':>13}"
    )
    for quality, model, step, p, seconds in rows:
        print(
            f"{quality:>7} {model:<9} {step:>4} {p.bpp:7.4f} {p.psnr:7.3f} {p.jpeg_psnr:10.3f}"
            f"{'*' if p.jpeg_clamped else ' '} {p.gain_db:+8.3f} {seconds:13.2f}"
        )
    if any(p.jpeg_clamped for *_, p, _ in rows):
        print(
            "* on some images even JPEG quality 1 is larger than the .kae file: there JPEG "
            "is compared at more bytes (in its favour)"
        )
    kae = [(p.bpp, p.psnr) for *_, p, _ in rows]
    jpeg = jpeg_points(paths, JPEG_QUALITIES)
    bd = bd_rate(jpeg, kae)
    print(f"\nBD-rate of KAE against Pillow JPEG over the shipped range: {bd:+.1f}%")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "images": folder,
                "count": len(paths),
                "kae": [
                    {
                        "quality": q,
                        "model": m,
                        "gain_step": s,
                        "bpp": p.bpp,
                        "psnr": p.psnr,
                        "jpeg_psnr_at_equal_bytes": p.jpeg_psnr,
                        "images_where_jpeg_q1_is_larger": p.jpeg_clamped,
                    }
                    for q, m, s, p, _ in rows
                ],
                "jpeg": [
                    {"quality": q, "bpp": b, "psnr": p}
                    for q, (b, p) in zip(JPEG_QUALITIES, jpeg, strict=True)
                ],
                "bd_rate_vs_jpeg_percent": bd,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
