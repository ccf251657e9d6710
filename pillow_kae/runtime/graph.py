"""A transform's inference graph: ONNX, built from the card's layer list and the weights.

``training export`` describes each pixel-side transform of the Keras model as a list of
layers (``describe``) and writes it into the model card. The runtime builds the ONNX graph
from that list and the arrays of the ``.npz`` (``build``): the weights have one home, the
shipped files stay their size, and no TensorFlow is imported to code an image. Keras and
this graph are checked against each other by the tests (``tests/test_runtime.py``).

Graphs take and return channels-last arrays, like the Keras transforms; convolutions run
channels-first inside (what ONNX Runtime's kernels want), with one transpose at each end.
"""

from __future__ import annotations

import numpy as np

from pillow_kae.ops.parametrizers import gdn_beta, gdn_gamma

OPSET = 17
INPUT, OUTPUT = "x", "y"
ACTIVATIONS = {"linear": None, "relu": "Relu", "sigmoid": "Sigmoid"}
# The transforms that run on pixels, by model kind (the hyper-synthesis runs in integers).
TRANSFORMS = {
    "mean-scale-hyperprior": ("g_a", "h_a", "g_s"),
    "channel-conditional": ("g_a", "h_a", "g_s"),
    "seed-dense": ("encoder", "decoder"),
}

LayerSpec = dict  # {"op": ..., "name": ..., op-specific fields}; JSON in the model card
#: Transforms whose output is pixels in [0, 1], and the middle of that range.
PIXEL_TRANSFORMS = ("g_s", "decoder")
PIXEL_CENTRE = 0.5


# -- Keras -> layer list (training export) --------------------------------------------------


def describe(model: object, kind: str) -> dict[str, list[LayerSpec]]:
    """The card's ``graph``: each pixel-side transform of a built Keras model, layer by layer.

    Raises ValueError on a layer or setting the runtime cannot build, so that a model the
    runtime would get wrong is never exported.
    """
    return {
        name: [_describe_layer(layer) for layer in getattr(model, name).layers]
        for name in TRANSFORMS[kind]
    }


def _describe_layer(layer: object) -> LayerSpec:
    cls, config = type(layer).__name__, layer.get_config()
    spec: LayerSpec = {"name": layer.name}
    if cls in ("Conv2D", "Conv2DTranspose"):
        if config["padding"] != "same" or tuple(config["dilation_rate"]) != (1, 1):
            raise ValueError(f"{layer.name}: only 'same' padding without dilation is supported")
        if config["data_format"] != "channels_last" or not config["use_bias"]:
            raise ValueError(f"{layer.name}: channels_last with a bias is required")
        square = len(set(config["kernel_size"])) == 1 and len(set(config["strides"])) == 1
        if cls == "Conv2DTranspose" and not square:
            raise ValueError(f"{layer.name}: only square transposed convolutions are supported")
        spec.update(
            op="conv" if cls == "Conv2D" else "conv_transpose",
            filters=config["filters"],
            kernel=list(config["kernel_size"]),
            stride=list(config["strides"]),
            activation=_activation(layer.name, config["activation"]),
        )
    elif cls == "GDN":
        spec.update(op="gdn", inverse=config["inverse"], beta_min=config["beta_min"])
    elif cls == "ReLU":
        if (
            config.get("max_value") is not None
            or config.get("negative_slope")
            or config.get("threshold")
        ):
            raise ValueError(f"{layer.name}: only the plain ReLU is supported")
        spec.update(op="activation", activation="relu")
    elif cls == "Dense":
        if not config["use_bias"]:
            raise ValueError(f"{layer.name}: a bias is required")
        spec.update(op="dense", activation=_activation(layer.name, config["activation"]))
    elif cls == "BatchNormalization":
        if config["axis"] not in (-1, [-1]) or not (config["center"] and config["scale"]):
            raise ValueError(f"{layer.name}: only last-axis batch norm with centre and scale")
        spec.update(op="batch_norm", epsilon=config["epsilon"])
    elif cls == "Flatten":
        spec.update(op="flatten")
    elif cls == "Reshape":
        spec.update(op="reshape", shape=list(config["target_shape"]))
    else:
        raise ValueError(f"{layer.name}: no inference graph for {cls} layers")
    return spec


def _activation(layer: str, name: str) -> str:
    if name not in ACTIVATIONS:
        raise ValueError(f"{layer}: no inference graph for activation {name!r}")
    return name


# -- layer list + weights -> ONNX (runtime) -------------------------------------------------


