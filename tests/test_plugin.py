"""The Pillow plugin: modes, sizes, metadata, save options, registration, lazy imports."""

from __future__ import annotations

import io
import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pillow_kae import KaeImagePlugin
from pillow_kae.zoo import installed
from tests.conftest import decode, encode

SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"


# --------------------------------------------------------------------------
# Modes


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA"])
def test_roundtrip_native_modes(mode, make_image, roundtrip, psnr_db):
    im = make_image(40, 24, mode, seed=1)
    data, out = roundtrip(im)
    assert data.startswith(b"\x89KAE\r\n\x1a\n")
    assert out.mode == mode
    assert out.size == im.size
    src, dec = np.asarray(im), np.asarray(out)
    if mode in ("RGBA", "LA"):
        assert np.array_equal(dec[..., -1], src[..., -1]), "alpha must be lossless"
        src, dec = src[..., :-1], dec[..., :-1]
    assert psnr_db(src, dec) > 25


@pytest.mark.parametrize(
    "size", [(1, 1), (3, 2), (17, 5), (1, 300), (300, 1), (129, 67)], ids=lambda s: f"{s[0]}x{s[1]}"
)
def test_roundtrip_sizes(size, make_image, roundtrip, psnr_db):
    im = make_image(*size, "RGB", seed=2)
    _, out = roundtrip(im)
    assert out.mode == "RGB"
    assert out.size == size
    if size != (1, 1):
        limit = 20 if size[0] * size[1] >= 17 * 5 else 15
        assert psnr_db(np.asarray(im), np.asarray(out)) > limit


def test_palette_saves_as_rgb(make_image, roundtrip, psnr_db):
    p = make_image(24, 16, "RGB").quantize(32)
    assert p.mode == "P" and "transparency" not in p.info
    _, out = roundtrip(p)
    assert out.mode == "RGB" and out.size == p.size
    assert psnr_db(np.asarray(p.convert("RGB")), np.asarray(out)) > 20


def test_palette_with_transparency_saves_as_rgba(make_image, roundtrip):
    p = make_image(24, 16, "RGB").quantize(32)
    p.info["transparency"] = int(np.asarray(p)[0, 0])
    expected_alpha = np.asarray(p.convert("RGBA"))[..., 3]
    assert 0 < np.count_nonzero(expected_alpha == 0) < expected_alpha.size
    _, out = roundtrip(p)
    assert out.mode == "RGBA" and out.size == p.size
    assert np.array_equal(np.asarray(out)[..., 3], expected_alpha)


def test_pa_saves_as_rgba(make_image, roundtrip):
    p = make_image(12, 10, "RGB").quantize(16)
    alpha = (np.arange(120, dtype=np.uint8).reshape(10, 12) * 2).astype(np.uint8)
    pa = Image.frombytes("PA", p.size, np.dstack([np.asarray(p), alpha]).tobytes())
    pa.putpalette(p.getpalette())
    _, out = roundtrip(pa)
    assert out.mode == "RGBA" and out.size == pa.size
    assert np.array_equal(np.asarray(out)[..., 3], alpha)


def test_bilevel_saves_as_l(roundtrip):
    arr = np.zeros((16, 32), dtype=np.uint8)
    arr[:, 16:] = 255
    im = Image.fromarray(arr).convert("1")
    _, out = roundtrip(im)
    assert out.mode == "L" and out.size == im.size
    agree = (np.asarray(out) >= 128) == (arr >= 128)
    assert agree.mean() > 0.9


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16_bit_keeps_most_significant_byte(mode, roundtrip):
    # README: 16-bit samples keep their most significant byte (v >> 8), where Pillow's own
    # convert("L") would clip 0x1234 to 255.
    endian = ">" if mode == "I;16B" else "<"
    raw = np.full((8, 12), 0x1234, dtype=endian + "u2").tobytes()
    im = Image.frombytes(mode, (12, 8), raw)
    assert np.asarray(im)[0, 0] == 0x1234
    _, out = roundtrip(im)
    assert out.mode == "L" and out.size == im.size
    decoded = np.asarray(out).astype(int)
    assert abs(int(np.median(decoded)) - 0x12) <= 12, decoded
    assert decoded.max() < 0x60  # not clipped to 255


