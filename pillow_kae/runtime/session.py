"""A transform run by an inference runtime: channels-last float32 arrays in and out.

Two runtimes run the same ONNX graph. OpenVINO (the ``openvino`` extra) is preferred when it
is installed: its oneDNN kernels run these convolutions about 1.1x faster than ONNX Runtime
in float32, and on CPUs with bfloat16 matrix units (Intel AMX) it runs them in bfloat16,
about 6x faster. ONNX Runtime is the portable default. Either imports in a fraction of a
second where TensorFlow takes seconds. ``KAE_RUNTIME`` (``openvino``, ``onnxruntime``) picks
one, ``KAE_PRECISION`` (``f32``, ``bf16``; OpenVINO only) its arithmetic, and
``KAE_NUM_THREADS`` its threads. Sessions are thread-safe, so one per transform and process
serves every image.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import threading

import numpy as np

THREADS_ENV = "KAE_NUM_THREADS"
RUNTIME_ENV = "KAE_RUNTIME"
PRECISION_ENV = "KAE_PRECISION"
RUNTIMES = ("openvino", "onnxruntime")
#: OpenVINO's arithmetic: "auto" is its own choice (bfloat16 where the CPU has AMX, else
#: float32), "f32" keeps float32 everywhere (ONNX Runtime always computes in float32).
PRECISIONS = {"auto": None, "f32": "f32", "bf16": "bf16"}


def threads() -> int:
    """Threads per transform: ``KAE_NUM_THREADS`` if set, else 0 (the runtime: one per core)."""
    value = os.environ.get(THREADS_ENV, "")
    try:
        return max(int(value), 0) if value else 0
    except ValueError:
        raise ValueError(f"{THREADS_ENV} must be a whole number, not {value!r}") from None


def default_runtime() -> str:
    """The runtime transforms run on: ``KAE_RUNTIME`` if set, else OpenVINO if installed."""
    value = os.environ.get(RUNTIME_ENV, "").lower()
    if value and value not in RUNTIMES:
        raise ValueError(f"{RUNTIME_ENV} must be one of {', '.join(RUNTIMES)}, not {value!r}")
    if value:
        return value
    return "openvino" if importlib.util.find_spec("openvino") else "onnxruntime"


def default_precision() -> str:
    """OpenVINO's arithmetic: ``KAE_PRECISION`` if set, else ``auto``."""
    value = os.environ.get(PRECISION_ENV, "auto").lower()
    if value not in PRECISIONS:
        raise ValueError(f"{PRECISION_ENV} must be one of {', '.join(PRECISIONS)}, not {value!r}")
    return value


def summary() -> str:
    """What transforms run on in this process, for benchmark reports: runtime, version and
    arithmetic, e.g. ``openvino 2026.4.1 (bf16)``."""
    name = default_runtime()
    module = importlib.import_module(name)
    version = str(getattr(module, "__version__", "?")).split("-")[0]
    if name == "onnxruntime":
        return f"{name} {version} (f32)"
    arithmetic = PRECISIONS[default_precision()] or _openvino_own_precision()
    return f"{name} {version} ({arithmetic})"


class Transform:
    """One inference session; ``transform(x)`` is the Keras transform's ``x -> y``.

    ``model`` is the serialized ONNX graph or the path of a file holding it; ``runtime`` and
    ``precision`` default to ``default_runtime()`` and ``default_precision()``; ``centre``
    is what the graph left out of its output (``graph.centre``), added back here in float32.
    """

    def __init__(
        self,
        model: bytes | str,
        name: str,
        runtime: str | None = None,
        precision: str | None = None,
        centre: float = 0.0,
    ) -> None:
        self.name, self.centre = name, np.float32(centre)
        self.runtime = runtime or default_runtime()
        self.precision = precision or default_precision()
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; expected one of {PRECISIONS}")
        if self.runtime == "openvino":
            self._run = _OpenVino(model, PRECISIONS[self.precision])
        elif self.runtime == "onnxruntime":
            self._run = _OnnxRuntime(model)
        else:
            raise ValueError(f"unknown runtime {self.runtime!r}; expected one of {RUNTIMES}")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = self._run(np.ascontiguousarray(x, dtype=np.float32))
        if self.centre:
            y += self.centre
        return y


class _OnnxRuntime:
    def __init__(self, model: bytes | str) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: a successful decode prints nothing
        options.enable_mem_pattern = False  # shapes vary per window: no plan to reuse
        self._session = onnxruntime.InferenceSession(
            model, options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        (y,) = self._session.run(None, {"x": x})
        return y


@functools.cache
def _openvino_core() -> object:
    import openvino

    return openvino.Core()


def _openvino_own_precision() -> str:
    """What OpenVINO's CPU plugin computes in unless told: ``bf16`` with AMX, else ``f32``."""
    return _openvino_core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()


class _OpenVino:
    """The graph compiled once per input rank and channel count, height and width dynamic
    (OpenVINO's CPU plugin needs a static rank; the graph leaves it open).

    In bfloat16 every tensor is stored with 8 significant bits, the output too: why pixel
    graphs output ``x - 0.5`` (``graph.centre``).
    """

    def __init__(self, model: bytes | str, inference_precision: str | None) -> None:
        core = _openvino_core()
        self._model = (
            core.read_model(model) if isinstance(model, str) else core.read_model(model, b"")
        )
        self._config: dict[str, object] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads(),
            # Worker processes share the cores (kae encode --jobs): no thread pinned to one.
            "ENABLE_CPU_PINNING": False,
        }
        if inference_precision:
            self._config["INFERENCE_PRECISION_HINT"] = inference_precision
        self._compiled: dict[tuple[int, int], object] = {}
        self._lock = threading.Lock()

    def _compiled_for(self, x: np.ndarray) -> object:
        key = (x.ndim, x.shape[-1])
        with self._lock:
            if key not in self._compiled:
                import openvino

                model = self._model.clone()
                model.reshape({0: openvino.PartialShape([-1] * (x.ndim - 1) + [x.shape[-1]])})
                core = _openvino_core()
                self._compiled[key] = core.compile_model(model, "CPU", self._config)
            return self._compiled[key]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # A request per call: thread-safe; its outputs are copies, not shared buffers.
        return self._compiled_for(x).create_infer_request().infer({0: x})[0]
