"""What a benchmark run writes: the JSON with everything, the BD-rate matrices, Markdown."""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from PIL import features

from pillow_kae.bench.bd import bd_rate, envelope, rate_differences
from pillow_kae.bench.codecs import Codec
from pillow_kae.bench.sweep import CurvePoint, Measurement

# Quality axes of the BD-rate matrices: name in the JSON -> field of a curve point.
BD_METRICS = {"psnr": "psnr", "ms_ssim": "ms_ssim_db"}
BD_METHOD = "PCHIP of log rate over quality, exact integral on the common range (JVET CTC)"
NOTES = (
    "Means per image at each setting. bpp = file bytes × 8 / pixels. PSNR on RGB. MS-SSIM "
    "on RGB (Wang et al. 2003: 5 scales, fewer on images under 161 px; the mean of the "
    "three channels), also in dB as −10·log10(1 − MS-SSIM). Images are coded as plain RGB "
    "(alpha and metadata dropped). Times are wall-clock per image (milliseconds in the "
    "tables, seconds in the JSON) with each library's default threading, after an untimed "
    "warm-up. A .kae setting names the quality ladder's rate point; where two models overlap, "
    "the encoder may code an image with the model below at about the same bytes."
)


@dataclass
class BenchResult:
    """Everything one run measured and wrote."""

    folder: str
    images: list[dict[str, object]]  # name, width, height
    codecs: list[Codec]
    results: list[Measurement]
    curves: dict[str, list[CurvePoint]]
    bd: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)
    #: metric -> row codec -> column codec -> per point of the row's curve: its bits
    #: against the column's at equal quality (``local_rates``)
    local: dict[str, dict[str, dict[str, list[float | None]]]] = field(default_factory=dict)
    crops: list[dict[str, object]] = field(default_factory=list)
    plot: str | None = None  # file name, None when matplotlib is missing
    sources: dict[str, str] = field(default_factory=dict)  # codec -> results.json, if merged


def _envelopes(curves: Mapping[str, Sequence[CurvePoint]], key: str) -> dict[str, list]:
    """Each codec's mean curve as (bpp, quality ``key``), reduced to its monotone envelope."""
    return {
        codec: envelope([(p.bpp, getattr(p, key)) for p in curve])
        for codec, curve in curves.items()
    }


def bd_matrix(curves: Mapping[str, Sequence[CurvePoint]], key: str) -> dict[str, dict]:
    """matrix[row][column]: BD-rate (%) of codec ``row`` against anchor ``column``.

    Each mean curve is first reduced to its monotone envelope; a pair whose quality
    ranges do not overlap (or a curve with fewer than two usable points) gets None.
    """
    points = _envelopes(curves, key)
    matrix: dict[str, dict[str, float | None]] = {}
    for row, test in points.items():
        matrix[row] = {}
        for column, anchor in points.items():
            try:
                matrix[row][column] = 0.0 if row == column else bd_rate(anchor, test)
            except ValueError:
                matrix[row][column] = None
    return matrix


def local_rates(
    curves: Mapping[str, Sequence[CurvePoint]], key: str
) -> dict[str, dict[str, list[float | None]]]:
    """rates[row][column][i]: the bits (%) point i of codec ``row``'s mean curve takes
    against codec ``column`` at its quality (``bd.rate_differences``; None where ``column``
    does not reach it, or has fewer than two usable points): where on the rate axis each
    codec wins and loses, which one BD-rate over the common range averages away."""
    anchors = _envelopes(curves, key)
    rates: dict[str, dict[str, list[float | None]]] = {}
    for row, curve in curves.items():
        points = [(p.bpp, getattr(p, key)) for p in curve]
        rates[row] = {}
        for column, anchor in anchors.items():
            if column == row:
                continue
            try:
                rates[row][column] = rate_differences(anchor, points)
            except ValueError:
                rates[row][column] = [None] * len(points)
    return rates


