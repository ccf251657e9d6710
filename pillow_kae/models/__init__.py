"""Model definitions: the single source of truth for every layer, shared by runtime and training."""

from pillow_kae.models.hyperprior import MeanScaleHyperprior

__all__ = ["MeanScaleHyperprior"]
