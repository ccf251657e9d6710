"""Fixed integer coding tables, baked at export and shipped with the weights.

A table is a list of integer frequencies over a run of consecutive integer symbols plus one
final *escape* entry for anything outside the run. Because these integers are stored in the
weights file, the probabilities the decoder uses never depend on floating-point functions
(erf, exp) of the machine that decodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PRECISION = 16  # frequencies of a table sum to 2**PRECISION
TOTAL = 1 << PRECISION
GAUSSIAN_TAIL_SIGMAS = 5.0  # regular symbols cover [-ceil(5 s), ceil(5 s)]
ESCAPE_MIN_MASS = 2.0**-12  # the escape entry never gets less than this


@dataclass(frozen=True)
class PmfTables:
    """K tables: table k codes integers offsets[k] .. offsets[k] + lengths[k] - 1, then escape."""

    offsets: np.ndarray  # (K,) int32
    lengths: np.ndarray  # (K,) int32, regular entries (escape excluded)
    freqs: np.ndarray  # (K, max(lengths) + 1) int32, zero padded after each escape entry

    def __post_init__(self) -> None:
        k = self.offsets.shape[0]
        if self.lengths.shape != (k,) or self.freqs.ndim != 2 or self.freqs.shape[0] != k:
            raise ValueError("inconsistent table shapes")
        if np.any(self.lengths < 1) or np.any(self.lengths + 1 > self.freqs.shape[1]):
            raise ValueError("bad table lengths")
        rows = np.arange(self.freqs.shape[1])[None, :] <= self.lengths[:, None]
        if np.any(self.freqs[rows] < 1) or np.any(self.freqs[~rows] != 0):
            raise ValueError("table frequencies must be >= 1 inside each table and 0 after")
        if np.any(self.freqs.sum(axis=1, dtype=np.int64) != TOTAL):
            raise ValueError(f"table frequencies must sum to 2**{PRECISION}")

    def __len__(self) -> int:
        return int(self.offsets.shape[0])

    def table(self, k: int) -> np.ndarray:
        """Frequencies of table k including its escape entry."""
        return self.freqs[k, : self.lengths[k] + 1]

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {
            f"{prefix}/offsets": self.offsets.astype(np.int32),
            f"{prefix}/lengths": self.lengths.astype(np.int32),
            f"{prefix}/freqs": self.freqs.astype(np.int32),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> PmfTables:
        return cls(
            offsets=np.asarray(arrays[f"{prefix}/offsets"], dtype=np.int32),
            lengths=np.asarray(arrays[f"{prefix}/lengths"], dtype=np.int32),
            freqs=np.asarray(arrays[f"{prefix}/freqs"], dtype=np.int32),
        )


def quantize_pmf(pmf: np.ndarray) -> np.ndarray:
    """Probabilities of the regular symbols -> integer frequencies with an escape entry.

    Every entry gets at least 1 (any symbol stays codable); the escape entry gets the tail
    mass, at least ESCAPE_MIN_MASS; rounding error is taken from the largest entries.
    """
    pmf = np.clip(np.asarray(pmf, dtype=np.float64), 0.0, None)
    if pmf.size + 1 > TOTAL:
        raise ValueError(f"a table cannot have more than {TOTAL - 1} regular entries")
    tail = max(1.0 - pmf.sum(), ESCAPE_MIN_MASS)
    probs = np.append(pmf, tail)
    probs = probs / probs.sum()
    freqs = np.maximum(1, np.round(probs * TOTAL)).astype(np.int64)
    order = np.argsort(-freqs, kind="stable")
    while (excess := int(freqs.sum()) - TOTAL) != 0:
        if excess < 0:  # one more count to each of the largest entries
            freqs[order[:-excess]] += 1
        else:  # one count less from each of the largest entries that can spare it
            freqs[order[freqs[order] > 1][:excess]] -= 1
    return freqs.astype(np.int32)


def stack_tables(offsets: list[int], pmfs: list[np.ndarray]) -> PmfTables:
    """Quantize each pmf and pack them into one PmfTables."""
    quantized = [quantize_pmf(p) for p in pmfs]
    width = max(q.size for q in quantized)
    freqs = np.zeros((len(quantized), width), dtype=np.int32)
    for k, q in enumerate(quantized):
        freqs[k, : q.size] = q
    return PmfTables(
        offsets=np.asarray(offsets, dtype=np.int32),
        lengths=np.asarray([q.size - 1 for q in quantized], dtype=np.int32),
        freqs=freqs,
    )


def gaussian_tables(scales: np.ndarray) -> PmfTables:
    """One table per scale s: N(0, s) integrated over unit bins, symbols in [-R, R]."""
    offsets, pmfs = [], []
    for s in scales:
        radius = max(1, math.ceil(GAUSSIAN_TAIL_SIGMAS * float(s)))
        edges = (np.arange(-radius, radius + 2, dtype=np.float64) - 0.5) / float(s)
        cdf = np.array([0.5 * math.erfc(-e / math.sqrt(2.0)) for e in edges])
        offsets.append(-radius)
        pmfs.append(np.diff(cdf))
    return stack_tables(offsets, pmfs)