@pytest.mark.parametrize("mode", ["I", "F"])
def test_32_bit_modes_save_as_l(mode, make_image, roundtrip, psnr_db):
    gray = make_image(20, 12, "L")
    im = gray.convert(mode)
    _, out = roundtrip(im)
    assert out.mode == "L" and out.size == im.size
    assert psnr_db(np.asarray(im.convert("L")), np.asarray(out)) > 20


@pytest.mark.parametrize("mode", ["CMYK", "YCbCr", "LAB", "HSV", "RGBX"])
def test_other_colour_modes_save_as_rgb(mode, make_image, roundtrip, psnr_db):
    im = make_image(20, 12, "RGB").convert(mode)
    _, out = roundtrip(im)
    assert out.mode == "RGB" and out.size == im.size
    assert psnr_db(np.asarray(im.convert("RGB")), np.asarray(out)) > 20


def _unsupported_image() -> Image.Image:
    """An image whose mode the plugin has no mapping for.

    Every mode Pillow can construct (checked below) has a mapping, so the mode is forced on
    an L image: ``I;16S`` is a real Pillow mode name that this Pillow no longer creates.
    """
    for mode in ("I;16S", "I;32", "BGR;15"):
        try:
            return Image.new(mode, (4, 4))
        except ValueError:
            continue
    im = Image.new("L", (4, 4))
    if not hasattr(im, "_mode"):
        pytest.skip("cannot make an image with an unsupported mode on this Pillow")
    im._mode = "I;16S"
    return im


# What each Pillow mode is stored as; a mode Pillow adds later fails the test below.
STORED_AS = {"P": "RGB", "PA": "RGBA", "La": "LA", "RGBa": "RGBA", "LA": "LA", "RGBA": "RGBA"}


@pytest.mark.parametrize("mode", Image.MODES)
def test_every_pillow_mode_saves_and_decodes(mode, kae_encode, kae_decode):
    im = Image.new(mode, (8, 8))
    decoded = kae_decode(kae_encode(im))
    expected = STORED_AS.get(mode, "L" if Image.getmodebands(mode) == 1 else "RGB")
    assert (decoded.mode, decoded.size) == (expected, (8, 8))


def test_unsupported_mode_raises():
    im = _unsupported_image()
    assert im.mode not in KaeImagePlugin._SAVE_MODES
    buffer = io.BytesIO()
    with pytest.raises(OSError, match=f"cannot write mode {im.mode}"):
        im.save(buffer, "KAE")
    assert buffer.getvalue() == b""


# --------------------------------------------------------------------------
# Metadata


def _exif_bytes(description: str = "pillow-kae test") -> bytes:
    exif = Image.Exif()
    exif[0x010E] = description  # ImageDescription
    return exif.tobytes()


def test_metadata_roundtrip(small_rgb, kae_encode, chelsea_icc):
    exif = _exif_bytes()
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
    data = kae_encode(small_rgb, exif=exif, icc_profile=chelsea_icc, xmp=xmp)
    with Image.open(io.BytesIO(data)) as out:
        assert out.info["exif"] == exif
        assert out.info["icc_profile"] == chelsea_icc
        assert out.info["xmp"] == xmp
        assert out.getexif()[0x010E] == "pillow-kae test"
        out.load()
        assert out.info["icc_profile"] == chelsea_icc


def test_metadata_absent_when_not_given(small_kae):
    with Image.open(io.BytesIO(small_kae)) as out:
        for key in ("exif", "icc_profile", "xmp"):
            assert key not in out.info


