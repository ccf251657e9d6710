"""Weights files: a flat ``.npz`` of arrays keyed by the variable's path inside the model.

Paths drop the model's own name, so a file written by one instance loads into any other.
Large arrays are stored as float16 (halves the shipped size; the loss in PSNR is below
0.01 dB), small ones (GDN, densities) as float32 where float16 would underflow.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

import numpy as np

FLOAT16_MIN_SIZE = 4096


def _key(path: str) -> str:
    return path.split("/", 1)[1] if "/" in path else path


def weights_to_arrays(model: object, compact: bool = True) -> dict[str, np.ndarray]:
    arrays = {}
    for variable in model.weights:
        value = np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable)
        if compact and value.dtype == np.float32 and value.size >= FLOAT16_MIN_SIZE:
            value = value.astype(np.float16)
        arrays[_key(variable.path)] = value
    return arrays


def save_weights(model: object, path: str | Path, compact: bool = True) -> None:
    """Write the model's weights; written to memory first so a failure leaves no partial file."""
    buffer = io.BytesIO()
    np.savez(buffer, **weights_to_arrays(model, compact))
    tmp = Path(f"{path}.tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)


def load_arrays(path: str | Path | IO[bytes]) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


class LazyArrays(Mapping[str, np.ndarray]):
    """The arrays of an in-memory ``.npz``, each decompressed on first use, then kept.

    Decoding needs g_s, h_s and the tables, not g_a and h_a; a process that only decodes
    (and finds g_s in the graph cache) never pays for the rest.
    """

    def __init__(self, data: bytes) -> None:
        self._file = np.load(io.BytesIO(data), allow_pickle=False)
        self._keys = tuple(self._file.files)
        self._arrays: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()  # the zip reader is not thread-safe

    def __getitem__(self, key: str) -> np.ndarray:
        with self._lock:
            if key not in self._arrays:
                if key not in self._keys:
                    raise KeyError(key)
                self._arrays[key] = self._file[key]
            return self._arrays[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def assign_weights(
    model: object, arrays: Mapping[str, np.ndarray], missing_ok: tuple[str, ...] = ()
) -> None:
    """Set every model variable from ``arrays``; a missing or misshaped array is an error,
    except that variables under the ``missing_ok`` prefixes keep their initial values."""
    for variable in model.weights:
        key = _key(variable.path)
        if key not in arrays and key.startswith(missing_ok):
            continue
        if key not in arrays:
            raise ValueError(f"weights file has no array for {key!r}")
        value = arrays[key]
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(f"{key}: shape {value.shape} != model's {tuple(variable.shape)}")
        variable.assign(value.astype(variable.dtype))
