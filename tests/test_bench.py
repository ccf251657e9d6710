"""Tests for `kae bench` (pillow_kae.bench): BD-rate, MS-SSIM, codecs, a tiny end-to-end run."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pillow_kae.bench import codecs, crops, runner
from pillow_kae.bench.bd import bd_rate, envelope, paired_bd_rate, rate_differences
from pillow_kae.cli import main
from pillow_kae.metrics import ms_ssim, ms_ssim_db, psnr, scales_for
from pillow_kae.zoo import quality as ladder
from tests.conftest import smooth_array

# --------------------------------------------------------------------------
# BD-rate

# Published example: the two rate-distortion pairs of JCTVC-E137 (JCT-VC, 5th meeting,
# Geneva, 2011), (rate, PSNR) of the anchor then of the test, with the BD-rates that the
# Android CTS tests (cts/hostsidetests/mediapc/videoencodingquality/bdrate/.../
# BdRateCalculatorTests.java) take from Netflix VMAF's BD-rate calculator, "validated
# against JCTVC-E137": -0.00465215420752807 and -0.018779823450567612 (as fractions).
JCTVC_E137 = [
    (
        [(108048.8736, 43.6471), (61279.976, 40.3953), (33905.6656, 37.247), (18883.6928, 34.2911)],
        [
            (108061.2784, 43.6768),
            (61299.9936, 40.4232),
            (33928.7472, 37.2761),
            (18910.912, 34.3147),
        ],
        -0.465215420752807,
    ),
    (
        [(40433.8848, 37.5761), (7622.7456, 35.3756), (2394.488, 33.8977), (1017.6184, 32.0603)],
        [(40370.12, 37.5982), (7587.0024, 35.4025), (2390.0944, 33.9194), (1017.0984, 32.0822)],
        -1.8779823450567612,
    ),
]


@pytest.mark.parametrize(("anchor", "test", "expected"), JCTVC_E137)
def test_bd_rate_published_values(
    anchor: list[tuple[float, float]], test: list[tuple[float, float]], expected: float
) -> None:
    assert bd_rate(anchor, test) == pytest.approx(expected, abs=1e-6)


def test_bd_rate_identical_curves_is_zero() -> None:
    anchor = JCTVC_E137[0][0]
    assert bd_rate(anchor, anchor) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(("factor", "expected"), [(0.5, -50.0), (2.0, 100.0), (0.7, -30.0)])
def test_bd_rate_of_scaled_rates(factor: float, expected: float) -> None:
    anchor = JCTVC_E137[1][0]
    test = [(rate * factor, quality) for rate, quality in anchor]
    assert bd_rate(anchor, test) == pytest.approx(expected, abs=1e-9)


def test_bd_rate_is_exact_on_straight_lines_sampled_differently() -> None:
    """PCHIP reproduces a straight line, so parallel lines in (quality, log rate) give
    exp(offset) - 1 whatever the points and however far the ranges overlap."""
    anchor = [(math.exp(0.2 * q - 5), q) for q in (30.0, 33.0, 37.0, 40.0)]
    test = [(math.exp(0.2 * q - 5.3), q) for q in (31.0, 34.5, 36.0, 42.0)]
    assert bd_rate(anchor, test) == pytest.approx((math.exp(-0.3) - 1) * 100, abs=1e-9)
    assert bd_rate(test, anchor) == pytest.approx((math.exp(0.3) - 1) * 100, abs=1e-9)


def test_bd_rate_refuses_bad_curves() -> None:
    good = [(1.0, 30.0), (2.0, 33.0), (4.0, 36.0)]
    with pytest.raises(ValueError, match="share no quality range"):
        bd_rate(good, [(1.0, 40.0), (2.0, 42.0)])
    with pytest.raises(ValueError, match="monotone"):
        bd_rate(good, [(1.0, 30.0), (2.0, 35.0), (3.0, 34.0)])
    with pytest.raises(ValueError, match="two points"):
        bd_rate(good, [(1.0, 30.0)])
    with pytest.raises(ValueError, match="non-finite"):
        bd_rate(good, [(1.0, 30.0), (2.0, math.inf)])


def test_rate_differences_read_the_anchor_at_each_points_quality() -> None:
    """On a straight line in (quality, log rate) PCHIP is exact, so a point off the line by a
    factor in rate reads as that factor anywhere along it; at an anchor point it is 0."""
    anchor = [(math.exp(0.2 * q - 5), q) for q in (30.0, 33.0, 37.0, 40.0)]
    qualities = (30.0, 31.7, 36.0, 40.0)
    on = [(math.exp(0.2 * q - 5), q) for q in qualities]
    assert rate_differences(anchor, on) == pytest.approx([0.0] * 4, abs=1e-9)
    below = [(0.8 * rate, q) for rate, q in on]
    assert rate_differences(anchor, below) == pytest.approx([-20.0] * 4, abs=1e-9)
    curved = JCTVC_E137[1][0]
    above = [(1.5 * rate, q) for rate, q in curved]
    assert rate_differences(curved, above) == pytest.approx([50.0] * 4, abs=1e-9)
    outside = [(1.0, 29.9), (1.0, 40.1), (1.0, math.inf)]
    assert rate_differences(anchor, outside) == [None, None, None]


def test_envelope_keeps_the_trade_offs() -> None:
    points = [(2.0, 33.0), (1.0, 30.0), (3.0, 32.0), (4.0, 36.0), (4.0, 37.0), (5.0, math.inf)]
    assert envelope(points) == [(1.0, 30.0), (2.0, 33.0), (4.0, 37.0)]


def test_paired_bd_rate_counts_a_setting_that_joins_the_envelope_as_a_gain() -> None:
    """Two models' anchors: the upper model's lowest step sits just below the lower model's
    top. Every setting improves by the same 1 % of rate, and the lowest upper step rises
    onto the envelope. Per-curve envelopes let that step add a steep piece to one side only
    (and call the gain a loss); compared setting by setting, the gain is the 1 % it is, and
    a setting made worse still counts as a loss."""
    before = [(1.0, 30.0), (1.5, 32.0), (2.0, 33.0), (2.2, 32.98), (3.0, 35.0), (4.0, 37.0)]
    after = [(0.99 * rate, psnr) for rate, psnr in before]
    after[3] = (0.99 * 2.2, 33.06)
    assert bd_rate(envelope(before), envelope(after)) > 0
    assert paired_bd_rate(before, after) == pytest.approx(-1.0, abs=1e-9)
    worse = [*after[:4], (1.1 * 3.0, 34.0), after[5]]  # a setting the test makes worse
    assert paired_bd_rate(before, worse) > 0
    with pytest.raises(ValueError, match="one point per setting"):
        paired_bd_rate(before, after[:-1])


# --------------------------------------------------------------------------
# Metrics


def _textured(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured RGB image and a noisy copy of it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = 128 + 60 * (np.sin(xx / 7.0) * np.cos(yy / 5.0))[..., None]
    a = np.clip(base + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
    b = np.clip(a + rng.normal(0, 15, a.shape), 0, 255).astype(np.uint8)
    return a, b


def test_psnr() -> None:
    a = np.full((4, 5, 3), 100, np.uint8)
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 1) == pytest.approx(20 * math.log10(255), abs=1e-12)


def test_ms_ssim_matches_tensorflow() -> None:
    tf = pytest.importorskip("tensorflow")
    a, b = _textured(161, 200)  # the smallest side that fits all five scales
    expected = float(tf.image.ssim_multiscale(tf.constant(a, tf.float64), b.astype("f8"), 255))
    assert ms_ssim(a, b) == pytest.approx(expected, abs=1e-5)


def test_ms_ssim_bounds_and_small_images() -> None:
    a, b = _textured(48, 64)
    assert ms_ssim(a, a) == 1.0
    assert ms_ssim_db(1.0) == math.inf
    assert 0.0 < ms_ssim(a, b) < 1.0
    assert ms_ssim(a[..., 0], b[..., 0]) == pytest.approx(ms_ssim(a[..., :1], b[..., :1]))
    assert 0.0 < ms_ssim(a[:7, :9], b[:7, :9]) < 1.0  # smaller than the window
    expected = {10: 1, 20: 1, 21: 2, 40: 2, 41: 3, 81: 4, 160: 4, 161: 5}
    assert {side: scales_for(side, 1000) for side in expected} == expected
    with pytest.raises(ValueError, match="differ in shape"):
        ms_ssim(a, b[:-1])


# --------------------------------------------------------------------------
# Codecs


def test_ladder_qualities_cover_every_ladder_point() -> None:
    qualities = codecs.ladder_qualities()
    assert [(model, step) for _, model, step in qualities] == ladder.ladder()
    assert [q for q, *_ in qualities] == list(codecs.registry()["kae"].qualities)
    for quality, model, step in qualities:
        assert ladder.choose(quality) == (model, step)
        assert quality == 1 or ladder.choose(quality - 1) != (model, step)


def test_one_model_codecs_walk_its_gain_steps() -> None:
    known = codecs.registry()
    mid = known["kae:kae-mid"]
    assert not mid.default and "kae:seed-dense" not in known
    steps = [mid.describe(q)["gain_step"] for q in mid.qualities]
    assert steps == sorted(set(steps)) and steps[0] < -5.5 and steps[-1] == 2
    assert {mid.describe(q)["model"] for q in mid.qualities} == {"kae-mid"}
    assert "kae:kae-mid" not in [c.name for c in runner.available_codecs()]
    assert [c.name for c in runner.available_codecs(["kae:kae-mid"])] == ["kae:kae-mid"]


def test_match_bytes_fits_the_budget() -> None:
    jpeg = codecs.registry()["jpeg"]
    image = Image.fromarray(smooth_array(64, 48, noise=10))
    budget = jpeg.code(image, 50).size
    quality, coded = crops.match_bytes(jpeg, image, budget)
    assert coded.size <= budget
    assert quality >= 50
    assert jpeg.code(image, quality + 1).size > budget


# --------------------------------------------------------------------------
# kae bench, end to end on two tiny images


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``kae bench`` run once on two 64x48 images with .kae and JPEG: (out folder, stdout)."""
    folder = tmp_path_factory.mktemp("bench_images")
    Image.fromarray(smooth_array(64, 48, seed=1)).save(folder / "smooth.png")
    Image.fromarray(smooth_array(64, 48, seed=2, noise=20)).save(folder / "noisy.png")
    (folder / "notes.txt").write_text("not an image\n")  # not listed
    (folder / "truncated.png").write_bytes((folder / "noisy.png").read_bytes()[:200])  # skipped
    out = tmp_path_factory.mktemp("bench_out")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = main(["bench", str(folder), "--codecs", "kae,jpeg", "--out", str(out)])
    assert status == 0
    return out, stdout.getvalue()


