"""What an entropy model's context (or a partial fine-tune) buys: coded bytes, PSNR and
decode time, with and without.

    python -m benchmarks.context RUN_OR_MODEL [--steps=-4,-2,0,2] [--folder DIR] [--every N]
    python -m benchmarks.context RUN [RUN ...] --ladder [--folder DIR] [--every N]

RUN is a ``python -m training context`` run directory (the shipped transforms of its model
plus its slice transforms) or a ``python -m training train`` run started from shipped
weights, directly or through runs it continued (all of it, or the parts ``--train-only``
names: an encoder fine-tune, ``--train-only g_a h_a``, keeps the shipped decoder), with
what it trained stored as ``training export`` would ship it (big arrays as float16, conv
kernels as int8, z's tables made again), against the shipped model, so a run can be
judged before it is exported (export changes the model's weights hash: its old files
decode through the retired decoder). MODEL is an installed channel-conditional model
(kae-low since 2026-12-04), against its own transforms coded by the plain hyperprior (its
slices and checkerboard left out). Both code every image through the codec
(``codec.encode_image`` / ``decode_image``: real bytes, not estimates) at each latent gain
step; prints the curves, the BD-rate and the decode seconds per image.

``--ladder`` answers the question an export must: by how much would the runs (one per
model of the default ladder) move the ladder's BD-rate? Every anchor of the ladder is
coded by its shipped model and again by the run of that model, if any; the anchors of all
the models make one curve each way, whose BD-rate is the ladder's (without the encoder's
choice of model between neighbours and without the restoration filter, which both come on
top of either side). The curves are compared anchor by anchor (``bd.paired_bd_rate``): an
anchor off the shipped curve's envelope, such as a model's lowest step just below the top
of the model before it, is left out of both.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from benchmarks.rd import test_images
from pillow_kae import codec, container, models, zoo
from pillow_kae.bench.bd import paired_bd_rate
from pillow_kae.metrics import psnr
from pillow_kae.zoo import loader, quality
from pillow_kae.zoo.weights import FLOAT16_MIN_SIZE, assign_weights, load_arrays, quantize_int8
from training.context import CONTEXT_ARCH, trained_prefixes
from training.export import z_tables
from training.lineage import CHECKPOINT, STATE, init_run


def without_context(model: loader.CodecModel) -> loader.CodecModel:
    """``model``'s transforms and tables coded by the plain hyperprior (no slices)."""
    arch = {k: v for k, v in model.card.arch.items() if k not in CONTEXT_ARCH}
    card = replace(model.card, kind="mean-scale-hyperprior", arch=arch)
    arrays = {k: v for k, v in model.arrays.items() if not k.startswith(("slice", "spatial"))}
    return loader.CodecModel(card, arrays)


def shipped_origin(run: Path) -> tuple[Path, list[str]]:
    """The shipped weights a ``training train`` run started from, through the runs it
    continued (``--init RUN/checkpoint.npz``), and the parts trained on the way (empty: all).
    """
    parts: set[str] = set()
    every_part = False
    while True:
        config = json.loads((run / STATE).read_text())["config"]
        every_part |= not config.get("train_only")
        parts.update(config.get("train_only") or ())
        init = Path(config.get("init") or "")
        if (earlier := init_run(init)) is not None:
            run = earlier
            continue
        if init.parent.resolve() != zoo.WEIGHTS_DIR.resolve():
            raise ValueError(f"{run} did not start from shipped weights (--init {init})")
        return init, [] if every_part else sorted(parts)


