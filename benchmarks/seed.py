"""The seed's row: the dense 48x48-block autoencoder against the conv codec and JPEG.

    python -m benchmarks.seed [--cats N]

Kodak (24) and the first N images of ../shared/data/cats/valid (as stored, JPEG-sourced).
Same measure as benchmarks.kodak: mean bpp of real files, PSNR on RGB, JPEG at equal bytes.
"""

from __future__ import annotations

import argparse

from tqdm import tqdm

from benchmarks.rd import KODAK, measure, test_images

SETTINGS = {
    "seed-dense": {"model": "seed-dense", "quality": 75},
    "kae q42 (kae-low)": {"quality": 42},
    "kae q69 (kae-mid)": {"quality": 69},
    "kae q87 (kae-mid)": {"quality": 87},
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cats", type=int, default=48, help="cats/valid images to use")
    args = parser.parse_args(argv)
    folders = {"kodak": KODAK, "cats/valid": KODAK.parent / "cats" / "valid"}
    print(f"{'images':<12} {'codec':<20} {'bpp':>7} {'PSNR':>7} {'JPEG@=bytes':>11} {'gain dB':>8}")
    for label, folder in folders.items():
        _, paths = test_images(folder)
        if label == "cats/valid":
            paths = paths[: args.cats]
        for name, save_args in tqdm(SETTINGS.items(), desc=label, leave=False):
            p = measure(paths, name, **save_args)
            print(
                f"{label:<12} {name:<20} {p.bpp:7.4f} {p.psnr:7.3f} {p.jpeg_psnr:11.3f} "
                f"{p.gain_db:+8.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
