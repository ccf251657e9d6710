"""Weights files: a flat ``.npz`` of arrays keyed by the variable's path inside the model.

Paths drop the model's own name, so a file written by one instance loads into any other.
Large arrays are stored as float16 (halves the shipped size; the loss in PSNR is below
0.01 dB), small ones (GDN, densities) as float32 where float16 would underflow. An export
may store the conv kernels as int8 with one float16 scale per 2-D filter, halving them
again; readers dequantize on load (int8 times a float16 scale is exact in float32), so
every other module sees float arrays and h_s's fixed-point tables stay bit-exact.

A model fine-tuned from a shipped one (kae-kittens from kae-mid) may be stored as a *delta*
against that base (``delta_int8``): its kernels on the base's int8 grid, stored as the
difference from the base's steps in units of ``DELTA_STEP`` steps (small integers, which
the compressed ``.npz`` packs into about two bits each), every other array only where it
differs. Readers add the base's steps back (``LazyArrays(data, base)``); the result is
exact, as for any int8 kernel.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO

import numpy as np

FLOAT16_MIN_SIZE = 4096
# conv kernels stored as int8: the four transforms', and the channel-conditional entropy
# model's slice and spatial transforms (whose fixed-point copies are made from the stored
# values, so encoder and decoder still agree bit for bit)
INT8_PREFIXES = ("g_a/", "g_s/", "h_a/", "h_s/", "slice", "spatial")
SCALE_SUFFIX = ":scale"  # the array of per-filter scales beside an int8 kernel
DELTA_SUFFIX = ":delta"  # a kernel's int8 steps minus its base model's (delta storage)
#: A delta file's record of its base's weights digest (uint8 bytes): the digest that files
#: name then pins the whole model, base included.
BASE_DIGEST = "base:sha256"
DELTA_STEP_KEY = "delta:step"  # a delta file's unit of its deltas, in base steps
DELTA_STEP = 2
INT8_MAX = 127


def weights_key(path: str) -> str:
    """A variable's key in a weights file: its Keras path less the model's name
    (``kae/g_a/conv1/kernel`` -> ``g_a/conv1/kernel``)."""
    return path.split("/", 1)[1] if "/" in path else path


def weights_to_arrays(model: object, compact: bool = True) -> dict[str, np.ndarray]:
    arrays = {}
    for variable in model.weights:
        value = np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable)
        if compact and value.dtype == np.float32 and value.size >= FLOAT16_MIN_SIZE:
            value = value.astype(np.float16)
        arrays[weights_key(variable.path)] = value
    return arrays


def save_weights(model: object, path: str | Path, compact: bool = True) -> None:
    """Write the model's weights; written to memory first so a failure leaves no partial file."""
    buffer = io.BytesIO()
    np.savez(buffer, **weights_to_arrays(model, compact))
    tmp = Path(f"{path}.tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)


def stored_as_int8(key: str, shape: tuple[int, ...]) -> bool:
    """Whether ``quantize_int8`` stores the array ``key`` of ``shape`` as int8 steps."""
    big = math.prod(shape) >= FLOAT16_MIN_SIZE
    return key.startswith(INT8_PREFIXES) and len(shape) == 4 and big


def int8_steps(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(steps as float32, float16 scales) of a 4-D conv kernel, one scale per 2-D filter.

    ``training.arithmetic`` computes the same in ``keras.ops`` to train with exactly the kernels
    an export will ship (a test holds the two to equality).
    """
    kernel = np.asarray(kernel, np.float32)
    scale = (np.abs(kernel).max(axis=(0, 1)) / INT8_MAX).astype(np.float16)
    # A filter too small for a float16 scale (or all zero) is stored as zeros.
    scale[scale == 0] = 1
    return np.clip(np.rint(kernel / scale.astype(np.float32)), -INT8_MAX, INT8_MAX), scale


def quantize_int8(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Store the transforms' conv kernels as int8 with a float16 scale per 2-D filter.

    Per-filter scales (one per input/output channel pair) keep the kernels' relative error
    near 0.5 %, half that of per-channel scales, for 8 % more bytes on 5x5 kernels.
    """
    out: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        if not stored_as_int8(key, value.shape):
            out[key] = value
            continue
        steps, scale = int8_steps(value)
        out[key] = steps.astype(np.int8)
        out[key + SCALE_SUFFIX] = scale
    return out


def delta_int8(
    arrays: Mapping[str, np.ndarray],
    base: Mapping[str, np.ndarray],
    step: int = DELTA_STEP,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """``arrays`` (float, as ``weights_to_arrays`` gives them) stored against ``base``, the
    stored arrays of the model they were fine-tuned from.

    Each kernel the base stores as int8 becomes the base's steps plus ``step`` times a small
    integer (int8, or int16 past 127; the sum may leave the int8 range, nothing is clipped),
    every other array is kept only where it differs from the base's. The integer is rounded
    stochastically (seeded: an export is reproducible): a fine-tune moves most weights by
    less than a step, all in the direction training needed, and rounding to the nearest
    point of the base's grid would undo exactly that movement (on kae-mid fine-tuned on cats,
    -0.8 dB), where unbiased rounding costs what random noise of a step costs (-0.02 dB at
    ``step`` 2, 25 % fewer bytes than 1).
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {DELTA_STEP_KEY: np.array(step, np.uint8)}
    for key, value in arrays.items():
        if key + SCALE_SUFFIX in base:
            scale = base[key + SCALE_SUFFIX].astype(np.float32)
            moved = (np.asarray(value, np.float32) / scale - base[key]) / step
            delta = np.floor(moved + rng.random(moved.shape, np.float32)).astype(np.int32)
            fits = np.abs(delta).max(initial=0) <= INT8_MAX
            out[key + DELTA_SUFFIX] = delta.astype(np.int8 if fits else np.int16)
        elif key not in base or not np.array_equal(base[key], value):
            out[key] = value
    return out


def _dequantize(key: str, value: np.ndarray, read: Callable[[str], np.ndarray]) -> np.ndarray:
    if value.dtype != np.int8:
        return value
    return value.astype(np.float32) * read(key + SCALE_SUFFIX).astype(np.float32)


def load_arrays(path: str | Path | IO[bytes]) -> dict[str, np.ndarray]:
    """Every array of a weights file by key, int8 kernels already dequantized to float32."""
    with np.load(path, allow_pickle=False) as data:
        return {
            key: _dequantize(key, data[key], data.__getitem__)
            for key in data.files
            if not key.endswith(SCALE_SUFFIX)
        }


class LazyArrays(Mapping[str, np.ndarray]):
    """The arrays of an in-memory ``.npz``, each decompressed on first use, then kept.

    Decoding needs g_s, h_s and the tables, not g_a and h_a; a process that only decodes
    (and finds g_s in the graph cache) never pays for the rest. With ``base``, the file is a
    delta (``delta_int8``) against the base model's arrays: what it lacks is the base's.
    """

    def __init__(self, data: bytes, base: LazyArrays | None = None) -> None:
        self._file = np.load(io.BytesIO(data), allow_pickle=False)
        self._base = base
        own = [
            k.removesuffix(DELTA_SUFFIX)
            for k in self._file.files
            if k not in (BASE_DIGEST, DELTA_STEP_KEY)
        ]
        keys = [k for k in own if not k.endswith(SCALE_SUFFIX)]
        if base is not None:
            known = set(keys)
            keys += [k for k in base if k not in known]
        self._keys = tuple(keys)
        self._arrays: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()  # the zip reader is not thread-safe

    def stored(self, key: str) -> np.ndarray:
        """The array as this file stores it (int8 steps, scales, deltas), no base added."""
        with self._lock:
            return self._file[key]

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._arrays:
            if key not in self._keys:
                raise KeyError(key)
            self._arrays[key] = self._load(key)
        return self._arrays[key]

    def _load(self, key: str) -> np.ndarray:
        files = self._file.files
        if key + DELTA_SUFFIX in files:
            step = int(self.stored(DELTA_STEP_KEY))
            steps = self._base.stored(key) + step * self.stored(key + DELTA_SUFFIX).astype(np.int32)
            return steps.astype(np.float32) * self._base.stored(key + SCALE_SUFFIX).astype(
                np.float32
            )
        if key in files:
            return _dequantize(key, self.stored(key), self.stored)
        return self._base[key]

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
        key = weights_key(variable.path)
        if key not in arrays and key.startswith(missing_ok):
            continue
        if key not in arrays:
            raise ValueError(f"weights file has no array for {key!r}")
        value = arrays[key]
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(f"{key}: shape {value.shape} != model's {tuple(variable.shape)}")
        variable.assign(value.astype(variable.dtype))