def run_model(run: Path) -> tuple[loader.CodecModel, loader.CodecModel]:
    """(the shipped model, the same with what the run trained, stored as ``training export``
    stores new arrays: big ones float16, conv kernels int8).

    A ``training context`` run trained slice transforms (and, with ``--train-hyper``, h_s);
    a ``training train`` run from shipped weights trained the whole model, or the parts it
    names with ``--train-only`` (``g_a h_a``: an encoder fine-tune, whose files the shipped
    decoder reads)."""
    state = json.loads((run / STATE).read_text())
    config = state["config"]
    if "model" in config:
        shipped = loader.load(config["model"])
        trained = trained_prefixes(config.get("train_hyper", False))
    else:
        init, parts = shipped_origin(run)
        shipped = loader.load(init.stem)
        trained = tuple(f"{part}/" for part in parts) or ("",)
    checkpoint = (run / CHECKPOINT).read_bytes()
    new = {
        key: value.astype(np.float16) if value.size >= FLOAT16_MIN_SIZE else value
        for key, value in load_arrays(io.BytesIO(checkpoint)).items()
        if key.startswith(trained)
    }
    stored = io.BytesIO()
    np.savez(stored, **quantize_int8(new))
    stored.seek(0)
    arrays = {**shipped.arrays, **load_arrays(stored)}
    if any(key.startswith("entropy_bottleneck/") for key in new):  # z's tables, as exported
        keras_model = models.build(config["kind"], config["arch"])
        assign_weights(keras_model, arrays)
        arrays.update(z_tables(keras_model))
    # Its own digest: the graph cache must not hand it the shipped model's g_a.
    digest = hashlib.sha256(checkpoint).hexdigest()
    card = replace(shipped.card, kind=config["kind"], arch=config["arch"], sha256=digest)
    return shipped, loader.CodecModel(card, arrays)


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
            decoded = codec.decode_image(
                model, payloads, width, height, step, codec.TILE_SIZE, container.COMPACT_VERSION
            )
            seconds += time.perf_counter() - start
            bits += 8 * sum(map(len, payloads)) / (width * height)
            scores.append(psnr(pixels, decoded))
        points.append((bits / len(images), float(np.mean(scores))))
    return points, seconds / (len(images) * len(steps))


def _table(steps: list[int], base: list, test: list, label: str) -> None:
    print(f"| gain step | without bpp | dB | with {label} bpp | dB |")
    print("|---:|---:|---:|---:|---:|")
    for step, (b, p), (tb, tp) in zip(steps, base, test, strict=True):
        print(f"| {step:+d} | {b:.4f} | {p:.3f} | {tb:.4f} | {tp:.3f} |")
    try:
        moved = paired_bd_rate(base, test)
        print(f"BD-rate with {label} against without: {moved:+.2f} %")
    except ValueError as err:  # a run far off its model's curve
        print(f"BD-rate with {label} against without: none ({err})")


def ladder(runs: list[Path], images: list[np.ndarray]) -> float:
    """The ladder's BD-rate with each run in its model's place, against the shipped ladder;
    prints each model's anchors both ways."""
    replaced: dict[str, loader.CodecModel] = {}
    for run in runs:
        shipped, trained = run_model(run)
        if shipped.name in replaced:
            raise SystemExit(f"two runs of {shipped.name}: one per model of the ladder")
        replaced[shipped.name] = trained
    anchors = quality.ladder()
    names = list(dict.fromkeys(name for name, _ in anchors))
    if unknown := sorted(set(replaced) - set(names)):
        raise SystemExit(f"not in the default ladder: {', '.join(unknown)}")
    before: list[tuple[float, float]] = []
    after: list[tuple[float, float]] = []
    for name in names:
        steps = [step for model, step in anchors if model == name]
        base, _ = curve(loader.load(name), images, steps)
        test = curve(replaced[name], images, steps)[0] if name in replaced else base
        print(f"\n{name}" + ("" if name in replaced else " (no run: the shipped model)"))
        _table(steps, base, test, "the run")
        before += base
        after += test
    return paired_bd_rate(before, after)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", type=Path, nargs="+")
    parser.add_argument("--steps", default="-4,-2,0,2", help="latent gain steps")
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--every", type=int, default=1, help="every N-th image")
    parser.add_argument(
        "--ladder", action="store_true", help="runs in their models' places on the ladder"
    )
    args = parser.parse_args(argv)
    if len(args.run) > 1 and not args.ladder:
        parser.error("several runs need --ladder")
    folder, paths = test_images(args.folder, args.every)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    if args.ladder:
        print(f"{len(images)} images from {folder}; the default ladder with {len(args.run)} runs")
        print(
            f"\nBD-rate of the ladder with the runs against without: "
            f"{ladder(args.run, images):+.2f} %"
        )
        return
    (run,) = args.run
    steps = [int(s) for s in args.steps.split(",")]
    if (run / STATE).is_file():
        shipped, conditional = run_model(run)
        label = "the run"
    else:
        conditional = loader.load(str(run))
        shipped = without_context(conditional)
        label = "the context"
    print(f"{len(images)} images from {folder}; {run} against {shipped.name} without it")
    base, base_s = curve(shipped, images, steps)
    test, test_s = curve(conditional, images, steps)
    _table(steps, base, test, label)
    print(f"decode seconds per image: {base_s:.3f} without, {test_s:.3f} with {label}")


if __name__ == "__main__":
    main()
