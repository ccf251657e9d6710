"""Reparametrizations of GDN's parameters, written once for Keras and for NumPy.

GDN stores beta and gamma as sqrt(value + pedestal), bounded below (as tensorflow-compression
and CompressAI do), which keeps gradients alive near zero. Training needs the effective
values as Keras tensors, the inference runtime as arrays baked into its graph: both call
these functions, with ``keras.ops`` or ``numpy`` as ``xp`` (they share ``square``/``maximum``).
"""

from __future__ import annotations

REPARAM_OFFSET = 2.0**-18
PEDESTAL = REPARAM_OFFSET**2


def gdn_beta(beta: object, beta_min: float, xp: object) -> object:
    """The effective beta: at least ``beta_min``."""
    bound = (beta_min + PEDESTAL) ** 0.5
    return xp.square(xp.maximum(beta, bound)) - PEDESTAL


def gdn_gamma(gamma: object, xp: object) -> object:
    """The effective gamma: non-negative."""
    return xp.square(xp.maximum(gamma, REPARAM_OFFSET)) - PEDESTAL
