"""The seed's thesis measured: a domain model (kae-kittens) against the general one, on its
domain and off it.

    python -m benchmarks.domain [--model kae-kittens] [--reference kae-mid]
                                [--limit N] [--kodak-limit N] [--out out/domain]

Its domain: ../shared/data/cats/valid (never trained on), each photo reduced 2x with
``Image.reduce(2)`` and saved as PNG (in ``OUT/cats-valid-half``, made once), so that the
JPEG blocks of the sources do not decide the comparison. Off it: Kodak. On each set
``kae bench`` (``pillow_kae.bench``) measures both models alone along their gain steps
(``kae:MODEL``), the default ladder, and Pillow's JPEG, WebP and AVIF (Kodak: the two models
only, the other codecs are in the README's Kodak table). Prints the BD-rate of ``--model``
against each; every run's report is in ``OUT/<set>/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from benchmarks.rd import KODAK
from pillow_kae.bench import runner
from pillow_kae.bench.sweep import list_images

CATS = KODAK.parent / "cats" / "valid"
REDUCE = 2


def reduced(source: Path, target: Path, factor: int = REDUCE) -> Path:
    """``source``'s images reduced ``factor``x as PNG in ``target`` (made once, then kept)."""
    target.mkdir(parents=True, exist_ok=True)
    for path in tqdm(list_images(source), desc=f"reduce {factor}x", leave=False):
        out = target / f"{path.stem}.png"
        if not out.exists():
            with Image.open(path) as im:
                im.convert("RGB").reduce(factor).save(out)
    return target


def measure(folder: Path, out: Path, names: list[str], limit: int | None) -> dict:
    """BD-rates (PSNR) of the first of ``names`` against the others, on ``folder``."""
    codecs = runner.available_codecs(names)
    result = runner.run(folder, out, codecs, limit, progress=sys.stderr.isatty())
    row = result.bd["psnr"][names[0]]
    return {name: row.get(name) for name in names[1:]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="kae-kittens")
    parser.add_argument("--reference", default="kae-mid")
    parser.add_argument("--limit", type=int, default=None, help="cats: the first N")
    parser.add_argument("--kodak-limit", type=int, default=None, help="Kodak: the first N")
    parser.add_argument("--out", type=Path, default=Path("out/domain"))
    args = parser.parse_args(argv)
    model, reference = f"kae:{args.model}", f"kae:{args.reference}"
    if not CATS.is_dir():
        raise SystemExit(f"{CATS} is not there: this benchmark needs ../shared/data")
    cats = reduced(CATS, args.out / "cats-valid-half")
    sets = {
        "cats/valid, reduced 2x": measure(
            cats, args.out / "cats", [model, reference, "kae", "jpeg", "webp", "avif"], args.limit
        ),
        "Kodak": measure(KODAK, args.out / "kodak", [model, reference], args.kodak_limit),
    }
    print(f"\nBD-rate of {args.model} at equal PSNR against:")
    for name, row in sets.items():
        cells = ", ".join(
            f"{other}: {'n/a' if value is None else f'{value:+.1f} %'}"
            for other, value in row.items()
        )
        print(f"  {name:<24} {cells}")
    print(f"reports: {args.out}/cats, {args.out}/kodak")


if __name__ == "__main__":
    main()