def centre(layers: list[LayerSpec], transform: str) -> float:
    """What the graph of ``transform`` leaves out of its output, for the runtime to add back.

    A runtime in bfloat16 stores the output with 8 significant bits, about one level of
    255 near white: pixels rounded there and again to 8 bits lost 0.05 dB. A pixel graph
    whose last layer is linear therefore outputs ``x - 0.5`` (its bias lowered by 0.5, in
    the accumulator): half the magnitude, a quarter of a level of rounding at most, and
    PSNR within 0.02 dB of float32. Any other graph outputs what Keras does (0).
    """
    if transform not in PIXEL_TRANSFORMS:
        return 0.0
    last = _last_biased(layers)
    return PIXEL_CENTRE if last is not None and layers[last]["activation"] == "linear" else 0.0


def _last_biased(layers: list[LayerSpec]) -> int | None:
    """The index of the last layer with a bias, if only reshapes follow it."""
    for index in range(len(layers) - 1, -1, -1):
        op = layers[index].get("op")
        if op in ("conv", "conv_transpose", "dense"):
            return index
        if op not in ("flatten", "reshape"):
            return None
    return None


class _Graph:
    """Nodes and initializers of one transform, with the layout of the running tensor."""

    def __init__(
        self, arrays: dict[str, np.ndarray], prefix: str, shift: tuple[str, float] | None
    ) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.arrays, self.prefix = arrays, prefix
        self.shift = shift  # (layer, value): its bias less the value (``centre``)
        self.nodes: list[object] = []
        self.initializers: list[object] = []
        self.tensor, self.layout = INPUT, "channels_last"
        self._count = 0

    def weight(self, layer: str, key: str) -> np.ndarray:
        path = f"{self.prefix}/{layer}/{key}"
        if path not in self.arrays:
            raise ValueError(f"weights have no array {path!r}")
        value = np.asarray(self.arrays[path], dtype=np.float32)
        if self.shift and (layer, key) == (self.shift[0], "bias"):
            return value - np.float32(self.shift[1])
        return value

    def constant(self, value: np.ndarray, dtype: type = np.float32) -> str:
        name = f"c{len(self.initializers)}"
        array = np.ascontiguousarray(value, dtype=dtype)
        self.initializers.append(self.numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], **attributes: object) -> str:
        self._count += 1
        out = f"t{self._count}"
        self.nodes.append(self.helper.make_node(op, [self.tensor, *inputs], [out], **attributes))
        self.tensor = out
        return out

    def to(self, layout: str) -> None:
        if self.layout == layout:
            return
        perm = [0, 3, 1, 2] if layout == "channels_first" else [0, 2, 3, 1]
        self.node("Transpose", [], perm=perm)
        self.layout = layout

    def activation(self, name: str) -> None:
        if ACTIVATIONS[name]:
            self.node(ACTIVATIONS[name], [])


def _conv(graph: _Graph, spec: LayerSpec) -> None:
    graph.to("channels_first")
    kernel = graph.weight(spec["name"], "kernel")
    bias = graph.weight(spec["name"], "bias")
    if spec["op"] == "conv":  # Keras (kh, kw, in, out) -> ONNX (out, in, kh, kw)
        graph.node(
            "Conv",
            [graph.constant(kernel.transpose(3, 2, 0, 1)), graph.constant(bias)],
            kernel_shape=spec["kernel"],
            strides=spec["stride"],
            auto_pad="SAME_UPPER",
        )
    elif spec["kernel"][0] == spec["kernel"][1] and spec["stride"][0] == spec["stride"][1]:
        _subpixel_convolution(graph, kernel, bias, spec["stride"][0])
    else:
        raise ValueError(f"{spec['name']}: only square transposed convolutions are supported")
    graph.activation(spec["activation"])


