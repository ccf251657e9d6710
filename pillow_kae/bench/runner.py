"""``kae bench``: sweep a folder of images through the codecs and write every output."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from pillow_kae.bench import crops, plot, report
from pillow_kae.bench.codecs import Codec, registry
from pillow_kae.bench.report import BenchResult
from pillow_kae.bench.sweep import Measurement, list_images, mean_curves, sweep

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
    return _write(BenchResult(str(folder), images, list(codecs), results, {}), out)


def merge(runs: Sequence[Path], out: Path) -> BenchResult:
    """One report from the ``results.json`` of earlier runs on the same images: each codec
    as the last run that measured it (so ``--codecs kae`` after a change to the codec can
    be set beside last week's JPEG, WebP and AVIF without measuring them again)."""
    known = registry()
    measured: dict[str, tuple[Path, list[Measurement]]] = {}
    folder, images = "", None
    for path in runs:
        try:
            data = json.loads(Path(path).read_text())
            rows = [_measurement(row) for row in data["results"]]
            names = sorted(str(image["name"]) for image in data["images"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise BenchError(f"{path}: not a kae bench results.json ({err})") from err
        if images is not None and names != sorted(str(i["name"]) for i in images):
            raise BenchError(f"{path} measured other images than {runs[0]}")
        folder, images = str(data["folder"]), data["images"]
        for codec in dict.fromkeys(row.codec for row in rows):
            if codec not in known:
                log.warning("%s: skipping %s, a codec this version does not know", path, codec)
                continue
            measured[codec] = (Path(path), [row for row in rows if row.codec == codec])
    if not measured or images is None:
        raise BenchError("nothing to merge")
    codecs = [known[name] for name in measured]
    results = [row for _, rows in measured.values() for row in rows]
    sources = {name: str(path) for name, (path, _) in measured.items()}
    return _write(BenchResult(folder, images, codecs, results, {}, sources=sources), out)


def _measurement(row: dict[str, object]) -> Measurement:
    return Measurement(**{name: row[name] for name in Measurement.__dataclass_fields__})


def _write(result: BenchResult, out: Path) -> BenchResult:
    """Curves, BD-rate matrices, plot, crops (when the images are still there), JSON and
    Markdown of ``result``, into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(result.folder)
    result.curves = mean_curves(result.results)
    result.bd = {
        name: report.bd_matrix(result.curves, key) for name, key in report.BD_METRICS.items()
    }
    result.local = {
        name: report.local_rates(result.curves, key) for name, key in report.BD_METRICS.items()
    }
    labels = {c.name: c.label for c in result.codecs}
    title = f"{folder.name or folder}: {len(result.images)} images"
    if plot.plot(result.curves, labels, title, out / PLOT_NAME):
        result.plot = PLOT_NAME
    by_name = {c.name: c for c in result.codecs if c.available()}  # crops code them again
    if "kae" in by_name and len(by_name) > 1:
        picks = crops.pick([m for m in result.results if m.codec in by_name])
        if picks is None:
            log.warning("no crops: no other codec reaches the rates of .kae on any image")
        else:
            for choice, (stem, heading) in zip(picks, CROPS, strict=True):
                path = folder / choice.image
                if not path.is_file():
                    log.warning("no crops: %s is not there any more", path)
                    break
                target = out / f"crop_{stem}.png"
                result.crops.append(crops.write_crop(choice, heading, path, by_name, target))
    (out / JSON_NAME).write_text(json.dumps(report.to_json(result), indent=1) + "\n")
    (out / MARKDOWN_NAME).write_text(report.markdown(result))
    return result
