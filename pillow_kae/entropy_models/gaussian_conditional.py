"""Gaussian conditional for the main latent y (mean-scale hyperprior, Minnen et al. 2018).

y - mu is modelled as a zero-mean Gaussian convolved with a unit box. Scales live on a fixed
log-spaced table (as in CompressAI): the coder only ever sees a table index, which the
fixed-point hyper-decoder derives with integer comparisons.

The table constants are what the runtime needs; the likelihoods are for training and import
Keras when called, so that coding an image never imports TensorFlow.
"""

from __future__ import annotations

import math

import numpy as np

SCALE_MIN = 0.11
SCALE_MAX = 256.0
SCALE_LEVELS = 64
LIKELIHOOD_BOUND = 1e-9
LOG_SCALE_MIN = math.log(SCALE_MIN)
LOG_SCALE_MAX = math.log(SCALE_MAX)


def scale_table() -> np.ndarray:
    """The SCALE_LEVELS scales the coder has tables for, geometric from SCALE_MIN to SCALE_MAX."""
    return np.exp(np.linspace(LOG_SCALE_MIN, LOG_SCALE_MAX, SCALE_LEVELS))


def log_scale_thresholds() -> np.ndarray:
    """Log-domain midpoints between neighbouring table scales (SCALE_LEVELS - 1 values)."""
    logs = np.log(scale_table())
    return (logs[:-1] + logs[1:]) / 2


def _standard_cdf(v: object) -> object:
    from keras import ops

    return 0.5 * (1.0 + ops.erf(v * (1.0 / math.sqrt(2.0))))


def gaussian_likelihood(residual: object, scales: object) -> object:
    """P(residual) under N(0, scale) convolved with U(-1/2, 1/2), bounded below."""
    from keras import ops

    values = ops.abs(residual)
    upper = _standard_cdf((0.5 - values) / scales)
    lower = _standard_cdf((-0.5 - values) / scales)
    return ops.maximum(upper - lower, LIKELIHOOD_BOUND)
