"""The training commands, run for real in subprocesses on tiny models and generated photos.

``train --devices 2`` runs under JAX with the host split into two XLA devices; the
channel-conditional paths (``train --arch channel-conditional``, ``context``) run on the
default backend.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pillow_kae import codec
from pillow_kae.zoo import loader
from pillow_kae.zoo.weights import load_arrays
from tests.conftest import psnr, smooth_array
from training import lineage

pytest.importorskip("jax")
pytest.importorskip("keras")
ROOT = Path(__file__).resolve().parent.parent


def _train(tmp_path: Path, devices: int, batch: int) -> subprocess.CompletedProcess[str]:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    for i in range(4):
        Image.fromarray(smooth_array(160, 160, seed=i, noise=8.0)).save(data / f"{i}.png")
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
    }
    argv = [sys.executable, "-m", "training", "train", "--data", str(data), "--lmbda", "0.01"]
    argv += ["--steps", "2", "--steps-per-epoch", "1", "--batch", str(batch), "--patch", "64"]
    argv += ["--channels", "8", "--latent-channels", "8", "--hyper-channels", "8"]
    argv += ["--workers", "1", "--devices", str(devices), "--out", str(tmp_path / "run")]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_two_steps_data_parallel_on_two_devices(tmp_path: Path) -> None:
    result = _train(tmp_path, devices=2, batch=4)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data-parallel on 2 devices" in result.stdout
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["step"] == 2 and state["config"]["devices"] == 2
    assert (tmp_path / "run" / "checkpoint.npz").stat().st_size > 0


def test_batch_must_split_over_the_devices(tmp_path: Path) -> None:
    result = _train(tmp_path, devices=2, batch=3)
    assert result.returncode != 0
    assert "does not split evenly over 2 devices" in result.stderr


def _run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training", *argv],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _photos(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    for i in range(4):
        Image.fromarray(smooth_array(160, 224, seed=i, noise=8.0)).save(folder / f"{i}.png")
    return folder


def test_channel_conditional_warm_starts_from_a_plain_hyperprior(tmp_path: Path) -> None:
    """The slice and checkerboard transforms are added at zero to a trained hyperprior, then
    trained jointly with it (the transforms trained with their context, a GPU job)."""
    data = str(_photos(tmp_path / "data"))
    common = ["--data", data, "--lmbda", "0.01", "--steps", "1", "--steps-per-epoch", "1"]
    common += ["--batch", "2", "--patch", "64", "--workers", "1"]
    common += ["--channels", "8", "--latent-channels", "8", "--hyper-channels", "8"]
    plain = _run(["train", *common, "--out", str(tmp_path / "plain")])
    assert plain.returncode == 0, plain.stderr[-3000:]
    init = str(tmp_path / "plain" / "checkpoint.npz")
    argv = ["train", *common, "--arch", "channel-conditional", "--slices", "2", "--checkerboard"]
    argv += ["--slice-hidden", "4", "--init", init, "--steps", "3", "--out", str(tmp_path / "cc")]
    result = _run(argv)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((tmp_path / "cc" / "state.json").read_text())
    assert state["config"]["kind"] == "channel-conditional"
    assert state["config"]["arch"]["slices"] == 2 and state["config"]["arch"]["checkerboard"]
    with np.load(tmp_path / "cc" / "checkpoint.npz") as arrays:
        assert arrays["slice1/conv2/kernel"].shape == (3, 3, 4, 8)
        assert arrays["spatial1/direct/kernel"].shape == (3, 3, 4, 8)
        assert np.abs(arrays["spatial1/conv2/kernel"]).max() > 0  # trained from zero
    plain_only = _run(["train", *common, "--checkerboard", "--out", str(tmp_path / "no")])
    assert plain_only.returncode != 0
    assert "--checkerboard needs --arch channel-conditional" in plain_only.stderr


def test_variable_rate_training_at_random_gain_steps(tmp_path: Path) -> None:
    data = str(_photos(tmp_path / "data"))
    argv = ["train", "--data", data, "--lmbda", "0.01", "--steps", "2", "--steps-per-epoch", "1"]
    argv += ["--batch", "2", "--patch", "64", "--workers", "1", "--gain-steps", "-3", "2"]
    argv += ["--channels", "8", "--latent-channels", "8", "--hyper-channels", "8"]
    result = _run([*argv, "--out", str(tmp_path / "run")])
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["step"] == 2 and state["config"]["gain_steps"] == [-3, 2]


def test_decoder_fine_tune_changes_g_s_alone(tmp_path: Path) -> None:
    """``--train-only g_s`` keeps the encoder and entropy model, so every file's bits stay."""
    data = str(_photos(tmp_path / "data"))
    common = ["--data", data, "--lmbda", "0.01", "--steps-per-epoch", "1", "--batch", "2"]
    common += ["--patch", "64", "--workers", "1", "--lr", "1e-2"]
    common += ["--channels", "8", "--latent-channels", "8", "--hyper-channels", "8"]
    base = _run(["train", *common, "--steps", "1", "--out", str(tmp_path / "base")])
    assert base.returncode == 0, base.stderr[-3000:]
    init = str(tmp_path / "base" / "checkpoint.npz")
    argv = ["train", *common, "--steps", "3", "--init", init, "--train-only", "g_s"]
    result = _run([*argv, "--out", str(tmp_path / "gs")])
    assert result.returncode == 0, result.stderr[-3000:]
    before, after = load_arrays(init), load_arrays(tmp_path / "gs" / "checkpoint.npz")
    changed = {key for key in before if not np.array_equal(before[key], after[key])}
    assert changed and all(key.startswith("g_s/") for key in changed), sorted(changed)
    stages = json.loads((tmp_path / "gs" / "state.json").read_text())["config"]
    assert stages["train_only"] == ["g_s"]
    wrong = _run([*argv, "--train-only", "decoder", "--out", str(tmp_path / "wrong")])
    assert wrong.returncode != 0 and "no sub-model decoder" in wrong.stderr


