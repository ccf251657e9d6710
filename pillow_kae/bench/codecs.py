"""The codecs a benchmark compares, each driven only through Pillow's public API.

Every codec is ``Image.save`` into memory and ``Image.open(...).load()`` back, timed, so
a figure here is what a user of Pillow gets. Each sweeps ``quality`` over a fixed list
chosen to span about 0.05-3 bpp on photographs (``.kae``: one quality per rate point of
its default ladder, derived from the installed models, so it follows new weights).
"""

from __future__ import annotations

import importlib
import io
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, features

from pillow_kae.zoo import installed
from pillow_kae.zoo import quality as ladder


@dataclass(frozen=True)
class Coded:
    """One image through one codec setting: file size, decoded RGB pixels, timings and the
    decoded file's ``info`` (for .kae, the model that coded it)."""

    size: int
    decoded: np.ndarray
    encode_s: float
    decode_s: float
    info: dict = field(default_factory=dict)


def roundtrip(image: Image.Image, fmt: str, **options: object) -> Coded:
    """Save ``image`` as ``fmt`` in memory and decode it again, timing both halves."""
    buffer = io.BytesIO()
    start = time.perf_counter()
    image.save(buffer, fmt, **options)
    encode_s = time.perf_counter() - start
    buffer.seek(0)
    start = time.perf_counter()
    with Image.open(buffer, formats=[fmt]) as decoded:
        decoded.load()
        decode_s = time.perf_counter() - start
        pixels = np.asarray(decoded.convert("RGB"))
        info = dict(decoded.info)
    return Coded(buffer.getbuffer().nbytes, pixels, encode_s, decode_s, info)


def ladder_qualities() -> list[tuple[int, str, int]]:
    """The quality of each anchor of the default ladder: (quality, model, gain step).

    Lowest rate first, from ``quality.anchor_qualities`` so that it follows the ladder
    whatever models are installed (the qualities between anchors interpolate the gain step).
    """
    return ladder.anchor_qualities()


@dataclass(frozen=True)
class Codec:
    """A Pillow format with fixed save options and the qualities a sweep visits."""

    name: str  # what --codecs calls it
    label: str  # what tables and plots call it
    fmt: str  # Pillow format name
    qualities: tuple[int, ...]
    quality_range: tuple[int, int]  # the valid qualities, for matching a byte budget
    options: Mapping[str, object] = field(default_factory=dict)
    plugin: str | None = None  # module that registers fmt with Pillow, when not built in
    feature: str | None = None  # Pillow feature that fmt needs (features.check)
    needs: str = ""  # what to install when it is not available
    default: bool = True  # run when --codecs is not given

    def available(self) -> bool:
        """Whether this Pillow can write and read the format."""
        if self.plugin is not None:
            try:
                importlib.import_module(self.plugin)
            except ImportError:
                return False
        return self.feature is None or bool(features.check(self.feature))

    def code(self, image: Image.Image, quality: int) -> Coded:
        """``image`` (RGB) through this codec at ``quality``."""
        return roundtrip(image, self.fmt, quality=quality, **self.options)

    def describe(self, quality: int) -> dict[str, object]:
        """The setting of one point, for the JSON: the quality, and for .kae its rate point."""
        if self.fmt != "KAE":
            return {"quality": quality}
        model, gain_step = ladder.choose(quality, self.options.get("model"))
        return {"quality": quality, "model": model, "gain_step": gain_step}


# Qualities for the other codecs: dense where the curves bend, up to about 3 bpp.
_JPEG_QUALITIES = (2, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 85, 90, 95)
_WEBP_QUALITIES = (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 85, 90, 95)
_AVIF_QUALITIES = (5, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90)
_JXL_QUALITIES = (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 85, 90, 95)
# ``kae-effort``: the ladder with this encode-time search (pillow_kae.refinement).
BENCH_EFFORT = 4
# One model alone: about a quality per gain step, -6 .. +2 (``quality.model_gain_step``).
_MODEL_QUALITIES = (1, 13, 25, 38, 50, 63, 75, 88, 100)


def registry() -> dict[str, Codec]:
    """Every codec ``kae bench`` knows, by name, whether or not it is available here."""
    kae = tuple(q for q, *_ in ladder_qualities())
    codecs = [
        Codec("kae", ".kae (default quality ladder)", "KAE", kae, (1, 100)),
        Codec(
            "jpeg",
            "JPEG 4:2:0 (optimize)",
            "JPEG",
            _JPEG_QUALITIES,
            (1, 100),
            {"subsampling": 2, "optimize": True},
        ),
        Codec(
            "jpeg444",
            "JPEG 4:4:4 (optimize)",
            "JPEG",
            _JPEG_QUALITIES,
            (1, 100),
            {"subsampling": 0, "optimize": True},
        ),
        Codec(
            "webp",
            "WebP (method 6)",
            "WEBP",
            _WEBP_QUALITIES,
            (0, 100),
            {"method": 6},
            feature="webp",
            needs="a Pillow built with libwebp",
        ),
        Codec(
            "avif",
            "AVIF (speed 6)",
            "AVIF",
            _AVIF_QUALITIES,
            (0, 100),
            {"speed": 6},
            feature="avif",
            needs="a Pillow built with libavif",
        ),
        Codec(
            "jxl",
            "JPEG XL (effort 7)",
            "JXL",
            _JXL_QUALITIES,
            (0, 99),
            {"effort": 7},
            plugin="pillow_jxl",
            needs="pillow-jxl-plugin: pip install 'pillow-kae[bench]'",
        ),
    ]
    codecs.append(
        Codec(
            "kae-effort",
            f".kae (default ladder, effort {BENCH_EFFORT})",
            "KAE",
            kae,
            (1, 100),
            {"effort": BENCH_EFFORT},
            plugin="keras",
            needs="Keras: pip install 'pillow-kae[effort]'",
            default=False,
        )
    )
    codecs += [
        Codec(
            f"kae:{name}",
            f".kae, {name} alone (its gain steps)",
            "KAE",
            _MODEL_QUALITIES,
            (1, 100),
            {"model": name},
            default=False,
        )
        for name, model_card in installed().items()
        if model_card.kind != "seed-dense"  # one rate point: no curve
    ]
    return {codec.name: codec for codec in codecs}
