"""Channel-conditional entropy model on frozen transforms: latents once, then rate-only training.

The slice transforms change only how ŷ is coded, not g_a/g_s/h_a/h_s. So the shipped
transforms run once per training photo (ONNX Runtime and the integer h_s, exactly as the
codec runs them), and what is kept is y and the h_s output the decoder will see. Training
then minimizes the bits of ŷ alone on those arrays, at random gain steps across the range
the quality ladder uses: hundreds of times cheaper than training the whole codec, so a CPU
does it in a session. The run directory is an ordinary run (``checkpoint.npz`` with every
weight, ``state.json``), so ``python -m training export`` ships it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pillow_kae import codec
from pillow_kae.zoo.loader import CodecModel, load
from pillow_kae.zoo.weights import assign_weights, load_arrays, save_weights
from training.data import list_images, load_images
from training.lineage import CHECKPOINT, STATE, init_history

log = logging.getLogger(__name__)

Latents = list[tuple[np.ndarray, np.ndarray]]  # (y float32, h_s output int32) per photo
LATENTS = "latents.npz"


@dataclass
class ContextConfig:
    model: str  # the shipped model whose transforms are kept
    data: list[str]
    limits: list[int | None]  # photos per folder (None: all)
    out: str
    slices: int = 6
    hidden: int = 96
    steps: int = 3000
    gain_steps: tuple[int, int] = (-6, 2)  # trained on every step of this range
    batch: int = 16
    crop: int = 16  # latents
    lr: float = 1e-3
    final_lr_ratio: float = 0.05
    steps_per_epoch: int = 100
    scale_range: tuple[float, float] = (0.5, 0.85)
    seed: int = 0
    kodak: str | None = None  # evaluation photos, for the log
    init: str | None = None  # a context run's checkpoint.npz to continue from
    arch: dict = field(default_factory=dict)


def image_latents(model: CodecModel, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y, h_s output) of one photo coded as one tile, as the codec computes them."""
    y = codec.analysis_grid(model, pixels)
    z = np.rint(model.transform("h_a")(y[None])[0]).astype(np.int64)
    return y, model.hyper_synthesis(z).astype(np.int32)


def collect(
    model: CodecModel,
    folder: str | Path,
    limit: int | None,
    scale_range: tuple[float, float],
    seed: int,
) -> Latents:
    """Latents of (up to ``limit`` random) photos of ``folder``, each downscaled once."""
    paths = list_images([folder])
    rng = np.random.default_rng(seed)
    if limit is not None and limit < len(paths):
        paths = [paths[i] for i in sorted(rng.choice(len(paths), limit, replace=False))]
    images = load_images(paths, min_side=64, scale_range=scale_range, seed=seed)
    return [image_latents(model, im) for im in tqdm(images, desc=str(folder), unit="img")]


def save_latents(path: Path, latents: Latents) -> None:
    arrays = {}
    for i, (y, hyper) in enumerate(latents):
        arrays[f"y{i}"], arrays[f"h{i}"] = y, hyper
    np.savez(path, **arrays)


