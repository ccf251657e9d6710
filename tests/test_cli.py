"""Tests for the ``kae`` command line (pillow_kae.cli), run in-process on tiny images."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pillow_kae import container, zoo
from pillow_kae.cli import main

WIDTH, HEIGHT = 40, 30
DESCRIPTION = "kae cli test"

# Runs ``main(argv)`` in a fresh interpreter and fails if TensorFlow got imported.
NO_TF_SCRIPT = (
    "import sys, json; from pillow_kae.cli import main; rc = main(json.loads(sys.argv[1])); "
    "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'; sys.exit(rc)"
)


def _gradient() -> Image.Image:
    x = np.linspace(0, 255, WIDTH, dtype=np.uint8)
    y = np.linspace(0, 255, HEIGHT, dtype=np.uint8)
    rgb = np.stack(
        [
            np.tile(x, (HEIGHT, 1)),
            np.tile(y[:, None], (1, WIDTH)),
            np.full((HEIGHT, WIDTH), 128, np.uint8),
        ],
        axis=-1,
    )
    return Image.fromarray(rgb, "RGB")


def _exif_bytes() -> bytes:
    exif = Image.Exif()
    exif[0x010E] = DESCRIPTION  # ImageDescription
    return exif.tobytes()


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small PNG with EXIF and its ``.kae``, encoded once through the CLI."""
    folder = tmp_path_factory.mktemp("cli")
    src, kae = folder / "gradient.png", folder / "gradient.kae"
    _gradient().save(src, exif=_exif_bytes())
    assert main(["encode", str(src), str(kae), "-q", "75"]) == 0
    return src, kae


def _run_without_tf(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", NO_TF_SCRIPT, json.dumps(argv)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _assert_one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kae: error:"), err
    return lines[0]


# --------------------------------------------------------------------------
# encode / decode