def test_metadata_taken_from_info(make_image, kae_encode, chelsea_icc):
    im = make_image(16, 16)
    exif = _exif_bytes("from info")
    im.info.update(exif=exif, icc_profile=chelsea_icc, xmp="<x:xmpmeta/>")
    with Image.open(io.BytesIO(kae_encode(im))) as out:
        assert out.info["exif"] == exif
        assert out.info["icc_profile"] == chelsea_icc
        assert out.info["xmp"] == b"<x:xmpmeta/>"  # str is stored as UTF-8


def test_metadata_passes_through_from_png(kae_encode):
    with Image.open(SAMPLES / "chelsea.png") as src:
        src.load()
        im = src.crop((100, 50, 132, 82))
        im.info = dict(src.info)
        icc, xmp = src.info["icc_profile"], src.info["xmp"]
    with Image.open(io.BytesIO(kae_encode(im))) as out:
        assert out.info["icc_profile"] == icc
        assert out.info["xmp"] == (xmp.encode() if isinstance(xmp, str) else xmp)


def test_explicit_metadata_overrides_info(make_image, kae_encode):
    im = make_image(16, 16)
    im.info["exif"] = _exif_bytes("from info")
    im.info["xmp"] = b"<old/>"
    explicit = _exif_bytes("explicit")
    with Image.open(io.BytesIO(kae_encode(im, exif=explicit, xmp=b"<new/>"))) as out:
        assert out.info["exif"] == explicit
        assert out.info["xmp"] == b"<new/>"


def test_exif_object_accepted(make_image, kae_encode):
    im = make_image(16, 16)
    exif = Image.Exif()
    exif[0x010E] = "object"
    with Image.open(io.BytesIO(kae_encode(im, exif=exif))) as out:
        assert out.info["exif"] == exif.tobytes()


def test_bad_metadata_type_raises_and_writes_nothing(make_image):
    buffer = io.BytesIO()
    with pytest.raises(ValueError, match="exif"):
        make_image(8, 8).save(buffer, "KAE", exif=12345)
    assert buffer.getvalue() == b""


# --------------------------------------------------------------------------
# Header info, quality, options


def test_open_reports_model_and_quality(make_image, kae_encode):
    data = kae_encode(make_image(16, 16, "RGBA"), quality=40, model="kae-low")
    with Image.open(io.BytesIO(data)) as out:
        assert out.format == "KAE"
        assert out.get_format_mimetype() == "image/x-kae"
        assert out.mode == "RGBA" and out.size == (16, 16)
        assert out.info["kae_model"] == "kae-low"
        assert out.info["quality"] == 40


def test_default_quality_is_75(small_kae):
    with Image.open(io.BytesIO(small_kae)) as out:
        assert out.info["quality"] == 75
        assert out.info["kae_model"] in installed()


def test_size_falls_with_quality(kae_encode):
    with Image.open(SAMPLES / "coffee.png") as src:
        im = src.convert("RGB").crop((200, 100, 328, 228))
    sizes = {q: len(kae_encode(im, quality=q)) for q in (95, 50, 5)}
    assert sizes[95] > sizes[50] > sizes[5], sizes


@pytest.mark.parametrize("quality", [0, 101, -5, 50.5, "high", True, None])
def test_quality_validation(quality, small_rgb):
    buffer = io.BytesIO()
    with pytest.raises(ValueError, match="1 to 100"):
        small_rgb.save(buffer, "KAE", quality=quality)
    assert buffer.getvalue() == b""


def test_unknown_model_names_installed_ones(small_rgb):
    with pytest.raises(ValueError, match="nope") as info:
        small_rgb.save(io.BytesIO(), "KAE", model="nope")
    for name in installed():
        assert name in str(info.value)


@pytest.mark.parametrize("gain_step", [64, -64, 1.03, True, "2", float("nan")])
def test_gain_step_validation(gain_step, small_rgb):
    with pytest.raises(ValueError, match="gain_step"):
        small_rgb.save(io.BytesIO(), "KAE", gain_step=gain_step)


