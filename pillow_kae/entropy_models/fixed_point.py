"""The hyper-synthesis transform h_s in exact integer arithmetic.

The scale index that picks a coding table for each element of y must be the same at the
encoder and at every decoder, or decoding turns into garbage (the failure CompressAI and
tensorflow-compression users report across machines). So h_s runs here on integers:
weights are rounded to WEIGHT_BITS fractional bits, activations to ACTIVATION_BITS, and
each layer rounds its accumulator back with an integer shift.

The convolutions run as float64 matrix products, which is exact and independent of the
summation order because every operand and partial sum is an integer below 2**53 (checked
by the bounds below), so BLAS, threads and FMA cannot change a single bit.
"""

from __future__ import annotations

import decimal
import functools
import math
from dataclasses import dataclass

import numpy as np

from pillow_kae.container import GAIN_STEP_DIVISIONS
from pillow_kae.entropy_models.gaussian_conditional import SCALE_LEVELS, SCALE_MAX, SCALE_MIN

WEIGHT_BITS = 12
ACTIVATION_BITS = 10
ACTIVATION_LIMIT = 1 << 20  # |activation| as an integer
WEIGHT_LIMIT = 1 << 15  # |weight| as an integer
Z_LIMIT = ACTIVATION_LIMIT >> ACTIVATION_BITS  # z_hat is clipped to +-this before h_s
EXACT_LIMIT = 1 << 53
GAIN_BITS = 16  # fractional bits of the inverse latent gain (slice context)


