"""Encoder-side latent refinement, the ``effort`` save option (Yang, Bamler & Mandt 2020).

g_a is amortized: one pass guesses y for any photo, and an encoder trained for 20 k steps
guesses far from the best symbols its own decoder could use. Once ẑ is chosen, the
decoder's means and coding tables are fixed; refinement then searches the symbols q that
minimise rate + lambda * distortion through the real g_s, with Adam on a continuous residual
and stochastic Gumbel annealing (SGA) towards integers. Only the encoder changes: the file is
an ordinary one, and any decoder of the format reads it.

The search needs gradients through g_s, so it runs on the Keras model (the ``keras`` extra)
and is imported only when a save asks for effort above 0. Keras's own ``fit`` drives it, so
it runs under whichever backend Keras is configured with.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from pillow_kae.zoo.loader import CodecModel

MAX_EFFORT = 9
# Adam steps per effort level: each step is one g_s forward and backward pass (about 2-3
# decodes), so effort 9 costs a few hundred decodes. Effort 0 is the amortized g_a alone.
EFFORT_STEPS = (0, 4, 8, 12, 16, 24, 32, 48, 64, 96)
LEARNING_RATE = 0.02  # Adam on the residual, in bins: 0.05 and 0.1 gained less in 16 steps
TAU_START, TAU_END = 0.5, 0.05  # SGA temperature, annealed exponentially after a warm-up
WARMUP = 0.3  # fraction of the steps at TAU_START


@dataclass(frozen=True)
class Problem:
    """One window of the latent grid, and what the decoder will know around it.

    ``residual`` is g * (y - mu) of the window in quantization bins, ``means`` its mu and
    ``scales`` the coding table's scale of each element (in bins). ``context`` is ŷ of the
    window plus the latents around it that g_s sees, ``window`` where the window lies in it.
    ``target`` is the padded pixels of the context in [0, 1]; ``weight`` is 1 where a pixel
    is scored. ``lmbda`` weighs 255^2 * MSE against bits per pixel, as in training.
    """

    residual: np.ndarray
    means: np.ndarray
    scales: np.ndarray
    gain: float
    context: np.ndarray
    window: tuple[slice, slice]
    target: np.ndarray
    weight: np.ndarray
    lmbda: float


def check_effort(value: object) -> int:
    """A save's ``effort`` option as an int, or a ValueError that says what is allowed."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"effort must be an integer from 0 to {MAX_EFFORT}, not {value!r}")
    if not 0 <= value <= MAX_EFFORT:
        raise ValueError(f"effort must be from 0 to {MAX_EFFORT}, not {value}")
    return int(value)


def steps_for(effort: int) -> int:
    """Adam steps of an effort level (0..MAX_EFFORT)."""
    return EFFORT_STEPS[check_effort(effort)]


def trade_off(lmbda: float, gain: float) -> float:
    """The lambda a search at latent gain ``gain`` minimises bpp + lambda * 255^2 * MSE for.

    A gain g shrinks the quantization bin by g, the distortion by g^2 at the same rate: the
    model's training lambda times g^2, as variable-rate training weighs it. (The ladder's
    measured slope is 1.1-1.4x this; searching at 1.4x gained less on Kodak.)
    """
    return lmbda * gain * gain


def temperatures(steps: int) -> np.ndarray:
    """SGA temperature at each step: TAU_START for the warm-up, then down to TAU_END."""
    t = np.arange(steps, dtype=np.float64) / max(steps - 1, 1)
    decay = np.clip((t - WARMUP) / (1 - WARMUP), 0, 1)
    return (TAU_START * (TAU_END / TAU_START) ** decay).astype(np.float32)


def refine(model: CodecModel, problem: Problem, steps: int, seed: int = 0) -> np.ndarray:
    """The residual (in bins, rounded) that minimises rate + lambda * 255^2 * MSE."""
    if steps <= 0:
        return np.rint(problem.residual)
    try:
        import keras  # noqa: F401  (the search below needs it)
    except ImportError as err:
        raise ImportError(
            "effort above 0 searches the code with Keras, which is not installed: "
            "pip install 'pillow-kae[effort]' (or save with effort=0)"
        ) from err

    taus = temperatures(steps)[:, None]
    with _SEARCH_LOCK:  # a compiled search holds one problem at a time
        refiner = _refiner(model, problem, seed)
        refiner.load(problem)
        refiner.fit(
            taus, np.zeros((steps, 1), np.float32), batch_size=1, epochs=1, shuffle=False, verbose=0
        )  # in order: the temperatures anneal
        return np.rint(np.asarray(refiner.residual.numpy(), np.float64))


def cost_weights(problem: Problem) -> tuple[float, float]:
    """What a bit and a squared pixel error (0-1 scale, summed over the scored values) weigh
    in bpp + lambda * 255^2 * MSE, MSE per value (3 per pixel) as in training."""
    pixels = float(problem.weight.sum())
    return 1.0 / pixels, problem.lmbda * 255.0**2 / (3.0 * pixels)


def window_cost(problem: Problem, bits: float, decoded: np.ndarray) -> float:
    """bpp + lambda * 255^2 * MSE of the window coded with ``bits`` (in the coding tables) and
    decoded to ``decoded`` (the context's uint8 pixels): the judge between a search's result
    and the symbols it started from."""
    rate, distortion = cost_weights(problem)
    error = float(np.sum(problem.weight * np.square(decoded / 255.0 - problem.target)))
    return bits * rate + error * distortion


