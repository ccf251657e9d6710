"""`make demo`: every sample image through .kae on the shipped weights, against JPEG.

Writes out/demo/NAME.kae, the decoded NAME.kae.png and side_by_side_NAME.png
(original | KAE | JPEG at the same bytes, each labelled), and prints a table.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from benchmarks.jpeg import jpeg_bytes, jpeg_curve, jpeg_psnr_at
from benchmarks.rd import SAMPLES
from pillow_kae import container
from pillow_kae.bench.crops import label, side_by_side
from pillow_kae.metrics import psnr

OUT = Path("out/demo")


def jpeg_at_bytes(image: Image.Image, num_bytes: int) -> tuple[int, int, Image.Image]:
    """The largest-quality JPEG that fits in ``num_bytes`` (quality 1 if none does):
    (quality, bytes, decoded image)."""
    sizes, _ = jpeg_curve(image)
    fitting = [q for q, size in enumerate(sizes, start=1) if size <= num_bytes]
    quality = max(fitting, default=1)
    data = jpeg_bytes(image, quality)
    return quality, len(data), Image.open(io.BytesIO(data)).convert("RGB")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quality", type=int, default=75)
    parser.add_argument("--images", type=Path, default=SAMPLES)
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in {".png", ".jpg"})
    rows = []
    for path in tqdm(paths, desc="demo"):
        with Image.open(path) as original:
            original.load()
        target = OUT / f"{path.stem}.kae"
        start = time.perf_counter()
        original.save(target, quality=args.quality)
        encode_s = time.perf_counter() - start
        start = time.perf_counter()
        with Image.open(target) as decoded:
            decoded.load()
        decode_s = time.perf_counter() - start
        decoded.save(OUT / f"{path.stem}.kae.png")
        size = target.stat().st_size
        with target.open("rb") as fp:
            kae = container.read(fp)
        # Compare with JPEG (no alpha, no metadata here) at the bytes of the coded image:
        # the file less its lossless alpha and its EXIF/ICC/XMP chunks (12 bytes of framing).
        extras = (kae.alpha, kae.exif, kae.icc_profile, kae.xmp)
        image_bytes = size - sum(len(e) + 12 for e in extras if e)
        rgb = original.convert("RGB")
        kae_rgb = decoded.convert("RGB")
        pixels = original.width * original.height
        jpeg_quality, jpeg_size, jpeg = jpeg_at_bytes(rgb, image_bytes)
        reference = np.asarray(rgb)
        kae_psnr = psnr(reference, np.asarray(kae_rgb))
        side_by_side(
            label(rgb, f"original\n{path.name}, {original.width}x{original.height}"),
            label(
                kae_rgb,
                f".kae, quality {args.quality}\n{8 * image_bytes / pixels:.3f} bpp, "
                f"{kae_psnr:.2f} dB",
            ),
            label(
                jpeg,
                f"JPEG 4:2:0 at equal bytes (quality {jpeg_quality})\n"
                f"{8 * jpeg_size / pixels:.3f} bpp, {psnr(reference, np.asarray(jpeg)):.2f} dB",
            ),
        ).save(OUT / f"side_by_side_{path.stem}.png")
        rows.append(
            (
                path.name,
                f"{original.width}x{original.height} {original.mode}",
                pixels,
                size,
                8 * image_bytes / pixels,
                kae_psnr,
                jpeg_psnr_at(rgb, image_bytes),
                encode_s,
                decode_s,
            )
        )
    print(f"\nquality {args.quality}; images from {args.images}; results in {OUT}/")
    header = (
        f"{'file':<20} {'size/mode':<16} {'pixels':>8} {'bytes':>7} {'bpp*':>6} "
        f"{'PSNR':>6} {'JPEG@=bytes':>11} {'enc s':>6} {'dec s':>6}"
    )
    print(header)
    print("-" * len(header))
    for name, dims, pixels, size, bpp, p, jp, enc, dec in rows:
        print(
            f"{name:<20} {dims:<16} {pixels:>8} {size:>7} {bpp:6.3f} {p:6.2f} {jp:11.2f} "
            f"{enc:6.2f} {dec:6.2f}"
        )
    print(
        "(bytes: the whole .kae file; bpp*: its coded image alone, without metadata and "
        "lossless alpha; PSNR on RGB in dB; JPEG@=bytes: Pillow JPEG 4:2:0 optimized, "
        "interpolated at those image bytes)"
    )


if __name__ == "__main__":
    main()
