"""The restoration filter's shapes, compared on the very same decoded pixels.

    python -m benchmarks.restoration [--folder DIR] [--every N] [--first K]
                                     [--cache DIR] [--json OUT] [--encoder STAGES:CLIPS ...]

Each image is saved at every anchor of the default quality ladder with ``restore=False``
and decoded: the pixels any decoder sees before the filter. Those are cached (``--cache``),
so a later run, or a change to the fit, costs only the fits. Then each shape of
``pillow_kae.restoration`` is fitted on them as the encoder fits it (the whole image, its
edges replicated; the same bits to pay for), one filter alone, and the encoder's own
``fit_cascade`` (the latest shape, and on small images also shape 1; then further filters
on its output while they pay), and applied. Bytes count the file
without a filter plus the ``KRST`` chunk (12 bytes of chunk framing and the filter's);
PSNR on RGB, means per image. Prints each curve and the BD-rates between them (PCHIP, as
``kae bench``); images above 2 MP are fitted whole here, where the encoder samples windows.
``--encoder 2:255,32,16`` adds the encoder's cascade with other settings (at most 2 filters,
those clips) as a curve of its own, to weigh a change to ``STAGES`` or ``CLIPS``.
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
from pillow_kae import container, restoration
from pillow_kae.bench.bd import paired_bd_rate
from pillow_kae.bench.codecs import ladder_qualities
from pillow_kae.metrics import psnr

CHUNK = 12  # length, type and CRC of the KRST chunk


def unfiltered(path: Path, cache: Path) -> dict[str, np.ndarray]:
    """The original, and per anchor quality the file's bytes, its payload bits and its
    pixels before any filter (cached as ``cache/<image>.npz``)."""
    stored = cache / f"{path.stem}.npz"
    qualities = [q for q, *_ in ladder_qualities()]
    if stored.exists():
        with np.load(stored) as data:
            if data["qualities"].tolist() == qualities:
                return dict(data)
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    decoded, sizes, bits = [], [], []
    for quality in qualities:
        buffer = io.BytesIO()
        rgb.save(buffer, "KAE", quality=quality, restore=False)
        kae = container.read(io.BytesIO(buffer.getvalue()))
        sizes.append(buffer.tell())
        bits.append(8 * sum(map(len, kae.tiles)))
        buffer.seek(0)
        with Image.open(buffer) as im:
            decoded.append(np.asarray(im.convert("RGB")))
    result = {
        "original": np.asarray(rgb),
        "decoded": np.stack(decoded),
        "sizes": np.array(sizes),
        "bits": np.array(bits),
        "qualities": np.array(qualities),
    }
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(stored, **result)
    return result


def encoder_setting(text: str) -> tuple[int, tuple[int, ...]]:
    """``STAGES:CLIPS`` (``2:255,32,16``) -> (2, (255, 32, 16))."""
    stages, _, clips = text.partition(":")
    try:
        return int(stages), tuple(int(c) for c in clips.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not STAGES:CLIP,CLIP,...") from None


def measure(
    data: dict[str, np.ndarray], settings: tuple[tuple[int, tuple[int, ...]], ...] = ()
) -> dict[str, list[tuple[float, float]]]:
    """Per variant (and "none"), the (bpp, PSNR) of each anchor quality on one image;
    ``settings``: the encoder's cascade again with (stages, clips) of each."""
    original = data["original"]
    height, width = original.shape[:2]
    halo = restoration.HALO
    curves: dict[str, list[tuple[float, float]]] = {"none": []}
    for decoded, size, bits in zip(data["decoded"], data["sizes"], data["bits"], strict=True):
        curves["none"].append((8 * size / (height * width), psnr(decoded, original)))
        block = np.pad(decoded, ((halo, halo), (halo, halo), (0, 0)), mode="edge")
        found: dict[str, restoration.Restoration | None] = {}
        for code, shape in restoration.SHAPES.items():
            fit = restoration.Fit((shape,))
            fit.add(block, original)
            one = fit.solve(float(bits))
            found[f"shape {code}"] = None if one is None else restoration.Restoration((one,))
        encoders = {"encoder": (None, None)} | {
            f"encoder {most}:{','.join(map(str, clips))}": (most, clips) for most, clips in settings
        }
        for name, (most, clips) in encoders.items():
            window = [((0, 0, width, height), decoded.copy())]
            found[name] = restoration.fit_cascade(window, original, float(bits), most, clips)
        for name, filters in found.items():
            out, extra = decoded.copy(), 0
            if filters is not None:
                filters.apply(out)
                extra = CHUNK + len(filters.pack())
            curves.setdefault(name, []).append(
                (8 * (size + extra) / (height * width), psnr(out, original))
            )
    return curves


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--every", type=int, default=1, help="use every n-th image")
    parser.add_argument("--first", type=int, default=0, help="starting from this one")
    parser.add_argument("--cache", type=Path, default=Path("out/restoration-cache"))
    parser.add_argument("--json", type=Path, default=Path("out/restoration.json"))
    parser.add_argument(
        "--encoder",
        type=encoder_setting,
        action="append",
        default=[],
        help="STAGES:CLIPS, e.g. 2:255,32,16: the encoder's cascade with those settings too",
    )
    args = parser.parse_args(argv)
    folder, paths = test_images(args.folder, args.every, args.first)
    print(f"images: {folder} ({len(paths)})")
    per_image = {}
    for path in tqdm(paths, desc="restoration"):
        data = unfiltered(path, args.cache / Path(folder).name)
        per_image[path.name] = measure(data, tuple(args.encoder))
    names = list(next(iter(per_image.values())))
    mean = {
        name: [tuple(v) for v in np.mean([c[name] for c in per_image.values()], axis=0)]
        for name in names
    }
    qualities = [q for q, *_ in ladder_qualities()]
    print("\nquality  " + "  ".join(f"{name:>16}" for name in names))
    for i, quality in enumerate(qualities):
        cells = "  ".join(f"{mean[n][i][0]:7.4f} {mean[n][i][1]:7.2f}" for n in names)
        print(f"{quality:7d}  {cells}")
    bd = {
        f"{test} vs {anchor}": paired_bd_rate(mean[anchor], mean[test])
        for anchor in names
        for test in names
        if anchor != test and (anchor in ("none", "shape 2") or anchor.startswith("encoder "))
    }
    print("\nBD-rate at equal PSNR (bpp / PSNR means above):")
    for pair, value in bd.items():
        print(f"  {pair:<40} {value:+.2f} %")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {"folder": folder, "images": list(per_image), "qualities": qualities}
    args.json.write_text(json.dumps(report | {"mean": mean, "bd_rate": bd}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