def test_an_encoder_fine_tune_is_measured_with_the_shipped_decoder(tmp_path: Path) -> None:
    """``--train-only g_a h_a`` from shipped weights; ``benchmarks.context`` then codes with
    the run's encoder (int8, as exported) and the shipped decoder, under its own digest,
    and puts it in its model's place on the ladder (the other models against themselves)."""
    from benchmarks.context import ladder, run_model, shipped_origin

    data = str(_photos(tmp_path / "data"))
    argv = ["train", "--data", data, "--lmbda", "0.013", "--steps", "3", "--batch", "2"]
    argv += ["--steps-per-epoch", "1", "--patch", "64", "--workers", "1", "--lr", "1e-3"]
    argv += ["--init", str(ROOT / "pillow_kae" / "weights" / "kae-mid.npz")]
    argv += ["--train-only", "g_a", "h_a", "--out", str(tmp_path / "enc")]
    result = _run(argv)
    assert result.returncode == 0, result.stderr[-3000:]
    shipped, model = run_model(tmp_path / "enc")
    assert shipped.name == "kae-mid" and model.card.sha256 != shipped.card.sha256
    decoder = [k for k in shipped.arrays if k.startswith(("g_s/", "h_s/", "tables/"))]
    for key in decoder:
        np.testing.assert_array_equal(model.arrays[key], shipped.arrays[key])
    assert not np.array_equal(model.arrays["g_a/conv3/kernel"], shipped.arrays["g_a/conv3/kernel"])
    # A run that continues it (--init its checkpoint) is still measured against kae-mid.
    more = [*argv[: argv.index("--init") + 1], str(tmp_path / "enc" / "checkpoint.npz")]
    more += ["--train-only", "g_a", "--out", str(tmp_path / "more")]
    result = _run(more)
    assert result.returncode == 0, result.stderr[-3000:]
    assert shipped_origin(tmp_path / "more") == (
        ROOT / "pillow_kae/weights/kae-mid.npz",
        ["g_a", "h_a"],
    )
    pixels = smooth_array(100, 130, seed=5, noise=4.0)
    height, width = pixels.shape[:2]
    payloads = codec.encode_image(model, pixels, 0)
    decoded = codec.decode_image(shipped, payloads, width, height, 0, codec.TILE_SIZE, 2)
    assert decoded.shape == pixels.shape and psnr(decoded, pixels) > 20
    photo = np.asarray(Image.open(ROOT / "sample_images" / "coffee.png").convert("RGB"))
    photo = photo[100:228, 200:392]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        moved = ladder([tmp_path / "enc"], [photo])
    assert math.isfinite(moved) and moved > 0  # 3 steps at 1e-3: the encoder is lost
    text = printed.getvalue()
    assert "kae-low (no run: the shipped model)" in text and "kae-xhigh (no run" in text
    assert text.count("BD-rate with the run against without: +0.00 %") == 2
    assert "kae-mid\n" in text and "share no quality range" in text
    with pytest.raises(SystemExit, match="two runs of kae-mid"):
        ladder([tmp_path / "enc", tmp_path / "enc"], [pixels])


