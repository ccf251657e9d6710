"""The ``effort`` save option: encoder-side refinement of the symbols (pillow_kae.refinement).

The shipped kae-mid on small crops (a few latents), so a search of a few steps is quick
under any Keras backend.
"""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pillow_kae import codec, container, refinement
from pillow_kae.bench import codecs
from pillow_kae.zoo import loader
from tests.conftest import SAMPLES, decode, encode


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.open(SAMPLES / "coffee.png").convert("RGB").crop((0, 0, 200, 150))


def cost(bits: int, decoded: np.ndarray, original: np.ndarray, lmbda: float) -> float:
    """What refinement minimises: bpp + lambda * 255^2 * MSE (pixels on a 0-1 scale)."""
    mse = float(np.mean((decoded.astype(np.float64) - original) ** 2)) / 255.0**2
    return bits / original[..., 0].size + lmbda * 255.0**2 * mse


def objective(data: bytes, original: Image.Image, lmbda: float) -> float:
    """``cost`` measured on the real file."""
    return cost(8 * len(data), np.asarray(decode(data)), np.asarray(original), lmbda)


@pytest.mark.parametrize("quality", [40, 75])
def test_effort_lowers_the_rate_distortion_cost_of_the_file(
    photo: Image.Image, quality: int
) -> None:
    """Same model, step and decoder; the searched symbols cost less than rounding g_a's y.

    Without the restoration filter, which the encoder fits afterwards to whichever symbols
    it has (the search does not see it)."""
    model = loader.load("kae-mid")
    base = encode(photo, model="kae-mid", quality=quality, restore=False)
    refined = encode(photo, model="kae-mid", quality=quality, effort=3, restore=False)
    header, _ = container.read_header(io.BytesIO(refined))
    assert header == container.read_header(io.BytesIO(base))[0]  # an ordinary file
    lmbda = model.card.lmbda * codec.gain(header.step) ** 2
    assert objective(refined, photo, lmbda) < objective(base, photo, lmbda)


def test_effort_codes_an_image_the_same_whatever_was_coded_before(photo: Image.Image) -> None:
    """The search is seeded and anneals in order: the same pixels give the same file, in a
    fresh search or one reused after another image."""
    first = encode(photo, model="kae-mid", quality=60, effort=2, restore=False)
    encode(photo.transpose(Image.Transpose.ROTATE_180), model="kae-mid", quality=60, effort=2)
    assert encode(photo, model="kae-mid", quality=60, effort=2, restore=False) == first


def test_effort_in_windows_decodes_without_a_seam(
    photo: Image.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several refinement windows and tiles: every window is searched, the file decodes."""
    monkeypatch.setattr(codec, "SINGLE_PASS_PIXELS", 0)
    monkeypatch.setattr(codec, "TRANSFORM_WINDOW", 64)
    model = loader.load("kae-mid")
    pixels = np.asarray(photo)
    base = codec.encode_image(model, pixels, 0, tile_size=128)
    refined = codec.encode_image(model, pixels, 0, tile_size=128, effort=2)
    assert len(refined) == len(base) == 4
    out = codec.decode_image(model, refined, 200, 150, 0, 128, 2)
    error = np.abs(out.astype(np.int16) - pixels).mean(axis=2)
    # No window border stands out: the error on the rows and columns where windows meet
    # (64 and 128 px, padded centred by 21 and 7) is like that of the image as a whole.
    for row in (64 - 21, 128 - 21):
        assert error[row - 2 : row + 2].mean() < 2.0 * error.mean()
    for col in (64 - 28, 128 - 28):
        assert error[:, col - 2 : col + 2].mean() < 2.0 * error.mean()
    # ... and the windows, searched apart, still lower what refinement minimises overall.
    base_out = codec.decode_image(model, base, 200, 150, 0, 128, 2)
    lmbda = model.card.lmbda
    refined_cost = cost(8 * sum(map(len, refined)), out, pixels, lmbda)
    assert refined_cost < cost(8 * sum(map(len, base)), base_out, pixels, lmbda)


def test_with_several_rate_points_the_winner_alone_is_refined(photo: Image.Image) -> None:
    """Where the ladder offers the model below as well, the choice is made without effort
    and only the point it keeps is searched: the file is that point's refined file."""
    pixels = np.asarray(photo.crop((0, 0, 96, 64)))
    points = [(loader.load("kae-mid"), -4.0), (loader.load("kae-low"), 2.5)]
    chosen = codec.encode_best(points, pixels, restore=False)
    refined = codec.encode_best(points, pixels, effort=1, restore=False)
    assert (refined.model, refined.gain_step) == (chosen.model, chosen.gain_step)
    alone = codec.encode_best([(chosen.model, chosen.gain_step)], pixels, effort=1, restore=False)
    assert refined.payloads == alone.payloads


@pytest.mark.parametrize("effort", [-1, 10, 2.5, "3", True, None])
def test_a_bad_effort_is_refused_and_nothing_is_written(
    photo: Image.Image, effort: object, tmp_path: pytest.TempPathFactory
) -> None:
    target = tmp_path / "x.kae"
    with pytest.raises(ValueError, match="effort"):
        photo.save(target, effort=effort)
    assert not target.exists()


def test_effort_zero_is_the_plain_encoder(photo: Image.Image) -> None:
    assert encode(photo, effort=0) == encode(photo)


def test_models_without_a_search_refuse_effort(photo: Image.Image) -> None:
    with pytest.raises(ValueError, match="effort"):
        encode(photo, model="seed-dense", effort=1)


def test_temperatures_anneal_from_start_to_end() -> None:
    taus = refinement.temperatures(20)
    assert taus[0] == pytest.approx(refinement.TAU_START)
    assert taus[-1] == pytest.approx(refinement.TAU_END)
    assert np.all(np.diff(taus) <= 0)
    assert refinement.steps_for(0) == 0
    assert list(refinement.EFFORT_STEPS) == sorted(set(refinement.EFFORT_STEPS))


def test_bench_knows_the_ladder_with_effort() -> None:
    known = codecs.registry()
    searched = known["kae-effort"]
    assert not searched.default
    assert searched.qualities == known["kae"].qualities
    assert searched.options == {"effort": codecs.BENCH_EFFORT}


def test_cli_refuses_an_effort_out_of_range(tmp_path: pytest.TempPathFactory) -> None:
    src = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(src)
    result = subprocess.run(
        [sys.executable, "-m", "pillow_kae.cli", "encode", "--effort", "12", str(src), "b.kae"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "effort" in result.stderr
    assert not (tmp_path / "b.kae").exists()
