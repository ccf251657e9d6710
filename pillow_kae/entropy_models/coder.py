"""Range coding of integer latents with fixed tables, via ``constriction``.

Symbols are coded in groups that share a table (one group per table index), in an order the
decoder can rebuild from what it has already decoded. A value outside its table's run is
coded as the escape entry, and its exact value follows at the end of the stream as two
uniform 16-bit halves of its zigzag code.
"""

from __future__ import annotations

import constriction
import numpy as np

from pillow_kae.entropy_models.rounding import round_residuals, table_bits, value_bits
from pillow_kae.entropy_models.tables import PmfTables

_HALF = 1 << 16
VALUE_LIMIT = (1 << 31) - 1  # latents are clipped to +-this before coding


class TableCoder:
    """Encodes/decodes int arrays whose every element names the table it is coded with."""

    def __init__(self, tables: PmfTables) -> None:
        # Built here, once: a coder shared between threads is never half-built, and a bad
        # table fails when the model loads, not as if a file's payload were damaged.
        self.tables = tables
        categorical = constriction.stream.model.Categorical
        self._models = [
            categorical(tables.table(k).astype(np.float64), perfect=False)
            for k in range(len(tables))
        ]
        self._uniform = constriction.stream.model.Uniform(_HALF)
        self._bits = table_bits(tables)

    def round(self, residual: np.ndarray, table_index: np.ndarray) -> np.ndarray:
        """The integers to code for float ``residual`` with tables ``table_index``: rounded
        for rate and distortion together (``rounding``)."""
        return round_residuals(residual, table_index, self.tables, self._bits)

    def bits(self, values: np.ndarray, table_index: np.ndarray) -> float:
        """What ``values`` cost coded with tables ``table_index``, in bits (escapes included):
        the rate an encoder compares its choices by."""
        return float(np.sum(value_bits(values, table_index, self.tables, self._bits)))

    def encode(self, encoder: object, values: np.ndarray, table_index: np.ndarray) -> None:
        """Append ``values`` (ints) coded with tables ``table_index`` (same shape) to encoder."""
        values = as_values(values).ravel()
        table_index = table_index.ravel()
        escaped: list[np.ndarray] = []
        for k, positions in self._groups(table_index):
            symbols = values[positions] - self.tables.offsets[k]
            length = int(self.tables.lengths[k])
            outside = (symbols < 0) | (symbols >= length)
            symbols[outside] = length
            encoder.encode(symbols.astype(np.int32), self._models[k])
            escaped.append(values[positions][outside])
        extra = np.concatenate(escaped) if escaped else np.zeros(0, np.int64)
        zigzag = np.where(extra >= 0, 2 * extra, -2 * extra - 1).astype(np.int64)
        halves = np.stack([zigzag >> 16, zigzag & (_HALF - 1)], axis=1).ravel()
        if halves.size:
            encoder.encode(halves.astype(np.int32), self._uniform)

    def decode(self, decoder: object, table_index: np.ndarray) -> np.ndarray:
        """Inverse of ``encode``: the values, shaped like ``table_index``."""
        flat = table_index.ravel()
        values = np.zeros(flat.shape, dtype=np.int64)
        escape_positions: list[np.ndarray] = []
        for k, positions in self._groups(flat):
            symbols = np.asarray(decoder.decode(self._models[k], positions.size), dtype=np.int64)
            length = int(self.tables.lengths[k])
            values[positions] = symbols + self.tables.offsets[k]
            escape_positions.append(positions[symbols == length])
        where = np.concatenate(escape_positions) if escape_positions else np.zeros(0, np.int64)
        if where.size:
            halves = np.asarray(decoder.decode(self._uniform, 2 * where.size), dtype=np.int64)
            zigzag = (halves[0::2] << 16) | halves[1::2]
            values[where] = np.where(zigzag % 2 == 0, zigzag // 2, -(zigzag + 1) // 2)
        return values.reshape(table_index.shape)

    def _groups(self, table_index: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """(table, positions) for every table in use, positions ascending: a fixed order."""
        if table_index.size and (table_index.min() < 0 or table_index.max() >= len(self.tables)):
            raise ValueError("table index out of range")
        order = np.argsort(table_index, kind="stable")
        counts = np.bincount(table_index, minlength=len(self.tables))
        groups, start = [], 0
        for k, count in enumerate(counts):
            if count:
                groups.append((k, order[start : start + count]))
                start += count
        return groups


def as_values(values: np.ndarray) -> np.ndarray:
    """What the coder codes for ``values``: int64, NaN as 0, clipped to +-VALUE_LIMIT."""
    values = np.asarray(values)
    if values.dtype.kind == "f":
        values = np.nan_to_num(values, nan=0.0)  # clip before the cast keeps the sign
    return np.clip(values, -VALUE_LIMIT, VALUE_LIMIT).astype(np.int64)


def new_encoder() -> object:
    return constriction.stream.queue.RangeEncoder()


def new_decoder(words: np.ndarray) -> object:
    return constriction.stream.queue.RangeDecoder(words)
