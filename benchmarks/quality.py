"""Every save quality, 1 to 100: mean bytes and PSNR, and whether both climb strictly.

    python -m benchmarks.quality [--folder DIR] [--every N [--first I]] [--qualities 1-100]
                                 [--out FILE] [--against FILE] [--compare BEFORE AFTER]

Each image is saved with ``Image.save(..., quality=q)`` (the default ladder) and decoded
with ``Image.open``; the table gives mean bpp, PSNR and Pillow JPEG's PSNR at the same bytes
per quality, with how many files each model coded (where two models overlap, the encoder
may keep the model below the ladder's), and the closing lines list every quality whose mean
bytes or PSNR is not above the quality before it (issue 6 asks for none). Kodak when
../shared is there, else the sample images; it says which. ``--qualities anchors`` takes
the ladder's anchors alone (or a list: ``1,7,12``); ``--against`` an earlier run's
``--out`` prints the change at each quality and the BD-rate, e.g. to compare inference
runtimes and precisions (``KAE_RUNTIME``, ``KAE_PRECISION``); ``--compare BEFORE AFTER``
does the same for two earlier ``--out`` files (weights before and after an export).
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from benchmarks.jpeg import jpeg_psnr_at
from benchmarks.rd import test_images
from pillow_kae.bench.bd import paired_bd_rate
from pillow_kae.bench.codecs import roundtrip
from pillow_kae.metrics import psnr
from pillow_kae.runtime import summary
from pillow_kae.zoo import quality as ladder


def _qualities(text: str) -> list[int]:
    if text == "anchors":
        return [q for q, *_ in ladder.anchor_qualities()]
    if "," in text:
        return [int(q) for q in text.split(",")]
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def sweep(paths: list[Path], qualities: list[int]) -> dict[int, dict]:
    """Mean bpp, PSNR and JPEG's PSNR at the same bytes, per quality, and how many files
    each model coded (the encoder may pick the model below the ladder's)."""
    rows: dict[int, list[tuple[float, float, float]]] = {q: [] for q in qualities}
    models: dict[int, Counter] = {q: Counter() for q in qualities}
    for path in tqdm(paths, desc="images", unit="img"):
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        pixels = np.asarray(rgb)
        for q in qualities:
            coded = roundtrip(rgb, "KAE", quality=q)
            bpp = 8 * coded.size / (rgb.width * rgb.height)
            rows[q].append((bpp, psnr(pixels, coded.decoded), jpeg_psnr_at(rgb, coded.size)))
            models[q][coded.info.get("kae_model", "?")] += 1
    return {
        q: {
            **dict(zip(("bpp", "psnr", "jpeg_psnr"), map(float, np.mean(v, axis=0)), strict=True)),
            "models": dict(models[q].most_common()),
        }
        for q, v in rows.items()
    }


def not_climbing(means: dict[int, dict[str, float]], key: str) -> list[int]:
    """Qualities whose mean ``key`` is not strictly above the previous quality's."""
    qualities = sorted(means)
    return [b for a, b in itertools.pairwise(qualities) if means[b][key] <= means[a][key]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--every", type=int, default=1, help="every N-th image")
    parser.add_argument("--first", type=int, default=0, help="with --every: start at image I")
    parser.add_argument(
        "--qualities",
        default="1-100",
        help="a range, e.g. 1-100, a list, e.g. 1,7,12, or 'anchors' (the ladder's)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON of the table")
    parser.add_argument("--against", type=Path, default=None, help="an earlier --out to compare")
    parser.add_argument(
        "--compare",
        type=Path,
        nargs=2,
        metavar=("BEFORE", "AFTER"),
        help="measure nothing: compare two earlier --out files",
    )
    args = parser.parse_args(argv)
    if args.compare:
        before, after = (json.loads(path.read_text()) for path in args.compare)
        compare({int(q): m for q, m in after["means"].items()}, before)
        return
    folder, paths = test_images(args.folder, args.every, args.first)
    qualities = _qualities(args.qualities)
    print(f"{len(paths)} images from {folder}; qualities {qualities[0]}-{qualities[-1]}")
    print(f"transforms on {summary()}")
    means = sweep(paths, qualities)
    print("| quality | model, gain step | bpp | PSNR (dB) | JPEG at those bytes (dB) | files by |")
    print("|---:|---|---:|---:|---:|---|")
    for q, m in means.items():
        model, step = ladder.choose(q)
        coded_by = ", ".join(f"{name} {n}" for name, n in m["models"].items())
        print(
            f"| {q} | {model} {step:+g} | {m['bpp']:.4f} | {m['psnr']:.3f} "
            f"| {m['jpeg_psnr']:.3f} | {coded_by} |"
        )
    for key, label in (("bpp", "bytes"), ("psnr", "PSNR")):
        stuck = not_climbing(means, key)
        print(f"qualities whose mean {label} does not rise: {stuck or 'none'}")
    behind = [q for q, m in means.items() if m["psnr"] < m["jpeg_psnr"]]
    print(f"qualities behind JPEG at equal bytes: {behind or 'none'}")
    if args.against:
        compare(means, json.loads(args.against.read_text()))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {"images": folder, "count": len(paths), "runtime": summary(), "means": means}
        args.out.write_text(json.dumps(record, indent=1))


def compare(means: dict[int, dict[str, float]], earlier: dict) -> None:
    """This run against an earlier ``--out``: PSNR and bytes per common quality, BD-rate."""
    before = {int(q): m for q, m in earlier["means"].items()}
    common = [q for q in means if q in before]
    print(f"against {earlier.get('runtime', 'an earlier run')} ({earlier['count']} images):")
    print("| quality | PSNR change (dB) | bytes change |")
    print("|---:|---:|---:|")
    for q in common:
        change = 100 * (means[q]["bpp"] / before[q]["bpp"] - 1)
        print(f"| {q} | {means[q]['psnr'] - before[q]['psnr']:+.3f} | {change:+.2f} % |")
    curves = [[(m[q]["bpp"], m[q]["psnr"]) for q in common] for m in (before, means)]
    print(f"BD-rate at equal PSNR: {paired_bd_rate(*curves):+.2f} %")


if __name__ == "__main__":
    main()
