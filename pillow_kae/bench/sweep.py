"""Run every image through every codec setting and measure each point; average the curves."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pillow_kae.bench.codecs import Codec
from pillow_kae.metrics import ms_ssim, ms_ssim_db, psnr

log = logging.getLogger(__name__)

_WARM_UP_SIZE = (64, 64)


@dataclass(frozen=True)
class Measurement:
    """One image at one codec setting."""

    image: str
    codec: str
    quality: int
    bytes: int
    bpp: float
    psnr: float
    ms_ssim: float
    ms_ssim_db: float
    encode_s: float
    decode_s: float

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def list_images(folder: Path, limit: int | None = None) -> list[Path]:
    """The files in ``folder`` whose extension Pillow can open, by name (the first ``limit``)."""
    Image.init()
    readable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    paths = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in readable
    )
    return paths[:limit]


def load_rgb(path: Path) -> Image.Image:
    """The image as plain RGB pixels: no alpha, no metadata for a codec to carry along."""
    with Image.open(path) as im:
        return Image.fromarray(np.asarray(im.convert("RGB")))


def measure(name: str, image: Image.Image, codec: Codec, quality: int) -> Measurement:
    """Code ``image`` with ``codec`` at ``quality`` and score the decoded pixels."""
    coded = codec.code(image, quality)
    reference = np.asarray(image)
    similarity = ms_ssim(reference, coded.decoded)
    return Measurement(
        image=name,
        codec=codec.name,
        quality=quality,
        bytes=coded.size,
        bpp=8 * coded.size / (image.width * image.height),
        psnr=psnr(reference, coded.decoded),
        ms_ssim=similarity,
        ms_ssim_db=ms_ssim_db(similarity),
        encode_s=coded.encode_s,
        decode_s=coded.decode_s,
    )


def warm_up(codecs: Iterable[Codec]) -> None:
    """Code a small image at every setting once, untimed: loading libraries and models
    (TensorFlow and each .kae model's weights) is not per-image work."""
    pixels = np.random.default_rng(0).integers(0, 256, (*_WARM_UP_SIZE[::-1], 3), np.uint8)
    image = Image.fromarray(pixels)
    for codec in codecs:
        for quality in codec.qualities:
            codec.code(image, quality)


# What Pillow raises on a file it cannot decode: such an image is skipped, not fatal.
UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def sweep(
    paths: Sequence[Path], codecs: Sequence[Codec], progress: bool = True
) -> tuple[list[dict[str, object]], list[Measurement]]:
    """Every image at every setting of every codec, with a progress bar on stderr.

    Returns the images measured (name, width, height) and the measurements; a file that
    Pillow cannot decode is left out with a warning, so one broken photo costs nothing.
    """
    from tqdm import tqdm

    warm_up(codecs)
    per_image = sum(len(c.qualities) for c in codecs)
    images: list[dict[str, object]] = []
    results = []
    with tqdm(
        total=len(paths) * per_image, desc="kae bench", unit="point", disable=not progress
    ) as bar:
        for path in paths:
            try:
                image = load_rgb(path)
            except UNREADABLE as err:
                log.warning("skipping %s: %s", path, err)
                bar.update(per_image)
                continue
            log.info("%s: %dx%d", path.name, image.width, image.height)
            images.append({"name": path.name, "width": image.width, "height": image.height})
            for codec in codecs:
                bar.set_postfix_str(f"{path.name} {codec.name}")
                for quality in codec.qualities:
                    results.append(measure(path.name, image, codec, quality))
                    bar.update()
    return images, results


@dataclass(frozen=True)
class CurvePoint:
    """A codec setting averaged over the images (means of the per-image values)."""

    quality: int
    bpp: float
    psnr: float
    ms_ssim: float
    ms_ssim_db: float
    encode_s: float
    decode_s: float

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def mean_curves(results: Iterable[Measurement]) -> dict[str, list[CurvePoint]]:
    """Per codec, one point per quality: the mean over images, by increasing bpp."""
    groups: dict[str, dict[int, list[Measurement]]] = {}
    for m in results:
        groups.setdefault(m.codec, {}).setdefault(m.quality, []).append(m)
    curves = {}
    for codec, by_quality in groups.items():
        points = [
            CurvePoint(
                quality=quality,
                **{
                    key: float(np.mean([getattr(m, key) for m in ms]))
                    for key in ("bpp", "psnr", "ms_ssim", "ms_ssim_db", "encode_s", "decode_s")
                },
            )
            for quality, ms in by_quality.items()
        ]
        curves[codec] = sorted(points, key=lambda p: (p.bpp, p.quality))
    return curves
