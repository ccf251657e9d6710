"""Export: int8 storage of the conv kernels, and retiring the weights it replaces.

A tiny random hyperprior is exported twice under one name into a private weights folder;
a file saved with the first export must still open, pixel for pixel, after the second.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pillow_kae import cli, zoo
from pillow_kae.zoo import loader
from pillow_kae.zoo.weights import (
    DELTA_STEP_KEY,
    DELTA_SUFFIX,
    SCALE_SUFFIX,
    LazyArrays,
    assign_weights,
    delta_int8,
    load_arrays,
    quantize_int8,
    save_weights,
)
from tests.conftest import smooth_array

pytest.importorskip("keras")
from pillow_kae import models
from training import export as export_module

ARCH = {"channels": 16, "latent_channels": 16, "hyper_channels": 8}
NAME = "kae-tiny"


def test_int8_kernels_round_within_half_a_step_and_nothing_else_changes(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "g_s/deconv0/kernel": (rng.normal(size=(5, 5, 16, 24)) * 0.05).astype(np.float16),
        "g_a/conv0/bias": rng.normal(size=64).astype(np.float32),
        "h_s/conv0/kernel": (rng.normal(size=(3, 3, 8, 8)) * 0.05).astype(np.float32),  # small
        "entropy_bottleneck/matrix0": rng.normal(size=(64, 3, 1)).astype(np.float32),
    }
    arrays["g_s/deconv0/kernel"][:, :, 3, 5] = 0  # an all-zero filter must not divide by zero
    arrays["slice0/conv2/kernel"] = (rng.normal(size=(3, 3, 96, 64)) * 0.05).astype(np.float32)
    arrays["slice0/conv2/kernel"][:, :, 7, 9] = 1e-9  # below any float16 scale: stored as 0
    with np.errstate(invalid="raise", divide="raise"):
        stored = quantize_int8(arrays)
    assert stored["slice0/conv2/kernel"].dtype == np.int8
    assert not stored["slice0/conv2/kernel"][:, :, 7, 9].any()
    del arrays["slice0/conv2/kernel"], stored["slice0/conv2/kernel"]
    del stored["slice0/conv2/kernel" + SCALE_SUFFIX]
    assert stored["g_s/deconv0/kernel"].dtype == np.int8
    assert stored["g_s/deconv0/kernel" + SCALE_SUFFIX].shape == (16, 24)
    for key in ("g_a/conv0/bias", "h_s/conv0/kernel", "entropy_bottleneck/matrix0"):
        assert stored[key] is arrays[key]

    path = tmp_path / "w.npz"
    np.savez(path, **stored)
    loaded = load_arrays(path)
    lazy = LazyArrays(path.read_bytes())
    assert set(loaded) == set(lazy) == set(arrays)  # the scales are not arrays of the model
    original = arrays["g_s/deconv0/kernel"].astype(np.float32)
    scale = stored["g_s/deconv0/kernel" + SCALE_SUFFIX].astype(np.float32)
    error = np.abs(loaded["g_s/deconv0/kernel"] - original)
    assert loaded["g_s/deconv0/kernel"].dtype == np.float32
    assert np.all(error <= scale * 0.5 + np.abs(original) * 1e-3)  # half a step (+ f16 scale)
    assert not loaded["g_s/deconv0/kernel"][:, :, 3, 5].any()
    np.testing.assert_array_equal(lazy["g_s/deconv0/kernel"], loaded["g_s/deconv0/kernel"])
    np.testing.assert_array_equal(loaded["h_s/conv0/kernel"], arrays["h_s/conv0/kernel"])


def _run(folder: Path, seed: int) -> Path:
    """A run directory holding an untrained tiny model (random weights from ``seed``)."""
    import keras

    keras.utils.set_random_seed(seed)
    folder.mkdir()
    save_weights(models.build("mean-scale-hyperprior", ARCH), folder / "checkpoint.npz")
    config = {"lmbda": 0.01, "arch": ARCH, "data": ["generated"], "lr": 1e-4}
    (folder / "state.json").write_text(json.dumps({"step": 0, "config": config, "history": []}))
    return folder


@pytest.fixture
def weights_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", folder)
    monkeypatch.setattr(export_module, "WEIGHTS_DIR", folder)
    monkeypatch.setattr(loader, "_cache", {})
    zoo.installed.cache_clear()
    zoo.retired.cache_clear()
    yield folder
    zoo.installed.cache_clear()
    zoo.retired.cache_clear()


def test_a_new_export_retires_the_old_weights_and_their_files_still_decode(tmp_path, weights_dir):
    export_module.export(_run(tmp_path / "first", seed=1), NAME)
    first = zoo.card(NAME)
    assert first.storage == "int8"
    with np.load(first.path) as data:
        assert data["g_s/deconv1/kernel"].dtype == np.int8
    pixels = smooth_array(40, 56, seed=3, noise=4.0)
    Image.fromarray(pixels).save(tmp_path / "old.kae", model=NAME, quality=75)
    with Image.open(tmp_path / "old.kae") as im:
        before = np.asarray(im.convert("RGB"))

    export_module.export(_run(tmp_path / "second", seed=2), NAME)
    assert zoo.card(NAME).sha256 != first.sha256
    (old,) = zoo.retired().values()
    assert (old.name, old.sha256) == (NAME, first.sha256)
    assert old.stored_sha256 != first.sha256  # the encoder half is gone...
    with np.load(old.path) as data:
        assert data.files and not [k for k in data.files if k.startswith(("g_a/", "h_a/"))]
    loader._cache.clear()
    with Image.open(tmp_path / "old.kae") as im:  # ...and the decoder is the same, bit for bit
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), before)

    Image.fromarray(pixels).save(tmp_path / "new.kae", model=NAME, quality=75)
    with Image.open(tmp_path / "new.kae") as im:
        assert np.asarray(im.convert("RGB")).shape == pixels.shape

    old.path.write_bytes(old.path.read_bytes()[:-8] + b"damaged!")
    loader._cache.clear()
    with pytest.raises(OSError, match="damaged"), Image.open(tmp_path / "old.kae") as im:
        im.load()


def test_a_retired_decoder_takes_what_it_shares_from_the_installed_weights(tmp_path, weights_dir):
    """An export that leaves the decoder as it was (here only g_a changes, as a context run
    changes only the entropy model) leaves the retired file next to nothing; files of both
    earlier exports decode exactly, even after the installed weights are replaced again."""
    first_run = _run(tmp_path / "first", seed=1)
    export_module.export(first_run, NAME)
    first = zoo.card(NAME)
    pixels = smooth_array(40, 56, seed=3, noise=4.0)
    Image.fromarray(pixels).save(tmp_path / "first.kae", model=NAME, quality=75)
    with Image.open(tmp_path / "first.kae") as im:
        before = np.asarray(im.convert("RGB"))

    arrays = load_arrays(first_run / "checkpoint.npz")
    kernel = next(k for k in arrays if k.startswith("g_a/") and k.endswith("kernel"))
    arrays[kernel] = arrays[kernel] * 1.5
    np.savez(first_run / "checkpoint.npz", **arrays)
    export_module.export(first_run, NAME)
    second = zoo.card(NAME)
    (old,) = zoo.retired().values()
    assert old.sha256 == first.sha256 and old.base == {"name": NAME, "sha256": second.sha256}
    with np.load(old.path) as data:
        assert not [k for k in data.files if k.startswith(("g_s/", "h_s/", "tables/"))]
    loader._cache.clear()
    with Image.open(tmp_path / "first.kae") as im:
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), before)
    assert export_module.share_retired(NAME) == []  # nothing more to share

    Image.fromarray(pixels).save(tmp_path / "second.kae", model=NAME, quality=75)
    with Image.open(tmp_path / "second.kae") as im:
        second_pixels = np.asarray(im.convert("RGB"))
    export_module.export(_run(tmp_path / "third", seed=2), NAME)  # another decoder
    assert {c.sha256 for c in zoo.retired().values()} == {first.sha256, second.sha256}
    with np.load(zoo.retired()[(NAME, second.sha256)].path) as data:
        assert [k for k in data.files if k.startswith("g_s/")]  # the first's, through it
    loader._cache.clear()
    for path, expected in (("first.kae", before), ("second.kae", second_pixels)):
        with Image.open(tmp_path / path) as im:
            np.testing.assert_array_equal(np.asarray(im.convert("RGB")), expected)


def test_int8_storage_leaves_an_unchanged_float16_decoder_as_stored(tmp_path, weights_dir):
    """Re-exported as int8 with the same weights (as a context run leaves the transforms),
    a float16 model gets int8 encoder kernels, but its decoder arrays stay float16 byte for
    byte: the retired decoder shares them all, and its files decode exactly as before."""
    run = _run(tmp_path / "run", seed=1)
    export_module.export(run, NAME, storage="float16")
    first = zoo.card(NAME)
    pixels = smooth_array(40, 56, seed=3, noise=4.0)
    Image.fromarray(pixels).save(tmp_path / "first.kae", model=NAME, quality=75)
    with Image.open(tmp_path / "first.kae") as im:
        before = np.asarray(im.convert("RGB"))
    with np.load(first.path) as data:
        old = {k: data[k] for k in data.files}

    export_module.export(run, NAME, storage="int8")
    second = zoo.card(NAME)
    assert second.sha256 != first.sha256 and second.storage == "mixed"
    with np.load(second.path) as data:
        new = {k: data[k] for k in data.files}
    decoder = [k for k in old if k.startswith(("g_s/", "h_s/")) and old[k].ndim == 4]
    encoder = [k for k in old if k.startswith(("g_a/", "h_a/")) and old[k].ndim == 4]
    assert decoder and encoder
    for key in decoder:
        assert new[key].dtype == old[key].dtype and new[key].tobytes() == old[key].tobytes()
        assert key + SCALE_SUFFIX not in new
    assert any(new[k].dtype == np.int8 for k in encoder)

    (retired,) = zoo.retired().values()
    assert retired.base == {"name": NAME, "sha256": second.sha256}
    with np.load(retired.path) as data:
        assert not [k for k in data.files if k.startswith(("g_s/", "h_s/", "tables/"))]
    loader._cache.clear()
    with Image.open(tmp_path / "first.kae") as im:
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), before)


def test_files_of_unknown_weights_are_refused_naming_both_digests(tmp_path, weights_dir):
    export_module.export(_run(tmp_path / "first", seed=1), NAME)
    Image.fromarray(smooth_array(32, 32, seed=3)).save(tmp_path / "a.kae", model=NAME)
    zoo.card(NAME).path.unlink()
    zoo.card(NAME).path.with_suffix(".json").unlink()
    zoo.installed.cache_clear()
    export_module.export(_run(tmp_path / "second", seed=2), NAME)  # nothing left to retire
    loader._cache.clear()
    assert not zoo.retired()
    refusal = "install the matching pillow-kae version"
    with pytest.raises(OSError, match=refusal), Image.open(tmp_path / "a.kae") as im:
        im.load()


def test_retire_uninstalls_a_model_and_keeps_its_files_decoding(tmp_path, weights_dir):
    export_module.export(_run(tmp_path / "first", seed=1), NAME)
    Image.fromarray(smooth_array(32, 48, seed=3)).save(tmp_path / "a.kae", model=NAME)
    with Image.open(tmp_path / "a.kae") as im:
        before = np.asarray(im.convert("RGB"))
    export_module.retire(NAME, uninstall=True)
    assert NAME not in zoo.installed()
    with pytest.raises(ValueError, match="unknown KAE model"):
        Image.fromarray(before).save(tmp_path / "b.kae", model=NAME)
    assert not (tmp_path / "b.kae").exists()
    loader._cache.clear()
    with Image.open(tmp_path / "a.kae") as im:
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), before)


def test_a_delta_adds_back_to_the_fine_tuned_kernels_within_its_step(tmp_path):
    rng = np.random.default_rng(1)
    base_float = {
        "g_s/deconv0/kernel": (rng.normal(size=(5, 5, 16, 24)) * 0.05).astype(np.float32),
        "g_s/deconv0/bias": rng.normal(size=24).astype(np.float32),
        "tables/y/freqs": np.arange(12, dtype=np.int32),
    }
    base = quantize_int8(base_float)
    scale = base["g_s/deconv0/kernel" + SCALE_SUFFIX].astype(np.float32)
    grid = base["g_s/deconv0/kernel"].astype(np.float32) * scale
    tuned = {k: v.copy() for k, v in base_float.items()}
    tuned["g_s/deconv0/kernel"] = grid + 0.3 * scale  # every weight moved by 0.3 of a step
    tuned["g_s/deconv0/kernel"][0, 0, 0, 0] = 0.5  # far past its filter's peak: not clipped
    tuned["g_s/deconv0/bias"][3] += 0.5
    stored = delta_int8(tuned, base, step=2)
    assert set(stored) == {
        "g_s/deconv0/kernel" + DELTA_SUFFIX,
        "g_s/deconv0/bias",
        DELTA_STEP_KEY,
    }
    assert stored["g_s/deconv0/kernel" + DELTA_SUFFIX].dtype == np.int16  # the one far step
    base_path, delta_path = tmp_path / "base.npz", tmp_path / "delta.npz"
    np.savez_compressed(base_path, **base)
    np.savez_compressed(delta_path, **stored)
    arrays = LazyArrays(delta_path.read_bytes(), LazyArrays(base_path.read_bytes()))
    assert set(arrays) == set(tuned)
    moved = (arrays["g_s/deconv0/kernel"] - grid) / scale
    assert np.all(np.abs(arrays["g_s/deconv0/kernel"] - tuned["g_s/deconv0/kernel"]) < 2 * scale)
    # Unbiased: the 0.3 of a step survives on average (rounding to the grid would give 0).
    assert abs(float(np.mean(moved.ravel()[1:])) - 0.3) < 0.05
    np.testing.assert_array_equal(arrays["g_s/deconv0/bias"], tuned["g_s/deconv0/bias"])
    np.testing.assert_array_equal(arrays["tables/y/freqs"], base["tables/y/freqs"])


def _fine_tune(run: Path, folder: Path, noise: float) -> Path:
    """A run directory holding ``run``'s weights moved a little (a stand-in fine-tune)."""
    import keras

    model = models.build("mean-scale-hyperprior", ARCH)
    assign_weights(model, load_arrays(run / "checkpoint.npz"))
    rng = np.random.default_rng(7)
    for variable in model.weights:
        value = np.asarray(variable.numpy())
        variable.assign(value + noise * rng.normal(size=value.shape).astype(value.dtype))
    folder.mkdir()
    save_weights(model, folder / "checkpoint.npz")
    (folder / "state.json").write_text((run / "state.json").read_text())
    keras.backend.clear_session()
    return folder


