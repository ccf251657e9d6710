"""``kae bench``: sweep a folder of images through the codecs and write every output."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from pillow_kae.bench import crops, plot, report
from pillow_kae.bench.codecs import Codec, registry
from pillow_kae.bench.report import BenchResult
from pillow_kae.bench.sweep import list_images, mean_curves, sweep

log = logging.getLogger(__name__)

JSON_NAME = "results.json"
MARKDOWN_NAME = "report.md"
PLOT_NAME = "rd.png"
CROPS = (("best", "Where .kae does best"), ("worst", "Where .kae does worst"))


class BenchError(ValueError):
    """A problem with what the user asked for: unknown codecs, no usable images."""


def available_codecs(names: Sequence[str] | None = None) -> list[Codec]:
    """The named codecs (the default ones this Pillow can run, if None); unknown or missing:
    error. ``kae:MODEL`` names one installed model alone, along its own gain steps."""
    known = registry()
    if names is None:
        return [c for c in known.values() if c.default and c.available()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BenchError(f"unknown codec {', '.join(unknown)}; choose from {', '.join(known)}")
    missing = [known[n] for n in names if not known[n].available()]
    if missing:
        raise BenchError(
            "; ".join(f"{c.name} is not available: it needs {c.needs}" for c in missing)
        )
    return [known[n] for n in dict.fromkeys(names)]


def run(
    folder: Path,
    out: Path,
    codecs: Sequence[Codec],
    limit: int | None = None,
    progress: bool = True,
) -> BenchResult:
    """Measure every image of ``folder`` with ``codecs``; write JSON, Markdown, plot, crops."""
    paths = list_images(folder, limit)
    if not paths:
        raise BenchError(f"{folder}: no images Pillow can read")
    images, results = sweep(paths, codecs, progress=progress)
    if not images:
        raise BenchError(f"{folder}: none of the {len(paths)} image files could be decoded")
    out.mkdir(parents=True, exist_ok=True)
    curves = mean_curves(results)
    result = BenchResult(str(folder), images, list(codecs), results, curves)
    result.bd = {name: report.bd_matrix(curves, key) for name, key in report.BD_METRICS.items()}
    labels = {c.name: c.label for c in codecs}
    title = f"{folder.name or folder}: {len(images)} images"
    if plot.plot(curves, labels, title, out / PLOT_NAME):
        result.plot = PLOT_NAME
    by_name = {c.name: c for c in codecs}
    if "kae" in by_name and len(by_name) > 1:
        picks = crops.pick(results)
        if picks is None:
            log.warning("no crops: no other codec reaches the rates of .kae on any image")
        else:
            for choice, (stem, heading) in zip(picks, CROPS, strict=True):
                path = folder / choice.image
                target = out / f"crop_{stem}.png"
                result.crops.append(crops.write_crop(choice, heading, path, by_name, target))
    (out / JSON_NAME).write_text(json.dumps(report.to_json(result), indent=1) + "\n")
    (out / MARKDOWN_NAME).write_text(report.markdown(result))
    return result
