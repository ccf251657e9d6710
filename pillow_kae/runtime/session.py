"""A transform run by ONNX Runtime: channels-last float32 arrays in and out.

ONNX Runtime imports in a fraction of a second where TensorFlow takes seconds, and its CPU
kernels are at least as fast for these convolutions; sessions are thread-safe, so one per
transform and process serves every image.
"""

from __future__ import annotations

import os

import numpy as np

THREADS_ENV = "KAE_NUM_THREADS"


def threads() -> int:
    """Threads per transform: ``KAE_NUM_THREADS`` if set, else 0 (ONNX Runtime: one per core)."""
    value = os.environ.get(THREADS_ENV, "")
    try:
        return max(int(value), 0) if value else 0
    except ValueError:
        raise ValueError(f"{THREADS_ENV} must be a whole number, not {value!r}") from None


class Transform:
    """One ONNX Runtime session; ``transform(x)`` is the Keras transform's ``x -> y``."""

    def __init__(self, model: bytes, name: str) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: a successful decode prints nothing
        options.enable_mem_pattern = False  # shapes vary per window: no plan to reuse
        self.name = name
        self._session = onnxruntime.InferenceSession(
            model, options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        (y,) = self._session.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})
        return y
