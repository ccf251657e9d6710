"""Uses of a trained model beyond files: how surprising an image is, and its features.

``surprise`` is the rate the model's entropy model spends on an image: images like the
training data are cheap, unfamiliar ones are expensive (the seed's "is this a kitten?").
``features`` is the encoder half's output, for use by other models.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pillow_kae.zoo import quality as quality_ladder

DEFAULT_QUALITY = 75


def _rgb(img: Image.Image) -> np.ndarray:
    if not isinstance(img, Image.Image):
        raise TypeError(f"expected a PIL.Image.Image, not {type(img).__name__}")
    if img.width < 1 or img.height < 1:
        raise ValueError("empty image")
    return np.asarray(img.convert("RGB"))


def _coded_bits(rgb: np.ndarray, model: str | None, quality: int) -> int:
    """Bits of the entropy-coded payloads of ``rgb`` (no container, no file)."""
    from pillow_kae import codec
    from pillow_kae.zoo import loader

    name, step = quality_ladder.choose(quality, model)
    coder = loader.load(name)
    if coder.kind == "seed-dense":
        step = 0
    return 8 * sum(len(payload) for payload in codec.encode_image(coder, rgb, step))


def surprise(
    img: Image.Image,
    model: str | None = None,
    quality: int = DEFAULT_QUALITY,
    reference: str | None = None,
) -> float:
    """How unlike ``model``'s training data ``img`` is (lower = more familiar).

    Without ``reference``: the bits per pixel ``model``'s entropy coder needs for ``img``
    (payloads only, no file is written). With it: the bits ``model`` needs divided by the
    bits ``reference`` needs at the same ``quality``. A single rate mostly measures how
    complex the image is; the ratio of a domain model to a general one cancels that, so
    ``surprise(img, model="kae-kittens", reference="kae-mid")`` asks "is this a kitten?".
    """
    rgb = _rgb(img)
    bits = _coded_bits(rgb, model, quality)
    if reference is not None:
        return bits / max(_coded_bits(rgb, reference, quality), 1)
    height, width = rgb.shape[:2]
    return bits / (width * height)


def features(img: Image.Image, model: str | None = None) -> np.ndarray:
    """The encoder half's output for ``img``, float32, one vector per latent position.

    Shape (ceil(H/16), ceil(W/16), 192) for the conv models (y = g_a(x), one 192-vector
    per 16x16 pixels), (ceil(H/48), ceil(W/48), 1728) for seed-dense (one bottleneck per
    48x48 block, edges padded by replication). The image is processed in tiles, so memory
    stays bounded; the default model is the one ``quality=75`` uses.
    """
    from pillow_kae import codec
    from pillow_kae.zoo import loader

    name, _ = quality_ladder.choose(DEFAULT_QUALITY, model)
    coder = loader.load(name)
    rgb = _rgb(img)
    height, width = rgb.shape[:2]
    stride = coder.stride
    tile = codec.TILE_SIZE // stride * stride  # tiles must cut on latent boundaries
    out = np.zeros((-(-height // stride), -(-width // stride), coder.latent_channels), np.float32)
    for left, top, right, bottom in codec.tiles(width, height, tile):
        pixels = rgb[top:bottom, left:right]
        if coder.kind == "seed-dense":
            latent = codec.block_latents(coder, pixels)
        else:
            latent = codec.analysis(coder, pixels)
        rows, cols = -(-(bottom - top) // stride), -(-(right - left) // stride)
        out[top // stride : top // stride + rows, left // stride : left // stride + cols] = latent[
            :rows, :cols
        ]
    return out
