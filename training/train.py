"""Rate-distortion training of the mean-scale hyperprior: loss = lambda * 255^2 * MSE + bpp.

Backend-agnostic (plain ``model.fit``), so the same code trains on the CPU under TensorFlow
and on a lent accelerator under ``KERAS_BACKEND=jax``. A run directory holds the latest
weights and its progress, so a run resumes where it stopped; ``--minutes`` bounds wall time
and the learning-rate schedule follows whichever of steps or time runs out first.
``devices > 1`` trains data-parallel: each batch is split across the devices and the
gradients are averaged (``keras.distribution`` under JAX, ``tf.distribute`` under TensorFlow).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np

from pillow_kae import models
from pillow_kae.models.hyperprior import LOG_GAIN_RATIO
from pillow_kae.zoo.weights import assign_weights, load_arrays, save_weights
from training.arithmetic import set_arithmetic
from training.data import list_images, load_images, random_crops
from training.lineage import CHECKPOINT, STATE, init_history
from training.widen import arch_of, widen_arrays

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data: list[str]
    lmbda: float
    steps: int
    out: str
    patch: int = 192
    batch: int = 16
    lr: float = 1e-4
    final_lr_ratio: float = 0.05
    warmup: float = 0.02
    minutes: float | None = None
    steps_per_epoch: int = 100
    init: str | None = None
    seed: int = 0
    workers: int = 1
    scale_range: tuple[float, float] = (0.5, 0.85)
    weights: list[float] | None = None
    kind: str = "mean-scale-hyperprior"
    arch: dict = field(default_factory=dict)
    devices: int = 1
    gain_steps: tuple[int, int] | None = None  # variable-rate training over these steps
    gain_slope: float = 2.0  # lambda multiplies by r^(gain_slope * step)
    train_only: list[str] | None = None  # sub-models that train; None: all of them
    precision: str = "float32"  # or "mixed_bfloat16": see training.arithmetic
    int8_kernels: bool = False  # compute with the kernels export ships (training.arithmetic)


def data_parallel(devices: int, batch: int) -> contextlib.AbstractContextManager:
    """A context in which the model is built and compiled to train on ``devices`` devices.

    JAX: ``keras.distribution.DataParallel`` over the first ``devices`` devices (the batch
    dimension is sharded, variables replicated). TensorFlow: a ``MirroredStrategy`` scope.
    """
    if devices <= 1:
        return contextlib.nullcontext()
    if batch % devices:
        raise ValueError(f"batch {batch} does not split evenly over {devices} devices")
    backend = keras.backend.backend()
    if backend == "jax":
        available = keras.distribution.list_devices()
        if len(available) < devices:
            raise ValueError(f"{devices} devices asked for, {len(available)} available")
        chosen = available[:devices]
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=chosen))
        log.info("data-parallel on %d devices: %s", devices, ", ".join(map(str, chosen)))
        return contextlib.nullcontext()
    if backend == "tensorflow":
        import tensorflow as tf

        available = tf.config.list_logical_devices(
            "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
        )
        if len(available) < devices:
            raise ValueError(f"{devices} devices asked for, {len(available)} available")
        chosen = [d.name for d in available[:devices]]
        log.info("data-parallel on %d devices: %s", devices, ", ".join(chosen))
        return tf.distribute.MirroredStrategy(chosen).scope()
    raise ValueError(f"data-parallel training needs JAX or TensorFlow, not {backend}")


def freeze_all_but(model: keras.Model, parts: list[str]) -> None:
    """Freeze every sub-model of ``model`` but ``parts`` (names such as ``g_s``)."""
    names = {layer.name for layer in model.layers}
    unknown = sorted(set(parts) - names)
    if unknown:
        raise ValueError(f"no sub-model {', '.join(unknown)}; the model has {sorted(names)}")
    for layer in model.layers:
        layer.trainable = layer.name in parts
    log.info("training %s only", ", ".join(parts))


def rate_loss(y_true: object, y_pred: object) -> object:
    """The model already outputs bits per pixel; the 'loss' is that value itself."""
    return y_pred


def _batches(
    crops: Iterator[np.ndarray], config: TrainConfig
) -> Iterator[tuple[object, dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Keras batches: inputs, targets and per-sample loss weights.

    With ``gain_steps`` each crop is trained at a random latent gain step s, as the quality
    ladder codes with the model, and its distortion weighs r^(gain_slope * s) times the
    base lambda: one model learns the whole range of rates the ladder asks of it.
    """
    rng = np.random.default_rng(config.seed + 1)
    for x in crops:
        batch = x.shape[0]
        targets = {"x_hat": x, "bpp": np.zeros((batch,), np.float32)}
        inputs, ones = x, np.ones(batch, np.float32)
        weights = ones
        if config.gain_steps is not None:
            low, high = config.gain_steps
            steps = rng.integers(low, high + 1, batch).astype(np.float32)
            weights = np.exp(config.gain_slope * LOG_GAIN_RATIO * steps).astype(np.float32)
            inputs = (x, steps.reshape(batch, 1, 1, 1))
        # (batch, 1, 1): Keras weighs the per-pixel MSE, which is (batch, height, width)
        yield inputs, targets, {"x_hat": weights.reshape(batch, 1, 1), "bpp": ones}