def load_latents(path: Path) -> Latents:
    with np.load(path) as data:
        return [(data[f"y{i}"], data[f"h{i}"]) for i in range(len(data.files) // 2)]


def crops(
    latents: Latents, size: int, batch: int, steps: tuple[int, int], seed: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Endless (y, h_s output, [gain step, valid]) batches of ``size`` x ``size`` latents.

    A smaller grid sits at the top left, zeros around it as beyond a tile's edge, and
    ``valid`` keeps those positions out of the loss."""
    rng = np.random.default_rng(seed)
    m = latents[0][0].shape[-1]
    while True:
        ys = np.zeros((batch, size, size, m), np.float32)
        hs = np.zeros((batch, size, size, 2 * m), np.float32)
        extra = np.zeros((batch, size, size, 2), np.float32)
        for b, gain_step in enumerate(rng.integers(steps[0], steps[1] + 1, batch)):
            y, hyper = latents[rng.integers(len(latents))]
            top = rng.integers(max(y.shape[0] - size, 0) + 1)
            left = rng.integers(max(y.shape[1] - size, 0) + 1)
            window = (slice(top, top + size), slice(left, left + size))
            yc, hc = y[window], hyper[window]
            if rng.random() < 0.5:
                yc, hc = yc[:, ::-1], hc[:, ::-1]
            rows, cols = yc.shape[:2]
            ys[b, :rows, :cols], hs[b, :rows, :cols] = yc, hc
            extra[b, ..., 0], extra[b, :rows, :cols, 1] = gain_step, 1.0
        yield ys, hs, extra


def context_model(name: str, slices: int, hidden: int, init: str | None = None) -> object:
    """A channel-conditional model around the shipped ``name``'s transforms, frozen; its
    slice transforms start at zero, or continue those of a context run's ``init``."""
    from pillow_kae.models.channel_conditional import ChannelConditionalHyperprior

    shipped = load(name)
    model = ChannelConditionalHyperprior(slices=slices, slice_hidden=hidden, **shipped.card.arch)
    model.build()
    arrays = dict(shipped.arrays)
    if init:  # the transforms stay the shipped ones
        arrays.update((k, v) for k, v in load_arrays(init).items() if k.startswith("slice"))
    assign_weights(model, arrays, missing_ok=("slice",))
    for part in (model.g_a, model.g_s, model.h_a, model.h_s, model.entropy_bottleneck):
        part.trainable = False
    return model


def rate_model(model: object) -> object:
    """Keras model: (y, h_s output, [gain step, valid]) -> mean bits per valid latent element."""
    import keras
    from keras import ops

    class LatentRate(keras.Model):
        def __init__(self, codec_model: object) -> None:
            super().__init__()
            self.codec_model = codec_model

        def call(self, inputs: tuple, training: bool = False) -> object:
            y, hyper, extra = inputs
            steps, valid = extra[..., :1], extra[..., 1:]
            scale = float(1 << codec.ACTIVATION_BITS)
            bits, _ = self.codec_model.latent_bits(y, hyper / scale, steps, training)
            total = ops.sum(bits * valid, axis=(1, 2, 3))
            return total / (ops.sum(valid, axis=(1, 2, 3)) * ops.shape(y)[-1])

    return LatentRate(model)


def latent_bits(rate: object, latents: Latents, step: int) -> float:
    """Mean bits per element of y over whole grids, rounded as coded, at one gain step."""
    total, count = 0.0, 0
    for y, hyper in latents:
        extra = np.zeros((1, *y.shape[:2], 2), np.float32)
        extra[..., 0], extra[..., 1] = step, 1.0
        bits = float(np.asarray(rate((y[None], hyper[None].astype(np.float32), extra)))[0])
        total, count = total + bits * y[..., 0].size, count + y[..., 0].size
    return total / count


def gather(config: ContextConfig, run: Path) -> tuple[Latents, Latents]:
    """Training latents (cached in the run) and evaluation latents (``config.kodak``)."""
    shipped = load(config.model)
    cache = run / LATENTS
    if cache.exists():
        latents = load_latents(cache)
    else:
        latents = []
        for i, (folder, limit) in enumerate(zip(config.data, config.limits, strict=True)):
            latents += collect(shipped, folder, limit, config.scale_range, config.seed + i)
        save_latents(cache, latents)
    evaluation = []
    if config.kodak:
        evaluation = collect(shipped, config.kodak, 8, (1.0, 1.0), config.seed)
    return latents, evaluation


def train_context(config: ContextConfig) -> Path:
    """Train the slice transforms of ``config.model``; returns the run directory."""
    import keras

    run = Path(config.out)
    run.mkdir(parents=True, exist_ok=True)
    latents, evaluation = gather(config, run)
    keras.utils.set_random_seed(config.seed)
    model = context_model(config.model, config.slices, config.hidden, config.init)
    config.arch = {
        **load(config.model).card.arch,
        "slices": config.slices,
        "slice_hidden": config.hidden,
    }
    rate = rate_model(model)
    low, high = config.gain_steps
    probe = sorted({low, 0, high})
    baseline = {s: latent_bits(rate, evaluation, s) for s in probe} if evaluation else {}
    schedule = keras.optimizers.schedules.CosineDecay(
        config.lr, config.steps, alpha=config.final_lr_ratio
    )
    rate.compile(
        optimizer=keras.optimizers.Adam(schedule, global_clipnorm=1.0), loss=lambda _, bits: bits
    )
    batches = (
        (inputs, np.zeros(config.batch, np.float32))
        for inputs in crops(latents, config.crop, config.batch, config.gain_steps, config.seed)
    )
    start, epoch_steps = time.monotonic(), min(config.steps_per_epoch, config.steps)

    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            change = {
                s: f"{latent_bits(rate, evaluation, s) / baseline[s] - 1:+.2%}" for s in baseline
            }
            log.info(
                "step %d bits/element %.4f; y bits on kodak by gain step %s (%.2f steps/s)",
                (epoch + 1) * epoch_steps,
                (logs or {}).get("loss", np.nan),
                change,
                (epoch + 1) * epoch_steps / (time.monotonic() - start),
            )
            # A checkpoint per epoch: a run stopped early (a session ends) keeps its progress.
            minutes = (time.monotonic() - start) / 60
            write_run(run, model, config, minutes, (epoch + 1) * epoch_steps)

    rate.fit(
        batches,
        steps_per_epoch=epoch_steps,
        epochs=config.steps // epoch_steps,
        callbacks=[Report()],
        verbose=0,
        shuffle=False,  # a generator: the crops are random already
    )
    write_run(run, model, config, (time.monotonic() - start) / 60)
    return run


def write_run(
    run: Path, model: object, config: ContextConfig, minutes: float, step: int | None = None
) -> None:
    """checkpoint.npz (every weight) and state.json after ``step`` steps (default: all), as
    ``training export`` reads them."""
    save_weights(model, run / CHECKPOINT, compact=False)
    shipped = load(config.model).card
    init = config.init or str(shipped.path)
    state = {
        "step": config.steps if step is None else step,
        "minutes": round(minutes, 2),
        "config": {
            **asdict(config),
            "kind": "channel-conditional",
            "init": init,
            "lmbda": shipped.lmbda,
            "weights": None,
            "patch": None,
            "note": "slice transforms only, rate of y on frozen shipped transforms "
            f"(gain steps {config.gain_steps[0]}..{config.gain_steps[1]})",
        },
        "history": init_history(init),
    }
    (run / STATE).write_text(json.dumps(state, indent=2))
