"""``kae``: encode, decode and inspect ``.kae`` files from the command line.

Subcommands::

    kae encode IN OUT [-q Q] [--model M]   any image Pillow reads -> KAE
    kae decode IN OUT                      KAE -> the format OUT's extension names
    kae encode IN... -o OUTDIR [--jobs N] [--force]
    kae decode IN... -o OUTDIR [--format png] [--jobs N] [--force]
                                           files and folders (recursive), N processes
    kae info FILE [FILE ...] [--json]      header fields, size and bpp (no TensorFlow)
    kae models                             installed models and the quality ladder
    kae surprise FILE... [--model M] [--reference R]
                                           bits per pixel each image costs (low = familiar),
                                           or M's bits over R's
    kae bench FOLDER [--codecs C,...] [--out DIR] [--limit N]
    kae bench --merge RESULTS.json... [--out DIR]
                                           rate-distortion against Pillow's other codecs

``info`` and ``models`` read only headers and model cards, so they never import
TensorFlow. Errors in the input are reported as one ``kae: error: ...`` line on stderr
with exit status 1; command-line usage errors keep argparse's status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pillow_kae import __version__, convert
from pillow_kae import zoo as model_zoo
from pillow_kae.container import (
    CASCADE_RESTORATION_VERSION,
    COLOUR_RESTORATION_VERSION,
    COMPACT_VERSION,
    RESTORATION_VERSION,
)
from pillow_kae.KaeImagePlugin import DEFAULT_QUALITY
from pillow_kae.zoo import quality as quality_ladder

if TYPE_CHECKING:
    from pillow_kae.bench.report import BenchResult

# Named explicitly: under ``python -m pillow_kae.cli`` __name__ is "__main__".
log = logging.getLogger("pillow_kae.cli")

PROG = "kae"

# What a bad input file can raise; anything else is a bug and keeps its traceback. Bad
# options (ValueError from the library) become a CliError where they are checked.
_INPUT_ERRORS = convert.INPUT_ERRORS


class CliError(Exception):
    """A problem already phrased for the user."""


# --------------------------------------------------------------------------
# Helpers


def _candidates(quality: int, model: str | None) -> list[tuple[str, float]]:
    """The rate points the encoder may code at for the options, the ladder's first; a bad
    quality or model is the user's error."""
    try:
        return quality_ladder.candidates(quality, model)
    except ValueError as err:
        raise CliError(str(err)) from err


# --------------------------------------------------------------------------
# encode / decode


def _single(args: argparse.Namespace) -> tuple[Path, Path] | None:
    """(IN, OUT) of the one-file form, or None for the folder form (``-o OUTDIR``)."""
    if args.output_dir is not None:
        return None
    if len(args.inputs) != 2:
        raise CliError(
            f"{args.command} takes IN OUT, or IN... -o OUTDIR to convert several files and folders"
        )
    return Path(args.inputs[0]), Path(args.inputs[1])


def _wants(value: object, default: object, name: str) -> None:
    if value != default:
        raise CliError(f"{name} applies only with -o OUTDIR")


def cmd_encode(args: argparse.Namespace) -> int:
    # Check the options before touching any file: a bad quality or model writes nothing.
    (model_name, gain_step), *others = _candidates(args.quality, args.model)
    log.info(
        "quality %d -> model %s, gain step %g%s",
        args.quality,
        model_name,
        gain_step,
        "".join(f", or {name} {step:+g} if it codes an image better" for name, step in others),
    )
    single = _single(args)
    if single is None:
        return _convert_many(
            args,
            convert.encoder(args.quality, args.model, args.effort),
            convert.KAE_SUFFIX,
            convert.is_image,
        )
    _wants(args.jobs, None, "--jobs")
    convert.encode_file(*single, quality=args.quality, model=args.model, effort=args.effort)
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    single = _single(args)
    if single is None:
        try:
            suffix = convert.format_extension(args.format or "PNG")
        except ValueError as err:
            raise CliError(str(err)) from err
        work = convert.decoder(args.format or "PNG")
        return _convert_many(args, work, suffix, convert.is_kae)
    _wants(args.jobs, None, "--jobs")
    src, dst = single
    try:
        fmt = convert.writable_format(args.format) if args.format else convert.output_format(dst)
    except ValueError as err:
        raise CliError(str(err)) from err
    convert.decode_file(src, dst, fmt)
    return 0


