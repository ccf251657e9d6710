"""Files to files: one image to ``.kae`` and back, and whole folders in worker processes.

``encode_file`` and ``decode_file`` are what ``kae encode IN OUT`` and ``kae decode IN OUT``
do; ``convert`` runs either over many files (``kae encode IN... -o OUTDIR --jobs N``):
directories are walked recursively and their relative paths kept, an output that exists
is skipped unless ``force`` (so an interrupted run resumes), every output is written
atomically, and a failed file is reported without stopping the others.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import get_context
from pathlib import Path

from PIL import Image

from pillow_kae import container
from pillow_kae.atomic import write_atomic
from pillow_kae.KaeImagePlugin import DEFAULT_QUALITY, FORMAT
from pillow_kae.runtime.session import THREADS_ENV

log = logging.getLogger(__name__)

KAE_SUFFIX = ".kae"
# Metadata passed on to the decoded file, for the output formats whose Pillow writer
# takes it as a save option. Other formats get only what their writer picks up itself.
METADATA_FORMATS: dict[str, frozenset[str]] = {
    "icc_profile": frozenset({"PNG", "JPEG", "WEBP", "TIFF"}),
    "exif": frozenset({"PNG", "JPEG", "WEBP", "TIFF"}),
    "xmp": frozenset({"JPEG", "WEBP"}),
}
METADATA_KEYS = ("exif", "icc_profile", "xmp")
# What a bad input file can raise. Anything else is a bug: it stops the run with its traceback.
INPUT_ERRORS = (OSError, SyntaxError, EOFError, Image.DecompressionBombError)


class ConversionError(OSError):
    """A file that cannot be converted, phrased for the user (it names the file)."""


# -- one file -------------------------------------------------------------------------------


def open_image(path: Path) -> Image.Image:
    """Open and load an input image; whatever Pillow refuses in it is a ConversionError."""
    im = Image.open(path)
    try:
        im.load()
    except ValueError as err:  # some of Pillow's readers refuse broken files this way
        im.close()
        raise ConversionError(f"{path}: cannot read image: {err}") from err
    except BaseException:
        im.close()
        raise
    return im


def read_kae_header(path: Path) -> tuple[container.Header, dict[str, bytes], int]:
    """Header, metadata and file size of a ``.kae`` file, with a readable error."""
    with open(path, "rb") as fp:
        size = os.fstat(fp.fileno()).st_size
        try:
            header, metadata = container.read_header(fp)
        except container.KaeFormatError as err:
            raise ConversionError(f"{path}: not a valid KAE file: {err}") from err
    return header, metadata, size


def output_format(path: Path) -> str:
    """The Pillow format that ``path``'s extension names, if Pillow can write it."""
    ext = path.suffix.lower()
    if not ext:
        raise ValueError(f"{path}: no file extension to choose the output format from")
    fmt = Image.registered_extensions().get(ext)
    if fmt is None:
        raise ValueError(f"{path}: unknown output file extension {ext!r}")
    if fmt not in Image.SAVE:
        raise ValueError(f"{path}: Pillow cannot write {fmt} files")
    return fmt


def writable_format(fmt: str) -> str:
    """``fmt`` as Pillow names it (``png`` -> ``PNG``), if Pillow can write it.

    ``Image.SAVE`` fills as Pillow loads its plugins, which a fresh process has not done
    yet (only opening or saving a file, or ``registered_extensions``, loads them all).
    """
    Image.init()
    fmt = fmt.upper()
    if fmt not in Image.SAVE:
        raise ValueError(f"Pillow cannot write {fmt!r} files")
    return fmt


def format_extension(fmt: str) -> str:
    """The usual extension of a Pillow format that can be written (``png`` -> ``.png``)."""
    fmt = writable_format(fmt)
    extensions = [ext for ext, name in Image.registered_extensions().items() if name == fmt]
    preferred = f".{fmt.lower()}"
    return preferred if preferred in extensions else sorted(extensions)[0]