def test_every_quality_is_its_own_rate_point() -> None:
    """Quality 1..100 climbs the ladder strictly: model by model, step by step in sixteenths,
    through every anchor; an explicit model's steps climb too."""
    from pillow_kae.zoo import quality as ladder

    order = {name: i for i, name in enumerate(dict.fromkeys(n for n, _ in ladder.ladder()))}
    points = [ladder.choose(q) for q in range(1, 101)]
    ranks = [(order[name], step) for name, step in points]
    assert all(a < b for a, b in itertools.pairwise(ranks))
    assert all(step * 16 == int(step * 16) for _, step in points)
    for quality, name, step in ladder.anchor_qualities():
        assert ladder.choose(quality) == (name, step)
    assert ladder.choose(1) == ladder.ladder()[0] and ladder.choose(100) == ladder.ladder()[-1]
    steps = [ladder.choose(q, "kae-mid")[1] for q in range(1, 101)]
    assert all(a < b for a, b in itertools.pairwise(steps)) and steps[74] == 0


def test_each_quality_tries_the_neighbouring_models_at_about_its_bytes() -> None:
    """The ladder's point comes first; a neighbour model is tried where the ladder overlaps
    it, at steps that climb with quality for each model (so a file grows with quality
    whichever model wins), and never with an explicit model or gain step."""
    from pillow_kae.zoo import quality as ladder

    steps: dict[str, list[float]] = {}
    for quality in range(1, 101):
        points = ladder.candidates(quality)
        assert points[0] == ladder.choose(quality)
        assert len({name for name, _ in points}) == len(points)
        for name, step in points:
            assert step * 16 == int(step * 16)
            steps.setdefault(name, []).append(step)
        assert ladder.candidates(quality, "kae-mid") == [ladder.choose(quality, "kae-mid")]
        assert ladder.candidates(quality, gain_step=1) == [ladder.choose(quality, gain_step=1)]
    for name, climb in steps.items():
        assert all(a < b for a, b in itertools.pairwise(climb)), name
    assert len(ladder.candidates(75)) > 1 and len(ladder.candidates(1)) == 1


def test_the_encoder_keeps_the_candidate_with_the_best_trade_off(make_image) -> None:
    """Each rate point is scored by ln(bits) - slope * quality, with PSNR and with MS-SSIM
    (dB) as the quality, each point coded and decoded on its own (before restoration), the
    slope the ladder's at the first point's rate. Another point replaces the first only if
    it is better by both; of several, the best by the sum."""
    from pillow_kae import codec, restoration
    from pillow_kae.metrics import ms_ssim, ms_ssim_db, psnr
    from pillow_kae.zoo import loader

    def scores(pixels, points):
        found, slope = [], None
        height, width = pixels.shape[:2]
        for model, step in points:
            coded = codec.encode_best([(model, step)], pixels, restore=False)
            decoded = codec.decode_image(
                model, coded.payloads, width, height, step, codec.TILE_SIZE, 8, None
            )
            slope = slope or restoration.rate_per_db(coded.bits / (width * height))
            quality = (psnr(pixels, decoded), ms_ssim_db(ms_ssim(pixels, decoded)))
            found.append([np.log(coded.bits) - slope * q for q in quality])
        return found

    low, mid = loader.load("kae-low"), loader.load("kae-mid")
    switched = 0
    for seed, points in (
        (3, [(mid, -4.0), (low, 2.0), (mid, 3.0)]),
        (4, [(low, 2.0), (mid, -4.0)]),
        (5, [(mid, 2.0), (low, 0.0), (low, 6.0)]),
    ):
        pixels = np.asarray(make_image(96, 80, seed=seed))
        costs = scores(pixels, points)
        better = [i for i, c in enumerate(costs) if i == 0 or all(np.less(c, costs[0]))]
        expected = min(better, key=lambda i: sum(costs[i]))
        best = codec.encode_best(points, pixels)
        assert (best.model.name, best.gain_step) == (points[expected][0].name, points[expected][1])
        alone = codec.encode_best([points[expected]], pixels)
        assert best.payloads == alone.payloads
        assert (best.restoration and best.restoration.pack()) == (
            alone.restoration and alone.restoration.pack()
        )
        switched += expected != 0
    assert switched  # the scenarios exercise a switch
    with pytest.raises(ValueError, match="no rate point"):
        codec.encode_best([], np.asarray(make_image(16, 16)))