class _Progress(keras.callbacks.Callback):
    """Schedules the learning rate, logs PSNR/bpp, checkpoints, and stops on the time budget."""

    def __init__(
        self, config: TrainConfig, run: Path, start_step: int, history: list[dict], minutes: float
    ) -> None:
        super().__init__()
        self.config = config
        self.run = run
        self.step = start_step
        self.history = history  # the stages behind config.init, for the model card
        self.minutes_before = minutes  # spent by earlier sessions of a resumed run
        self.start = time.monotonic()
        self.budget = None if config.minutes is None else config.minutes * 60.0
        self.steps_at_start = start_step
        self.last_save = self.start

    def progress(self) -> float:
        done = self.step / self.config.steps
        if self.budget is not None:
            done = max(done, (time.monotonic() - self.start) / self.budget)
        return min(done, 1.0)

    def learning_rate(self) -> float:
        c, p = self.config, self.progress()
        if p < c.warmup:
            return c.lr * max(p / c.warmup, 0.01)
        cosine = 0.5 * (1 + math.cos(math.pi * (p - c.warmup) / (1 - c.warmup)))
        return c.lr * (c.final_lr_ratio + (1 - c.final_lr_ratio) * cosine)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.model.optimizer.learning_rate = self.learning_rate()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        self.step += self.config.steps_per_epoch
        mse = logs.get("x_hat_loss", float("nan"))  # Keras logs the unweighted MSE
        psnr = -10 * math.log10(max(mse, 1e-12))
        elapsed = time.monotonic() - self.start
        log.info(
            "step %d lr %.2e loss %.4f bpp %.4f psnr %.2f (%.1f steps/s)",
            self.step,
            float(self.learning_rate()),
            logs.get("loss", float("nan")),
            logs.get("bpp_loss", float("nan")),
            psnr,
            (self.step - self.steps_at_start) / max(elapsed, 1e-9),
        )
        if self.step >= self.config.steps or self.progress() >= 1.0:
            self.model.stop_training = True  # train() saves once fit returns
        elif time.monotonic() - self.last_save > 120:
            self.save()

    def save(self) -> None:
        save_weights(self.model, self.run / CHECKPOINT)
        minutes = self.minutes_before + (time.monotonic() - self.start) / 60
        state = {
            "step": self.step,
            "minutes": round(minutes, 2),
            "config": asdict(self.config),
            "history": self.history,
        }
        (self.run / STATE).write_text(json.dumps(state, indent=2))
        self.last_save = time.monotonic()


def train(config: TrainConfig) -> Path:
    """Train (or resume) the run in ``config.out``; returns the run directory."""
    run = Path(config.out)
    run.mkdir(parents=True, exist_ok=True)
    start_step, minutes, history = 0, 0.0, None
    if (run / CHECKPOINT).exists():
        state = json.loads((run / STATE).read_text())
        start_step, minutes = int(state["step"]), float(state.get("minutes", 0.0))
        history = state.get("history")
    if history is None:
        history = init_history(config.init)
    if start_step >= config.steps:
        log.info("run already has %d of %d steps", start_step, config.steps)
        return run
    groups = [
        load_images(
            list_images([folder]),
            min_side=config.patch,
            scale_range=config.scale_range,
            seed=config.seed + start_step,
            workers=config.workers,
        )
        for folder in config.data
    ]
    crops = random_crops(
        groups, config.patch, config.batch, config.weights, seed=config.seed + start_step
    )

    keras.utils.set_random_seed(config.seed + start_step)
    with data_parallel(config.devices, config.batch):
        model = models.build(config.kind, config.arch)
        if start_step:
            assign_weights(model, load_arrays(run / CHECKPOINT))
            log.info("resuming %s at step %d", run, start_step)
        elif config.init:
            # A channel-conditional model may start from a plain hyperprior (or a checkerboard
            # from slices without one): what the init lacks starts at zero, coding exactly
            # as the init did.
            arrays = load_arrays(config.init)
            narrow = arch_of(arrays)
            wide = {key: config.arch.get(key, value) for key, value in narrow.items()}
            if wide != narrow:
                arrays = widen_arrays(arrays, model, narrow, wide)
                log.info("widened %s to %s", narrow, wide)
            assign_weights(model, arrays, missing_ok=("slice", "spatial"))
            log.info("warm start from %s", config.init)
        if config.train_only:
            freeze_all_but(model, config.train_only)
        if config.precision not in ("float32", "mixed_bfloat16"):
            raise ValueError(f"precision {config.precision!r}: float32 or mixed_bfloat16")
        changed = set_arithmetic(
            model, config.precision == "mixed_bfloat16", int8=config.int8_kernels
        )
        for kind, keys in changed.items():
            if keys:
                log.info("computing with %s: %s", kind, ", ".join(keys))
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=config.lr, global_clipnorm=1.0),
            loss={"x_hat": "mse", "bpp": rate_loss},
            loss_weights={"x_hat": config.lmbda * 255**2, "bpp": 1.0},
        )
    progress = _Progress(config, run, start_step, history, minutes)
    first_epoch = start_step // config.steps_per_epoch
    epochs = math.ceil(config.steps / config.steps_per_epoch)
    model.fit(
        _batches(crops, config),
        steps_per_epoch=config.steps_per_epoch,
        initial_epoch=first_epoch,
        epochs=epochs,
        callbacks=[progress],
        verbose=0,
        shuffle=False,  # a generator: the crops are random already
    )
    progress.save()
    return run