def test_encode_decode_round_trip(encoded: tuple[Path, Path], tmp_path: Path) -> None:
    src, kae = encoded
    with open(kae, "rb") as fp:
        assert container.accept(fp.read(8))
    out = tmp_path / "decoded.png"
    assert main(["decode", str(kae), str(out)]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert im.size == (WIDTH, HEIGHT)
        assert im.mode == "RGB"
        assert im.getexif()[0x010E] == DESCRIPTION  # EXIF carried through
        decoded = np.asarray(im, dtype=np.float64)
    original = np.asarray(Image.open(src).convert("RGB"), dtype=np.float64)
    psnr = 10 * np.log10(255**2 / np.mean((decoded - original) ** 2))
    assert psnr > 22, psnr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoded.png"]  # no temp files left


def test_decode_to_jpeg_keeps_exif(encoded: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "decoded.jpg"
    assert main(["decode", str(encoded[1]), str(out)]) == 0
    with Image.open(out) as im:
        assert im.format == "JPEG"
        assert im.size == (WIDTH, HEIGHT)
        assert im.getexif()[0x010E] == DESCRIPTION


def test_encode_writes_kae_whatever_the_extension(
    encoded: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "image.bin"
    assert main(["encode", str(encoded[0]), str(out), "-q", "5", "--model", "kae-low"]) == 0
    with open(out, "rb") as fp:
        header, _ = container.read_header(fp)
    assert (header.model_name, header.quality) == ("kae-low", 5)


def test_decode_format_in_a_fresh_process(encoded: tuple[Path, Path], tmp_path: Path) -> None:
    """``--format`` is checked against Pillow's writers before any file has been opened,
    when a fresh process has not loaded Pillow's plugins yet."""
    kae = encoded[1]
    for argv, out in (
        (["decode", str(kae), str(tmp_path / "x.bin"), "--format", "png"], tmp_path / "x.bin"),
        (
            ["decode", str(kae), "-o", str(tmp_path / "d"), "--format", "png", "--jobs", "1"],
            tmp_path / "d" / "gradient.png",
        ),
    ):
        result = _run_without_tf(argv)
        assert result.returncode == 0, result.stderr
        with Image.open(out) as im:
            assert im.format == "PNG" and im.size == (WIDTH, HEIGHT)


# --------------------------------------------------------------------------
# info / models


def test_info(encoded: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    kae = encoded[1]
    assert main(["info", str(kae)]) == 0
    out = capsys.readouterr().out
    with open(kae, "rb") as fp:
        header, _ = container.read_header(fp)
    assert header.model_name in out
    assert f"{WIDTH} x {HEIGHT}" in out
    assert header.weights_hash.hex()[:16] in out
    assert "weights match" in out
    assert "exif" in out


def test_info_json(encoded: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    kae = encoded[1]
    assert main(["info", "--json", str(kae), str(kae)]) == 0
    infos = json.loads(capsys.readouterr().out)
    assert len(infos) == 2
    info = infos[0]
    size = kae.stat().st_size
    assert (info["width"], info["height"], info["mode"]) == (WIDTH, HEIGHT, "RGB")
    assert info["model"] in zoo.installed()
    assert info["model_installed"] and info["weights_match"]
    assert info["quality"] == 75
    assert info["tile_count"] == 1
    assert info["bytes"] == size
    assert info["bpp"] == pytest.approx(8 * size / (WIDTH * HEIGHT))
    assert info["metadata"]["exif"] > 0


def test_info_does_not_import_tensorflow(encoded: tuple[Path, Path]) -> None:
    result = _run_without_tf(["info", str(encoded[1])])
    assert result.returncode == 0, result.stderr
    assert f"{WIDTH} x {HEIGHT}" in result.stdout


def test_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in zoo.installed():
        assert name in out
    assert "1-" in out and "-100" in out  # the ladder covers the whole quality range
    for name, digest in zoo.retired():
        assert re.search(rf"^  {name} +{digest[:12]}$", out, re.MULTILINE)


def test_models_does_not_import_tensorflow() -> None:
    result = _run_without_tf(["models"])
    assert result.returncode == 0, result.stderr
    for name in zoo.installed():
        assert name in result.stdout


def test_module_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pillow_kae.cli", "models"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for name in zoo.installed():
        assert name in result.stdout


# --------------------------------------------------------------------------
# Errors


@pytest.fixture
def bad_inputs(encoded: tuple[Path, Path], tmp_path: Path) -> dict[str, Path]:
    text = tmp_path / "notes.txt"
    text.write_text("this is not an image\n")
    truncated = tmp_path / "truncated.kae"
    truncated.write_bytes(encoded[1].read_bytes()[:40])
    return {
        "missing": tmp_path / "missing.png",
        "text": text,
        "truncated": truncated,
        "png": encoded[0],
    }


@pytest.mark.parametrize(
    ("command", "source", "options"),
    [
        ("encode", "missing", []),
        ("encode", "text", []),
        ("encode", "png", ["-q", "0"]),
        ("encode", "png", ["-q", "101"]),
        ("encode", "png", ["--model", "nope"]),
        ("decode", "missing", []),
        ("decode", "text", []),
        ("decode", "truncated", []),
        ("decode", "png", []),  # not a KAE file
    ],
)
def test_errors(
    command: str,
    source: str,
    options: list[str],
    bad_inputs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / ("out.kae" if command == "encode" else "out.png")
    before = sorted(tmp_path.iterdir())
    assert main([command, str(bad_inputs[source]), str(out), *options]) == 1
    _assert_one_error_line(capsys)
    assert not out.exists()
    assert sorted(tmp_path.iterdir()) == before


def test_error_messages_are_specific(
    bad_inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "out.png")
    assert main(["decode", str(bad_inputs["missing"]), out]) == 1
    assert "No such file" in _assert_one_error_line(capsys)
    assert main(["decode", str(bad_inputs["truncated"]), out]) == 1
    assert "truncated" in _assert_one_error_line(capsys)
    assert main(["encode", str(bad_inputs["png"]), out, "--model", "nope"]) == 1
    assert "nope" in _assert_one_error_line(capsys)


def test_internal_errors_keep_their_traceback(
    bad_inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ValueError inside the codec is a bug: it propagates instead of a one-line error."""
    from pillow_kae import codec

    def broken_encode(*args: object) -> tuple[list[bytes], None]:
        raise ValueError("internal invariant broken")

    monkeypatch.setattr(codec, "encode_image_latents", broken_encode)
    out = tmp_path / "out.kae"
    with pytest.raises(ValueError, match="internal invariant"):
        main(["encode", str(bad_inputs["png"]), str(out)])
    assert not out.exists()


def test_info_errors(bad_inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    for source in ("missing", "text", "truncated"):
        assert main(["info", str(bad_inputs[source])]) == 1
        _assert_one_error_line(capsys)


def test_info_reports_good_files_despite_a_bad_one(
    encoded: tuple[Path, Path], bad_inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", "--json", str(bad_inputs["missing"]), str(encoded[1])]) == 1
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == 1
    assert captured.err.startswith("kae: error:")


def test_usage_errors_keep_argparse_status(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["encode", "in.png", str(tmp_path / "out.kae"), "-q", "high"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert not (tmp_path / "out.kae").exists()