@dataclass(frozen=True)
class IntConv:
    """A k x k 'same' stride-1 convolution with integer weights, optionally depth-to-space."""

    kernel: np.ndarray  # (k, k, cin, cout) float64 holding integers
    bias: np.ndarray  # (cout,) int64, scaled by 2**(WEIGHT_BITS + ACTIVATION_BITS)
    block: int  # 1, or the depth-to-space factor
    relu: bool

    def __post_init__(self) -> None:
        k, _, cin, _ = self.kernel.shape
        if np.abs(self.kernel).max(initial=0) > WEIGHT_LIMIT:
            raise ValueError("fixed-point weight out of range")
        worst = float(k * k * cin) * WEIGHT_LIMIT * ACTIVATION_LIMIT + np.abs(self.bias).max()
        if worst >= EXACT_LIMIT:
            raise ValueError("layer too wide for exact float64 accumulation")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x: (H, W, cin) int64 activations -> (H*b, W*b, cout/b^2) int64 activations."""
        k = self.kernel.shape[0]
        pad = k // 2
        height, width, cin = x.shape
        padded = np.pad(x.astype(np.float64), ((pad, pad), (pad, pad), (0, 0)))
        # Every tap's patch side by side, then one product: one large BLAS call.
        patches = np.concatenate(
            [padded[dy : dy + height, dx : dx + width] for dy in range(k) for dx in range(k)],
            axis=-1,
        ).reshape(height * width, k * k * cin)
        acc = patches @ self.kernel.reshape(k * k * cin, -1)
        total = acc.astype(np.int64) + self.bias
        out = (total + (1 << (WEIGHT_BITS - 1))) >> WEIGHT_BITS
        if self.relu:
            out = np.maximum(out, 0)
        out = np.clip(out, -ACTIVATION_LIMIT, ACTIVATION_LIMIT).reshape(height, width, -1)
        if self.block > 1:
            b = self.block
            channels = out.shape[-1] // (b * b)
            out = out.reshape(height, width, b, b, channels).transpose(0, 2, 1, 3, 4)
            out = out.reshape(height * b, width * b, channels)
        return out


def quantize_conv(kernel: np.ndarray, bias: np.ndarray, block: int, relu: bool) -> IntConv:
    """Float weights -> fixed point. Rounding float64 values is exact on every machine."""
    kernel_int = np.rint(np.asarray(kernel, np.float64) * (1 << WEIGHT_BITS))
    bias_int = np.rint(np.asarray(bias, np.float64) * (1 << (WEIGHT_BITS + ACTIVATION_BITS)))
    return IntConv(kernel_int, bias_int.astype(np.int64), block, relu)


class FixedPointHyperSynthesis:
    """h_s of ``MeanScaleHyperprior`` (up0, ReLU, up1, ReLU, conv2), in integers."""

    def __init__(self, arrays: dict[str, np.ndarray], prefix: str = "h_s") -> None:
        def get(name: str) -> np.ndarray:
            return np.asarray(arrays[f"{prefix}/{name}"])

        self.layers = [
            quantize_conv(get("up0/conv/kernel"), get("up0/conv/bias"), 2, True),
            quantize_conv(get("up1/conv/kernel"), get("up1/conv/bias"), 2, True),
            quantize_conv(get("conv2/kernel"), get("conv2/bias"), 1, False),
        ]

    def __call__(self, z_hat: np.ndarray) -> np.ndarray:
        """z_hat: (H, W, C) integers -> h_s output (4H, 4W, 2M) scaled by 2**ACTIVATION_BITS."""
        x = np.clip(z_hat.astype(np.int64), -Z_LIMIT, Z_LIMIT) << ACTIVATION_BITS
        for layer in self.layers:
            x = layer(x)
        return x


class FixedPointSliceTransforms:
    """The slice transforms of ``ChannelConditionalHyperprior`` (3x3 convs, ReLU), in integers.

    Slice i maps its h_s output and the decoded slices before it (all in units of
    2**-ACTIVATION_BITS) to integer corrections of its means and log-scales.
    """

    def __init__(self, arrays: dict[str, np.ndarray], slices: int, prefix: str = "slice") -> None:
        def conv(i: int, j: int, relu: bool) -> IntConv:
            name = f"{prefix}{i}/conv{j}"
            return quantize_conv(arrays[f"{name}/kernel"], arrays[f"{name}/bias"], 1, relu)

        self.transforms = [
            [conv(i, 0, True), conv(i, 1, True), conv(i, 2, False)] for i in range(slices)
        ]

    def __call__(self, i: int, inputs: np.ndarray) -> np.ndarray:
        """inputs: (H, W, C_i) int64 activations -> (H, W, 2 * slice channels) corrections."""
        x = np.clip(inputs, -ACTIVATION_LIMIT, ACTIVATION_LIMIT)
        for layer in self.transforms[i]:
            x = layer(x)
        return x


class FixedPointSpatialTransforms(FixedPointSliceTransforms):
    """The spatial transforms of a checkerboard model (``SpatialContext``), in integers.

    Slice i maps its corrected means and log-scales and its anchors' decoded residuals
    (zero elsewhere) to corrections for its other half: the three-layer network on all of
    them plus a direct 3x3 convolution of the residuals, each rounded as a layer is."""

    def __init__(self, arrays: dict[str, np.ndarray], slices: int) -> None:
        super().__init__(arrays, slices, prefix="spatial")
        self.direct = [
            quantize_conv(
                arrays[f"spatial{i}/direct/kernel"], arrays[f"spatial{i}/direct/bias"], 1, False
            )
            for i in range(slices)
        ]

    def __call__(self, i: int, inputs: np.ndarray) -> np.ndarray:
        """inputs: (H, W, 3 * slice channels): means, log-scales, residuals."""
        residuals = np.clip(
            inputs[..., 2 * inputs.shape[-1] // 3 :], -ACTIVATION_LIMIT, ACTIVATION_LIMIT
        )
        return super().__call__(i, inputs) + self.direct[i](residuals)


def scale_indices(log_scales: np.ndarray, thresholds: np.ndarray, shift: float = 0) -> np.ndarray:
    """Table index per element: count of integer thresholds <= fixed-point log-scale, + shift.

    ``shift`` (the gain step) moves along the geometric scale table; it is how a latent gain
    of ratio**shift is applied without any floating-point math on the decoder's side. A
    whole step moves the index; a fraction of one (a multiple of 1/GAIN_STEP_DIVISIONS)
    first adds its exact integer share of a step to the log-scales.
    """
    whole = math.floor(shift)
    offset = fraction_offset_fixed(shift - whole)
    shifted = log_scales + offset if offset else log_scales
    index = np.searchsorted(thresholds, shifted, side="right") + whole
    return np.clip(index, 0, thresholds.size).astype(np.int64)


def check_gain_step(step: object, name: str = "gain step") -> float:
    """A gain step as the codec takes it: a number that is a multiple of 1/GAIN_STEP_DIVISIONS."""
    if isinstance(step, bool) or not isinstance(step, int | float):
        raise ValueError(f"{name} must be a number, not {step!r}")
    sixteenths = step * GAIN_STEP_DIVISIONS
    if not math.isfinite(sixteenths) or sixteenths != round(sixteenths):
        raise ValueError(f"{name} must be a multiple of 1/{GAIN_STEP_DIVISIONS}, not {step!r}")
    return float(step)


@functools.cache
def fraction_offset_fixed(fraction: float) -> int:
    """round(fraction * ln r * 2**ACTIVATION_BITS): a fraction of a gain step in log-scale units.

    Computed with ``decimal`` (correctly rounded ``ln`` at 50 digits) from the table's decimal
    constants, so every decoder gets the same integer; 0 for a whole step.
    """
    if not fraction:
        return 0
    with decimal.localcontext() as context:
        context.prec = 50
        ratio = decimal.Decimal(repr(SCALE_MAX)) / decimal.Decimal(repr(SCALE_MIN))
        log_ratio = ratio.ln() / (SCALE_LEVELS - 1)
        value = decimal.Decimal(fraction) * log_ratio * (1 << ACTIVATION_BITS)
        return int(value.to_integral_value(decimal.ROUND_HALF_EVEN))


def log_scale_thresholds_fixed(thresholds: np.ndarray) -> np.ndarray:
    """Export-time: float log-domain thresholds -> the stored integer thresholds."""
    return np.rint(np.asarray(thresholds, np.float64) * (1 << ACTIVATION_BITS)).astype(np.int64)


def dequantize_fixed(means: np.ndarray, symbols: np.ndarray, inverse_gain: int) -> np.ndarray:
    """ŷ = means + symbols / gain in units of 2**-ACTIVATION_BITS, from integers only.

    ``inverse_gain`` is ``inverse_gain_fixed(step)``;
    symbols are clipped first so that forged values cannot overflow int64.
    """
    q = np.clip(symbols.astype(np.int64), -ACTIVATION_LIMIT, ACTIVATION_LIMIT)
    scaled = (q * inverse_gain + (1 << (GAIN_BITS - 1))) >> GAIN_BITS
    return np.clip(means + scaled, -ACTIVATION_LIMIT, ACTIVATION_LIMIT)


@functools.cache
def inverse_gain_fixed(step: float) -> int:
    """round(2**(ACTIVATION_BITS + GAIN_BITS) / r**step), r the ratio of the scale table.

    Computed with ``decimal`` (software arithmetic at 50 digits) from the table's decimal
    constants, never with the machine's ``pow``, so every decoder gets the same integer.
    """
    with decimal.localcontext() as context:
        context.prec = 50
        ratio = decimal.Decimal(repr(SCALE_MAX)) / decimal.Decimal(repr(SCALE_MIN))
        exponent = decimal.Decimal(-step) / (SCALE_LEVELS - 1)  # exact: step is k/16
        value = decimal.Decimal(1 << (ACTIVATION_BITS + GAIN_BITS)) * ratio**exponent
        return int(value.to_integral_value(decimal.ROUND_HALF_EVEN))
