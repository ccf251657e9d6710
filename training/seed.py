"""Reproduce the blog's experiment: the dense autoencoder on 48x48 cat thumbnails.

As the blog did: every photo resized to 48x48 (whole image, aspect ignored), 90/10 split,
Adam(1e-3), MSE, batch 256, a float bottleneck (no quantization). It reported val MSE 0.035
after 2 epochs and pictures at MSE 0.011; ``reproduce_blog`` logs the val MSE per epoch and
writes a run directory that ``export`` and ``train --init`` understand.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from pillow_kae import models
from pillow_kae.models.seed_dense import BLOCK
from pillow_kae.zoo.weights import save_weights
from training.data import list_images, parallel_map
from training.lineage import CHECKPOINT, STATE
from training.train import rate_loss

log = logging.getLogger(__name__)


def _thumbnail(path: str) -> np.ndarray:
    with Image.open(path) as im:
        small = im.convert("RGB").resize((BLOCK, BLOCK), Image.Resampling.LANCZOS)
        return np.asarray(small, dtype=np.uint8)


def load_thumbnails(folders: list[str], workers: int = 1) -> np.ndarray:
    """(N, 48, 48, 3) float32 in [0, 1]: each photo squeezed to 48x48."""
    paths = [str(p) for p in list_images(folders)]
    thumbs = parallel_map(_thumbnail, paths, workers)
    return np.stack(thumbs).astype(np.float32) / 255.0


def reproduce_blog(
    data: list[str],
    out: str | Path,
    epochs: int = 2,
    hidden: int = 3456,
    batch: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    workers: int = 1,
) -> dict:
    """Train the blog's model; returns {epoch: val MSE} and writes the run directory."""
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    images = load_thumbnails(data, workers)
    order = np.random.default_rng(seed).permutation(len(images))
    split = int(0.9 * len(images))
    train, valid = images[order[:split]], images[order[split:]]
    log.info("blog split: %d train, %d validation thumbnails", len(train), len(valid))

    arch = {"hidden": hidden, "quantized": False}
    model = models.build("seed-dense", arch)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss={"x_hat": "mse", "bpp": rate_loss},
        loss_weights={"x_hat": 1.0, "bpp": 0.0},
    )
    zeros_t, zeros_v = np.zeros(len(train), np.float32), np.zeros(len(valid), np.float32)
    history = model.fit(
        train,
        {"x_hat": train, "bpp": zeros_t},
        validation_data=(valid, {"x_hat": valid, "bpp": zeros_v}),
        batch_size=batch,
        epochs=epochs,
        verbose=0,
    )
    val = [float(v) for v in history.history["val_x_hat_loss"]]
    tr = [float(v) for v in history.history["x_hat_loss"]]
    for epoch, (t, v) in enumerate(zip(tr, val, strict=True), start=1):
        log.info("epoch %d: train MSE %.4f, val MSE %.4f (blog: 0.035 after 2)", epoch, t, v)
    save_weights(model, run / CHECKPOINT)
    steps = epochs * -(-len(train) // batch)
    config = {
        "data": data,
        "lmbda": 0.0,
        "kind": "seed-dense",
        "arch": {"hidden": hidden},
        "batch": batch,
        "patch": BLOCK,
        "blog": {"train_mse": tr, "val_mse": val, "epochs": epochs},
    }
    (run / STATE).write_text(json.dumps({"step": steps, "config": config}, indent=2))
    return {"train_mse": tr, "val_mse": val}