def test_bench_json(bench_run: tuple[Path, str]) -> None:
    out, _ = bench_run
    data = json.loads((out / "results.json").read_text())
    assert sorted(img["name"] for img in data["images"]) == ["noisy.png", "smooth.png"]
    assert list(data["codecs"]) == ["kae", "jpeg"]
    kae_points = len(ladder.ladder())
    jpeg_points = len(codecs.registry()["jpeg"].qualities)
    assert len(data["results"]) == 2 * (kae_points + jpeg_points)
    for row in data["results"]:
        assert set(row) == {
            "image",
            "codec",
            "quality",
            "bytes",
            "bpp",
            "psnr",
            "ms_ssim",
            "ms_ssim_db",
            "encode_s",
            "decode_s",
        }
        assert row["bpp"] == pytest.approx(row["bytes"] * 8 / (64 * 48))
        assert 0 < row["ms_ssim"] <= 1 and row["psnr"] > 10
        assert row["encode_s"] >= 0 and row["decode_s"] >= 0
    assert [len(data["curves"][c]) for c in ("kae", "jpeg")] == [kae_points, jpeg_points]
    settings = data["codecs"]["kae"]["settings"]
    assert [(s["model"], s["gain_step"]) for s in settings] == ladder.ladder()
    for metric in ("psnr", "ms_ssim"):
        matrix = data["bd_rate"][metric]
        assert matrix["kae"]["kae"] == 0.0
        assert isinstance(matrix["kae"]["jpeg"], float)
        assert isinstance(matrix["jpeg"]["kae"], float)
    for metric in ("psnr", "ms_ssim"):
        local = data["rate_at_equal_quality"][metric]
        assert set(local) == {"kae", "jpeg"} and set(local["kae"]) == {"jpeg"}
        assert len(local["kae"]["jpeg"]) == kae_points
        assert all(v is None or isinstance(v, float) for v in local["kae"]["jpeg"])
    assert [crop["file"] for crop in data["crops"]] == ["crop_best.png", "crop_worst.png"]
    for crop in data["crops"]:
        assert crop["image"] in {"smooth.png", "noisy.png"}
        assert crop["competitor"]["codec"] == "jpeg"
        assert (
            crop["competitor"]["bytes"] <= crop["kae"]["bytes"]
            or crop["competitor"]["quality"] == codecs.registry()["jpeg"].quality_range[0]
        )
        with Image.open(out / crop["file"]) as im:
            assert im.width > 3 * 64