_REFINERS: OrderedDict[tuple, object] = OrderedDict()
_REFINERS_KEPT = 4  # compiled searches kept per process: two orientations, edge windows
_SEARCH_LOCK = threading.Lock()


def _refiner(model: CodecModel, problem: Problem, seed: int) -> object:
    """A compiled search for this model and window geometry, reused across images.

    Compiling the forward and backward pass of g_s takes longer than tens of steps, so a
    search is kept per (model, context shape, window) and only its variables are reloaded.
    """
    import keras

    window = tuple((s.start, s.stop) for s in problem.window)
    key = (model.name, model.card.digest, problem.context.shape, window, seed)
    if key in _REFINERS:
        _REFINERS.move_to_end(key)
        return _REFINERS[key]
    refiner = _refiner_class()(model.keras_model.g_s, problem, seed)
    refiner.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss=_identity)
    refiner.optimizer.build(refiner.trainable_variables)
    refiner.fresh_optimizer = [np.array(v.numpy()) for v in refiner.optimizer.variables]
    _REFINERS[key] = refiner
    while len(_REFINERS) > _REFINERS_KEPT:
        _REFINERS.popitem(last=False)
    return refiner


def _identity(y_true: object, y_pred: object) -> object:
    return y_pred


def _refiner_class() -> type:
    """The Keras model whose only trainable weight is the residual (imports Keras)."""
    import keras
    from keras import ops

    from pillow_kae.entropy_models.gaussian_conditional import gaussian_likelihood

    class Refiner(keras.Model):
        """rate + lambda * distortion of one window; the problem's arrays are variables, so
        that a new image of the same geometry reuses the compiled step."""

        def __init__(self, g_s: keras.Model, problem: Problem, seed: int) -> None:
            super().__init__()
            self.g_s = g_s
            self.g_s.trainable = False
            rows, cols = problem.window
            height, width = problem.context.shape[:2]
            self.padding = (
                (rows.start, height - rows.stop),
                (cols.start, width - cols.stop),
                (0, 0),
            )

            def constant(shape: tuple[int, ...], name: str) -> keras.Variable:
                return self.add_weight(shape=shape, initializer="zeros", trainable=False, name=name)

            self.residual = self.add_weight(
                shape=problem.residual.shape, initializer="zeros", name="residual"
            )
            self.means = constant(problem.means.shape, "means")
            self.scales = constant(problem.scales.shape, "scales")
            self.outside = constant(problem.context.shape, "outside")
            self.target = constant(problem.target.shape, "target")
            self.weight_map = constant(problem.weight.shape, "weight")
            self.gain = constant((), "gain")
            self.rate_scale = constant((), "rate_scale")
            self.distortion_scale = constant((), "distortion_scale")
            self.seed = keras.random.SeedGenerator(seed)
            self.first_seed = np.array(self.seed.state.numpy())
            self.fresh_optimizer: list[np.ndarray] = []  # Adam's state before any step

        def load(self, problem: Problem) -> None:
            """Set the problem, and start Adam and the Gumbel noise afresh: a search kept
            for reuse finds what a new one would, so a file does not depend on what the
            process encoded before it."""
            self.seed.state.assign(self.first_seed)
            outside = problem.context.astype(np.float32).copy()
            outside[problem.window] = 0.0
            rate, distortion = cost_weights(problem)
            values = [
                (self.residual, problem.residual),
                (self.means, problem.means),
                (self.scales, problem.scales),
                (self.outside, outside),
                (self.target, problem.target),
                (self.weight_map, problem.weight),
                (self.gain, problem.gain),
                (self.rate_scale, rate),
                (self.distortion_scale, distortion),
            ]
            for variable, value in values:
                variable.assign(np.asarray(value, np.float32))
            for variable, value in zip(self.optimizer.variables, self.fresh_optimizer, strict=True):
                variable.assign(value)

        def call(self, tau: object) -> object:
            q = _sga(self.residual, ops.reshape(tau, ()), self.seed)
            bits = ops.sum(-ops.log2(gaussian_likelihood(q, self.scales)))
            y_hat = self.outside + ops.pad(self.means + q / self.gain, self.padding)
            x_hat = self.g_s(y_hat[None])[0]
            error = ops.sum(self.weight_map * ops.square(x_hat - self.target))
            loss = bits * self.rate_scale + error * self.distortion_scale
            return ops.reshape(loss, (1, 1))

    def _sga(v: object, tau: object, seed: keras.random.SeedGenerator) -> object:
        """A soft sample between floor(v) and floor(v) + 1 (Yang et al. 2020, eq. 7)."""
        floor = ops.stop_gradient(ops.floor(v))
        eps = 1e-5
        up = ops.clip(v - floor, eps, 1 - eps)
        logits = ops.stack([-_atanh(up), -_atanh(1 - up)], axis=-1) / tau
        u = keras.random.uniform(ops.shape(logits), 1e-6, 1 - 1e-6, seed=seed)
        gumbel = -ops.log(-ops.log(u))
        weights = ops.softmax((logits + gumbel) / tau, axis=-1)
        return floor + weights[..., 1]

    def _atanh(x: object) -> object:
        return 0.5 * ops.log((1 + x) / (1 - x))

    return Refiner
