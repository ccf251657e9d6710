"""A shipped model ready to code: Keras transforms, fixed-point h_s and coding tables.

This is the only module of the runtime that imports Keras (hence TensorFlow), and only when
a model is first used for pixels.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from pillow_kae.entropy_models.coder import TableCoder
from pillow_kae.entropy_models.fixed_point import FixedPointHyperSynthesis
from pillow_kae.entropy_models.tables import PmfTables
from pillow_kae.zoo import ModelCard, card
from pillow_kae.zoo.weights import load_arrays

log = logging.getLogger(__name__)

Z_TABLES = "tables/z"
Y_TABLES = "tables/y"
THRESHOLDS = "tables/log_scale_thresholds"


@dataclass
class CodecModel:
    """Everything needed to encode and decode tiles with one model."""

    card: ModelCard
    arrays: dict[str, np.ndarray]

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def kind(self) -> str:
        return self.card.kind

    @cached_property
    def keras_model(self) -> object:
        from pillow_kae import models
        from pillow_kae.zoo.weights import assign_weights

        model = models.build(self.kind, self.card.arch)
        assign_weights(model, self.arrays)
        return model

    @cached_property
    def hyper_synthesis(self) -> FixedPointHyperSynthesis:
        return FixedPointHyperSynthesis(self.arrays)

    @cached_property
    def z_coder(self) -> TableCoder:
        return TableCoder(PmfTables.from_arrays(self.arrays, Z_TABLES))

    @cached_property
    def y_coder(self) -> TableCoder:
        return TableCoder(PmfTables.from_arrays(self.arrays, Y_TABLES))

    @cached_property
    def thresholds(self) -> np.ndarray:
        return np.asarray(self.arrays[THRESHOLDS], dtype=np.int64)

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


_cache: dict[str, CodecModel] = {}
_lock = threading.Lock()


def load(name: str, expected_digest: bytes | None = None) -> CodecModel:
    """Load an installed model (cached); check its weights against the card and the file."""
    model_card = card(name)
    if expected_digest is not None and expected_digest != model_card.digest:
        raise OSError(
            f"file was made by KAE model {name!r} with weights {expected_digest.hex()[:16]}..., "
            f"but the installed {name!r} has weights {model_card.sha256[:16]}...; "
            "install the matching pillow-kae version to decode it"
        )
    with _lock:
        if name not in _cache:
            data = model_card.path.read_bytes()
            if hashlib.sha256(data).hexdigest() != model_card.sha256:
                raise OSError(f"weights file of KAE model {name!r} is damaged (hash mismatch)")
            _cache[name] = CodecModel(model_card, load_arrays(model_card.path))
            log.debug("loaded KAE model %s", name)
        return _cache[name]