def encode_file(
    src: Path,
    dst: Path,
    quality: int = DEFAULT_QUALITY,
    model: str | None = None,
    effort: int = 0,
) -> int:
    """Encode one image Pillow reads into ``dst``; returns the bytes written."""
    with open_image(src) as im:
        log.info("read %s: %s %dx%d %s", src, im.format, im.width, im.height, im.mode)
        buffer = io.BytesIO()
        options: dict[str, object] = {"quality": quality, "effort": effort}
        if model is not None:
            options["model"] = model
        im.save(buffer, format=FORMAT, **options)
        pixels = im.width * im.height
    data = buffer.getvalue()
    write_atomic(dst, data)
    log.info("wrote %s: %d bytes, %.4f bpp", dst, len(data), 8 * len(data) / pixels)
    return len(data)


def decode_file(src: Path, dst: Path, fmt: str | None = None) -> int:
    """Decode one ``.kae`` into ``dst`` (format from its extension unless given), with its
    metadata where the format takes it; returns the bytes written."""
    fmt = fmt or output_format(dst)
    try:
        im = Image.open(src, formats=[FORMAT])
    except Image.UnidentifiedImageError:
        read_kae_header(src)  # raises the header's own message, clearer than Pillow's
        raise
    with im:
        im.load()
        options = {
            key: im.info[key]
            for key in METADATA_KEYS
            if im.info.get(key) and fmt in METADATA_FORMATS[key]
        }
        log.info("decoded %s: %dx%d %s; writing %s", src, im.width, im.height, im.mode, fmt)
        buffer = io.BytesIO()
        im.save(buffer, format=fmt, **options)
    write_atomic(dst, buffer.getvalue())
    return buffer.tell()


# -- many files -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    src: Path
    dst: Path


@dataclass(frozen=True)
class Result:
    """One job's outcome: bytes read and written, or the message of why it failed."""

    bytes_in: int = 0
    bytes_out: int = 0
    error: str | None = None


@dataclass
class Summary:
    """What a batch did: counts, bytes, time and every failure (path, message)."""

    converted: int = 0
    skipped: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    failures: list[tuple[Path, str]] = field(default_factory=list)

    def record(self, job: Job, result: Result) -> None:
        if result.error is None:
            self.converted += 1
            self.bytes_in += result.bytes_in
            self.bytes_out += result.bytes_out
        else:
            self.failures.append((job.src, result.error))

    def line(self, verb: str) -> str:
        ratio = f" ({self.bytes_out / self.bytes_in:.1%})" if self.bytes_in else ""
        return (
            f"{verb} {self.converted} {'file' if self.converted == 1 else 'files'}, "
            f"{self.skipped} skipped, {len(self.failures)} failed: "
            f"{_size(self.bytes_in)} in, {_size(self.bytes_out)} out{ratio}, {self.seconds:.1f} s"
        )


