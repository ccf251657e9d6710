"""Converting a collection larger than one machine, on a Dask cluster.

    from dask.distributed import Client
    from pillow_kae import distributed

    client = Client("scheduler:8786")   # or Client(LocalCluster(...))
    summary = distributed.encode_files(["/data/photos"], "/data/kae", client, quality=75)
    print(summary.line("encoded"))

The same jobs as ``kae encode IN... -o OUTDIR`` (``convert.plan``: folders walked, relative
paths kept, finished outputs skipped unless ``force``, atomic writes, a failed file recorded
and the others going on), run as Dask tasks. Paths must mean the same file on the client
and on every worker (a shared filesystem). Each worker process loads a model once and keeps
it for all its tasks; ``KAE_NUM_THREADS`` in the workers' environment sets the threads of
each transform (match it to ``nthreads`` per worker). Needs ``pip install 'pillow-kae[dask]'``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from pillow_kae import convert
from pillow_kae.KaeImagePlugin import DEFAULT_QUALITY


def run(
    client: object,
    jobs: Sequence[convert.Job],
    work: Callable[[Path, Path], int],
    force: bool = False,
    refused: Sequence[tuple[Path, str]] = (),
) -> convert.Summary:
    """Run ``work`` for each pending job as a task of ``client``; failures are recorded
    (``refused``, from ``convert.plan``, among them)."""
    from dask.distributed import as_completed

    def outcomes(todo: list[convert.Job]) -> Iterator[tuple[convert.Job, convert.Result]]:
        if not todo:
            return
        futures = client.map(convert.run_job, [work] * len(todo), todo, pure=False)
        job_of = {future.key: job for future, job in zip(futures, todo, strict=True)}
        for future, result in as_completed(futures, with_results=True):
            yield job_of[future.key], result

    return convert.summarize(jobs, force, outcomes, refused=refused)


def encode_files(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    client: object,
    quality: int = DEFAULT_QUALITY,
    model: str | None = None,
    force: bool = False,
    effort: int = 0,
) -> convert.Summary:
    """Encode images (files, or folders walked recursively) into ``out_dir`` as ``.kae``."""
    jobs, refused = convert.plan(
        [Path(p) for p in inputs], Path(out_dir), convert.KAE_SUFFIX, convert.is_image
    )
    return run(client, jobs, convert.encoder(quality, model, effort), force, refused)


def decode_files(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    client: object,
    fmt: str = "PNG",
    force: bool = False,
) -> convert.Summary:
    """Decode ``.kae`` files (or folders of them) into ``out_dir`` in Pillow format ``fmt``."""
    suffix = convert.format_extension(fmt)
    jobs, refused = convert.plan([Path(p) for p in inputs], Path(out_dir), suffix, convert.is_kae)
    return run(client, jobs, convert.decoder(fmt), force, refused)
