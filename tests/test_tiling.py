"""Seamless tiles (format version 2): tiling changes neither y nor the pixels g_s makes."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from pillow_kae import codec, container
from pillow_kae.metrics import boundary_scores
from pillow_kae.zoo import loader

MODEL = "kae-mid"  # a plain hyperprior: its means do not depend on the tiles


@pytest.fixture(scope="module")
def model() -> loader.CodecModel:
    return loader.load(MODEL)


@pytest.fixture(scope="module")
def pixels(smooth) -> np.ndarray:
    """200x150: not a multiple of 64, so the centred padding is part of every check."""
    return smooth(200, 150, 3, seed=4, noise=4.0)


def test_windowed_analysis_equals_the_whole_image(model, pixels):
    whole = codec.analysis(model, pixels, centred=True)
    assert np.allclose(codec.analysis_grid(model, pixels, window=64), whole, atol=1e-4)


def test_tiles_see_enough_of_the_latent_grid(model, pixels):
    """y is the whole image's; each tile's ẑ, computed from its y plus ``HYPER_CONTEXT``
    latents around it, is the ẑ of the whole grid (up to a float rounding tie)."""
    y, z_tiled = codec._latent_grids(model, pixels, 64)  # 12 tiles of the padded 256x192
    assert np.array_equal(y, codec.analysis_grid(model, pixels))
    _, z_whole = codec._latent_grids(model, pixels, 1024)
    assert z_tiled.shape == z_whole.shape == (3, 4, 128)
    assert z_tiled.dtype == np.int64
    assert np.mean(z_tiled == z_whole) > 0.99


def test_windowed_synthesis_equals_the_whole_image(model, pixels, monkeypatch):
    y_hat = np.rint(codec.analysis(model, pixels, centred=True))
    whole = codec.synthesis(model, y_hat, 200, 150, window=4096)
    tiled = codec.synthesis(model, y_hat, 200, 150, window=64)
    difference = np.abs(whole.astype(np.int16) - tiled.astype(np.int16))
    assert difference.max() <= 1  # float rounding only
    assert np.mean(difference > 0) < 0.01
    # The margin is the least that works: one latent less leaves a visible grid.
    monkeypatch.setattr(codec, "SYNTHESIS_MARGIN", codec.SYNTHESIS_MARGIN - 1)
    short = codec.synthesis(model, y_hat, 200, 150, window=64)
    assert np.abs(whole.astype(np.int16) - short.astype(np.int16)).max() > 4


def test_tile_params_equal_h_s_of_the_whole_grid(model):
    rng = np.random.default_rng(3)
    z_grid = rng.integers(-6, 7, (3, 5, model.hyper_channels))
    whole = codec._params(model, z_grid, 0)
    for box in codec.tiles(320, 192, 64):
        means, indices = codec._tile_params(model, z_grid, box, 0)
        rows, cols = slice(box[1] // 16, box[3] // 16), slice(box[0] // 16, box[2] // 16)
        assert np.array_equal(indices, whole[1][rows, cols])
        assert np.array_equal(means, whole[0][rows, cols])


def test_tiled_file_decodes_like_one_tile(smooth, kae_encode, kae_decode, monkeypatch):
    """Only the entropy coding is tiled: the pixels are those of a one-tile file (before
    the restoration filter, which the encoder fits to the file's bits, tiles included).
    (A hyperprior model's: slice models' context stops at the tile's edge.)"""
    original = Image.fromarray(smooth(320, 192, 3, seed=2, noise=3.0))
    options = {"model": MODEL, "quality": 30, "restore": False}
    one_tile = np.asarray(kae_decode(kae_encode(original, **options)))
    monkeypatch.setattr(codec, "TILE_SIZE", 128)
    tiled = np.asarray(kae_decode(kae_encode(original, **options)))
    assert np.abs(tiled.astype(np.int16) - one_tile.astype(np.int16)).max() <= 1


@pytest.mark.parametrize("quality", [75, 20])
def test_no_seams_at_tile_boundaries(smooth, kae_encode, kae_decode, monkeypatch, quality):
    """Tiles of 128 pixels on a smooth 320x192 photo-like image: no boundary stands out.

    Format version 1 (tiles coded on their own) put the tile columns 16 deviations above
    the median here; peers (WebP, AVIF) stay below about 9 anywhere. At quality 20 the
    model (kae-low) codes in channel slices and a checkerboard, whose context stops at a
    tile's edge: that moves the means ŷ is rounded around there, not the pixels' level.
    """
    monkeypatch.setattr(codec, "TILE_SIZE", 128)
    original = smooth(320, 192, 3, seed=1, noise=3.0)
    data = kae_encode(Image.fromarray(original), quality=quality)
    header = container.read(io.BytesIO(data)).header
    assert (header.tile_size, header.tile_count) == (128, 6)
    assert header.version == container.COMPACT_VERSION
    decoded = np.asarray(kae_decode(data))
    columns = boundary_scores(original, decoded)
    rows = boundary_scores(original.transpose(1, 0, 2), decoded.transpose(1, 0, 2))
    at_tiles = [columns[127], columns[255], rows[127]]
    assert max(at_tiles) <= 10, at_tiles


def _with_header(data: bytes, **changes: object) -> bytes:
    kae = container.read(io.BytesIO(data))
    return container.dumps(
        dataclasses.replace(kae, header=dataclasses.replace(kae.header, **changes))
    )


def test_version_1_single_tile_files_decode(small_rgb, kae_encode, kae_decode, as_version):
    # With one tile, versions 1 and 2 code the same bitstream (at a whole gain step).
    v8 = kae_encode(small_rgb, quality=75, model="kae-mid", restore=False)  # gain step 0
    v2 = as_version(v8)
    assert container.read(io.BytesIO(v2)).header.version == 2
    v1 = _with_header(v2, version=1)
    decoded = np.asarray(kae_decode(v8))
    assert np.array_equal(np.asarray(kae_decode(v1)), decoded)
    assert np.array_equal(np.asarray(kae_decode(v2)), decoded)


def test_version_1_multi_tile_files_decode(model, pixels, kae_decode):
    """Version 1 coded every tile as an image of its own: such a file still decodes."""
    boxes = codec.tiles(200, 150, 128)
    payloads, expected = [], np.zeros_like(pixels)
    for left, top, right, bottom in boxes:
        tile = np.ascontiguousarray(pixels[top:bottom, left:right])
        (payload,) = codec.encode_image(model, tile, 0)
        payloads.append(payload)
        expected[top:bottom, left:right] = codec.decode_image(
            model, [payload], right - left, bottom - top, 0, 1024, 2
        )
    header = container.Header(
        width=200,
        height=150,
        mode="RGB",
        model_name=MODEL,
        weights_hash=model.card.digest,
        quality=75,
        tile_size=128,
        latent_channels=model.latent_channels,
        hyper_channels=model.hyper_channels,
        stride=model.stride,
        hyper_stride=model.hyper_stride,
        gain_step=0,
        version=1,
    )
    data = container.dumps(container.KaeFile(header, payloads))
    assert np.array_equal(np.asarray(kae_decode(data)), expected)


def test_version_3_naming_a_model_without_slices_is_refused(
    small_rgb, kae_encode, kae_decode, as_version
):
    # Version 2 (no restoration filter): whole steps fit version 3.
    whole_step = as_version(kae_encode(small_rgb, gain_step=-2, restore=False))
    with pytest.raises(OSError, match="version 3 does not match"):
        kae_decode(_with_header(whole_step, version=3))


def test_unknown_version_is_refused(small_kae):
    kae = container.read(io.BytesIO(small_kae))
    packed = bytearray(kae.header.pack())
    packed[0] = 9
    with pytest.raises(container.KaeFormatError, match="version 9"):
        container.Header.unpack(bytes(packed))
