"""The seed-dense model as a codec, ``surprise`` and ``features``."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import pillow_kae
from pillow_kae import cli, container
from pillow_kae.zoo import installed
from tests.conftest import decode, encode, psnr, smooth_array

SEED = "seed-dense"
needs_seed = pytest.mark.skipif(SEED not in installed(), reason="seed-dense not installed")


@needs_seed
@pytest.mark.parametrize(("width", "height"), [(1, 1), (17, 5), (49, 50), (100, 7)])
def test_seed_dense_round_trip_any_size(width, height):
    original = Image.fromarray(smooth_array(width, height), "RGB")
    data = encode(original, model=SEED)
    with Image.open(io.BytesIO(data)) as im:
        assert im.info["kae_model"] == SEED
    out = decode(data)
    assert out.size == (width, height)
    assert out.mode == "RGB"
    if width * height >= 85:
        assert psnr(np.asarray(original), np.asarray(out)) > 18


@needs_seed
@pytest.mark.parametrize("mode", ["L", "RGBA", "LA"])
def test_seed_dense_round_trip_modes(mode):
    channels = {"L": 1, "RGBA": 4, "LA": 2}[mode]
    array = smooth_array(30, 20, channels)
    out = decode(encode(Image.fromarray(array, mode), model=SEED))
    assert (out.mode, out.size) == (mode, (30, 20))
    if mode in ("RGBA", "LA"):
        assert np.array_equal(np.asarray(out)[..., -1], array[..., -1])


@needs_seed
def test_seed_dense_rejects_gain_step():
    with pytest.raises(ValueError, match="gain step"):
        encode(Image.new("RGB", (8, 8)), model=SEED, gain_step=2)


def test_surprise_is_lower_for_flat_than_for_noise():
    # (Not asserted for seed-dense: its encoder cannot represent noise at all and spends
    # fewer bits on it than on a flat block - a limit of the blog's model, not of the score.)
    flat = Image.new("RGB", (96, 96), (120, 90, 60))
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (96, 96, 3), np.uint8))
    assert 0 < pillow_kae.surprise(flat) < pillow_kae.surprise(noise)


@pytest.mark.parametrize("model", [None, pytest.param(SEED, marks=needs_seed)])
def test_surprise_matches_the_coded_size(model):
    image = Image.fromarray(smooth_array(70, 40), "RGB")
    bits = pillow_kae.surprise(image, model=model, quality=50) * 70 * 40
    kae = container.read(io.BytesIO(encode(image, model=model, quality=50)))
    # the tiles' payloads exactly: not the header, nor restoration filters (whether a filter
    # pays depends on the CPU's float arithmetic in g_s)
    assert 0 < bits == 8 * sum(map(len, kae.tiles))


def test_surprise_with_a_reference_is_the_ratio_of_bits():
    image = Image.fromarray(smooth_array(70, 40), "RGB")
    low = pillow_kae.surprise(image, model="kae-low", quality=75)
    mid = pillow_kae.surprise(image, model="kae-mid", quality=75)
    ratio = pillow_kae.surprise(image, model="kae-low", quality=75, reference="kae-mid")
    assert ratio == pytest.approx(low / mid, rel=1e-12)
    assert pillow_kae.surprise(image, model="kae-mid", reference="kae-mid") == 1.0
    with pytest.raises(ValueError, match="unknown KAE model"):
        pillow_kae.surprise(image, reference="nope")


def test_surprise_rejects_bad_input():
    with pytest.raises(TypeError):
        pillow_kae.surprise(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="unknown KAE model"):
        pillow_kae.surprise(Image.new("RGB", (4, 4)), model="nope")


def _default_latent_channels() -> int:
    """y's depth for the model that features() uses by default (the one quality 75 uses)."""
    from pillow_kae.zoo import card
    from pillow_kae.zoo import quality as ladder

    return card(ladder.choose(75)[0]).arch["latent_channels"]


def test_features_shape_and_determinism():
    image = Image.fromarray(smooth_array(70, 33), "RGB")
    first = pillow_kae.features(image)
    assert first.shape == (3, 5, _default_latent_channels())
    assert first.dtype == np.float32
    assert np.array_equal(first, pillow_kae.features(image))
    assert np.abs(first).max() > 0


def test_features_across_tiles_match_each_tile():
    """A wide image is processed in 1024-pixel tiles; each tile's block is its own latent."""
    array = smooth_array(1040, 20)
    whole = pillow_kae.features(Image.fromarray(array, "RGB"))
    assert whole.shape == (2, 65, _default_latent_channels())
    left = pillow_kae.features(Image.fromarray(array[:, :1024], "RGB"))
    assert np.array_equal(whole[:, :64], left)


@needs_seed
def test_features_seed_dense_blocks():
    image = Image.fromarray(smooth_array(100, 49), "RGB")
    assert pillow_kae.features(image, model=SEED).shape == (2, 3, 1728)


def test_cli_surprise(tmp_path, capsys):
    path = tmp_path / "x.png"
    Image.fromarray(smooth_array(40, 30), "RGB").save(path)
    assert cli.main(["surprise", str(path)]) == 0
    score, name = capsys.readouterr().out.split("\t")
    assert float(score) > 0
    assert name.strip() == str(path)
    assert cli.main(["surprise", str(tmp_path / "missing.png")]) == 1
    assert "kae: error:" in capsys.readouterr().err
    argv = ["surprise", str(path), "--model", "kae-mid", "--reference", "kae-mid"]
    assert cli.main(argv) == 0
    assert float(capsys.readouterr().out.split("\t")[0]) == 1.0
    assert cli.main(["surprise", str(path), "--reference", "nope"]) == 1
