"""The rate-distortion curves as a PNG (matplotlib, an optional extra: ``pillow-kae[bench]``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from pillow_kae.bench.sweep import CurvePoint

log = logging.getLogger(__name__)

BPP_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 8, 12, 24)

METRICS = (("psnr", "PSNR on RGB (dB)"), ("ms_ssim_db", "MS-SSIM (dB, −10·log10(1 − MS-SSIM))"))


def plot(
    curves: Mapping[str, Sequence[CurvePoint]], labels: Mapping[str, str], title: str, path: Path
) -> bool:
    """Write PSNR and MS-SSIM against bpp (log axis) for every codec; False without matplotlib."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter, NullFormatter
    except ImportError:
        log.warning("matplotlib is not installed: no plot (pip install 'pillow-kae[bench]')")
        return False
    rates = [p.bpp for points in curves.values() for p in points if p.bpp > 0]
    low, high = min(rates), max(rates)
    figure = Figure(figsize=(13, 5.5), layout="constrained")
    axes = figure.subplots(1, len(METRICS))
    for ax, (key, name) in zip(axes, METRICS, strict=True):
        for codec, points in curves.items():
            style = {"linewidth": 2.5, "zorder": 3} if codec == "kae" else {"linewidth": 1.5}
            bpp = [p.bpp for p in points]
            ax.plot(
                bpp,
                [getattr(p, key) for p in points],
                marker="o",
                markersize=3.5,
                label=labels[codec],
                **style,
            )
        ax.set_xscale("log")
        ax.set_xticks([t for t in BPP_TICKS if low / 1.2 <= t <= high * 1.2])
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("bits per pixel (file bytes × 8 / pixels)")
        ax.set_ylabel(name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
    figure.suptitle(title)
    figure.savefig(path, dpi=110)
    log.info("wrote %s", path)
    return True