def _subpixel_convolution(graph: _Graph, kernel: np.ndarray, bias: np.ndarray, stride: int) -> None:
    """A 'same' transposed convolution as one stride-1 convolution that computes the
    stride x stride output phases as channels, then depth-to-space.

    Output pixel ``s m + a`` of a transposed convolution with ``k`` taps and ``pad = (k - s)
    // 2`` sums input ``m + d`` times tap ``a + pad - s d``, so phase ``a`` is a plain
    convolution over the input's neighbours ``d``. Every runtime runs plain convolutions
    well: ONNX Runtime about 15 % faster than its transposed convolution, OpenVINO's bfloat16
    kernels (AMX) at all (it keeps transposed ones in float32).
    """
    taps, out_channels = kernel.shape[0], kernel.shape[2]
    pad = max(taps - stride, 0) // 2
    first = -((taps - 1 - pad) // stride)  # the neighbours d that any phase uses
    last = (stride - 1 + pad) // stride
    size = last - first + 1
    # Keras (kh, kw, out, in) -> (phase_y, phase_x, out, in, size, size), then phases first.
    phases = np.zeros((stride, stride, out_channels, kernel.shape[3], size, size), np.float32)
    for a in range(stride):
        for i in range(size):
            ky = a + pad - stride * (first + i)
            for b in range(stride):
                for j in range(size):
                    kx = b + pad - stride * (first + j)
                    if 0 <= ky < taps and 0 <= kx < taps:
                        phases[a, b, :, :, i, j] = kernel[ky, kx]
    weights = phases.reshape(stride * stride * out_channels, kernel.shape[3], size, size)
    graph.node(
        "Conv",
        [graph.constant(weights), graph.constant(np.tile(bias, stride * stride))],
        kernel_shape=[size, size],
        pads=[-first, -first, last, last],
    )
    graph.node("DepthToSpace", [], blocksize=stride, mode="DCR")


def _gdn(graph: _Graph, spec: LayerSpec) -> None:
    """x / sqrt(beta + gamma^T x^2), or x * sqrt(...) inverse: the sum is a 1x1 convolution."""
    graph.to("channels_first")
    beta = gdn_beta(graph.weight(spec["name"], "beta"), spec["beta_min"], np)
    gamma = gdn_gamma(graph.weight(spec["name"], "gamma"), np)
    x = graph.tensor
    graph.node("Mul", [x])
    graph.node("Conv", [graph.constant(gamma.T[:, :, None, None]), graph.constant(beta)])
    graph.node("Sqrt", [])
    norm = graph.tensor
    graph.tensor = x
    graph.node("Mul" if spec["inverse"] else "Div", [norm])


def _dense(graph: _Graph, spec: LayerSpec) -> None:
    graph.to("channels_last")
    graph.node("MatMul", [graph.constant(graph.weight(spec["name"], "kernel"))])
    graph.node("Add", [graph.constant(graph.weight(spec["name"], "bias"))])
    graph.activation(spec["activation"])


def _batch_norm(graph: _Graph, spec: LayerSpec) -> None:
    """Inference batch norm folded into one scale and shift per channel."""
    graph.to("channels_last")
    keys = ("gamma", "beta", "moving_mean", "moving_variance")
    gamma, beta, mean, variance = (graph.weight(spec["name"], key) for key in keys)
    scale = gamma / np.sqrt(variance + spec["epsilon"])
    graph.node("Mul", [graph.constant(scale)])
    graph.node("Add", [graph.constant(beta - mean * scale)])


def _reshape(graph: _Graph, shape: list[int]) -> None:
    """Reshape to ``shape`` (ONNX rules: 0 keeps a dimension, -1 takes the rest)."""
    graph.to("channels_last")
    graph.node("Reshape", [graph.constant(np.array(shape), np.int64)])


_EMIT = {
    "conv": _conv,
    "conv_transpose": _conv,
    "gdn": _gdn,
    "dense": _dense,
    "batch_norm": _batch_norm,
    "activation": lambda graph, spec: graph.activation(spec["activation"]),
    "flatten": lambda graph, spec: _reshape(graph, [0, -1]),
    "reshape": lambda graph, spec: _reshape(graph, [-1, *spec["shape"]]),
}


def build(layers: list[LayerSpec], arrays: dict[str, np.ndarray], prefix: str) -> bytes:
    """The serialized ONNX model of one transform: channels-last float32 in and out, the
    output less ``centre(layers, prefix)``."""
    from onnx import TensorProto, helper

    shift = centre(layers, prefix)
    graph = _Graph(arrays, prefix, (layers[_last_biased(layers)]["name"], shift) if shift else None)
    for spec in layers:
        if spec.get("op") not in _EMIT:
            raise ValueError(f"{prefix}/{spec.get('name')}: unknown layer op {spec.get('op')!r}")
        _EMIT[spec["op"]](graph, spec)
    if graph.layout == "channels_first":
        graph.to("channels_last")
    graph.node("Identity", [])
    graph.nodes[-1].output[0] = OUTPUT
    proto = helper.make_graph(
        graph.nodes,
        prefix,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, None)],
        graph.initializers,
    )
    model = helper.make_model(proto, opset_imports=[helper.make_opsetid("", OPSET)])
    return model.SerializeToString()
