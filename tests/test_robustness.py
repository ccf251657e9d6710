"""Damaged, forged and foreign files: only UnidentifiedImageError / OSError, quickly."""

from __future__ import annotations

import dataclasses
import io
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from pillow_kae import container

TRAILER = b"trailing junk after KEND"


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data), formats=["KAE"])


def _outcome(data: bytes) -> tuple[str, np.ndarray | None]:
    """'open' (UnidentifiedImageError at open), 'load' (OSError at load) or 'ok' + pixels.

    Any other exception propagates and fails the test.
    """
    try:
        im = _open(data)
    except UnidentifiedImageError:
        return "open", None
    with im:
        try:
            im.load()
        except OSError:
            return "load", None
        return "ok", np.asarray(im)


def _chunk(ctype: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(ctype + data)
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", crc)


def _replace(data: bytes, **changes: object) -> bytes:
    """Re-serialise a valid file with fields of its KaeFile (or, via header=, header) changed."""
    kae = container.read(io.BytesIO(data))
    header_changes = changes.pop("header", {})
    header = dataclasses.replace(kae.header, **header_changes)
    return container.dumps(dataclasses.replace(kae, header=header, **changes))


@pytest.fixture(scope="module")
def rgba_kae(make_image_module, kae_encode) -> bytes:
    """A 20x12 RGBA file with every ancillary chunk, so damage hits every chunk type."""
    im = make_image_module(20, 12, "RGBA")
    return kae_encode(im, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00", xmp=b"<x/>")


@pytest.fixture(scope="module")
def make_image_module(smooth):
    def factory(width: int, height: int, mode: str) -> Image.Image:
        channels = len(mode)
        return Image.fromarray(smooth(width, height, channels, seed=3), mode)

    return factory


def _cut_points(length: int) -> list[int]:
    return sorted(set(range(min(64, length))) | set(range(64, length, 7)) | {length - 1})


@pytest.mark.parametrize("which", ["rgb", "rgba"])
def test_truncation(which, small_kae, rgba_kae):
    data = small_kae if which == "rgb" else rgba_kae
    seen = {"open": 0, "load": 0}
    for n in _cut_points(len(data)):
        outcome, _ = _outcome(data[:n])
        assert outcome != "ok", f"file cut to {n} of {len(data)} bytes decoded"
        seen[outcome] += 1
    # Cuts inside the tiles still open (header only) and fail at load.
    assert seen["open"] and seen["load"], seen


def _flip_offsets(length: int) -> list[int]:
    return sorted(set(range(min(100, length))) | set(range(100, length, 5)))


@pytest.mark.parametrize("which", ["rgb", "rgba"])
def test_byte_flips(which, small_kae, rgba_kae, kae_decode):
    data = (small_kae if which == "rgb" else rgba_kae) + TRAILER
    kend = len(data) - len(TRAILER)  # first byte after KEND
    reference = np.asarray(kae_decode(data))
    seen = {"open": 0, "load": 0, "ok": 0}
    for offset in _flip_offsets(len(data)):
        damaged = bytearray(data)
        damaged[offset] ^= 0xFF
        outcome, pixels = _outcome(bytes(damaged))
        seen[outcome] += 1
        if outcome == "ok":
            assert offset >= kend, f"flip at {offset} (KEND ends at {kend}) went unnoticed"
            assert np.array_equal(pixels, reference)
    assert seen["open"] and seen["load"] and seen["ok"], seen


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x89",
        b"\x89KAE\r\n\x1a",
        b"\x89KAE\r\n\x1a\n",
        b"\x89KAE\r\n\x1a\n" + b"\x00" * 40,
        np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes(),
    ],
    ids=["empty", "1-byte", "short-signature", "signature-only", "signature-zeros", "random"],
)
def test_foreign_bytes(data):
    with pytest.raises(UnidentifiedImageError):
        _open(data)


def test_png_is_not_kae(make_image):
    buffer = io.BytesIO()
    make_image(8, 8).save(buffer, "PNG")
    with pytest.raises(UnidentifiedImageError):
        _open(buffer.getvalue())


def test_unknown_model(small_kae):
    data = _replace(small_kae, header={"model_name": "not-installed"})
    with _open(data) as im:
        assert im.info["kae_model"] == "not-installed"
        with pytest.raises(OSError, match="not-installed"):
            im.load()


@pytest.mark.parametrize("version", [None, container.COMPACT_VERSION])
def test_weights_hash_mismatch(small_kae, as_version, version):
    """The whole digest (versions before 8) or its first 8 bytes (8) must match."""
    data = as_version(small_kae, version)
    kae = container.read(io.BytesIO(data))
    wrong = _replace(data, header={"weights_hash": bytes(len(kae.header.weights_hash))})
    message = f"{kae.header.model_name}.*weights 0000"
    with _open(wrong) as im, pytest.raises(OSError, match=message):
        im.load()


@pytest.mark.parametrize(
    "changes",
    [{"latent_channels": 100}, {"hyper_channels": 7}, {"stride": 8}, {"hyper_stride": 2}],
    ids=lambda c: next(iter(c)),
)
def test_header_model_mismatch(small_kae, as_version, changes):
    """Before version 8 the header also stores what the model fixes, and must agree."""
    data = _replace(as_version(small_kae), header=changes)
    with _open(data) as im, pytest.raises(OSError, match="match"):
        im.load()