def test_a_big_image_is_judged_on_its_centre(make_image, monkeypatch) -> None:
    """Beyond ``CHOICE_PIXELS`` the rate point is chosen on the centre square alone, and
    the whole image is coded once at it."""
    from pillow_kae import codec
    from pillow_kae.zoo import loader

    monkeypatch.setattr(codec, "CHOICE_PIXELS", 64 * 64)
    monkeypatch.setattr(codec, "CHOICE_SIDE", 64)
    pixels = np.asarray(make_image(160, 96, seed=5))
    points = [(loader.load("kae-low"), 2.0), (loader.load("kae-mid"), -4.0)]
    centre = codec.encode_best(points, pixels[16:80, 48:112], restore=False)
    whole = codec.encode_best(points, pixels, restore=False)
    assert (whole.model, whole.gain_step) == (centre.model, centre.gain_step)
    alone = codec.encode_best([(centre.model, centre.gain_step)], pixels, restore=False)
    assert whole.payloads == alone.payloads


def test_a_card_spreads_its_quality_scale_over_its_trained_gain_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A variable-rate model's card declares the gain steps of quality 1 and 100."""
    import dataclasses

    from pillow_kae import zoo
    from pillow_kae.zoo import quality as ladder

    wide = dataclasses.replace(installed()["kae-mid"], quality_steps=[-8, 6])
    monkeypatch.setattr(zoo, "installed", lambda: {**installed(), "kae-mid": wide})
    steps = [ladder.choose(q, "kae-mid")[1] for q in range(1, 101)]
    assert (steps[0], steps[74], steps[99]) == (-8, 0, 6)
    assert all(a < b for a, b in itertools.pairwise(steps))
    with pytest.raises(ValueError, match="quality_steps"):
        dataclasses.replace(wide, quality_steps=[1, 6])


def test_a_fraction_of_a_gain_step_is_stored_in_sixteenths(
    make_image, as_version, kae_decode
) -> None:
    from pillow_kae import container

    im = make_image(64, 48)
    coded = {}
    for step in (1, 1.5, 2, 2.0):
        buffer = io.BytesIO()
        im.save(buffer, "KAE", model="kae-mid", gain_step=step, restore=False)
        header, _ = container.read_header(io.BytesIO(buffer.getvalue()))
        assert header.step == step and header.gain_step == 16 * step
        assert header.version == container.COMPACT_VERSION
        # In the older containers: version 4 for a fraction of a step, else 2.
        old = as_version(buffer.getvalue())
        assert container.read_header(io.BytesIO(old))[0].version == (4 if step == 1.5 else 2)
        assert np.array_equal(
            np.asarray(kae_decode(old)), np.asarray(kae_decode(buffer.getvalue()))
        )
        coded[step] = buffer.getvalue()
    assert coded[2] == coded[2.0]  # a whole step is the same file, whatever its type
    assert len(coded[1]) < len(coded[1.5]) < len(coded[2])


def test_explicit_model_and_gain_step(make_image, roundtrip, psnr_db):
    im = make_image(16, 16)
    _, out = roundtrip(im, model="kae-mid", gain_step=3)
    assert out.info["kae_model"] == "kae-mid"
    assert psnr_db(np.asarray(im), np.asarray(out)) > 25


# --------------------------------------------------------------------------
# Files on disk