def _size(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


def _walk(inputs: Sequence[Path], wanted: Callable[[Path], bool]) -> Iterator[tuple[Path, Path]]:
    """(file, path relative to the output folder) for each file named or found below a dir."""
    for entry in inputs:
        if entry.is_dir():
            for path in sorted(entry.rglob("*")):
                if path.is_file() and wanted(path):
                    yield path, path.relative_to(entry)
        else:
            yield entry, Path(entry.name)  # missing files fail as jobs, with the others


def plan(
    inputs: Sequence[Path], out_dir: Path, suffix: str, wanted: Callable[[Path], bool]
) -> tuple[list[Job], list[tuple[Path, str]]]:
    """The jobs, and the inputs refused up front (two inputs writing one output)."""
    jobs, refused, claimed = [], [], {}
    for src, relative in _walk(inputs, wanted):
        dst = out_dir / relative.with_suffix(suffix)
        if dst in claimed:
            refused.append((src, f"{src}: same output {dst} as {claimed[dst]}"))
            continue
        claimed[dst] = src
        jobs.append(Job(src, dst))
    return jobs, refused


def is_image(path: Path) -> bool:
    """Worth encoding: Pillow can open its extension, and it is not already ``.kae``."""
    ext = path.suffix.lower()
    return ext != KAE_SUFFIX and ext in Image.registered_extensions()


def is_kae(path: Path) -> bool:
    return path.suffix.lower() == KAE_SUFFIX


def run_job(work: Callable[[Path, Path], int], job: Job) -> Result:
    """Run one job; input errors are results, not exceptions, so one file never stops a run."""
    try:
        size = job.src.stat().st_size
        job.dst.parent.mkdir(parents=True, exist_ok=True)
        return Result(size, work(job.src, job.dst))
    except INPUT_ERRORS as err:
        message = (
            str(err) if isinstance(err, ConversionError) else f"{job.src}: {error_line(err, False)}"
        )
        return Result(error=message)


def pending(jobs: Sequence[Job], force: bool = False) -> list[Job]:
    """The jobs still to do: all with ``force``, else those whose output does not exist."""
    return [job for job in jobs if force or not job.dst.exists()]


def error_line(err: BaseException, with_filename: bool = True) -> str:
    """An error as one line; an OSError's file name only ``with_filename`` (the caller may
    already name the file)."""
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        message = f"{os.fsdecode(err.filename)}: {err.strerror}" if with_filename else err.strerror
    else:
        message = str(err) or type(err).__name__
    return " ".join(message.split())


def _worker_init(threads: int) -> None:
    os.environ[THREADS_ENV] = str(threads)
    logging.getLogger("pillow_kae").setLevel(logging.WARNING)


def summarize(
    jobs: Sequence[Job],
    force: bool,
    outcomes: Callable[[list[Job]], Iterator[tuple[Job, Result]]],
    progress: Callable[[int], None] | None = None,
    refused: Sequence[tuple[Path, str]] = (),
) -> Summary:
    """Skip the finished jobs, run the rest through ``outcomes`` (whatever executes them:
    this process, a process pool, a cluster), and count what happened; ``refused`` (from
    ``plan``) are failures from the start."""
    start = time.perf_counter()
    todo = pending(jobs, force)
    summary = Summary(skipped=len(jobs) - len(todo), failures=list(refused))
    if progress and summary.skipped:
        progress(summary.skipped)
    for job, result in outcomes(todo):
        summary.record(job, result)
        if progress:
            progress(1)
    summary.failures.sort()
    summary.seconds = time.perf_counter() - start
    return summary


def _in_processes(
    work: Callable[[Path, Path], int], workers: int, todo: list[Job]
) -> Iterator[tuple[Job, Result]]:
    if workers <= 1 or len(todo) <= 1:
        for job in todo:
            yield job, run_job(work, job)
        return
    workers = min(workers, len(todo))
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = get_context("spawn")  # no fork of a parent that may hold runtime threads
    with ProcessPoolExecutor(workers, context, _worker_init, (threads,)) as pool:
        futures = {pool.submit(run_job, work, job): job for job in todo}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def convert(
    jobs: Sequence[Job],
    work: Callable[[Path, Path], int],
    workers: int = 1,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
    refused: Sequence[tuple[Path, str]] = (),
) -> Summary:
    """Run ``work(src, dst)`` for each job in ``workers`` processes; never raises for a file.

    ``work`` must be picklable (a module-level function or a ``functools.partial`` of one).
    Each worker gets an equal share of the cores for the runtime's threads.
    """
    return summarize(jobs, force, partial(_in_processes, work, workers), progress, refused)


def encoder(
    quality: int = DEFAULT_QUALITY, model: str | None = None, effort: int = 0
) -> Callable[[Path, Path], int]:
    """A picklable ``work`` for ``convert`` that encodes with these options."""
    return partial(encode_file, quality=quality, model=model, effort=effort)


def decoder(fmt: str) -> Callable[[Path, Path], int]:
    """A picklable ``work`` for ``convert`` that decodes to Pillow format ``fmt``."""
    return partial(decode_file, fmt=fmt.upper())