def _header(**changes: object) -> container.Header:
    fields: dict[str, object] = {
        "width": 16,
        "height": 16,
        "mode": "RGB",
        "model_name": "kae-mid",
        "weights_hash": bytes(32),
        "quality": 75,
        "tile_size": 1024,
        "latent_channels": 192,
        "hyper_channels": 128,
        "stride": 16,
        "hyper_stride": 4,
        "gain_step": 0,
    }
    fields.update(changes)
    return container.Header(**fields)  # type: ignore[arg-type]


def _header_only_file(header: container.Header) -> bytes:
    """Signature, KHDR and KEND: no tiles, whatever the header claims."""
    return container.SIGNATURE + _chunk(b"KHDR", header.pack()) + _chunk(b"KEND", b"")


def test_decompression_bomb_header():
    side = container.MAX_DIMENSION
    data = _header_only_file(_header(width=side, height=side, tile_size=0xFFC0))
    tracemalloc.start()
    try:
        with pytest.raises(Image.DecompressionBombError):
            _open(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"refusing a bomb header allocated {peak} bytes"


def test_bomb_limit_applies_to_the_padded_area():
    """16777216 x 1 is under Pillow's limit, but the decoder pads it to 64 rows: 2**30 pixels.

    Found by benchmarks/fuzz.py: one-row tiles repeated along a forged width decoded 64 times
    slower than an image of as many pixels.
    """
    side = container.MAX_DIMENSION
    assert side <= Image.MAX_IMAGE_PIXELS
    data = _header_only_file(_header(width=side, height=1, tile_size=4096))
    with pytest.raises(Image.DecompressionBombError, match="padded to 16777216x64"):
        _open(data)


def test_padded_area_warns_like_pillow(monkeypatch):
    data = _header_only_file(_header(width=65472, height=1))  # padded: 65472 x 64
    with _open(data) as im:  # well under the default limit
        assert im.size == (65472, 1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3_000_000)
    with pytest.warns(Image.DecompressionBombWarning, match="padded"), _open(data) as im:
        assert im.size == (65472, 1)


def test_large_header_without_tiles_fails_before_allocating():
    # Below Pillow's bomb limit, but the file lacks the tiles: fails in the container read,
    # before the 9 MB of pixels are allocated.
    data = _header_only_file(_header(width=2000, height=1500))
    tracemalloc.start()
    try:
        with _open(data) as im:
            assert im.size == (2000, 1500)
            with pytest.raises(OSError, match="KTIL"):
                im.load()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"a file without tiles allocated {peak} bytes"


def test_tile_payload_not_whole_words(small_kae):
    data = _replace(small_kae, tiles=[b"\x01\x02\x03"])
    with _open(data) as im, pytest.raises(OSError, match="32-bit"):
        im.load()


def test_forged_tile_payloads(small_kae):
    """Garbage tile data with valid CRCs: OSError or some image, never another exception."""
    rng = np.random.default_rng(0)
    for _ in range(30):
        words = int(rng.integers(1, 40))
        payload = rng.integers(0, 256, 4 * words, dtype=np.uint8).tobytes()
        outcome, _ = _outcome(_replace(small_kae, tiles=[payload]))
        assert outcome in ("load", "ok")


def test_forged_empty_tile_payload(small_kae):
    # No encoder writes an empty payload (docs/format.md §5), so a decoder refuses one.
    with _open(_replace(small_kae, tiles=[b""])) as im, pytest.raises(OSError, match="empty"):
        im.load()


def test_model_side_errors_are_not_reported_as_damaged_files(small_kae, monkeypatch):
    """A ValueError from the model (here: building h_s) is a bug and must surface as one."""
    from pillow_kae.zoo import loader

    def broken_hyper_synthesis(self: object) -> None:
        raise ValueError("fixed-point weight out of range")

    monkeypatch.setattr(loader.CodecModel, "hyper_synthesis", property(broken_hyper_synthesis))
    with _open(small_kae) as im, pytest.raises(ValueError, match="fixed-point"):
        im.load()


def test_loader_errors_are_not_reported_as_missing_models(small_kae, monkeypatch):
    from pillow_kae.zoo import loader

    def broken_load(*args: object) -> None:
        raise ValueError("bad weights array")

    monkeypatch.setattr(loader, "load", broken_load)
    with _open(small_kae) as im, pytest.raises(ValueError, match="bad weights array"):
        im.load()


def _png(im: Image.Image) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "alpha",
    [
        b"",
        b"not a png at all",
        _png(Image.new("L", (5, 5))),  # wrong size
        _png(Image.new("RGB", (20, 12))),  # wrong mode
        _png(Image.new("L", (20, 12)))[:-30],  # truncated PNG
    ],
    ids=["empty", "garbage", "wrong-size", "wrong-mode", "truncated"],
)
def test_forged_alpha_plane(rgba_kae, alpha):
    with _open(_replace(rgba_kae, alpha=alpha)) as im:
        assert im.mode == "RGBA"
        with pytest.raises(OSError, match="alpha"):
            im.load()