def test_save_and_open_path(tmp_path, small_rgb, small_kae):
    path = tmp_path / "x.kae"
    small_rgb.save(path)  # format picked from the extension
    assert path.read_bytes() == small_kae  # encoding is deterministic in one process
    other = tmp_path / "no_extension"
    other.write_bytes(small_kae)
    with Image.open(other) as im:  # identified by its signature
        assert im.format == "KAE"
        im.load()
        assert im.size == small_rgb.size


def test_verify_checks_every_chunk_without_loading_a_model(small_kae, monkeypatch):
    """Opening reads the header alone; ``verify()`` reads the rest, as PNG's does, so a
    damaged tile fails the usual scan of a folder, not only a later ``load()``."""
    from pillow_kae.zoo import loader

    monkeypatch.setattr(loader, "load", lambda *a, **k: pytest.fail("verify loaded a model"))
    im = Image.open(io.BytesIO(small_kae))
    im.verify()
    assert im.fp is None
    damaged = bytearray(small_kae)
    damaged[-5] ^= 0x10  # the last byte of the last tile's payload
    with Image.open(io.BytesIO(bytes(damaged))) as im:  # its header is intact
        assert im.size == (20, 20)
        with pytest.raises(SyntaxError, match="broken KAE file: CRC mismatch in KTIL"):
            im.verify()
    with pytest.raises(SyntaxError, match="broken KAE file: file truncated"):
        Image.open(io.BytesIO(small_kae[:-3])).verify()


def test_failed_save_leaves_no_file(tmp_path, small_rgb):
    path = tmp_path / "bad.kae"
    with pytest.raises(OSError, match="cannot write mode"):
        _unsupported_image().save(path)
    assert not path.exists()
    with pytest.raises(ValueError):
        small_rgb.save(path, quality=0)
    assert not path.exists()


def test_failed_save_over_existing_file(tmp_path, small_rgb):
    # Pillow opens (truncates) an existing target before any plugin runs and only removes
    # files it created, so a failed save over an existing file leaves it empty, as for every
    # Pillow format; the plugin guarantees no partial .kae data (``kae encode`` replaces the
    # target atomically instead).
    path = tmp_path / "old.kae"
    path.write_bytes(b"previous contents")
    with pytest.raises(ValueError):
        small_rgb.save(path, quality=0)
    assert path.read_bytes() == b""


def test_registration():
    assert Image.registered_extensions()[".kae"] == "KAE"
    assert Image.MIME["KAE"] == "image/x-kae"
    assert "KAE" in Image.SAVE and "KAE" in Image.OPEN


# --------------------------------------------------------------------------
# TensorFlow is never imported by the codec; the inference runtime only for pixels


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_import_does_not_import_tensorflow():
    result = _run_python(
        """
        import sys
        import pillow_kae
        heavy = [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")]
        assert not heavy, heavy
        """
    )
    assert result.returncode == 0, result.stderr


def test_header_only_open_does_not_import_tensorflow(tmp_path, make_image, kae_encode):
    path = tmp_path / "x.kae"
    path.write_bytes(kae_encode(make_image(16, 16, "RGBA"), exif=_exif_bytes()))
    result = _run_python(
        f"""
        import sys
        import pillow_kae
        from PIL import Image
        im = Image.open({str(path)!r})
        assert im.size == (16, 16), im.size
        assert im.mode == "RGBA", im.mode
        assert im.info["kae_model"] and im.info["quality"] == 75 and im.info["exif"]
        heavy = [
            m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "onnxruntime")
        ]
        assert not heavy, heavy
        """
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("size", [(8, 8), (1, 1), (70, 9)])
def test_small_flat_image_has_no_dark_corner(size):
    """Tiles are padded with the content centred, away from the transforms' zero frame."""
    colour = (200, 100, 50)
    out = np.asarray(decode(encode(Image.new("RGB", size, colour), quality=75)), dtype=int)
    assert np.abs(out - colour).max() <= 12