def _finite(value: object) -> object:
    """JSON has no inf or NaN (a lossless point has infinite PSNR): write null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _versions() -> dict[str, object]:
    """What produced the figures: the machine and the libraries behind each codec."""
    packages = {}
    for name in (
        "pillow",
        "numpy",
        "pillow-kae",
        "pillow-jxl-plugin",
        "tensorflow",
        "tensorflow-cpu",
    ):
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    libraries = {name: features.version(name) for name in ("jpg", "webp", "avif")}
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "packages": packages,
        "libraries": {k: v for k, v in libraries.items() if v},
    }


def to_json(result: BenchResult) -> dict[str, object]:
    """The whole run, per image and per point, plus the curves, matrices and crops."""
    codecs = {
        c.name: {
            "label": c.label,
            "format": c.fmt,
            "options": dict(c.options),
            "settings": [c.describe(q) for q in c.qualities],
        }
        for c in result.codecs
    }
    return _finite(
        {
            "folder": result.folder,
            "images": result.images,
            "notes": NOTES,
            "codecs": codecs,
            "results": [m.to_json() for m in result.results],
            "curves": {k: [p.to_json() for p in v] for k, v in result.curves.items()},
            "bd_rate": {"method": BD_METHOD, "unit": "percent", **result.bd},
            "rate_at_equal_quality": {"unit": "percent", **result.local},
            "plot": result.plot,
            "crops": result.crops,
            "merged_from": result.sources,
            "environment": _versions(),
        }
    )


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f} %"


def _range(values: Sequence[float], spec: str) -> str:
    finite = [v for v in values if math.isfinite(v)]
    return f"{min(finite):{spec}}–{max(finite):{spec}}" if finite else "n/a"


def _setting(codec: Codec, quality: int) -> str:
    setting = codec.describe(quality)
    if "model" in setting:
        return f"q{quality} ({setting['model']}, gain step {setting['gain_step']:+g})"
    return f"q{quality}"


def summary_markdown(result: BenchResult) -> str:
    """The codec table and both BD-rate matrices (what ``kae bench`` prints)."""
    lines = [
        f"# Rate–distortion on {result.folder} ({len(result.images)} images)",
        "",
        NOTES,
        "",
    ]
    if result.sources:
        merged = "; ".join(f"{codec} from {path}" for codec, path in result.sources.items())
        lines += [f"Merged from earlier runs on the same images: {merged}.", ""]
    lines += [
        "## Codecs",
        "",
        "| codec | | qualities | bpp | PSNR (dB) | MS-SSIM (dB) | encode ms | decode ms |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for codec in result.codecs:
        curve = result.curves.get(codec.name, [])
        if not curve:
            continue
        qualities = sorted(p.quality for p in curve)
        encode = sum(p.encode_s for p in curve) / len(curve)
        decode = sum(p.decode_s for p in curve) / len(curve)
        lines.append(
            f"| {codec.name} | {codec.label} | {qualities[0]}–{qualities[-1]} ({len(curve)}) "
            f"| {_range([p.bpp for p in curve], '.3f')} | {_range([p.psnr for p in curve], '.2f')} "
            f"| {_range([p.ms_ssim_db for p in curve], '.2f')} | {1000 * encode:.1f} "
            f"| {1000 * decode:.1f} |"
        )
    lines += [
        "",
        "## BD-rate",
        "",
        "The bits the row codec needs relative to the column codec at equal quality "
        "(negative: fewer), over the quality range both reach; piecewise cubic (PCHIP) "
        "interpolation of log rate, as in the JVET common test conditions.",
    ]
    for metric, title in (("psnr", "PSNR"), ("ms_ssim", "MS-SSIM (dB)")):
        matrix = result.bd.get(metric)
        if not matrix:
            continue
        names = list(matrix)
        lines += [
            "",
            f"### At equal {title}",
            "",
            "| row vs column | " + " | ".join(names) + " |",
            "|---|" + "---:|" * len(names),
        ]
        for row in names:
            cells = ["—" if row == c else _percent(matrix[row][c]) for c in names]
            lines.append(f"| **{row}** | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(result: BenchResult) -> str:
    """The summary, then every mean curve, the plot and the crops."""
    lines = [
        summary_markdown(result),
        "## Mean curves",
        "",
        "For .kae, each setting's bits against every other codec at the same PSNR, on the "
        "interpolation BD-rate uses (blank where that codec does not reach the PSNR): where "
        "on the rate axis it wins and loses.",
    ]
    local = result.local.get("psnr", {})
    for codec in result.codecs:
        curve = result.curves.get(codec.name, [])
        against = local.get(codec.name, {}) if codec.fmt == "KAE" else {}
        lines += [
            "",
            f"### {codec.name}: {codec.label}",
            "",
            "| setting | bpp | PSNR (dB) | MS-SSIM | MS-SSIM (dB) | encode ms | decode ms |"
            + "".join(f" vs {other} |" for other in against),
            "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(against),
        ]
        for i, p in enumerate(curve):
            cells = "".join(
                f" {'' if rates[i] is None else _percent(rates[i])} |" for rates in against.values()
            )
            lines.append(
                f"| {_setting(codec, p.quality)} | {p.bpp:.4f} | {p.psnr:.2f} | {p.ms_ssim:.4f} | "
                f"{p.ms_ssim_db:.2f} | {1000 * p.encode_s:.1f} | {1000 * p.decode_s:.1f} |{cells}"
            )
    if result.plot:
        lines += ["", "## Plot", "", f"![rate-distortion curves]({result.plot})"]
    for crop in result.crops:
        kae, rival = crop["kae"], crop["competitor"]
        lines += [
            "",
            f"## {crop['title']}",
            "",
            f"{crop['image']}: {crop['score_db']:+.2f} dB on average against the best other "
            f"codec at equal bytes. Shown: .kae quality {kae['quality']} ({kae['bytes']} bytes, "
            f"{kae['psnr']:.2f} dB) and {rival['codec']} quality {rival['quality']} "
            f"({rival['bytes']} bytes, {rival['psnr']:.2f} dB), crop {crop['box']}.",
            "",
            f"![{crop['title']}]({crop['file']})",
        ]
    return "\n".join(lines) + "\n"
