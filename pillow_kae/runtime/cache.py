"""An on-disk cache of the ONNX graphs the runtime builds, so a fresh process skips building.

Building a transform's graph means importing ``onnx`` and serializing its weights; a short
script that opens one ``.kae`` paid that on every run. The cache holds each built graph
under a name derived from everything that determines it (the layer list, the weights hash,
the transform, the opset and the builder's own source), so a stale entry is never used:
a different model or a changed builder simply has another name. Entries are written
atomically; a cache that cannot be written, or an entry that cannot be loaded, costs only
the build. ``KAE_CACHE_DIR`` moves it (``off`` disables it); the default follows XDG.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from pillow_kae.atomic import write_atomic
from pillow_kae.runtime import graph

log = logging.getLogger(__name__)

CACHE_ENV = "KAE_CACHE_DIR"
SUFFIX = ".onnx"


def directory() -> Path | None:
    """Where graphs are cached, or None when ``KAE_CACHE_DIR=off``."""
    value = os.environ.get(CACHE_ENV, "")
    if value.lower() == "off":
        return None
    if value:
        return Path(value)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pillow-kae" / "graphs"


@functools.cache
def _builder_digest() -> str:
    """The graph builder's source, read once per process."""
    return hashlib.sha256(Path(graph.__file__).read_bytes()).hexdigest()


def key(layers: list[graph.LayerSpec], weights_sha256: str, name: str) -> str:
    """The entry name: a digest of every input of ``graph.build`` and of the builder."""
    digest = hashlib.sha256()
    digest.update(json.dumps(layers, sort_keys=True).encode())
    digest.update(f"{weights_sha256}/{name}/{graph.OPSET}/{_builder_digest()}".encode())
    return digest.hexdigest()


def cached(entry: str, build: Callable[[], bytes]) -> str | bytes:
    """The cached graph's path if there is one, else the built graph (stored for next time)."""
    folder = directory()
    if folder is None:
        return build()
    path = folder / f"{entry}{SUFFIX}"
    if path.is_file():
        return str(path)
    model = build()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(path, model)
    except OSError as err:
        log.debug("graph cache %s not written: %s", folder, err)
    return model


def evict(entry: str) -> None:
    """Remove an entry that failed to load (damaged on disk)."""
    folder = directory()
    if folder is not None:
        (folder / f"{entry}{SUFFIX}").unlink(missing_ok=True)
