"""Channel-conditional entropy model on frozen transforms: latents once, then rate-only training.

The slice transforms change only how ŷ is coded, not g_a/g_s/h_a/h_s. So the shipped
transforms run once per training photo (ONNX Runtime and the integer h_s, exactly as the
codec runs them), and what is kept is y and the h_s output the decoder will see. Training
then minimizes the bits of ŷ alone on those arrays, at random gain steps across the range
the quality ladder uses: hundreds of times cheaper than training the whole codec, so a CPU
does it in a session. The run directory is an ordinary run (``checkpoint.npz`` with every
weight, ``state.json``), so ``python -m training export`` ships it.

With ``train_hyper`` the hyper-synthesis h_s trains too, on the cached ẑ: the model's
whole entropy model of y then catches up with latents that g_a learned in few steps. h_s
also sets the means ŷ is rounded around, so such a run can move PSNR a little;
``benchmarks.context`` measures both.
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

# (y float32, h_s output int32, ẑ int16) per photo
Latents = list[tuple[np.ndarray, np.ndarray, np.ndarray]]
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
    train_hyper: bool = False  # h_s trains with the slice transforms
    checkerboard: bool = False  # each slice in two halves, the second on the first
    freeze_slices: bool = False  # the slice transforms stay those of ``init``
    arch: dict = field(default_factory=dict)


# ẑ around a crop, in ẑ cells: more than h_s's reach (three 3x3 convolutions, the last two
# at 2x and 4x ẑ's resolution), so the crop's h_s output is what the whole grid's would be.
HYPER_MARGIN = 2


def image_latents(
    model: CodecModel, pixels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, h_s output, ẑ) of one photo coded as one tile, as the codec computes them."""
    y = codec.analysis_grid(model, pixels)
    z = np.rint(model.transform("h_a")(y[None])[0]).astype(np.int64)
    return y, model.hyper_synthesis(z).astype(np.int32), z.astype(np.int16)


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
    for i, (y, hyper, z) in enumerate(latents):
        arrays[f"y{i}"], arrays[f"h{i}"], arrays[f"z{i}"] = y, hyper, z
    np.savez(path, **arrays)


