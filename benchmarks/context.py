"""What an entropy model's context buys: coded bytes, PSNR and decode time, with and without.

    python -m benchmarks.context RUN_OR_MODEL [--steps=-4,-2,0,2] [--folder DIR] [--every N]

RUN is a ``python -m training context`` run directory: the shipped transforms of its model
plus its slice transforms, as ``training export`` would ship them (big arrays as float16),
against the shipped model, so a run can be judged before it is exported (export changes
the model's weights hash: its old files decode through the retired decoder). MODEL is an
installed channel-conditional model (kae-low since 2026-12-04), against its own transforms
coded by the plain hyperprior (its slices and checkerboard left out). Both code every image
through the codec (``codec.encode_image`` / ``decode_image``: real bytes, not estimates)
at each latent gain step; prints the curves, the BD-rate and the decode seconds per image.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from benchmarks.rd import test_images
from pillow_kae import codec
from pillow_kae.bench.bd import bd_rate
from pillow_kae.metrics import psnr
from pillow_kae.zoo import loader
from pillow_kae.zoo.weights import FLOAT16_MIN_SIZE, load_arrays
from training.context import CONTEXT_ARCH, trained_prefixes


def without_context(model: loader.CodecModel) -> loader.CodecModel:
    """``model``'s transforms and tables coded by the plain hyperprior (no slices)."""
    arch = {k: v for k, v in model.card.arch.items() if k not in CONTEXT_ARCH}
    card = replace(model.card, kind="mean-scale-hyperprior", arch=arch)
    arrays = {k: v for k, v in model.arrays.items() if not k.startswith(("slice", "spatial"))}
    return loader.CodecModel(card, arrays)


def run_model(run: Path) -> tuple[loader.CodecModel, loader.CodecModel]:
    """(the shipped model, the same with the run's slice transforms and, if it trained it,
    its h_s)."""
    state = json.loads((run / "state.json").read_text())
    shipped = loader.load(state["config"]["model"])
    trained = trained_prefixes(state["config"].get("train_hyper", False))
    slices = {
        key: value.astype(np.float16) if value.size >= FLOAT16_MIN_SIZE else value
        for key, value in load_arrays(run / "checkpoint.npz").items()
        if key.startswith(trained)
    }
    card = replace(shipped.card, kind="channel-conditional", arch=state["config"]["arch"])
    return shipped, loader.CodecModel(card, {**shipped.arrays, **slices})


def curve(
    model: loader.CodecModel, images: list[np.ndarray], steps: list[int]
) -> tuple[list[tuple[float, float]], float]:
    """(bpp, PSNR) per gain step, averaged over images; and decode seconds per image."""
    points, seconds = [], 0.0
    for step in steps:
        bits, scores = 0.0, []
        for pixels in tqdm(images, desc=f"{model.kind} {step:+d}", leave=False):
            height, width = pixels.shape[:2]
            payloads = codec.encode_image(model, pixels, step)
            start = time.perf_counter()
            version = codec.format_version(model, step)
            decoded = codec.decode_image(
                model, payloads, width, height, step, codec.TILE_SIZE, version
            )
            seconds += time.perf_counter() - start
            bits += 8 * sum(map(len, payloads)) / (width * height)
            scores.append(psnr(pixels, decoded))
        points.append((bits / len(images), float(np.mean(scores))))
    return points, seconds / (len(images) * len(steps))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", type=Path)
    parser.add_argument("--steps", default="-4,-2,0,2", help="latent gain steps")
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--every", type=int, default=1, help="every N-th image")
    args = parser.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")]
    folder, paths = test_images(args.folder, args.every)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    if (args.run / "state.json").is_file():
        shipped, conditional = run_model(args.run)
    else:
        conditional = loader.load(str(args.run))
        shipped = without_context(conditional)
    print(f"{len(images)} images from {folder}; {args.run} against {shipped.name} without it")
    base, base_s = curve(shipped, images, steps)
    test, test_s = curve(conditional, images, steps)
    print("| gain step | without bpp | dB | with the context bpp | dB |")
    print("|---:|---:|---:|---:|---:|")
    for step, (b, p), (tb, tp) in zip(steps, base, test, strict=True):
        print(f"| {step:+d} | {b:.4f} | {p:.3f} | {tb:.4f} | {tp:.3f} |")
    print(f"BD-rate with the context against without: {bd_rate(base, test):+.2f} %")
    print(f"decode seconds per image: {base_s:.3f} without, {test_s:.3f} with the context")


if __name__ == "__main__":
    main()
