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


class _Graph:
    """Nodes and initializers of one transform, with the layout of the running tensor."""

    def __init__(self, arrays: dict[str, np.ndarray], prefix: str) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.arrays, self.prefix = arrays, prefix
        self.nodes: list[object] = []
        self.initializers: list[object] = []
        self.tensor, self.layout = INPUT, "channels_last"
        self._count = 0

    def weight(self, layer: str, key: str) -> np.ndarray:
        path = f"{self.prefix}/{layer}/{key}"
        if path not in self.arrays:
            raise ValueError(f"weights have no array {path!r}")
        return np.asarray(self.arrays[path], dtype=np.float32)

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
    bias = graph.constant(graph.weight(spec["name"], "bias"))
    if spec["op"] == "conv":  # Keras (kh, kw, in, out) -> ONNX (out, in, kh, kw)
        graph.node(
            "Conv",
            [graph.constant(kernel.transpose(3, 2, 0, 1)), bias],
            kernel_shape=spec["kernel"],
            strides=spec["stride"],
            auto_pad="SAME_UPPER",
        )
    else:  # Keras (kh, kw, out, in) -> ONNX (in, out, kh, kw); 'same': output = input * stride
        # (One stride-1 convolution per output phase, interleaved by depth-to-space, does the
        # same multiply-adds in the blocked kernels, but measured no faster: kept simple.)
        pads = [max(k - s, 0) for k, s in zip(spec["kernel"], spec["stride"], strict=True)]
        begin = [p // 2 for p in pads]
        end = [p - b for p, b in zip(pads, begin, strict=True)]
        graph.node(
            "ConvTranspose",
            [graph.constant(kernel.transpose(3, 2, 0, 1)), bias],
            kernel_shape=spec["kernel"],
            strides=spec["stride"],
            pads=begin + end,
        )
    graph.activation(spec["activation"])


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
    """The serialized ONNX model of one transform: channels-last float32 in and out."""
    from onnx import TensorProto, helper

    graph = _Graph(arrays, prefix)
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
