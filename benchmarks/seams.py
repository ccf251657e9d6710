"""Tile seams: does a photo larger than one tile come back with a grid?

    python -m benchmarks.seams [--folder DIR] [--images kodim05 kodim15] [--scale 3]
                               [--quality 30]

Each image is upscaled (bicubic) so that it spans several 1024-pixel tiles, saved as
``.kae`` at ``--quality`` and, for reference, as WebP and AVIF at about the same bytes.
The seam measure: the extra edge energy a codec adds at each column (row) boundary, the
mean |horizontal (vertical) gradient| of the decoded image minus the original's, in units
of the median absolute deviation over all columns (rows). A visible tile edge stands out
by tens of deviations; peers stay below about 9 anywhere inside the image.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

import pillow_kae  # noqa: F401  (registers the format)
from benchmarks.rd import test_images
from pillow_kae.metrics import boundary_scores

TILE = 1024  # the tile size the encoder writes (``kae info`` shows it)


def _coded(image: Image.Image, fmt: str, **options: object) -> tuple[int, np.ndarray]:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    with Image.open(io.BytesIO(buffer.getvalue())) as im:
        return buffer.tell(), np.asarray(im.convert("RGB"))


def _at_bytes(image: Image.Image, fmt: str, num_bytes: int, **options: object) -> np.ndarray:
    """The codec at the quality whose size is closest to ``num_bytes`` (bisection)."""
    low, high, best = 0, 100, None
    while low <= high:
        q = (low + high) // 2
        size, pixels = _coded(image, fmt, quality=q, **options)
        if best is None or abs(size - num_bytes) < best[0]:
            best = (abs(size - num_bytes), pixels)
        low, high = (q + 1, high) if size < num_bytes else (low, q - 1)
    return best[1]


def measure(original: np.ndarray, decoded: np.ndarray) -> dict[str, float]:
    """Worst score at an interior tile boundary, and anywhere inside the image."""
    columns = boundary_scores(original, decoded)
    rows = boundary_scores(original.transpose(1, 0, 2), decoded.transpose(1, 0, 2))
    at_tiles = [columns[x - 1] for x in range(TILE, original.shape[1], TILE)]
    at_tiles += [rows[y - 1] for y in range(TILE, original.shape[0], TILE)]
    inside = np.concatenate([columns[1:-1], rows[1:-1]])
    return {
        "tile_boundaries": float(max(at_tiles)) if at_tiles else float("nan"),
        "anywhere": float(inside.max()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--images", nargs="+", default=["kodim05", "kodim15", "kodim23"])
    parser.add_argument("--scale", type=int, default=3)
    parser.add_argument("--quality", type=int, default=30)
    parser.add_argument("--json", type=Path, default=Path("out/seams.json"))
    parser.add_argument("--crop", type=Path, default=None, help="write a crop at a tile corner")
    args = parser.parse_args(argv)
    folder, paths = test_images(args.folder)
    paths = [p for p in paths if p.stem in args.images] or paths[:2]
    print(f"images: {folder}: {', '.join(p.stem for p in paths)}, upscaled {args.scale}x")
    rows = []
    for path in tqdm(paths, desc="seams"):
        with Image.open(path) as im:
            small = im.convert("RGB")
        big = small.resize((small.width * args.scale, small.height * args.scale), Image.BICUBIC)
        original = np.asarray(big)
        size, kae = _coded(big, "KAE", quality=args.quality)
        row = {"image": path.stem, "size": big.size, "bytes": size, "kae": measure(original, kae)}
        for fmt, options in (("WEBP", {"method": 6}), ("AVIF", {"speed": 6})):
            row[fmt.lower()] = measure(original, _at_bytes(big, fmt, size, **options))
        rows.append(row)
        if args.crop is not None and len(rows) == 1:
            x, y = min(TILE, big.width // 2), min(TILE, big.height // 2)
            box = (x - 128, y - 128, x + 128, y + 128)
            panel = Image.new("RGB", (512, 276), "white")
            panel.paste(big.crop(box), (0, 20))
            panel.paste(Image.fromarray(kae).crop(box), (256, 20))
            draw = ImageDraw.Draw(panel)
            draw.text((4, 4), f"original {path.stem} x{args.scale}", fill="black")
            draw.text((260, 4), f".kae q{args.quality}: 4 tiles meet at the centre", fill="black")
            args.crop.parent.mkdir(parents=True, exist_ok=True)
            panel.save(args.crop)
    print(f"\n{'image':<9} {'size':>10} {'kae@tiles':>9} {'kae':>6} {'webp':>6} {'avif':>6}")
    for r in rows:
        print(
            f"{r['image']:<9} {r['size'][0]:>5}x{r['size'][1]:<4} "
            f"{r['kae']['tile_boundaries']:9.1f} {r['kae']['anywhere']:6.1f} "
            f"{r['webp']['anywhere']:6.1f} {r['avif']['anywhere']:6.1f}"
        )
    print("(deviations; 'kae@tiles': worst interior tile boundary, others: worst anywhere)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"images": folder, "quality": args.quality, "rows": rows}))


if __name__ == "__main__":
    main()