def test_context_training_gives_a_model_that_codes(tmp_path: Path) -> None:
    """``training context`` on a shipped model: slices, then a checkerboard added to them
    (``--freeze-slices``); the second run's model codes and decodes an image."""
    data = str(_photos(tmp_path / "data"))
    argv = ["context", "--model", "kae-low", "--data", data, "--steps", "2", "--slices", "2"]
    argv += ["--hidden", "4", "--gain-steps", "-2", "1", "--out", str(tmp_path / "run")]
    result = _run(argv)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["config"]["kind"] == "channel-conditional" and state["step"] == 2
    first = tmp_path / "run" / "checkpoint.npz"
    more = [*argv[:-1], str(tmp_path / "more"), "--init", str(first)]
    result = _run([*more, "--checkerboard", "--freeze-slices"])
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((tmp_path / "more" / "state.json").read_text())
    assert state["history"][-1]["note"].startswith("slice transforms, ")  # the first run
    assert state["config"]["note"].startswith("checkerboard spatial transforms (slice")
    assert state["config"]["arch"]["checkerboard"]
    arrays = load_arrays(tmp_path / "more" / "checkpoint.npz")
    slices = load_arrays(first)
    for key, value in arrays.items():
        if key.startswith("slice"):  # frozen
            np.testing.assert_array_equal(value, slices[key])
    shipped = loader.load("kae-low")
    for key, value in shipped.arrays.items():
        if key in arrays and not key.startswith(("slice", "spatial")):  # shipped, untouched
            np.testing.assert_allclose(arrays[key], value.astype(arrays[key].dtype))
    context = {k: v for k, v in arrays.items() if k.startswith(("slice", "spatial"))}
    assert any(k.startswith("spatial1/direct") for k in context)
    card = replace(shipped.card, kind="channel-conditional", arch=state["config"]["arch"])
    model = loader.CodecModel(card, {**shipped.arrays, **context})
    pixels = smooth_array(100, 130, seed=5, noise=4.0)
    height, width = pixels.shape[:2]
    payloads = codec.encode_image(model, pixels, -1)
    decoded = codec.decode_image(model, payloads, width, height, -1, codec.TILE_SIZE, 3)
    assert decoded.shape == pixels.shape and psnr(decoded, pixels) > 25