def load_latents(path: Path) -> Latents | None:
    """The cached latents, or None for a cache written before ẑ was kept."""
    with np.load(path) as data:
        if "z0" not in data.files:
            return None
        return [(data[f"y{i}"], data[f"h{i}"], data[f"z{i}"]) for i in range(len(data.files) // 3)]


def crops(
    latents: Latents,
    size: int,
    batch: int,
    steps: tuple[int, int],
    seed: int = 0,
    hyper_stride: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Endless (y, h_s input, [gain step, valid]) batches of ``size`` x ``size`` latents.

    The h_s input is the cached h_s output or, given ``hyper_stride`` (to train h_s), the
    ẑ under the crop and ``HYPER_MARGIN`` cells around it; such crops start on ẑ's grid and
    are not flipped (h_a and h_s are not mirror-symmetric). A smaller grid sits at the top
    left, zeros around it as beyond a tile's edge, and ``valid`` keeps those positions out
    of the loss."""
    rng = np.random.default_rng(seed)
    m = latents[0][0].shape[-1]
    if hyper_stride:
        z_size = size // hyper_stride + 2 * HYPER_MARGIN
        hs_shape = (batch, z_size, z_size, latents[0][2].shape[-1])
    else:
        hs_shape = (batch, size, size, 2 * m)
    while True:
        ys = np.zeros((batch, size, size, m), np.float32)
        hs = np.zeros(hs_shape, np.float32)
        extra = np.zeros((batch, size, size, 2), np.float32)
        for b, gain_step in enumerate(rng.integers(steps[0], steps[1] + 1, batch)):
            y, hyper, z = latents[rng.integers(len(latents))]
            align = hyper_stride or 1
            top = rng.integers(max(y.shape[0] - size, 0) // align + 1) * align
            left = rng.integers(max(y.shape[1] - size, 0) // align + 1) * align
            yc = y[top : top + size, left : left + size]
            rows, cols = yc.shape[:2]
            if hyper_stride:
                ys[b, :rows, :cols] = yc
                zt, zl = top // hyper_stride, left // hyper_stride
                zc = z[
                    max(zt - HYPER_MARGIN, 0) : zt + z_size - HYPER_MARGIN,
                    max(zl - HYPER_MARGIN, 0) : zl + z_size - HYPER_MARGIN,
                ]
                at_top = HYPER_MARGIN - min(zt, HYPER_MARGIN)
                at_left = HYPER_MARGIN - min(zl, HYPER_MARGIN)
                hs[b, at_top : at_top + zc.shape[0], at_left : at_left + zc.shape[1]] = zc
            else:
                hc = hyper[top : top + size, left : left + size]
                if rng.random() < 0.5:
                    yc, hc = yc[:, ::-1], hc[:, ::-1]
                ys[b, :rows, :cols], hs[b, :rows, :cols] = yc, hc
            extra[b, ..., 0], extra[b, :rows, :cols, 1] = gain_step, 1.0
        yield ys, hs, extra


def trained_prefixes(train_hyper: bool) -> tuple[str, ...]:
    """Prefixes of the arrays a context run trains: the slice transforms, and h_s with
    ``train_hyper``; every other array is the shipped model's."""
    return ("slice", "spatial", "h_s/") if train_hyper else ("slice", "spatial")


CONTEXT_ARCH = ("slices", "slice_hidden", "checkerboard")  # what a context run chooses


def transforms_arch(name: str) -> dict:
    """The shipped ``name``'s architecture without its entropy model's context."""
    return {k: v for k, v in load(name).card.arch.items() if k not in CONTEXT_ARCH}


def context_model(
    name: str,
    slices: int,
    hidden: int,
    init: str | None = None,
    train_hyper: bool = False,
    checkerboard: bool = False,
    freeze_slices: bool = False,
) -> object:
    """A channel-conditional model around the shipped ``name``'s transforms, frozen (but h_s,
    with ``train_hyper``); its slice (and spatial) transforms start as the shipped model's
    where it has them in this shape, else at zero, or continue those of a context run's
    ``init`` (and its h_s, with ``train_hyper``). ``freeze_slices`` keeps the slice
    transforms as they start (to add a checkerboard to a trained slice model)."""
    from pillow_kae.models.channel_conditional import ChannelConditionalHyperprior

    shipped = load(name)
    model = ChannelConditionalHyperprior(
        slices=slices, slice_hidden=hidden, checkerboard=checkerboard, **transforms_arch(name)
    )
    model.build()
    arrays = dict(shipped.arrays)
    if (shipped.slices, shipped.card.arch.get("slice_hidden")) != (slices, hidden):
        arrays = {k: v for k, v in arrays.items() if not k.startswith(("slice", "spatial"))}
    trained = trained_prefixes(train_hyper)
    if init:  # the other transforms stay the shipped ones
        arrays.update((k, v) for k, v in load_arrays(init).items() if k.startswith(trained))
    assign_weights(model, arrays, missing_ok=("slice", "spatial"))
    frozen = [model.g_a, model.g_s, model.h_a, model.entropy_bottleneck]
    if freeze_slices:
        frozen += model.slice_transforms
    for part in frozen if train_hyper else [*frozen, model.h_s]:
        part.trainable = False
    return model


def rate_model(model: object, hyper_stride: int | None = None) -> object:
    """Keras model: (y, h_s input, [gain step, valid]) -> mean bits per valid latent element.

    The h_s input is h_s's cached integer output or, given ``hyper_stride``, ẑ with
    ``HYPER_MARGIN`` cells around y's grid, which the model's own h_s maps."""
    import keras
    from keras import ops

    class LatentRate(keras.Model):
        def __init__(self, codec_model: object) -> None:
            super().__init__()
            self.codec_model = codec_model

        def call(self, inputs: tuple, training: bool = False) -> object:
            y, hyper, extra = inputs
            steps, valid = extra[..., :1], extra[..., 1:]
            if hyper_stride:
                edge = HYPER_MARGIN * hyper_stride
                rows, cols = ops.shape(y)[1], ops.shape(y)[2]
                hyper = self.codec_model.h_s(hyper)[:, edge : edge + rows, edge : edge + cols]
            else:
                hyper = hyper / float(1 << codec.ACTIVATION_BITS)
            bits, _ = self.codec_model.latent_bits(y, hyper, steps, training)
            total = ops.sum(bits * valid, axis=(1, 2, 3))
            return total / (ops.sum(valid, axis=(1, 2, 3)) * ops.shape(y)[-1])

    return LatentRate(model)


def latent_bits(rate: object, latents: Latents, step: int, train_hyper: bool = False) -> float:
    """Mean bits per element of y over whole grids, rounded as coded, at one gain step (h_s
    from ẑ with ``train_hyper``, as ``rate_model`` was built)."""
    total, count = 0.0, 0
    for y, hyper, z in latents:
        extra = np.zeros((1, *y.shape[:2], 2), np.float32)
        extra[..., 0], extra[..., 1] = step, 1.0
        if train_hyper:
            margin = ((HYPER_MARGIN, HYPER_MARGIN),) * 2 + ((0, 0),)
            hyper = np.pad(z, margin)
        bits = float(np.asarray(rate((y[None], hyper[None].astype(np.float32), extra)))[0])
        total, count = total + bits * y[..., 0].size, count + y[..., 0].size
    return total / count


def gather(config: ContextConfig, run: Path) -> tuple[Latents, Latents]:
    """Training latents (cached in the run) and evaluation latents (``config.kodak``)."""
    shipped = load(config.model)
    cache = run / LATENTS
    latents = load_latents(cache) if cache.exists() else None
    if latents is None:
        latents = []
        for i, (folder, limit) in enumerate(zip(config.data, config.limits, strict=True)):
            latents += collect(shipped, folder, limit, config.scale_range, config.seed + i)
        save_latents(cache, latents)
    evaluation = []
    if config.kodak:
        evaluation = collect(shipped, config.kodak, 8, (1.0, 1.0), config.seed)
    return latents, evaluation


#: What a run directory's state must agree on for ``train_context`` to continue it.
RESUME_KEYS = ("model", "slices", "hidden", "checkerboard", "train_hyper", "freeze_slices")


def resumed(run: Path, config: ContextConfig) -> tuple[int, float]:
    """(steps done, minutes spent) of the run ``config`` continues in ``run``: (0, 0) for a
    new one. A run directory of another configuration, or one that has done ``config.steps``
    already, is an error rather than a run overwritten."""
    if not (run / STATE).exists():
        return 0, 0.0
    state = json.loads((run / STATE).read_text())
    saved = state["config"]
    different = [k for k in RESUME_KEYS if saved.get(k) != getattr(config, k)]
    if different:
        raise ValueError(
            f"{run} holds a run with other {', '.join(different)}: give another --out "
            f"(or --init {run / CHECKPOINT} to start from its weights)"
        )
    if state["step"] >= config.steps:
        raise ValueError(
            f"{run} has done its {state['step']} steps: give more --steps to go on, or "
            f"another --out with --init {run / CHECKPOINT}"
        )
    return int(state["step"]), float(state["minutes"])


def train_context(config: ContextConfig) -> Path:
    """Train the slice transforms of ``config.model``, or go on with the run in
    ``config.out`` where it stopped (its weights, and the learning rate at its step; Adam's
    moments start again); returns the run directory."""
    import keras

    run = Path(config.out)
    run.mkdir(parents=True, exist_ok=True)
    done, minutes_before = resumed(run, config)
    latents, evaluation = gather(config, run)
    keras.utils.set_random_seed(config.seed + done)
    if done:
        log.info("continuing %s from step %d of %d", run, done, config.steps)
    model = context_model(
        config.model,
        config.slices,
        config.hidden,
        str(run / CHECKPOINT) if done else config.init,
        config.train_hyper,
        config.checkerboard,
        config.freeze_slices,
    )
    config.arch = {
        **transforms_arch(config.model),
        "slices": config.slices,
        "slice_hidden": config.hidden,
        **({"checkerboard": True} if config.checkerboard else {}),
    }
    hyper_stride = load(config.model).hyper_stride if config.train_hyper else None
    rate = rate_model(model, hyper_stride)
    low, high = config.gain_steps
    probe = sorted({low, 0, high})

    def bits(step: int, of: object = rate) -> float:
        return latent_bits(of, evaluation, step, config.train_hyper)

    # against the shipped model (as it is, or fresh slices: they code as its hyperprior)
    card = load(config.model)
    shipped = rate_model(
        context_model(
            config.model,
            card.slices or config.slices,
            card.card.arch.get("slice_hidden", config.hidden),
            checkerboard=card.checkerboard,
        ),
        hyper_stride,
    )
    baseline = {s: bits(s, shipped) for s in probe} if evaluation else {}
    schedule = keras.optimizers.schedules.CosineDecay(
        config.lr, config.steps, alpha=config.final_lr_ratio
    )
    rate.compile(
        optimizer=keras.optimizers.Adam(schedule, global_clipnorm=1.0), loss=lambda _, bits: bits
    )
    rate.optimizer.build(rate.trainable_variables)
    rate.optimizer.iterations.assign(done)  # the schedule goes on where the run stopped
    batches = (
        (inputs, np.zeros(config.batch, np.float32))
        for inputs in crops(
            latents, config.crop, config.batch, config.gain_steps, config.seed + done, hyper_stride
        )
    )
    start, epoch_steps = time.monotonic(), min(config.steps_per_epoch, config.steps - done)

    def minutes() -> float:
        return minutes_before + (time.monotonic() - start) / 60

    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            change = {s: f"{bits(s) / baseline[s] - 1:+.2%}" for s in baseline}
            log.info(
                "step %d bits/element %.4f; y bits on kodak by gain step %s (%.2f steps/s)",
                done + (epoch + 1) * epoch_steps,
                (logs or {}).get("loss", np.nan),
                change,
                (epoch + 1) * epoch_steps / (time.monotonic() - start),
            )
            # A checkpoint per epoch: a run stopped early (a session ends) keeps its progress.
            write_run(run, model, config, minutes(), done + (epoch + 1) * epoch_steps)

    rate.fit(
        batches,
        steps_per_epoch=epoch_steps,
        epochs=(config.steps - done) // epoch_steps,
        callbacks=[Report()],
        verbose=0,
        shuffle=False,  # a generator: the crops are random already
    )
    write_run(run, model, config, minutes())
    return run


def trained_note(config: ContextConfig) -> str:
    """What a context run trained, for its model card."""
    parts = [] if config.freeze_slices else ["slice transforms"]
    if config.checkerboard:
        parts.append("checkerboard spatial transforms")
    if config.train_hyper:
        parts.append("h_s")
    note = " and ".join(parts)
    return f"{note} (slice transforms of {config.init}, frozen)" if config.freeze_slices else note


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
            "note": f"{trained_note(config)}, rate of y on frozen shipped transforms "
            f"(gain steps {config.gain_steps[0]}..{config.gain_steps[1]})",
        },
        "history": init_history(init),
    }
    (run / STATE).write_text(json.dumps(state, indent=2))
