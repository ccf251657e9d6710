"""Grain on smooth areas: does the codec add speckle the original does not have?

    python -m benchmarks.grain [--folder DIR] [--quality 75] [--model M] [--effort E]
                               [--every N] [--figure IMAGE --out PNG]

Grain is the RMS of the luminance minus its 3x3 mean, over the flat parts of the image.
Flat parts are where the original has no structure: the standard deviation of its
3x3-smoothed luminance over a 9x9 window is below 2 levels (so film grain does not exclude
an area, edges and texture do). The same mask measures the original, the ``.kae`` file at
``--quality`` and Pillow's WebP (method 6) at the same bytes, bisected over its quality.
A codec that smooths shows less grain than the original; speckle shows as more.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

import pillow_kae  # noqa: F401  (registers the format)
from benchmarks.rd import test_images

FLAT_STD = 2.0


def _box(x: np.ndarray, size: int) -> np.ndarray:
    """Mean over a size x size window (edges replicated), via a summed-area table."""
    r = size // 2
    padded = np.pad(x, r, mode="edge")
    sat = np.pad(padded.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = x.shape
    total = sat[size:, size:] - sat[:-size, size:] - sat[size:, :-size] + sat[:-size, :-size]
    return total[:h, :w] / (size * size)


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def flat_mask(original: np.ndarray) -> np.ndarray:
    smooth = _box(luminance(original), 3)
    variance = _box(smooth**2, 9) - _box(smooth, 9) ** 2
    return np.sqrt(np.maximum(variance, 0.0)) < FLAT_STD


def grain(rgb: np.ndarray, mask: np.ndarray) -> float:
    lum = luminance(rgb)
    residual = lum - _box(lum, 3)
    return float(np.sqrt(np.mean(residual[mask] ** 2)))


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def webp_at(image: Image.Image, num_bytes: int) -> bytes:
    """WebP (method 6) at the highest quality whose file is not larger than ``num_bytes``."""
    low, high, best = 0, 100, _encode(image, "WEBP", quality=0, method=6)
    while low <= high:
        q = (low + high) // 2
        data = _encode(image, "WEBP", quality=q, method=6)
        if len(data) <= num_bytes:
            best, low = data, q + 1
        else:
            high = q - 1
    return best


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse))


def figure(path: Path, options: dict[str, object], out: Path, size: int = 160) -> None:
    """Side by side, 2x: the ``size``-pixel square of ``path`` where ``.kae`` without its
    restoration filter adds the most grain on flat parts, in the original, in ``.kae``
    without and with the filter, and in WebP at the ``.kae`` bytes."""
    from PIL import ImageDraw

    with Image.open(path) as im:
        rgb = im.convert("RGB")
    original = np.asarray(rgb)
    kae = _encode(rgb, "KAE", **options)
    plain = _encode(rgb, "KAE", **options, restore=False)
    unfiltered = _decode(plain)

    def energy(pixels: np.ndarray) -> np.ndarray:
        lum = luminance(pixels)
        return (lum - _box(lum, 3)) ** 2

    excess = _box((energy(unfiltered) - energy(original)) * flat_mask(original), size)
    r = size // 2
    y, x = np.unravel_index(np.argmax(excess[r:-r, r:-r]), excess[r:-r, r:-r].shape)
    box = (int(x), int(y), int(x) + size, int(y) + size)
    panels = [
        ("original", original),
        (f".kae restore=False {len(plain)} B", unfiltered),
        (f".kae {len(kae)} B", _decode(kae)),
        (f"WebP {len(webp := webp_at(rgb, len(kae)))} B", _decode(webp)),
    ]
    canvas = Image.new("RGB", (4 * 2 * size + 3 * 8, 2 * size + 24), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, pixels) in enumerate(panels):
        crop = Image.fromarray(pixels).crop(box).resize((2 * size, 2 * size), Image.NEAREST)
        left = i * (2 * size + 8)
        canvas.paste(crop, (left, 24))
        psnr = "" if i == 0 else f", {_psnr(pixels, original):.2f} dB"
        draw.text((left + 4, 6), label + psnr, fill="black")
        print(f"{label}{psnr}")
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    print(f"crop {box} of {path.name} -> {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--quality", type=int, default=75)
    parser.add_argument("--model", default=None, help="one model along its gain steps")
    parser.add_argument("--effort", type=int, default=0, help="the .kae save option")
    parser.add_argument("--every", type=int, default=1, help="use every n-th image")
    parser.add_argument("--json", type=Path, default=Path("out/grain.json"))
    parser.add_argument("--figure", help="instead: a side-by-side crop of this image")
    parser.add_argument("--out", type=Path, default=Path("out/grain.png"), help="the figure")
    args = parser.parse_args(argv)
    folder, paths = test_images(args.folder, args.every)
    options = {"quality": args.quality, "effort": args.effort}
    options |= {"model": args.model} if args.model else {}
    if args.figure:
        figure(next(p for p in paths if p.name == args.figure), options, args.out)
        return
    print(f"images: {folder} ({len(paths)}); .kae with {options}")
    rows = []
    for path in tqdm(paths, desc="grain"):
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        original = np.asarray(rgb)
        mask = flat_mask(original)
        kae = _encode(rgb, "KAE", **options)
        webp = webp_at(rgb, len(kae))
        rows.append(
            {
                "image": path.name,
                "flat_fraction": float(mask.mean()),
                "pixels": original.shape[0] * original.shape[1],
                "original": grain(original, mask),
                "kae": grain(_decode(kae), mask),
                "kae_bytes": len(kae),
                "webp": grain(_decode(webp), mask),
                "webp_bytes": len(webp),
            }
        )
    print(f"\n{'image':<14} {'flat':>5} {'original':>8} {'kae':>6} {'webp':>6} {'kae/orig':>8}")
    for r in rows:
        print(
            f"{r['image']:<14} {r['flat_fraction']:5.2f} {r['original']:8.2f} {r['kae']:6.2f} "
            f"{r['webp']:6.2f} {r['kae'] / r['original']:8.2f}"
        )
    worst = max(rows, key=lambda r: r["kae"] / r["original"])
    print(f"\nworst kae/original: {worst['kae'] / worst['original']:.2f} ({worst['image']})")
    bpp = np.mean([8 * r["kae_bytes"] / r["pixels"] for r in rows])
    ratio = np.mean([r["kae"] / r["original"] for r in rows])
    print(f"mean kae/original: {ratio:.2f} at {bpp:.3f} bpp")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"images": folder, **options, "rows": rows}))


if __name__ == "__main__":
    main()
