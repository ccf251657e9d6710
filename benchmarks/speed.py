"""Speed and memory of .kae against Pillow's JPEG, WebP and AVIF, measured in the same run.

    python -m benchmarks.speed [--images N] [--repeat 5] [--size 6144x4096] [--skip-large]
                               [--quality 75]
    make bench-speed

Three parts, all through the public API (``Image.save`` / ``Image.open``), each codec with
the settings ``kae bench`` uses (JPEG 4:2:0 optimized, WebP method 6, AVIF speed 6), at
``--quality`` (75 unless told: the default of .kae, Pillow's JPEG and AVIF; the same
number for every codec):

1. warm, in this process: median encode and decode time per image over ``--repeat`` runs
   after an untimed warm-up, and megapixels per second;
2. cold: a fresh Python process that opens and loads one file (interpreter start, imports
   and model build included), and ``kae decode x.kae x.png`` as a user runs it; .kae once
   with the runtime's graph cache filled by an earlier process, once with it empty (the
   first use after installing);
3. large: a ``--size`` photo (Kodak images tiled) encoded and decoded, each in a fresh
   process, wall time with process start and peak RSS of that process.

Writes ``out/speed/speed.json`` and ``speed.md``. Ratios against the other codecs are what
carries over between machines: the absolute times depend on the CPU and its load.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

import pillow_kae  # noqa: F401  (registers the plugin)
from pillow_kae.bench.codecs import registry
from pillow_kae.runtime import summary
from pillow_kae.runtime.cache import CACHE_ENV

log = logging.getLogger("benchmarks.speed")

CODECS = ("kae", "jpeg", "webp", "avif")
QUALITY = 75  # .kae's, JPEG's and AVIF's default (Pillow's WebP defaults to 80)
KODAK = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "kodak"
SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"

# One step in a fresh process: prints seconds of the step and the process's peak RSS.
STEP = r"""
import json, sys, time
start = time.perf_counter()
from PIL import Image
import pillow_kae
Image.MAX_IMAGE_PIXELS = None
step, src, dst, fmt = sys.argv[1:5]
options = json.loads(sys.argv[5])
with Image.open(src) as im:
    im.load()
    if step == "encode":
        begin = time.perf_counter()
        im.save(dst, fmt, **options)
        seconds = time.perf_counter() - begin
    else:
        seconds = time.perf_counter() - start
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent across exec.
with open("/proc/self/status") as status:
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
print(json.dumps({"seconds": seconds, "peak_rss_mib": peak}))
"""


def _settings(name: str, quality: int) -> tuple[str, dict[str, object]]:
    codec = registry()[name]
    return codec.fmt, {"quality": quality, **codec.options}


def _median_seconds(fn: object, repeat: int) -> float:
    fn()  # warm-up: model build, caches
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def warm(images: list[Path], codecs: list[str], repeat: int, quality: int) -> list[dict]:
    """Median warm encode/decode seconds per image and codec."""
    rows = []
    for path in images:
        image = Image.open(path).convert("RGB")
        megapixels = image.width * image.height / 1e6
        for name in codecs:
            fmt, options = _settings(name, quality)
            buffer = io.BytesIO()
            image.save(buffer, fmt, **options)
            data = buffer.getvalue()

            def encode(image: Image.Image = image, fmt: str = fmt, options: dict = options) -> None:
                image.save(io.BytesIO(), fmt, **options)

            def decode(data: bytes = data) -> None:
                with Image.open(io.BytesIO(data)) as im:
                    im.load()

            enc, dec = _median_seconds(encode, repeat), _median_seconds(decode, repeat)
            rows.append(
                {
                    "image": path.name,
                    "codec": name,
                    "megapixels": megapixels,
                    "bpp": 8 * len(data) / (megapixels * 1e6),
                    "encode_ms": 1e3 * enc,
                    "decode_ms": 1e3 * dec,
                    "encode_mp_s": megapixels / enc,
                    "decode_mp_s": megapixels / dec,
                }
            )
            log.info("%s %s: encode %.0f ms, decode %.0f ms", path.name, name, 1e3 * enc, 1e3 * dec)
    return rows


def _wall(argv: list[str], repeat: int, cache: Path | None = None) -> float:
    """Median wall time of a fresh process; ``cache``: the runtime's graph cache folder
    (None: a new, empty one for every run, as on the first use after installing)."""
    if cache is not None:  # fill it, untimed
        subprocess.run(
            argv, check=True, capture_output=True, env={**os.environ, CACHE_ENV: str(cache)}
        )
    times = []
    for _ in range(repeat):
        folder = cache or Path(tempfile.mkdtemp(prefix="kae-cold-"))
        env = {**os.environ, CACHE_ENV: str(folder)}
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cold(image: Path, tmp: Path, repeat: int, quality: int) -> dict[str, float]:
    """Fresh-process open + load of one file per format, and ``kae decode`` (median)."""
    rgb = Image.open(image).convert("RGB")
    out: dict[str, float] = {}
    for name, suffix in (("kae", ".kae"), ("png", ".png"), ("avif", ".avif")):
        path = tmp / f"cold{suffix}"
        if name == "png":
            rgb.save(path)
        else:
            fmt, options = _settings(name, quality)
            rgb.save(path, fmt, **options)
        code = f"from PIL import Image; import pillow_kae; Image.open({str(path)!r}).load()"
        out[f"open_load_{name}_s"] = _wall([sys.executable, "-c", code], repeat, tmp)
        if name == "kae":
            out["open_load_kae_first_s"] = _wall([sys.executable, "-c", code], repeat)
    cli = [sys.executable, "-m", "pillow_kae.cli", "decode", str(tmp / "cold.kae")]
    out["kae_decode_cli_s"] = _wall([*cli, str(tmp / "cold_out.png")], repeat, tmp)
    return out


def _fresh(step: str, src: Path, dst: Path, name: str, quality: int) -> dict[str, float]:
    fmt, options = _settings(name, quality)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", STEP, step, str(src), str(dst), fmt, json.dumps(options)],
        check=True,
        capture_output=True,
        text=True,
    )
    step_result = json.loads(result.stdout.strip().splitlines()[-1])
    return {"wall_s": time.perf_counter() - start, **step_result}


def make_large(width: int, height: int, path: Path) -> str:
    """A photo-like test image: Kodak images (or the samples) tiled to the size."""
    sources = sorted(KODAK.glob("*.png")) if KODAK.is_dir() else sorted(SAMPLES.glob("*.png"))
    tiles = [Image.open(p).convert("RGB") for p in sources[:8]]
    canvas = Image.new("RGB", (width, height))
    i, top = 0, 0
    while top < height:
        left, row_height = 0, 0
        while left < width:
            canvas.paste(tiles[i % len(tiles)], (left, top))
            left += tiles[i % len(tiles)].width
            row_height = max(row_height, tiles[i % len(tiles)].height)
            i += 1
        top += row_height
    canvas.save(path)
    return f"{len(tiles)} images of {sources[0].parent} tiled to {width}x{height}"


def large(width: int, height: int, tmp: Path, quality: int) -> dict:
    """Each step in a fresh process: .kae and AVIF encode and decode of one big photo."""
    src = tmp / "large.png"
    what = make_large(width, height, src)
    rows = {}
    for name in ("kae", "avif"):
        coded = tmp / f"large.{name}"
        rows[f"{name}_encode"] = _fresh("encode", src, coded, name, quality)
        rows[f"{name}_decode"] = _fresh("decode", coded, coded, name, quality)
        rows[f"{name}_decode"]["bpp"] = 8 * coded.stat().st_size / (width * height)
        log.info("large %s: %s", name, rows)
    return {"image": what, "megapixels": width * height / 1e6, "steps": rows}


def markdown(result: dict) -> str:
    lines = [
        f"Machine: {result['machine']}; .kae transforms on {result['runtime']}; "
        f"quality {result['quality']}; times are medians."
    ]
    if result["warm"]:
        lines += [
            "",
            "| image | codec | bpp | encode ms | decode ms | encode MP/s | decode MP/s |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
    for r in result["warm"]:
        lines.append(
            f"| {r['image']} | {r['codec']} | {r['bpp']:.3f} | {r['encode_ms']:.0f} | "
            f"{r['decode_ms']:.0f} | {r['encode_mp_s']:.2f} | {r['decode_mp_s']:.2f} |"
        )
    if result.get("cold"):
        c = result["cold"]
        lines += [
            "",
            "| fresh process | seconds |",
            "|---|---:|",
            f"| open + load a .kae | {c['open_load_kae_s']:.2f} |",
            f"| the same, first use (empty graph cache) | {c['open_load_kae_first_s']:.2f} |",
            f"| open + load a PNG | {c['open_load_png_s']:.2f} |",
            f"| open + load an AVIF | {c['open_load_avif_s']:.2f} |",
            f"| `kae decode x.kae x.png` | {c['kae_decode_cli_s']:.2f} |",
        ]
    if result.get("large"):
        big = result["large"]
        lines += [
            "",
            f"{big['image']} ({big['megapixels']:.1f} MP), each step in a fresh process:",
            "",
            "| step | wall s (process start included) | peak RSS MiB |",
            "|---|---:|---:|",
        ]
        for step, r in big["steps"].items():
            lines.append(f"| {step} | {r['wall_s']:.1f} | {r['peak_rss_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3, help="Kodak images for the warm part")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--size", default="6144x4096", help="the large photo, WxH")
    parser.add_argument("--skip-warm", action="store_true")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--skip-cold", action="store_true")
    parser.add_argument("--codecs", default=",".join(CODECS))
    parser.add_argument("--quality", type=int, default=QUALITY, help="every codec's, 1-100")
    parser.add_argument("--out", type=Path, default=Path("out/speed"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    folder = KODAK if KODAK.is_dir() else SAMPLES
    images = sorted(folder.glob("*.png"))
    step = max(len(images) // args.images, 1)
    images = images[::step][: args.images]
    print(f"images: {', '.join(p.name for p in images)} from {folder}")
    result: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "runtime": summary(),
        "images_from": str(folder),
        "quality": args.quality,
        "warm": []
        if args.skip_warm
        else warm(images, args.codecs.split(","), args.repeat, args.quality),
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_cold:
            result["cold"] = cold(images[-1], tmp, 3, args.quality)
        if not args.skip_large:
            width, height = (int(v) for v in args.size.lower().split("x"))
            result["large"] = large(width, height, tmp, args.quality)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (args.out / "speed.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
