"""Whole folders: ``kae encode IN... -o OUTDIR`` and ``kae decode``, resumable, in processes."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from pillow_kae import convert
from pillow_kae.cli import main
from tests.conftest import smooth_array


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder: two images (one in a sub-folder), a broken PNG and a text file."""
    root = tmp_path / "photos"
    (root / "trip").mkdir(parents=True)
    Image.fromarray(smooth_array(40, 30, seed=1)).save(root / "a.png")
    Image.fromarray(smooth_array(33, 47, seed=2)).save(root / "trip" / "b.jpg", quality=95)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (root / "notes.txt").write_text("not an image")
    return root


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_encode_folder_in_two_processes_reports_the_broken_file(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["encode", str(photos), "-o", str(out), "--jobs", "2", "-q", "30"]) == 1
    captured = capsys.readouterr()
    assert _files(out) == ["a.kae", "trip/b.kae"]  # no partial or temporary file
    errors = captured.err.splitlines()
    assert len(errors) == 1 and errors[0].startswith("kae: error: ")
    assert "broken.png" in errors[0]
    assert "encoded 2 files, 0 skipped, 1 failed:" in captured.out
    for name, size in (("a.kae", (40, 30)), ("trip/b.kae", (33, 47))):
        with Image.open(out / name) as im:
            assert im.size == size and im.info["quality"] == 30

    # A second run resumes: the finished files are skipped, not rewritten.
    before = {name: (out / name).stat().st_mtime_ns for name in _files(out)}
    assert main(["encode", str(photos), "-o", str(out), "--jobs", "2", "-q", "30"]) == 1
    assert "encoded 0 files, 2 skipped, 1 failed:" in capsys.readouterr().out
    assert {name: (out / name).stat().st_mtime_ns for name in _files(out)} == before

    # --force rewrites them.
    (photos / "broken.png").unlink()
    assert main(["encode", str(photos), "-o", str(out), "--jobs", "1", "--force"]) == 0
    assert "encoded 2 files, 0 skipped, 0 failed" in capsys.readouterr().out


def test_decode_folder_keeps_relative_paths(photos: Path, tmp_path: Path) -> None:
    (photos / "broken.png").unlink()
    kae, png = tmp_path / "kae", tmp_path / "png"
    assert main(["encode", str(photos), "-o", str(kae), "--jobs", "1"]) == 0
    assert main(["decode", str(kae), "-o", str(png), "--jobs", "2"]) == 0
    assert _files(png) == ["a.png", "trip/b.png"]
    with Image.open(png / "trip" / "b.png") as im:
        assert im.format == "PNG" and im.size == (33, 47)
    argv = ["decode", str(kae / "a.kae"), "-o", str(tmp_path / "tif"), "--format", "tiff"]
    assert main(argv) == 0
    assert _files(tmp_path / "tif") == ["a.tiff"]


def test_files_and_folders_mix_and_collisions_are_refused(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (photos / "broken.png").unlink()
    Image.fromarray(smooth_array(20, 20, seed=3)).save(photos / "a.jpg")  # also -> a.kae
    out = tmp_path / "out"
    status = main(
        ["encode", str(photos / "trip" / "b.jpg"), str(photos), "-o", str(out), "--jobs", "1"]
    )
    captured = capsys.readouterr()
    assert status == 1
    assert "same output" in captured.err and "a.png" in captured.err
    assert _files(out) == ["a.kae", "b.kae", "trip/b.kae"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["encode", "a.png", "b.png", "c.kae"], "IN... -o OUTDIR"),
        (["encode", "a.png", "a.kae", "--jobs", "2"], "--jobs applies only with -o"),
        (["decode", "x.kae", "-o", "out", "--format", "nope"], "cannot write"),
    ],
)
def test_usage_errors(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(tmp_path / a) if a.endswith((".png", ".kae")) or a == "out" else a for a in argv]
    assert main(argv) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_convert_reports_every_failure_without_stopping(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(smooth_array(16, 16)).save(good)
    jobs = [
        convert.Job(tmp_path / "missing.png", tmp_path / "o" / "missing.kae"),
        convert.Job(good, tmp_path / "o" / "good.kae"),
    ]
    summary = convert.convert(jobs, convert.encoder(quality=20))
    assert (
        summary.converted == 1 and summary.bytes_out == (tmp_path / "o" / "good.kae").stat().st_size
    )
    assert [path.name for path, _ in summary.failures] == ["missing.png"]
    assert "missing.png" in summary.failures[0][1]
