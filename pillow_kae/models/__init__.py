"""Model definitions: the single source of truth for every layer, shared by runtime and training."""

from __future__ import annotations

from pillow_kae.models.channel_conditional import ChannelConditionalHyperprior
from pillow_kae.models.hyperprior import MeanScaleHyperprior
from pillow_kae.models.seed_dense import SeedDense

KINDS = {
    "mean-scale-hyperprior": MeanScaleHyperprior,
    "channel-conditional": ChannelConditionalHyperprior,
    "seed-dense": SeedDense,
}


def build(kind: str, arch: dict) -> MeanScaleHyperprior | SeedDense:
    """A built model of the given kind (as named in model cards) and architecture."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(KINDS)}")
    model = KINDS[kind](**arch)
    model.build()
    return model


__all__ = ["KINDS", "ChannelConditionalHyperprior", "MeanScaleHyperprior", "SeedDense", "build"]
