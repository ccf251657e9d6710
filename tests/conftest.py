"""Shared fixtures: tiny generated images and files encoded once per session.

The model pads every tile to a multiple of 64 pixels, so images here stay at or below
a few tiles of 64x64; the runtime is warmed up once by the first session fixture that
encodes.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pillow_kae  # noqa: F401  (registers the KAE plugin)

# The runtime's graph cache goes to a fresh folder: tests never read or fill the user's.
os.environ["KAE_CACHE_DIR"] = tempfile.mkdtemp(prefix="kae-graph-cache-")

SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"


def smooth_array(
    width: int, height: int, channels: int = 3, seed: int = 0, noise: float = 2.0
) -> np.ndarray:
    """A smooth colour gradient plus a little noise, uint8 (height, width[, channels]).

    The slope is at most ~170 levels per 64 pixels whatever the size, so a tiny image is
    smooth too (the model pads to 64x64 and sees 16x16 pixels per latent).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    u = xx / max(width - 1, 63)
    v = yy / max(height - 1, 63)
    planes = [
        40 + 170 * u,
        60 + 150 * v,
        200 - 120 * (u + v) / 2,
        90 + 100 * u * v,
    ]
    stack = np.stack(planes[:channels], axis=-1) + rng.normal(0, noise, (height, width, channels))
    out = np.clip(np.rint(stack), 0, 255).astype(np.uint8)
    return out[..., 0] if channels == 1 else out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = float(np.mean(diff * diff))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def encode(im: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, "KAE", **params)
    return buffer.getvalue()


def in_version(data: bytes, version: int | None = None) -> bytes:
    """``data`` (a file ``Image.save`` wrote) in the container of an older ``version``, as
    an older pillow-kae wrote it: the whole weights digest and the model's fixed fields in
    ``KHDR``, and ``KEND``. By default the lowest version before 8 that holds the file."""
    from pillow_kae import container
    from pillow_kae.zoo import loader

    kae = container.read(io.BytesIO(data))
    header = kae.header
    model = loader.load(header.model_name, header.weights_hash)
    if version is None:
        if kae.restoration is not None:
            version = container.CASCADE_RESTORATION_VERSION
        elif header.step != int(header.step):
            version = container.FINE_GAIN_VERSION
        else:
            version = container.CHANNEL_CONDITIONAL_VERSION if model.slices else 2
    fields = {
        **header.__dict__,
        "version": version,
        "weights_hash": model.card.digest[: container.weights_hash_length(version)],
        "gain_step": container.Header.gain_step_field(header.step, version),
    }
    if version < container.COMPACT_VERSION:
        fields.update({name: getattr(model, name) for name in container.MODEL_FIELDS})
    kae.header = container.Header(**fields)
    return container.dumps(kae)


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data), formats=["KAE"]) as im:
        im.load()
        return im.copy()


@pytest.fixture
def make_image() -> Callable[..., Image.Image]:
    """Factory: make_image(width, height, mode="RGB", seed=0) -> a smooth noisy image."""

    def factory(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
        if mode == "RGB":
            return Image.fromarray(smooth_array(width, height, 3, seed), "RGB")
        if mode == "L":
            return Image.fromarray(smooth_array(width, height, 1, seed), "L")
        if mode == "RGBA":
            return Image.fromarray(smooth_array(width, height, 4, seed), "RGBA")
        if mode == "LA":
            arr = smooth_array(width, height, 4, seed)[..., [0, 3]]
            return Image.fromarray(np.ascontiguousarray(arr), "LA")
        raise ValueError(mode)

    return factory


@pytest.fixture
def roundtrip() -> Callable[..., tuple[bytes, Image.Image]]:
    """roundtrip(im, **save_params) -> (file bytes, decoded image)."""

    def run(im: Image.Image, **params: object) -> tuple[bytes, Image.Image]:
        data = encode(im, **params)
        return data, decode(data)

    return run


@pytest.fixture(scope="session")
def kae_encode() -> Callable[..., bytes]:
    """kae_encode(im, **save_params) -> the .kae file's bytes."""
    return encode


@pytest.fixture(scope="session")
def kae_decode() -> Callable[[bytes], Image.Image]:
    """kae_decode(data) -> the loaded image (opened with formats=["KAE"])."""
    return decode


@pytest.fixture(scope="session")
def as_version() -> Callable[..., bytes]:
    """``as_version(data, version=None)``: a file in an older container (``in_version``)."""
    return in_version


@pytest.fixture(scope="session")
def psnr_db() -> Callable[[np.ndarray, np.ndarray], float]:
    return psnr


@pytest.fixture(scope="session")
def smooth() -> Callable[..., np.ndarray]:
    """smooth(width, height, channels=3, seed=0, noise=2.0) -> uint8 array."""
    return smooth_array


@pytest.fixture(scope="session")
def small_rgb() -> Image.Image:
    """20x20 RGB source image."""
    return Image.fromarray(smooth_array(20, 20, 3, seed=7), "RGB")


@pytest.fixture(scope="session")
def small_kae(small_rgb: Image.Image) -> bytes:
    """The 20x20 RGB image encoded once (default quality and model)."""
    return encode(small_rgb)


@pytest.fixture(scope="session")
def small_kae_pixels(small_kae: bytes) -> np.ndarray:
    """What ``small_kae`` decodes to."""
    return np.asarray(decode(small_kae))


@pytest.fixture(scope="session")
def chelsea_icc() -> bytes:
    with Image.open(SAMPLES / "chelsea.png") as im:
        icc = im.info["icc_profile"]
    assert isinstance(icc, bytes) and icc
    return icc
