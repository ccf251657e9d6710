"""The arithmetic of a training step's convolutions: bfloat16, and the kernels export ships.

Both change only how Keras's conv layers compute (their ``call``); the weights, their names
and the checkpoints stay float32.

- bfloat16: the inner convolutions of ``g_a`` and ``g_s`` hold most of a step's
  multiply-adds, and a CPU with AVX-512 BF16 runs them about twice as fast. Only the
  convolution: the kernel and inputs are cast to bfloat16 and the output back to float32
  before the bias. (Keras's ``mixed_bfloat16`` policy adds the bias in bfloat16 too, and the
  bias gradient, a sum over every pixel of the batch, then comes out wrong.)
- int8 kernels: export stores the conv kernels as int8 steps with a float16 scale per 2-D
  filter (``zoo.weights.quantize_int8``). A fine-tune at a small learning rate moves most
  weights by less than a step, and rounding them at export undoes much of what it learned.
  Computing with the rounded kernels (straight-through: the float weights take the
  gradient) trains exactly the model that ships.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import keras
from keras import ops

from pillow_kae.zoo.weights import INT8_MAX, stored_as_int8, weights_key

CONV_LAYERS = (keras.layers.Conv2D, keras.layers.Conv2DTranspose)


def _sublayers(layer: keras.layers.Layer, seen: set[int]) -> Iterator[keras.layers.Layer]:
    for value in vars(layer).values():
        for item in value if isinstance(value, list | tuple) else (value,):
            if isinstance(item, keras.layers.Layer) and id(item) not in seen:
                seen.add(id(item))
                yield item
                yield from _sublayers(item, seen)


def conv_layers(model: keras.Model) -> dict[str, keras.layers.Layer]:
    """Every conv layer of ``model`` by its kernel's key in a weights file (``g_a/conv1``)."""
    convs = (layer for layer in _sublayers(model, set()) if isinstance(layer, CONV_LAYERS))
    return {weights_key(layer.kernel.path).rsplit("/", 1)[0]: layer for layer in convs}


def int8_kernel(kernel: object) -> object:
    """``kernel`` rounded as ``quantize_int8`` stores it; the gradient passes straight through."""
    scale = ops.cast(ops.max(ops.abs(kernel), axis=(0, 1)) / INT8_MAX, "float16")
    scale = ops.cast(ops.where(scale == 0, ops.ones_like(scale), scale), kernel.dtype)
    rounded = ops.clip(ops.round(kernel / scale), -INT8_MAX, INT8_MAX) * scale
    return kernel + ops.stop_gradient(rounded - kernel)


def _convolve(layer: keras.layers.Layer, inputs: object, bfloat16: bool, int8: bool) -> object:
    """A 2-D (transposed) convolution layer's call, with its kernel as ``int8`` stores it
    and the convolution in ``bfloat16`` where asked."""
    kernel = int8_kernel(layer.kernel) if int8 else layer.kernel
    x = inputs
    if bfloat16:
        x, kernel = ops.cast(x, "bfloat16"), ops.cast(kernel, "bfloat16")
    if isinstance(layer, keras.layers.Conv2DTranspose):
        outputs = ops.conv_transpose(
            x,
            kernel,
            strides=list(layer.strides),
            padding=layer.padding,
            output_padding=layer.output_padding,
            dilation_rate=layer.dilation_rate,
            data_format=layer.data_format,
        )
    else:
        outputs = layer.convolution_op(x, kernel)
    outputs = ops.cast(outputs, layer.compute_dtype)
    if layer.use_bias:
        outputs = outputs + layer.bias  # channels last: the bias broadcasts over pixels
    return outputs if layer.activation is None else layer.activation(outputs)


def set_arithmetic(model: keras.Model, bfloat16: bool, int8: bool) -> dict[str, list[str]]:
    """Make ``model``'s convolutions compute in bfloat16 (the inner ones of g_a and g_s)
    and with int8 kernels (every kernel export stores as int8); returns which, by key."""
    convs = conv_layers(model)
    inner = set()
    if bfloat16:
        for transform in ("g_a/", "g_s/"):
            keys = [key for key in convs if key.startswith(transform)]
            inner.update(keys[1:-1])
    quantized = {
        key
        for key, layer in convs.items()
        if int8 and stored_as_int8(f"{key}/kernel", tuple(layer.kernel.shape))
    }
    for key, layer in convs.items():
        if key in inner or key in quantized:
            layer.call = functools.partial(
                _convolve, layer, bfloat16=key in inner, int8=key in quantized
            )
    return {"bfloat16": sorted(inner), "int8": sorted(quantized)}