def test_a_model_stored_as_a_delta_codes_and_pins_its_base(tmp_path, weights_dir, capsys):
    base_run = _run(tmp_path / "base", seed=1)
    export_module.export(base_run, NAME)
    tuned = "kae-tiny-cats"
    export_module.export(
        _fine_tune(base_run, tmp_path / "tuned", 1e-3), tuned, base=NAME, delta_step=3
    )
    card = zoo.card(tuned)
    assert card.base == {"name": NAME, "sha256": zoo.card(NAME).sha256}
    assert cli.main(["models"]) == 0
    assert f"{tuned}  " in (listing := capsys.readouterr().out) and f"+ {NAME}" in listing
    assert card.path.stat().st_size < zoo.card(NAME).path.stat().st_size
    with np.load(card.path) as stored, np.load(zoo.card(NAME).path) as base:
        kernels = {k.removesuffix(SCALE_SUFFIX) for k in base.files if SCALE_SUFFIX in k}
        assert kernels == {k.removesuffix(DELTA_SUFFIX) for k in stored.files if DELTA_SUFFIX in k}
        assert not [k for k in stored.files if k.endswith(SCALE_SUFFIX) or "tables/y" in k]
        assert int(stored[DELTA_STEP_KEY]) == 3
    pixels = smooth_array(40, 56, seed=3, noise=4.0)
    Image.fromarray(pixels).save(tmp_path / "a.kae", model=tuned, quality=75)
    Image.fromarray(pixels).save(tmp_path / "b.kae", model=NAME, quality=75)
    assert (tmp_path / "a.kae").read_bytes() != (tmp_path / "b.kae").read_bytes()
    with Image.open(tmp_path / "a.kae") as im:
        before = np.asarray(im.convert("RGB"))
    loader._cache.clear()
    with Image.open(tmp_path / "a.kae") as im:
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), before)

    with pytest.raises(ValueError, match="kae-tiny-cats is stored as a delta of 'kae-tiny'"):
        export_module.export(_run(tmp_path / "other", seed=2), NAME)
    with pytest.raises(ValueError, match="stored as a delta"):
        export_module.retire(NAME, uninstall=True)
    with pytest.raises(ValueError, match="another installed int8 model"):
        export_module.export(base_run, "kae-tiny-dogs", base=tuned)  # no chains

    export_module.retire(tuned, uninstall=True)  # its decoder stays, still a delta
    loader._cache.clear()
    with Image.open(tmp_path / "a.kae") as im:
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), before)
    export_module.retire(NAME, uninstall=True)  # now allowed: the base's decoder stays too
    loader._cache.clear()
    with Image.open(tmp_path / "a.kae") as im:
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), before)


def test_a_delta_whose_base_is_gone_is_refused_clearly(tmp_path, weights_dir):
    base_run = _run(tmp_path / "base", seed=1)
    export_module.export(base_run, NAME)
    export_module.export(_fine_tune(base_run, tmp_path / "tuned", 1e-3), "kae-tiny-cats", base=NAME)
    Image.fromarray(smooth_array(32, 32, seed=3)).save(tmp_path / "a.kae", model="kae-tiny-cats")
    zoo.card(NAME).path.unlink()
    zoo.card(NAME).path.with_suffix(".json").unlink()
    zoo.installed.cache_clear()
    loader._cache.clear()
    refusal = "stored as a delta of 'kae-tiny', which cannot be loaded"
    with pytest.raises(OSError, match=refusal), Image.open(tmp_path / "a.kae") as im:
        im.load()
