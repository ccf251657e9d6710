"""Labelled side-by-side crops of the image where .kae does best against the other codecs,
and of the one where it does worst.

"Most" is PSNR at equal bytes: for each .kae point of an image, the best PSNR any other
codec reaches at the same bpp (interpolated on its per-image curve, in log bpp), and the
image's score is the mean difference over its .kae points. The panels re-encode the
chosen image with that best competitor at the largest quality whose file is no larger
than the .kae file, and show the crop where the loser's squared error exceeds the
winner's most (the competitor's on the best image, that of .kae on the worst).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pillow_kae.bench.codecs import Codec, Coded
from pillow_kae.bench.sweep import Measurement, load_rgb
from pillow_kae.metrics import psnr

log = logging.getLogger(__name__)

CROP = 192  # pixels of the original on a side
PANEL = 384  # small crops are enlarged (nearest neighbour) up to about this
FONT_SIZE = 15
GAP = 6


def label(image: Image.Image, text: str) -> Image.Image:
    """``image`` under a white strip with ``text`` (one or more lines) in black."""
    font = ImageFont.load_default(size=FONT_SIZE)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    _, top, right, bottom = probe.multiline_textbbox((0, 0), text, font=font)
    canvas = Image.new("RGB", (max(image.width, right + 8), image.height + bottom + 8), "white")
    ImageDraw.Draw(canvas).multiline_text((4, 4 - top), text, fill="black", font=font)
    canvas.paste(image.convert("RGB"), (0, bottom + 8))
    return canvas


def side_by_side(*images: Image.Image) -> Image.Image:
    """The images left to right on white, a few pixels apart, bottoms aligned (so that
    labels of different heights above equal pictures keep the pictures level)."""
    width = sum(im.width for im in images) + GAP * (len(images) - 1)
    height = max(im.height for im in images)
    canvas = Image.new("RGB", (width, height), "white")
    left = 0
    for im in images:
        canvas.paste(im.convert("RGB"), (left, height - im.height))
        left += im.width + GAP
    return canvas


def match_bytes(codec: Codec, image: Image.Image, budget: int) -> tuple[int, Coded]:
    """The largest quality whose file fits in ``budget`` bytes (the lowest if none does).

    Bisection: file size rises with quality for every codec here, if not always strictly.
    """
    low, high = codec.quality_range
    best = (low, codec.code(image, low))
    while low < high:
        middle = (low + high + 1) // 2
        coded = codec.code(image, middle)
        if coded.size <= budget:
            low, best = middle, (middle, coded)
        else:
            high = middle - 1
    return best


@dataclass(frozen=True)
class Pick:
    """An image, the .kae point and the competitor with the most extreme PSNR difference."""

    best: bool  # the image where .kae does best (else: worst) against the others
    image: str
    score_db: float  # the image's mean PSNR difference to the best competitor, over its points
    quality: int  # the .kae quality where the difference is most extreme
    gain_db: float  # the difference there (negative: .kae loses)
    competitor: str


def _gains(results: Sequence[Measurement], kae: str) -> dict[str, list[tuple[float, int, str]]]:
    """Per image: (PSNR gain over the best other codec at equal bpp, .kae quality, codec)."""
    by_image: dict[str, dict[str, list[Measurement]]] = {}
    for m in results:
        by_image.setdefault(m.image, {}).setdefault(m.codec, []).append(m)
    gains: dict[str, list[tuple[float, int, str]]] = {}
    for image, by_codec in by_image.items():
        curves = {
            codec: sorted((m.bpp, m.psnr) for m in ms if np.isfinite(m.psnr))
            for codec, ms in by_codec.items()
            if codec != kae
        }
        for point in by_codec.get(kae, []):
            best: tuple[float, str] | None = None
            for codec, curve in curves.items():
                if curve and curve[0][0] <= point.bpp <= curve[-1][0]:
                    log_bpp = np.log([b for b, _ in curve])
                    value = float(np.interp(np.log(point.bpp), log_bpp, [p for _, p in curve]))
                    if best is None or value > best[0]:
                        best = (value, codec)
            if best is not None:
                gains.setdefault(image, []).append((point.psnr - best[0], point.quality, best[1]))
    return gains


def pick(results: Sequence[Measurement], kae: str = "kae") -> tuple[Pick, Pick] | None:
    """The image where .kae does best against the others and the one where it does worst
    (None if no other codec reaches the rates of .kae on any image)."""
    gains = _gains(results, kae)
    if not gains:
        return None
    scores = {image: float(np.mean([g for g, *_ in points])) for image, points in gains.items()}
    win_image = max(scores, key=scores.__getitem__)
    loss_image = min(scores, key=scores.__getitem__)
    win = max(gains[win_image])
    loss = min(gains[loss_image])
    return (
        Pick(True, win_image, scores[win_image], win[1], win[0], win[2]),
        Pick(False, loss_image, scores[loss_image], loss[1], loss[0], loss[2]),
    )


def _region(reference: np.ndarray, better: np.ndarray, worse: np.ndarray) -> tuple[int, ...]:
    """The crop box where ``worse`` has the most squared error more than ``better``."""
    height, width = reference.shape[:2]
    ch, cw = min(CROP, height), min(CROP, width)
    ref = reference.astype(np.float64)
    excess = ((worse - ref) ** 2 - (better - ref) ** 2).mean(axis=2)
    integral = np.pad(excess.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = integral[ch:, cw:] - integral[:-ch, cw:] - integral[ch:, :-cw] + integral[:-ch, :-cw]
    top, left = np.unravel_index(np.argmax(sums), sums.shape)
    return int(left), int(top), int(left) + cw, int(top) + ch


def _panel(pixels: np.ndarray, box: tuple[int, ...], text: str) -> Image.Image:
    crop = Image.fromarray(pixels).crop(box)
    zoom = max(1, min(4, PANEL // max(crop.size)))
    crop = crop.resize((crop.width * zoom, crop.height * zoom), Image.Resampling.NEAREST)
    return label(crop, text)


def write_crop(
    choice: Pick,
    title: str,
    path: Path,
    codecs: Mapping[str, Codec],
    target: Path,
    kae: str = "kae",
) -> dict[str, object]:
    """Write the labelled original | .kae | competitor crops of one pick; describe them."""
    image = load_rgb(path)
    reference = np.asarray(image)
    pixels = image.width * image.height
    coded = codecs[kae].code(image, choice.quality)
    rival = codecs[choice.competitor]
    rival_quality, rival_coded = match_bytes(rival, image, coded.size)
    kae_psnr, rival_psnr = psnr(reference, coded.decoded), psnr(reference, rival_coded.decoded)
    # Best: show where the competitor's errors exceed those of .kae most; worst: the reverse.
    if choice.best:
        box = _region(reference, coded.decoded, rival_coded.decoded)
    else:
        box = _region(reference, rival_coded.decoded, coded.decoded)
    setting = codecs[kae].describe(choice.quality)
    kae_text = (
        f"{codecs[kae].label}\nq{choice.quality} ({setting['model']}, "
        f"gain step {setting['gain_step']:+g})"
    )
    panels = [
        _panel(
            reference,
            box,
            f"original: {path.name}\n{box[2] - box[0]}x{box[3] - box[1]} crop at {box[:2]}\n"
            "(bpp and PSNR: whole image)",
        ),
        _panel(
            coded.decoded,
            box,
            f"{kae_text}\n{8 * coded.size / pixels:.3f} bpp, {kae_psnr:.2f} dB",
        ),
        _panel(
            rival_coded.decoded,
            box,
            f"{rival.label}\nq{rival_quality}\n{8 * rival_coded.size / pixels:.3f} bpp, "
            f"{rival_psnr:.2f} dB",
        ),
    ]
    side_by_side(*panels).save(target)
    log.info("wrote %s", target)
    return {
        "title": title,
        "file": target.name,
        "image": choice.image,
        "score_db": choice.score_db,
        "gain_db": choice.gain_db,
        "box": list(box),
        "kae": {**setting, "bytes": coded.size, "psnr": kae_psnr},
        "competitor": {
            "codec": rival.name,
            "quality": rival_quality,
            "bytes": rival_coded.size,
            "psnr": rival_psnr,
        },
    }
