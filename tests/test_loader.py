"""The model cache: one build per part across threads, never stale, loads verified bytes."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pillow_kae import container, zoo
from pillow_kae.zoo import loader
from tests.conftest import psnr

MODEL = "kae-low"


@pytest.fixture
def weights_dir(tmp_path, monkeypatch) -> Path:
    """A private copy of one shipped model as the installed set, with a fresh cache."""
    for suffix in (".json", ".npz"):
        shutil.copy(zoo.WEIGHTS_DIR / f"{MODEL}{suffix}", tmp_path)
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(loader, "_cache", {})
    zoo.installed.cache_clear()
    yield tmp_path
    zoo.installed.cache_clear()


def test_parts_are_built_once_across_threads(weights_dir, monkeypatch):
    builds = []
    original = loader.FixedPointHyperSynthesis

    def slow_build(arrays: dict) -> object:
        builds.append(1)
        time.sleep(0.05)  # widen the window in which a second thread could start a build
        return original(arrays)

    monkeypatch.setattr(loader, "FixedPointHyperSynthesis", slow_build)
    model = loader.load(MODEL)
    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(model.hyper_synthesis)) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1
    assert all(part is results[0] for part in results)


def test_reexported_model_is_not_served_from_the_cache(weights_dir):
    old = loader.load(MODEL)
    # What an in-process ``training export`` does: new weights, new card, installed() cleared.
    arrays = dict(np.load(weights_dir / f"{MODEL}.npz"))
    arrays["tables/z/offsets"] = arrays["tables/z/offsets"].copy()  # same values, new file
    np.savez_compressed(weights_dir / f"{MODEL}.npz", extra=np.zeros(1), **arrays)
    card = json.loads((weights_dir / f"{MODEL}.json").read_text())
    import hashlib

    card["sha256"] = hashlib.sha256((weights_dir / f"{MODEL}.npz").read_bytes()).hexdigest()
    (weights_dir / f"{MODEL}.json").write_text(json.dumps(card))
    zoo.installed.cache_clear()
    new = loader.load(MODEL)
    assert new is not old
    assert new.card.sha256 == card["sha256"] != old.card.sha256


def test_loads_the_bytes_it_verified(weights_dir, monkeypatch):
    """If the file changes after it was hashed, the model still comes from the hashed bytes."""
    path = weights_dir / f"{MODEL}.npz"
    verified = path.read_bytes()
    path.write_bytes(b"replaced after the hash check")
    original = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        return verified if self == path else original(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    model = loader.load(MODEL)
    assert model.z_coder is not None  # parsed from the verified bytes, not the replaced file


OLD_FILES = Path(__file__).resolve().parent / "data" / "retired"
VERSION_FILES = Path(__file__).resolve().parent / "data" / "versions"


@pytest.mark.parametrize("path", sorted(OLD_FILES.glob("*.kae")), ids=lambda p: p.stem)
def test_files_of_earlier_weights_keep_decoding(path):
    """Files saved before their model was re-exported (``tests/data/retired``).

    Each sits beside the PNG it decoded to on the day it was made; decoding it now (through
    the retired decoder once a new export took its name) must give those pixels, up to the
    float convolutions of another CPU: g_s runs in bfloat16 where the CPU has it, and a
    file made on one without decodes a few levels off there (the restoration filter, exact
    itself, starts from those pixels).
    """
    with Image.open(path) as im:
        decoded = np.asarray(im.convert("RGB"))
    with Image.open(path.with_suffix(".png")) as im:
        reference = np.asarray(im.convert("RGB"))
    assert decoded.shape == reference.shape
    assert np.abs(decoded.astype(int) - reference).max() <= 8 and psnr(decoded, reference) > 50


#: Files written before version 8, which name their weights by the whole digest (named
#: NAME-DIGEST12.kae when a retired decoder reads them; the later ones name the weights by
#: its first bytes already, and decode above).
#: A version 5 or 6 file's restoration filter has no version 8 form; those stay out.
FULL_DIGEST_FILES = [
    p
    for p in [*sorted(OLD_FILES.glob("*-*.kae")), *sorted(VERSION_FILES.glob("*.kae"))]
    if (kae := container.read(io.BytesIO(p.read_bytes()))).header.version
    < container.COMPACT_VERSION
    and (kae.restoration is None or kae.header.version == container.CASCADE_RESTORATION_VERSION)
]


@pytest.mark.parametrize("path", FULL_DIGEST_FILES, ids=lambda p: p.stem)
def test_a_compact_header_names_weights_by_their_first_bytes(path, kae_decode):
    """Version 8 stores the first 8 bytes of the weights digest: the decoder (installed or
    retired) is found by them as by the whole digest, and the pixels are the same."""
    kae = container.read(io.BytesIO(path.read_bytes()))
    digest = kae.header.weights_hash.hex()
    installed = zoo.installed().get(kae.header.model_name)
    assert (kae.header.model_name, digest) in zoo.retired() or installed.sha256 == digest
    compact = dataclasses.replace(
        kae.header,
        version=container.COMPACT_VERSION,
        weights_hash=kae.header.weights_hash[:8],
        gain_step=container.Header.gain_step_field(kae.header.step, container.COMPACT_VERSION),
        latent_channels=None,
        hyper_channels=None,
        stride=None,
        hyper_stride=None,
    )
    if kae.restoration is not None:  # version 8 codes as 7: only shape 3 filters
        assert kae.header.version == container.CASCADE_RESTORATION_VERSION
    data = container.dumps(dataclasses.replace(kae, header=compact))
    expected = np.asarray(kae_decode(path.read_bytes()))
    assert np.array_equal(np.asarray(kae_decode(data)), expected)


DROPPED_FILES = Path(__file__).resolve().parent / "data" / "dropped"


@pytest.mark.parametrize("path", sorted(DROPPED_FILES.glob("*.kae")), ids=lambda p: p.stem)
def test_files_of_dropped_weights_are_a_clear_error(path):
    """Files whose decoders left the package to make room (kae-high's on 2026-12-04, the
    first kae-low's and kae-mid's on 2026-12-07, then two more of kae-low's): the header
    still reads, and decoding names the version to install."""
    with Image.open(path) as im:
        assert im.size == (96, 64) and im.info["kae_model"] in ("kae-high", "kae-low", "kae-mid")
        with pytest.raises(OSError, match="install the matching pillow-kae version"):
            im.load()


WEIGHTS_BUDGET = 60_000_000  # bytes: every weights file the package ships, retired included


def test_shipped_weights_stay_within_the_budget():
    files = [p for p in zoo.WEIGHTS_DIR.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    assert total <= WEIGHTS_BUDGET, f"{total / 1e6:.1f} MB of weights and cards"


@pytest.mark.parametrize("name", sorted(zoo.installed()))
def test_every_shipped_model_loads_with_its_base(name):
    """Every array reads; a delta model's base is installed with the very weights it names."""
    model = loader.load(name)
    assert all(np.isfinite(model.arrays[key]).all() for key in model.arrays)
    if model.card.base:
        assert zoo.installed()[model.card.base["name"]].sha256 == model.card.base["sha256"]


@pytest.mark.parametrize("key", sorted(zoo.retired()), ids=lambda k: f"{k[0]}-{k[1][:12]}")
def test_every_retired_decoder_loads_through_its_base(key):
    """A retired decoder stored against the installed weights (``training share``) finds
    every array its files need, and its base is the very weights it names."""
    name, digest = key
    model = loader.load(name, bytes.fromhex(digest))
    needed = [k for k in model.arrays if k.startswith(("g_s/", "h_s/", "tables/"))]
    assert needed and all(np.isfinite(model.arrays[k]).all() for k in needed)
    base = model.card.base
    if base:
        assert (
            loader.load(base["name"], bytes.fromhex(base["sha256"])).card.sha256 == base["sha256"]
        )
