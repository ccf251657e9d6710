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

from pillow_kae import zoo
from pillow_kae.zoo import loader
from pillow_kae.zoo.weights import (
    SCALE_SUFFIX,
    LazyArrays,
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
    stored = quantize_int8(arrays)
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