def _convert_many(
    args: argparse.Namespace,
    work: Callable[[Path, Path], int],
    suffix: str,
    wanted: Callable[[Path], bool],
) -> int:
    """The folder form: plan, convert with a progress bar, summary, failures on stderr."""
    from tqdm import tqdm

    out_dir = Path(args.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(f"{out_dir}: exists and is not a folder")
    jobs, refused = convert.plan([Path(p) for p in args.inputs], out_dir, suffix, wanted)
    if not jobs and not refused:
        raise CliError("no input files found")
    out_dir.mkdir(parents=True, exist_ok=True)
    workers = args.jobs or os.cpu_count() or 1
    with tqdm(total=len(jobs), unit="file", disable=not sys.stderr.isatty()) as bar:
        summary = convert.convert(jobs, work, workers, args.force, bar.update, refused)
    for _, message in summary.failures:
        print(f"{PROG}: error: {message}", file=sys.stderr)
    print(summary.line("encoded" if args.command == "encode" else "decoded"))
    return 1 if summary.failures else 0


# --------------------------------------------------------------------------
# info


def _file_info(path: Path) -> dict:
    header, metadata, size = convert.read_kae_header(path)
    card = model_zoo.installed().get(header.model_name)
    pixels = header.width * header.height
    columns, rows = header.tile_grid
    return {
        "file": str(path),
        "width": header.width,
        "height": header.height,
        "mode": header.mode,
        "model": header.model_name,
        "weights_hash": header.weights_hash.hex(),
        "model_installed": card is not None,
        "weights_match": card is not None and card.digest.startswith(header.weights_hash),
        "weights_retired": model_zoo.retired_card(header.model_name, header.weights_hash)
        is not None,
        "quality": header.quality,
        "format_version": header.version,
        "gain_step": header.step,
        "tile_size": header.tile_size,
        "tile_grid": [columns, rows],
        "tile_count": header.tile_count,
        "latent_channels": header.latent_channels,
        "hyper_channels": header.hyper_channels,
        "bytes": size,
        "bpp": 8 * size / pixels,
        "metadata": {key: len(metadata[key]) for key in convert.METADATA_KEYS if key in metadata},
    }


_VERSION_NOTES = {
    RESTORATION_VERSION: " (with a restoration filter)",
    COLOUR_RESTORATION_VERSION: " (with a restoration filter, shape 2)",
    CASCADE_RESTORATION_VERSION: " (with restoration filters, shape 3)",
    COMPACT_VERSION: " (compact header)",
}


def _format_info(info: dict) -> str:
    if info["weights_retired"]:
        status = "retired weights, kept to decode their files"
    elif not info["model_installed"]:
        status = "not installed"
    elif info["weights_match"]:
        status = "installed, weights match"
    else:
        status = "installed, but with different weights: cannot decode"
    columns, rows = info["tile_grid"]
    metadata = ", ".join(f"{key} {n} B" for key, n in info["metadata"].items()) or "none"
    rows_out = [
        ("size", f"{info['width']} x {info['height']}"),
        ("mode", info["mode"]),
        ("model", f"{info['model']} ({status})"),
        ("weights", info["weights_hash"][:16]),
        ("quality", str(info["quality"])),
        ("gain step", f"{info['gain_step']:g}"),
        (
            "format",
            f"version {info['format_version']}" + _VERSION_NOTES.get(info["format_version"], ""),
        ),
        ("tiles", f"{info['tile_count']} ({columns} x {rows} of {info['tile_size']} px)"),
        ("bytes", f"{info['bytes']} ({info['bpp']:.4f} bpp)"),
        ("metadata", metadata),
    ]
    return "\n".join([f"{info['file']}:", *(f"  {k + ':':<11}{v}" for k, v in rows_out)])


def cmd_info(args: argparse.Namespace) -> int:
    infos = []
    status = 0
    for name in args.files:
        try:
            infos.append(_file_info(Path(name)))
        except (CliError, *_INPUT_ERRORS) as err:
            _report(err)
            status = 1
    if args.json:
        print(json.dumps(infos, indent=2))
    else:
        print("\n".join(_format_info(info) for info in infos))
    return status


# --------------------------------------------------------------------------
# models


def _ladder_ranges() -> list[tuple[int, int, str, float, float]]:
    """(first quality, last quality, model, first gain step, last gain step) per model."""
    ranges: list[tuple[int, int, str, float, float]] = []
    for q in range(1, 101):
        name, step = quality_ladder.choose(q)
        if ranges and ranges[-1][2] == name:
            first, _, _, low, _ = ranges[-1]
            ranges[-1] = (first, q, name, low, step)
        else:
            ranges.append((q, q, name, step, step))
    return ranges


def _number(value: object, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "-"


def cmd_models(args: argparse.Namespace) -> int:
    cards = model_zoo.installed()
    if not cards:
        print("no KAE models installed")
        return 0
    table = [("name", "lambda", "weights", "Kodak bpp", "Kodak PSNR", "steps")]
    for card in cards.values():
        try:
            weights = f"{card.path.stat().st_size / 1e6:.1f} MB"
            if card.base:
                weights += f" + {card.base['name']}"  # stored as a delta of that model
        except OSError:
            weights = "missing"
        evaluation = card.evaluation
        psnr = evaluation.get("psnr")
        table.append(
            (
                card.name,
                _number(card.lmbda, "g"),
                weights,
                _number(evaluation.get("bpp"), ".4f"),
                f"{psnr:.2f} dB" if isinstance(psnr, int | float) else "-",
                _number(card.training.get("steps"), "d"),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print()
    try:
        ranges = _ladder_ranges()
    except OSError:  # none of the ladder's models is installed
        print("quality ladder: none of its models is installed (save with model=NAME)")
    else:
        print(f"quality ladder (-q, default {DEFAULT_QUALITY}):")
        for first, last, name, low, high in ranges:
            span = f"{first}-{last}" if first != last else str(first)
            steps = f"gain steps {low:+g} .. {high:+g}" if low != high else f"gain step {low:+g}"
            print(f"  {span:>7}  {name:<{widths[0]}}  {steps}")
        print("  (each quality its own step, in sixteenths: higher quality, larger file;")
        print("   where two models overlap, an image is also coded with the model below at")
        print("   about the same bytes, which is kept if it is better by PSNR and MS-SSIM)")
    retired = sorted(model_zoo.retired())
    if retired:
        print()
        print("retired weights (decode their files only):")
        for name, digest in retired:
            print(f"  {name:<{widths[0]}}  {digest[:12]}")
    return 0


# --------------------------------------------------------------------------
# Entry point


def _quality(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid quality {text!r}: not an integer") from None


def _effort(text: str) -> int:
    from pillow_kae.refinement import check_effort

    try:
        return check_effort(int(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"invalid effort {text!r}: {err}") from None


def cmd_surprise(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pillow_kae.analysis import surprise

    _candidates(args.quality, args.model)  # bad options fail before any work
    if args.reference is not None:
        _candidates(args.quality, args.reference)
    failed = False
    show = len(args.files) > 1 and sys.stderr.isatty()
    for name in tqdm(args.files, desc="surprise", disable=not show):
        try:
            with convert.open_image(Path(name)) as im:
                score = surprise(
                    im, model=args.model, quality=args.quality, reference=args.reference
                )
        except (CliError, *_INPUT_ERRORS) as err:
            _report(
                err if isinstance(err, CliError) else CliError(f"{name}: {convert.error_line(err)}")
            )
            failed = True
            continue
        print(f"{score:.4f}\t{name}")
    return 1 if failed else 0


# --------------------------------------------------------------------------
# bench


def _codec_list(text: str) -> list[str]:
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("no codec named")
    return names


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: not a positive integer")
    return value


def cmd_bench(args: argparse.Namespace) -> int:
    from pillow_kae.bench import codecs as bench_codecs
    from pillow_kae.bench import runner
    from pillow_kae.bench.sweep import list_images

    out = Path(args.out)
    if args.merge:
        if args.folder is not None or args.codecs is not None or args.limit is not None:
            raise CliError("--merge takes results.json files, not a folder, --codecs or --limit")
        try:
            result = runner.merge([Path(name) for name in args.merge], out)
        except runner.BenchError as err:
            raise CliError(str(err)) from err
        return _bench_written(result, out)
    if args.folder is None:
        raise CliError("name a folder of images (or --merge earlier results)")
    folder = Path(args.folder)
    if not folder.is_dir():
        raise CliError(f"{folder}: not a folder")
    try:
        codecs = runner.available_codecs(args.codecs)
    except runner.BenchError as err:
        raise CliError(str(err)) from err
    if args.codecs is None:
        for codec in bench_codecs.registry().values():
            if codec.default and not codec.available():
                print(
                    f"{PROG} bench: skipping {codec.name}: it needs {codec.needs}", file=sys.stderr
                )
    count = len(list_images(folder, args.limit))
    if not count:
        raise CliError(f"{folder}: no images Pillow can read")
    print(f"{count} image files in {folder}; codecs: {', '.join(c.name for c in codecs)}")
    try:
        result = runner.run(folder, out, codecs, args.limit, progress=sys.stderr.isatty())
    except runner.BenchError as err:
        raise CliError(str(err)) from err
    return _bench_written(result, out)


def _bench_written(result: BenchResult, out: Path) -> int:
    from pillow_kae.bench import runner
    from pillow_kae.bench.report import summary_markdown

    print()
    print(summary_markdown(result))
    if result.plot is None:
        print("no plot: matplotlib is not installed (pip install 'pillow-kae[bench]')")
    written = [runner.JSON_NAME, runner.MARKDOWN_NAME, result.plot]
    written += [str(crop["file"]) for crop in result.crops]
    print(f"wrote to {out}/: {', '.join(name for name in written if name)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Encode, decode and inspect KAE (.kae) learned images."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)"
    )
    # Also accepted after the subcommand; SUPPRESS keeps the count from the main parser.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    batch = argparse.ArgumentParser(add_help=False)
    batch.add_argument(
        "-o", "--output-dir", metavar="OUTDIR", help="convert every IN (files, folders) into here"
    )
    batch.add_argument(
        "-j", "--jobs", type=_positive, default=None, help="worker processes (default: the cores)"
    )
    batch.add_argument("--force", action="store_true", help="overwrite outputs that exist")

    p = sub.add_parser(
        "encode",
        parents=[common, batch],
        help="encode images as KAE",
        usage="%(prog)s [-q Q] [--model M] [--effort E] IN OUT\n"
        "       %(prog)s [-q Q] [--model M] [--effort E] IN... -o OUTDIR [--jobs N] [--force]",
    )
    p.add_argument(
        "inputs", metavar="IN", nargs="+", help="images Pillow can read (or folders, with -o)"
    )
    p.add_argument(
        "-q",
        "--quality",
        type=_quality,
        default=DEFAULT_QUALITY,
        help=f"1-100, higher is better and larger (default {DEFAULT_QUALITY})",
    )
    p.add_argument("--model", help="use this installed model (see 'kae models')")
    p.add_argument(
        "--effort",
        type=_effort,
        default=0,
        help="0-9: refine the code against the decoder, slower and smaller (default 0; "
        "above 0 needs Keras, pip install 'pillow-kae[effort]')",
    )
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser(
        "decode",
        parents=[common, batch],
        help="decode KAE files",
        usage="%(prog)s IN OUT\n"
        "       %(prog)s IN... -o OUTDIR [--format png] [--jobs N] [--force]",
    )
    p.add_argument("inputs", metavar="IN", nargs="+", help=".kae files (or folders, with -o)")
    p.add_argument(
        "--format", help="output format with -o (default png); else OUT's extension picks it"
    )
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("info", parents=[common], help="show the header of KAE files")
    p.add_argument("files", metavar="FILE", nargs="+", help=".kae files")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per file")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("models", parents=[common], help="list installed models and the ladder")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "surprise",
        parents=[common],
        help="bits per pixel a model needs for each image (low = familiar)",
    )
    p.add_argument("files", metavar="FILE", nargs="+", help="images Pillow can read")
    p.add_argument("--model", help="installed model to score with (see 'kae models')")
    p.add_argument(
        "--reference", help="print the model's bits over this model's bits instead of bpp"
    )
    p.add_argument("-q", "--quality", type=_quality, default=DEFAULT_QUALITY)
    p.set_defaults(func=cmd_surprise)

    p = sub.add_parser(
        "bench",
        parents=[common],
        help="rate-distortion of .kae against JPEG, WebP, AVIF and JPEG XL on your images",
    )
    p.add_argument("folder", metavar="FOLDER", nargs="?", help="a folder of images (PNG is best)")
    p.add_argument(
        "--codecs",
        type=_codec_list,
        default=None,
        help="comma-separated, from kae,jpeg,jpeg444,webp,avif,jxl (default: all available) "
        "and kae:MODEL (one installed model alone, e.g. kae:kae-mid)",
    )
    p.add_argument("--out", default="out/bench", help="output folder (default out/bench)")
    p.add_argument("--limit", type=_positive, default=None, help="only the first N images")
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="RESULTS",
        help="measure nothing: one report from earlier runs' results.json on the same images, "
        "each codec as the last of them measured it",
    )
    p.set_defaults(func=cmd_bench)
    return parser


def _report(err: BaseException) -> None:
    log.debug("details", exc_info=err)
    print(f"{PROG}: error: {convert.error_line(err)}", file=sys.stderr)


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(format=f"{PROG}: %(levelname)s: %(name)s: %(message)s")
    logging.getLogger("pillow_kae").setLevel(level)
    # Keep TensorFlow's C++ start-up chatter off stderr unless debugging.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbosity >= 2 else "2")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kae`` command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return args.func(args)
    except BrokenPipeError:
        # stdout closed early (``kae models | head``): stop quietly, as other tools do.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (CliError, *_INPUT_ERRORS) as err:
        _report(err)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