def test_bench_report_and_plot(bench_run: tuple[Path, str]) -> None:
    out, stdout = bench_run
    assert "### At equal PSNR" in stdout and "| **kae** |" in stdout
    report = (out / "report.md").read_text()
    assert "## Mean curves" in report and "crop_best.png" in report
    assert "| decode ms | vs jpeg |" in report  # .kae's bits against JPEG, per setting
    if importlib.util.find_spec("matplotlib") is None:
        assert "matplotlib is not installed" in stdout
        return
    with Image.open(out / "rd.png") as im:
        assert im.format == "PNG"
    assert "rd.png" in report


def test_bench_merge(bench_run: tuple[Path, str], tmp_path: Path) -> None:
    """Earlier runs on the same images make one report: each codec from the last run that
    measured it; nothing is measured again."""
    out, _ = bench_run
    first = json.loads((out / "results.json").read_text())
    folder = first["folder"]
    again = tmp_path / "jpeg-again"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["bench", folder, "--codecs", "jpeg", "--out", str(again)]) == 0
    merged = tmp_path / "merged"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        runs = [str(out / "results.json"), str(again / "results.json")]
        assert main(["bench", "--merge", *runs, "--out", str(merged)]) == 0
    data = json.loads((merged / "results.json").read_text())
    assert data["merged_from"] == {"kae": runs[0], "jpeg": runs[1]}
    assert "Merged from earlier runs" in stdout.getvalue()
    later = json.loads((again / "results.json").read_text())["results"]
    expected = [r for r in first["results"] if r["codec"] == "kae"] + later
    assert data["results"] == expected
    assert isinstance(data["bd_rate"]["psnr"]["kae"]["jpeg"], float)
    assert [crop["file"] for crop in data["crops"]] == ["crop_best.png", "crop_worst.png"]


