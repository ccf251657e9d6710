"""A shipped model ready to code: inference transforms, fixed-point h_s and coding tables.

The transforms run as ONNX graphs built from the card and the weights (``runtime``); the
Keras model (hence TensorFlow) is built only when asked for, by training and the tests.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from pillow_kae.entropy_models.coder import TableCoder
from pillow_kae.entropy_models.fixed_point import (
    FixedPointHyperSynthesis,
    FixedPointSliceTransforms,
    FixedPointSpatialTransforms,
)
from pillow_kae.entropy_models.tables import PmfTables
from pillow_kae.runtime import cache, graph
from pillow_kae.runtime.session import Transform
from pillow_kae.zoo import ModelCard, card, installed, retired_card
from pillow_kae.zoo.weights import BASE_DIGEST, LazyArrays

log = logging.getLogger(__name__)

Z_TABLES = "tables/z"
Y_TABLES = "tables/y"
THRESHOLDS = "tables/log_scale_thresholds"

T = TypeVar("T")


@dataclass
class CodecModel:
    """Everything needed to encode and decode tiles with one model.

    The parts are built on first use, each exactly once even when threads share the model:
    Python 3.12's ``cached_property`` no longer locks.
    """

    card: ModelCard
    arrays: Mapping[str, np.ndarray]
    _parts: dict[str, object] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def _part(self, key: str, build: Callable[[], T]) -> T:
        with self._lock:
            if key not in self._parts:
                self._parts[key] = build()
            return self._parts[key]

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def kind(self) -> str:
        return self.card.kind

    def transform(self, name: str) -> Transform:
        """A pixel-side transform (``g_a``, ``h_a``, ``g_s``; seed-dense: ``encoder``,
        ``decoder``) on channels-last float32 arrays, as the Keras model computes it."""
        return self._part(f"transform/{name}", lambda: self._build_transform(name))

    def _build_transform(self, name: str) -> Transform:
        layers = self.card.graph.get(name)
        if not layers:
            raise OSError(
                f"the card of KAE model {self.name!r} has no inference graph for {name!r}; "
                "write it with `python -m training describe`"
            )
        label, shift = f"{self.name}/{name}", graph.centre(layers, name)
        entry = cache.key(layers, self.card.sha256, name)
        model = cache.cached(entry, lambda: graph.build(layers, self.arrays, name))
        try:
            return Transform(model, label, centre=shift)
        except Exception as err:
            if isinstance(model, bytes):  # just built: a real error
                raise
            # A damaged cache entry (the runtimes raise their own types): build it again.
            log.warning("rebuilding damaged cached graph %s: %s", model, err)
            cache.evict(entry)
            return Transform(graph.build(layers, self.arrays, name), label, centre=shift)

    @property
    def keras_model(self) -> object:
        """The Keras model (imports TensorFlow): for training, export and the tests."""
        return self._part("keras_model", self._build_keras_model)

    def _build_keras_model(self) -> object:
        from pillow_kae import models
        from pillow_kae.zoo.weights import assign_weights

        model = models.build(self.kind, self.card.arch)
        assign_weights(model, self.arrays)
        return model

    @property
    def hyper_synthesis(self) -> FixedPointHyperSynthesis:
        return self._part("hyper_synthesis", lambda: FixedPointHyperSynthesis(self.arrays))

    @property
    def slices(self) -> int:
        """Channel slices of y coded one after another (0: the plain hyperprior, one step)."""
        return int(self.card.arch.get("slices", 0))

    @property
    def checkerboard(self) -> bool:
        """Each slice coded in two halves, the second conditioned on the first (spatially)."""
        return bool(self.card.arch.get("checkerboard", False))

    @property
    def slice_transforms(self) -> FixedPointSliceTransforms:
        return self._part(
            "slice_transforms", lambda: FixedPointSliceTransforms(self.arrays, self.slices)
        )

    @property
    def spatial_transforms(self) -> FixedPointSpatialTransforms:
        return self._part(
            "spatial_transforms", lambda: FixedPointSpatialTransforms(self.arrays, self.slices)
        )

    @property
    def z_coder(self) -> TableCoder:
        return self._part(
            "z_coder", lambda: TableCoder(PmfTables.from_arrays(self.arrays, Z_TABLES))
        )

    @property
    def y_coder(self) -> TableCoder:
        return self._part(
            "y_coder", lambda: TableCoder(PmfTables.from_arrays(self.arrays, Y_TABLES))
        )

    @property
    def thresholds(self) -> np.ndarray:
        return self._part("thresholds", lambda: np.asarray(self.arrays[THRESHOLDS], dtype=np.int64))

    @property
    def latent_channels(self) -> int:
        """Channels of the coded latent (the bottleneck, for seed-dense)."""
        if self.kind == "seed-dense":
            return int(self.card.arch.get("bottleneck", 1728))
        return int(self.card.arch.get("latent_channels", 192))

    @property
    def hyper_channels(self) -> int:
        """Channels of the factorized prior: z, or the bottleneck itself for seed-dense."""
        if self.kind == "seed-dense":
            return self.latent_channels
        return int(self.card.arch.get("hyper_channels", 128))

    @property
    def stride(self) -> int:
        """Pixels per latent position: 16, or the 48-pixel block of seed-dense."""
        return int(self.card.arch.get("block", 48)) if self.kind == "seed-dense" else 16

    @property
    def hyper_stride(self) -> int:
        return 1 if self.kind == "seed-dense" else 4

    @property
    def pad_multiple(self) -> int:
        """Tiles are padded to a multiple of this before the analysis transform."""
        return self.stride * self.hyper_stride


_cache: dict[tuple[str, str], CodecModel] = {}
_lock = threading.Lock()


def _card_for(name: str, expected_digest: bytes | None) -> ModelCard:
    """The installed card, or the retired one whose weights the file names (by the whole
    digest, or from format version 8 its first bytes)."""
    current = installed().get(name)
    if expected_digest is None or (
        current is not None and current.digest.startswith(expected_digest)
    ):
        return card(name)  # an unknown name is a ValueError naming the choices
    old = retired_card(name, expected_digest)
    if old is not None:
        return old
    if current is None:
        raise OSError(
            f"cannot decode KAE file: model {name!r} is not installed; "
            "install the matching pillow-kae version to decode it"
        )
    raise OSError(
        f"file was made by KAE model {name!r} with weights {expected_digest.hex()[:16]}..., "
        f"but the installed {name!r} has weights {current.sha256[:16]}...; "
        "install the matching pillow-kae version to decode it"
    )


def load(name: str, expected_digest: bytes | None = None) -> CodecModel:
    """Load a model (cached) by name, or by name and the weights digest a file names (which
    may be retired weights); check the weights file against its card.

    The cache is keyed by the card's weights hash, so a model re-exported in this process
    (``training export`` clears ``installed()``) is loaded anew, never served stale. A model
    stored as a delta loads its base first, by the digest its card names.
    """
    model_card = _card_for(name, expected_digest)
    base = None
    if model_card.base:
        base_name = model_card.base["name"]
        try:
            base = load(base_name, bytes.fromhex(model_card.base["sha256"])).arrays
        except (OSError, ValueError) as err:
            raise OSError(
                f"KAE model {name!r} is stored as a delta of {base_name!r}, which cannot be "
                f"loaded: {err}"
            ) from err
    key = (name, model_card.sha256)
    with _lock:
        if key not in _cache:
            data = model_card.path.read_bytes()
            if hashlib.sha256(data).hexdigest() != model_card.file_sha256:
                raise OSError(f"weights file of KAE model {name!r} is damaged (hash mismatch)")
            # Parse the very bytes that were verified, not a second read of the file.
            arrays = LazyArrays(data, base)
            if (
                base is not None
                and arrays.stored(BASE_DIGEST).tobytes().hex() != (model_card.base["sha256"])
            ):
                raise OSError(f"weights file of KAE model {name!r} names another base")
            _cache[key] = CodecModel(model_card, arrays)
            log.debug("loaded KAE model %s", name)
        return _cache[key]
