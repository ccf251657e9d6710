"""Channel-conditional entropy model on frozen transforms: latents once, then rate-only training.

The slice transforms only change how ŷ is coded, not g_a/g_s/h_a/h_s. So the shipped
transforms run once per training photo (ONNX Runtime, as the codec runs them), and what is
kept is y and the integer h_s output the decoder will see. Training then optimizes the bits
of ŷ alone on those arrays, at random gain steps, hundreds of times cheaper than training
the whole codec: this is what a CPU can do in a session.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pillow_kae import codec
from pillow_kae.zoo.loader import CodecModel

from training.data import list_images, load_images

log = logging.getLogger(__name__)


def image_latents(model: CodecModel, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y, h_s output) of one image coded as one tile: float32 and int32 (units of 2^-10)."""
    y = codec.analysis_grid(model, pixels)
    z = np.rint(model.transform("h_a")(y[None])[0]).astype(np.int64)
    hyper = model.hyper_synthesis(z)
    return y, hyper.astype(np.int32)


def collect(
    model: CodecModel,
    dirs: Sequence[str | Path],
    limit: int | None,
    scale_range: tuple[float, float],
    seed: int,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Latents of (up to ``limit`` random) photos of ``dirs``, each downscaled once."""
    paths = list_images(dirs)
    rng = np.random.default_rng(seed)
    if limit is not None and limit < len(paths):
        paths = [paths[i] for i in sorted(rng.choice(len(paths), limit, replace=False))]
    images = load_images(paths, min_side=64, scale_range=scale_range, seed=seed)
    return [image_latents(model, im) for im in tqdm(images, desc="latents", unit="img")]


def save_latents(path: Path, latents: list[tuple[np.ndarray, np.ndarray]]) -> None:
    arrays = {}
    for i, (y, hyper) in enumerate(latents):
        arrays[f"y{i}"], arrays[f"h{i}"] = y, hyper
    np.savez(path, **arrays)


def load_latents(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    with np.load(path) as data:
        count = len(data.files) // 2
        return [(data[f"y{i}"], data[f"h{i}"]) for i in range(count)]


def crops(
    latents: Sequence[tuple[np.ndarray, np.ndarray]],
    size: int,
    batch: int,
    steps: tuple[int, int],
    seed: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Endless (y, hyper, gain step) batches of ``size`` x ``size`` latent crops.

    Smaller grids are zero-padded at the bottom right with hyper outputs of zero; the
    ``valid`` mask is folded into the gain-step array's companion (see ``mask``)."""
    rng = np.random.default_rng(seed)
    m = latents[0][0].shape[-1]
    while True:
        ys = np.zeros((batch, size, size, m), np.float32)
        hs = np.zeros((batch, size, size, 2 * m), np.float32)
        valid = np.zeros((batch, size, size, 1), np.float32)
        for b in range(batch):
            y, hyper = latents[rng.integers(len(latents))]
            top = rng.integers(max(y.shape[0] - size, 0) + 1)
            left = rng.integers(max(y.shape[1] - size, 0) + 1)
            yc = y[top : top + size, left : left + size]
            hc = hyper[top : top + size, left : left + size]
            if rng.random() < 0.5:
                yc, hc = yc[:, ::-1], hc[:, ::-1]
            ys[b, : yc.shape[0], : yc.shape[1]] = yc
            hs[b, : hc.shape[0], : hc.shape[1]] = hc
            valid[b, : yc.shape[0], : yc.shape[1]] = 1.0
        gain_steps = rng.integers(steps[0], steps[1] + 1, size=(batch, 1, 1, 1))
        yield ys, hs, np.concatenate([np.broadcast_to(gain_steps, valid.shape), valid], -1)


def context_model(name: str, slices: int, hidden: int) -> object:
    """A channel-conditional model around the shipped ``name``'s transforms, frozen."""
    from pillow_kae.models.channel_conditional import ChannelConditionalHyperprior
    from pillow_kae.zoo.loader import load

    shipped = load(name)
    model = ChannelConditionalHyperprior(slices=slices, slice_hidden=hidden, **shipped.card.arch)
    model.build()
    for part in (model.g_a, model.g_s, model.h_a, model.h_s, model.entropy_bottleneck):
        for variable in part.weights:
            key = variable.path.split("/", 1)[1]
            variable.assign(shipped.arrays[key].astype(variable.dtype))
        part.trainable = False
    return model


def rate_model(model: object) -> object:
    """Keras model: (y, hyper, [gain step, valid]) -> mean bits per valid latent element."""
    import keras
    from keras import ops

    class ContextRate(keras.Model):
        def __init__(self, codec_model: object) -> None:
            super().__init__()
            self.codec_model = codec_model

        def call(self, inputs: tuple, training: bool = False) -> object:
            y, hyper, extra = inputs
            steps, valid = extra[..., :1], extra[..., 1:]
            bits, _ = self.codec_model.latent_bits(y, hyper / 1024.0, steps, training)
            total = ops.sum(bits * valid, axis=(1, 2, 3))
            return total / (ops.sum(valid, axis=(1, 2, 3)) * ops.shape(y)[-1])

    return ContextRate(model)


def evaluate(rate: object, latents: Sequence[tuple[np.ndarray, np.ndarray]], step: int) -> float:
    """Mean bits per latent element over whole grids (rounded, as coded) at one gain step."""
    total, count = 0.0, 0
    for y, hyper in latents:
        extra = np.zeros((1, *y.shape[:2], 2), np.float32)
        extra[..., 0], extra[..., 1] = step, 1.0
        bits = float(np.asarray(rate((y[None], hyper[None].astype(np.float32), extra)))[0])
        total, count = total + bits * y[..., 0].size, count + y[..., 0].size
    return total / count


def train_context(
    name: str,
    latents: Sequence[tuple[np.ndarray, np.ndarray]],
    kodak: Sequence[tuple[np.ndarray, np.ndarray]],
    slices: int,
    hidden: int,
    steps: int,
    gain_steps: tuple[int, int],
    batch: int = 16,
    crop: int = 16,
    lr: float = 1e-3,
    epoch: int = 200,
) -> object:
    import keras

    model = context_model(name, slices, hidden)
    rate = rate_model(model)
    baseline = {s: evaluate(rate, kodak, s) for s in (gain_steps[0], 0, gain_steps[1])}
    log.info("baseline bits/element on kodak: %s", baseline)
    schedule = keras.optimizers.schedules.CosineDecay(lr, steps, alpha=0.05)
    rate.compile(
        optimizer=keras.optimizers.Adam(schedule, global_clipnorm=1.0),
        loss=lambda _, bits: bits,
    )
    batches = ((inputs, np.zeros(batch, np.float32)) for inputs in _as_inputs(
        crops(latents, crop, batch, gain_steps)))

    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, e: int, logs: dict | None = None) -> None:
            now = {s: evaluate(rate, kodak, s) for s in baseline}
            log.info(
                "step %d loss %.4f kodak %s",
                (e + 1) * epoch,
                (logs or {}).get("loss", float("nan")),
                {s: f"{now[s] / baseline[s] - 1:+.2%}" for s in now},
            )

    rate.fit(batches, steps_per_epoch=epoch, epochs=steps // epoch, callbacks=[Report()],
             verbose=0)
    return model


def _as_inputs(batches: Iterator) -> Iterator:
    for y, hyper, extra in batches:
        yield (y, hyper, extra)