def test_bench_merge_without_a_codec_here(bench_run: tuple[Path, str], tmp_path: Path) -> None:
    """A codec measured elsewhere but not installed here keeps its curve; only the crops,
    which code images again, leave it out."""
    out, _ = bench_run
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()):
        patch.setattr(codecs.Codec, "available", lambda self: self.name != "jpeg")
        args = ["bench", "--merge", str(out / "results.json"), "--out", str(tmp_path)]
        assert main(args) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert isinstance(data["bd_rate"]["psnr"]["kae"]["jpeg"], float)
    assert data["crops"] == []


def test_bench_merge_errors(
    bench_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = bench_run
    results = out / "results.json"
    other = json.loads(results.read_text())
    other["images"] = other["images"][:1]
    (tmp_path / "other.json").write_text(json.dumps(other))
    (tmp_path / "junk.json").write_text("{}")
    target = str(tmp_path / "merged")
    assert main(["bench", "--merge", str(results), str(tmp_path / "other.json")]) == 1
    assert "measured other images" in _one_error(capsys)
    assert main(["bench", "--merge", str(tmp_path / "junk.json"), "--out", target]) == 1
    assert "not a kae bench results.json" in _one_error(capsys)
    assert main(["bench", str(tmp_path), "--merge", str(results), "--out", target]) == 1
    assert "not a folder" in _one_error(capsys)
    assert main(["bench", "--out", target]) == 1
    assert "name a folder" in _one_error(capsys)


def _one_error(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kae: error:"), lines
    return lines[0]


def test_bench_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["bench", str(tmp_path), "--out", str(out), "--codecs", "kae,nope"]) == 1
    assert "unknown codec nope" in _one_error(capsys)
    assert main(["bench", str(tmp_path), "--out", str(out), "--codecs", "kae,jpeg"]) == 1
    assert "no images" in _one_error(capsys)
    (tmp_path / "image.png").write_bytes(b"")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(codecs.Codec, "available", lambda self: self.name != "jxl")
        assert main(["bench", str(tmp_path), "--out", str(out), "--codecs", "jpeg,jxl"]) == 1
    assert "jxl is not available: it needs pillow-jxl-plugin" in _one_error(capsys)
    assert main(["bench", str(tmp_path / "image.png"), "--out", str(out)]) == 1
    assert "not a folder" in _one_error(capsys)
    assert not out.exists()
    with pytest.raises(SystemExit) as exc:
        main(["bench", str(tmp_path), "--limit", "0"])
    assert exc.value.code == 2


def test_bench_imports_nothing_heavy() -> None:
    script = (
        "import sys, pillow_kae.bench.runner, pillow_kae.cli; "
        "heavy = [m for m in ('tensorflow', 'matplotlib') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_speed_benchmark_codes_every_codec_at_the_quality_asked(tmp_path) -> None:
    """``python -m benchmarks.speed --quality q`` hands q to each codec and says so: a lower
    quality gives smaller files (JPEG alone, warm part only: no timing is checked)."""
    from benchmarks import speed

    bpp = {}
    for quality in (20, 90):
        out = tmp_path / str(quality)
        args = ["--images", "1", "--repeat", "1", "--skip-cold", "--skip-large"]
        speed.main([*args, "--codecs", "jpeg", "--quality", str(quality), "--out", str(out)])
        result = json.loads((out / "speed.json").read_text())
        assert result["quality"] == quality
        assert f"quality {quality};" in (out / "speed.md").read_text()
        (row,) = result["warm"]
        bpp[quality] = row["bpp"]
    assert bpp[20] < bpp[90]