def test_a_context_run_goes_on_where_it_stopped(tmp_path: Path) -> None:
    """The same command with more ``--steps`` continues the run in ``--out`` from its
    checkpoint (never starting it again over its progress); a finished run or one of
    another configuration is refused."""
    data = str(_photos(tmp_path / "data"))
    argv = ["context", "--model", "kae-low", "--data", data, "--slices", "2", "--hidden", "4"]
    argv += ["--gain-steps", "-2", "1", "--lr", "1e-2", "--out", str(tmp_path / "run")]
    assert _run([*argv, "--steps", "2"]).returncode == 0
    first = load_arrays(tmp_path / "run" / "checkpoint.npz")
    refused = _run([*argv, "--steps", "2"])
    assert refused.returncode == 2 and "has done its 2 steps" in refused.stderr
    refused = _run([*argv, "--steps", "4", "--checkerboard"])
    assert refused.returncode == 2 and "other checkerboard" in refused.stderr
    result = _run([*argv, "--steps", "4"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "continuing" in result.stdout and "from step 2 of 4" in result.stdout
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["step"] == 4 and state["config"]["init"] == str(loader.load("kae-low").card.path)
    second = load_arrays(tmp_path / "run" / "checkpoint.npz")
    moved = [k for k in first if k.startswith("slice") and not np.allclose(first[k], second[k])]
    assert moved


def test_context_training_of_h_s_codes_and_keeps_the_other_transforms(tmp_path: Path) -> None:
    """``training context --train-hyper``: h_s trains on the cached ẑ with the slices, every
    other transform stays the shipped one, and the run's model codes and decodes."""
    data = str(_photos(tmp_path / "data"))
    argv = ["context", "--model", "kae-low", "--data", data, "--steps", "2", "--slices", "2"]
    argv += ["--hidden", "4", "--gain-steps", "-2", "1", "--lr", "1e-2", "--train-hyper"]
    result = _run([*argv, "--out", str(tmp_path / "run")])
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["config"]["train_hyper"]
    assert state["config"]["note"].startswith("slice transforms and h_s")
    arrays = load_arrays(tmp_path / "run" / "checkpoint.npz")
    shipped = loader.load("kae-low")
    changed = {
        key
        for key, value in shipped.arrays.items()
        if key in arrays
        and not key.startswith(("slice", "spatial"))  # the run's own slices: 2, not 6
        and not np.allclose(arrays[key], value.astype(arrays[key].dtype))
    }
    assert changed and all(key.startswith("h_s/") for key in changed), sorted(changed)
    trained = {k: v for k, v in arrays.items() if k.startswith(("slice", "h_s/"))}
    card = replace(shipped.card, kind="channel-conditional", arch=state["config"]["arch"])
    model = loader.CodecModel(card, {**shipped.arrays, **trained})
    pixels = smooth_array(100, 130, seed=5, noise=4.0)
    height, width = pixels.shape[:2]
    payloads = codec.encode_image(model, pixels, -1)
    decoded = codec.decode_image(model, payloads, width, height, -1, codec.TILE_SIZE, 3)
    assert decoded.shape == pixels.shape and psnr(decoded, pixels) > 25


def _gradients(model: object, x: np.ndarray) -> dict[str, np.ndarray]:
    """d(rate + distortion)/d(every weight) of a noise-free training step, float64."""
    tf = pytest.importorskip("tensorflow")
    with tf.GradientTape() as tape:
        out = model(tf.constant(x), training=False)
        loss = tf.reduce_mean(tf.square(tf.cast(out["x_hat"], tf.float32) - x)) * 100.0
        loss += tf.reduce_mean(out["bpp"])
    grads = tape.gradient(loss, model.trainable_variables)
    weights = model.trainable_variables
    return {
        v.path.split("/", 1)[1]: np.asarray(g, np.float64)
        for v, g in zip(weights, grads, strict=True)
    }


def test_bfloat16_convolutions_follow_the_float32_gradient() -> None:
    """``--precision mixed_bfloat16`` computes the inner convolutions of g_a and g_s in
    bfloat16: a different computation (the pixels move a little), float32 weights and
    outputs, and the gradient of every weight, biases included, still that of float32."""
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the gradient is taken with TensorFlow")
    from pillow_kae import models
    from training.arithmetic import set_arithmetic

    arch = {"channels": 16, "latent_channels": 16, "hyper_channels": 8}
    x = np.stack([smooth_array(128, 128, seed=s, noise=8.0) for s in (1, 2)]) / 255.0
    x = x.astype(np.float32)
    keras.utils.set_random_seed(3)
    exact = models.build("mean-scale-hyperprior", arch)
    mixed = models.build("mean-scale-hyperprior", arch)
    mixed.set_weights(exact.get_weights())
    changed = set_arithmetic(mixed, bfloat16=True, int8=False)
    assert changed == {
        "bfloat16": ["g_a/conv1", "g_a/conv2", "g_s/deconv1", "g_s/deconv2"],
        "int8": [],
    }
    assert all(v.dtype == "float32" for v in mixed.weights)
    out_exact, out_mixed = exact(x)["x_hat"], mixed(x)["x_hat"]
    assert keras.backend.standardize_dtype(out_mixed.dtype) == "float32"
    difference = np.abs(np.asarray(out_mixed) - np.asarray(out_exact)).max()
    assert 0 < difference < 0.01
    reference, gradients = _gradients(exact, x), _gradients(mixed, x)
    for path, g in gradients.items():
        r = reference[path]
        if not r.any():  # h_a: no gradient through the rounded z of a noise-free step
            assert not g.any(), path
            continue
        cosine = float((g * r).sum() / (np.linalg.norm(g) * np.linalg.norm(r) + 1e-30))
        assert cosine > 0.99, (path, cosine)


def test_int8_kernels_compute_what_export_ships() -> None:
    """With ``--int8-kernels`` the model computes with each kernel exactly as
    ``quantize_int8`` will store it (the same pixels as the stored weights give), and the
    float weights still take the gradient."""
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the gradient is taken with TensorFlow")
    from pillow_kae import models
    from pillow_kae.zoo.weights import assign_weights, quantize_int8, weights_to_arrays
    from training.arithmetic import set_arithmetic

    arch = {"channels": 32, "latent_channels": 32, "hyper_channels": 32}
    x = (smooth_array(128, 128, seed=4, noise=8.0)[None] / 255.0).astype(np.float32)
    keras.utils.set_random_seed(5)
    trained = models.build("mean-scale-hyperprior", arch)
    changed = set_arithmetic(trained, bfloat16=False, int8=True)
    arrays = weights_to_arrays(trained, compact=False)
    stored = quantize_int8(arrays)
    assert sorted(f"{k}/kernel" for k in changed["int8"]) == sorted(
        k for k in stored if stored[k].dtype == np.int8
    )
    assert "g_a/conv0" not in changed["int8"]  # 5x5x3x32: too small to be stored as int8
    shipped = models.build("mean-scale-hyperprior", arch)
    buffer = io.BytesIO()
    np.savez(buffer, **stored)
    buffer.seek(0)
    assign_weights(shipped, load_arrays(buffer))
    plain = models.build("mean-scale-hyperprior", arch)
    plain.set_weights(trained.get_weights())
    rng = np.random.default_rng(6)
    inputs = {
        "g_a": x,
        "h_a": rng.normal(size=(1, 8, 8, 32)).astype(np.float32),
        "g_s": rng.normal(size=(1, 8, 8, 32)).astype(np.float32),
        "h_s": rng.normal(size=(1, 2, 2, 32)).astype(np.float32),
    }
    for name, value in inputs.items():
        ours = np.asarray(getattr(trained, name)(value))
        np.testing.assert_array_equal(ours, np.asarray(getattr(shipped, name)(value)))
        assert not np.array_equal(ours, np.asarray(getattr(plain, name)(value))), name
    tf = pytest.importorskip("tensorflow")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(trained.g_s(inputs["g_s"])))
    (gradient,) = tape.gradient(loss, [trained.g_s.get_layer("deconv1").kernel])
    assert np.abs(np.asarray(gradient)).max() > 0  # straight through to the float kernel


def test_training_in_mixed_bfloat16_is_recorded(tmp_path: Path) -> None:
    data = str(_photos(tmp_path / "data"))
    argv = ["train", "--data", data, "--lmbda", "0.01", "--steps", "2", "--steps-per-epoch", "1"]
    argv += ["--batch", "2", "--patch", "64", "--workers", "1", "--precision", "mixed_bfloat16"]
    argv += ["--channels", "8", "--latent-channels", "8", "--hyper-channels", "8"]
    result = _run([*argv, "--out", str(tmp_path / "run")])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "computing with bfloat16" in result.stderr + result.stdout
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["step"] == 2 and state["config"]["precision"] == "mixed_bfloat16"
    assert lineage.stage(state)["precision"] == "mixed_bfloat16"
    with np.load(tmp_path / "run" / "checkpoint.npz") as arrays:
        assert arrays["g_s/deconv1/kernel"].dtype == np.float32
