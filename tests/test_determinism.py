"""Bit-exact decoding across processes and thread settings, and the integer h_s.

The coder's table choices come from the fixed-point h_s, so the symbols a decoder reads must
equal what the encoder wrote whatever the runtime's threading settings are.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pillow_kae.entropy_models.fixed_point import (
    ACTIVATION_BITS,
    ACTIVATION_LIMIT,
    WEIGHT_BITS,
    WEIGHT_LIMIT,
    Z_LIMIT,
    FixedPointHyperSynthesis,
    IntConv,
)
from pillow_kae.zoo import card
from pillow_kae.zoo import quality as ladder
from pillow_kae.zoo.weights import load_arrays
from tests.conftest import SAMPLES

QUALITY = 62  # between two anchors: a fraction of a gain step (format version 4)
RUNTIME_KNOBS = ("KAE_NUM_THREADS",)
BLAS_KNOBS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

WORKER = textwrap.dedent(
    """
    import sys

    import numpy as np

    role = sys.argv[1]

    if role == "encode":
        import os

        # Compared below with Keras's float32 g_a and h_a: no bfloat16 runtime here.
        os.environ["KAE_PRECISION"] = "f32"
        from keras import ops
        from PIL import Image

        import pillow_kae  # noqa: F401
        from pillow_kae import codec
        from pillow_kae.zoo import loader
        from pillow_kae.zoo import quality as ladder

        source, kae_path, out_path, quality = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
        pixels = np.load(source)
        name, step = ladder.choose(int(quality))
        model = loader.load(name)
        captured = {}

        def spy(coder, key):
            original = coder.encode

            def encode(encoder, values, table_index):
                captured[key] = np.array(values)
                captured[key + "_tables"] = np.array(table_index)
                return original(encoder, values, table_index)

            coder.encode = encode

        spy(model.z_coder, "z_hat")
        spy(model.y_coder, "y")
        Image.fromarray(pixels, "RGB").save(kae_path, "KAE", quality=int(quality))

        # The same symbols again, computed step by step as codec.encode_image does for one tile.
        padded = codec._pad_centred(pixels, model.pad_multiple)
        x = padded[None].astype(np.float32) / 255.0
        net = model.keras_model
        y = net.g_a(x)
        z_hat = np.rint(ops.convert_to_numpy(net.h_a(y))[0]).astype(np.int64)
        y = ops.convert_to_numpy(y)[0].astype(np.float64)
        means, indices = codec._params(model, z_hat, step)
        g = codec.gain(step)
        symbols = model.y_coder.round(g * y - g * means, indices)
        np.savez(
            out_path,
            z_hat=captured["z_hat"],
            y=captured["y"],
            y_tables=captured["y_tables"],
            z_hat_again=z_hat,
            y_again=symbols,
            y_tables_again=indices,
        )

    elif role == "decode":
        from PIL import Image

        import pillow_kae  # noqa: F401
        from pillow_kae import codec, container
        from pillow_kae.entropy_models.coder import new_decoder
        from pillow_kae.zoo import loader

        out_prefix = sys.argv[2]
        for i, kae_path in enumerate(sys.argv[3:]):
            with open(kae_path, "rb") as f:
                kae = container.read(f)
            header = kae.header
            model = loader.load(header.model_name, header.weights_hash)
            left, top, right, bottom = codec.tiles(header.width, header.height, header.tile_size)[0]
            width, height = right - left, bottom - top
            words = np.frombuffer(kae.tiles[0], dtype="<u4").astype(np.uint32)
            multiple = model.pad_multiple
            z_shape = (
                codec._round_up(height, multiple) // multiple,
                codec._round_up(width, multiple) // multiple,
                model.hyper_channels,
            )
            decoder = new_decoder(words)
            z_hat = model.z_coder.decode(decoder, codec._channel_tables(z_shape))
            means, indices = codec._params(model, z_hat, header.step)
            symbols = model.y_coder.decode(decoder, indices)
            with Image.open(kae_path) as im:
                im.load()
                pixels = np.asarray(im)
            np.savez(
                f"{out_prefix}{i}.npz",
                z_hat=z_hat,
                y=symbols,
                y_tables=indices,
                means=means,
                pixels=pixels,
            )

    elif role == "slices":
        from dataclasses import replace

        from pillow_kae import codec
        from pillow_kae.zoo import loader

        mode, arrays_path, pixels_path, payload_path, out_path = sys.argv[2:7]
        base = loader.load("kae-mid")
        extra = dict(np.load(arrays_path))
        arch = {**base.card.arch, "slices": int(extra.pop("slices")), "slice_hidden": 8}
        if bool(extra.pop("checkerboard")):
            arch["checkerboard"] = True
        card = replace(base.card, kind="channel-conditional", arch=arch)
        model = loader.CodecModel(card, {**base.arrays, **extra})
        seen = {"values": [], "tables": []}

        def spy(name):
            original = getattr(model.y_coder, name)

            def call(coder, *args):
                out = original(coder, *args)
                values = args[0] if name == "encode" else out
                seen["values"].append(np.ravel(values).astype(np.int64))
                seen["tables"].append(np.ravel(args[-1]))
                return out

            setattr(model.y_coder, name, call)

        pixels = np.load(pixels_path)
        height, width = pixels.shape[:2]
        if mode == "encode":
            spy("encode")
            payloads = codec.encode_image(model, pixels, -1.5, 64)
            np.savez(payload_path, *[np.frombuffer(p, np.uint8) for p in payloads])
            decoded = np.zeros_like(pixels)
        else:
            spy("decode")
            with np.load(payload_path) as stored:
                payloads = [stored[f"arr_{i}"].tobytes() for i in range(len(stored.files))]
            decoded = codec.decode_image(model, payloads, width, height, -1.5, 64, 4)
        np.savez(
            out_path,
            values=np.concatenate(seen["values"]),
            tables=np.concatenate(seen["tables"]),
            pixels=decoded,
        )

    elif role == "hyper":
        from pillow_kae.entropy_models.fixed_point import FixedPointHyperSynthesis
        from pillow_kae.zoo import card
        from pillow_kae.zoo.weights import load_arrays

        name, z_path, out_path = sys.argv[2], sys.argv[3], sys.argv[4]
        h_s = FixedPointHyperSynthesis(load_arrays(card(name).path))
        np.save(out_path, h_s(np.load(z_path)))
    """
)


def _env(settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in RUNTIME_KNOBS + BLAS_KNOBS}
    if settings == "A":
        env.update(KAE_NUM_THREADS="1")
    elif settings == "blas1":
        env.update(dict.fromkeys(BLAS_KNOBS, "1"))
    return env


def _start(worker: Path, settings: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(worker), *map(str, args)],
        env=_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(*procs: subprocess.Popen[str]) -> None:
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, err[-4000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.fixture(scope="module")
def worker(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("worker") / "kae_worker.py"
    path.write_text(WORKER)
    return path


@pytest.fixture(scope="module")
def cross_process(worker, tmp_path_factory) -> dict[str, object]:
    """Encode a 128x128 image under env A and under env B, decode both files under both.

    A photo crop: the encoder fits a restoration filter to it, so the decoders' pixels go
    through the filter too.
    """
    tmp = tmp_path_factory.mktemp("determinism")
    with Image.open(SAMPLES / "chelsea.png") as im:
        pixels = np.array(im.convert("RGB").crop((300, 50, 428, 178)))
    np.save(tmp / "source.npy", pixels)
    encoders = [
        _start(
            worker,
            env,
            "encode",
            tmp / "source.npy",
            tmp / f"{env}.kae",
            tmp / f"enc{env}.npz",
            QUALITY,
        )
        for env in ("A", "B")
    ]
    _finish(*encoders)
    files = [tmp / "A.kae", tmp / "B.kae"]
    decoders = [_start(worker, env, "decode", tmp / f"dec{env}_", *files) for env in ("A", "B")]
    _finish(*decoders)
    result: dict[str, object] = {"files": {env: (tmp / f"{env}.kae").read_bytes() for env in "AB"}}
    for env in "AB":
        result[f"enc{env}"] = dict(np.load(tmp / f"enc{env}.npz"))
        for i, file_env in enumerate("AB"):
            result[f"dec{env}_{file_env}"] = dict(np.load(tmp / f"dec{env}_{i}.npz"))
    return result


@pytest.mark.parametrize("encoded_under", ["A", "B"])
def test_encoder_spy_matches_encode_image_steps(cross_process, encoded_under):
    enc = cross_process[f"enc{encoded_under}"]
    assert np.array_equal(enc["z_hat"], enc["z_hat_again"])
    assert np.array_equal(enc["y"], enc["y_again"])
    assert np.array_equal(enc["y_tables"], enc["y_tables_again"])


@pytest.mark.parametrize("encoded_under", ["A", "B"])
def test_symbols_identical_across_processes(cross_process, encoded_under):
    from pillow_kae import container

    data = cross_process["files"][encoded_under]
    # A restoration filter, of either shape a small image tries (version 8 holds both).
    kae = container.read(io.BytesIO(data))
    assert kae.header.version == container.COMPACT_VERSION and kae.restoration is not None
    enc = cross_process[f"enc{encoded_under}"]
    dec_a = cross_process[f"decA_{encoded_under}"]
    dec_b = cross_process[f"decB_{encoded_under}"]
    arch = card(ladder.choose(QUALITY)[0]).arch  # the model that quality codes with
    assert dec_a["z_hat"].shape == (2, 2, arch["hyper_channels"])
    assert dec_a["y"].shape == (8, 8, arch["latent_channels"])
    for dec in (dec_a, dec_b):
        assert np.array_equal(dec["z_hat"], enc["z_hat"].astype(np.int64))
        assert np.array_equal(dec["y"], enc["y"].astype(np.int64))
        assert np.array_equal(dec["y_tables"], enc["y_tables"])
    assert np.array_equal(dec_a["means"], dec_b["means"])


@pytest.mark.parametrize("checkerboard", [False, True])
def test_channel_conditional_symbols_identical_across_processes(
    worker, tmp_path, smooth, checkerboard
):
    """The integer slice (and spatial) transforms pick the same tables in every process and
    setting: encoded under one, decoded under two others, four tiles, gain step -1.5."""
    from tests.test_channel_conditional import slice_arrays

    arrays = slice_arrays(192, 4, 8, scale=0.3, seed=7, checkerboard=checkerboard)
    np.savez(tmp_path / "slices.npz", slices=4, checkerboard=checkerboard, **arrays)
    pixels = smooth(96, 80, 3, seed=6, noise=6.0)
    np.save(tmp_path / "pixels.npy", pixels)
    common = (tmp_path / "slices.npz", tmp_path / "pixels.npy", tmp_path / "payloads.npz")
    _finish(_start(worker, "A", "slices", "encode", *common, tmp_path / "enc.npz"))
    decoders = [
        _start(worker, env, "slices", "decode", *common, tmp_path / f"dec{env}.npz")
        for env in ("B", "blas1")
    ]
    _finish(*decoders)
    enc = np.load(tmp_path / "enc.npz")
    assert enc["values"].size == 8 * 8 * 192  # padded to 128x128: 8x8 latents in 2x2 tiles
    for env in ("B", "blas1"):
        dec = np.load(tmp_path / f"dec{env}.npz")
        assert np.array_equal(dec["values"], enc["values"]), env
        assert np.array_equal(dec["tables"], enc["tables"]), env
    pixels_b, pixels_c = (np.load(tmp_path / f"dec{e}.npz")["pixels"] for e in ("B", "blas1"))
    assert _max_difference(pixels_b, pixels_c) <= PIXEL_TOLERANCE


# The symbols are exact everywhere; pixels come from the float g_s, whose rounding may
# differ with threads or oneDNN kernels: at most this many levels per channel.
PIXEL_TOLERANCE = 1


def _max_difference(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape and a.shape[2] == 3
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


@pytest.mark.parametrize("encoded_under", ["A", "B"])
def test_decoded_pixels_agree_across_settings(cross_process, encoded_under):
    dec_a = cross_process[f"decA_{encoded_under}"]
    dec_b = cross_process[f"decB_{encoded_under}"]
    assert _max_difference(dec_a["pixels"], dec_b["pixels"]) <= PIXEL_TOLERANCE


def test_files_decode_in_this_process_like_in_subprocesses(cross_process, kae_decode):
    for env in "AB":
        pixels = np.asarray(kae_decode(cross_process["files"][env]))
        for decoder_env in "AB":
            reference = cross_process[f"dec{decoder_env}_{env}"]["pixels"]
            assert _max_difference(pixels, reference) <= PIXEL_TOLERANCE


# --------------------------------------------------------------------------
# The integer h_s


def _reference_conv(layer: IntConv, x: np.ndarray) -> np.ndarray:
    """IntConv in pure int64 arithmetic (no floats, no BLAS)."""
    kernel = layer.kernel.astype(np.int64)
    assert np.array_equal(kernel.astype(np.float64), layer.kernel)  # holds integers
    k = kernel.shape[0]
    pad = k // 2
    height, width, _ = x.shape
    padded = np.pad(x.astype(np.int64), ((pad, pad), (pad, pad), (0, 0)))
    acc = np.zeros((height, width, kernel.shape[3]), dtype=np.int64)
    for dy in range(k):
        for dx in range(k):
            patch = padded[dy : dy + height, dx : dx + width]
            acc += np.einsum("hwc,co->hwo", patch, kernel[dy, dx], dtype=np.int64)
    total = acc + layer.bias
    out = (total + (1 << (WEIGHT_BITS - 1))) >> WEIGHT_BITS
    if layer.relu:
        out = np.maximum(out, 0)
    out = np.clip(out, -ACTIVATION_LIMIT, ACTIVATION_LIMIT)
    b = layer.block
    if b > 1:
        c = out.shape[-1] // (b * b)
        out = out.reshape(height, width, b, b, c).transpose(0, 2, 1, 3, 4)
        out = out.reshape(height * b, width * b, c)
    return out


@pytest.mark.parametrize("block,relu", [(1, False), (1, True), (2, True), (2, False)])
@pytest.mark.parametrize("extreme", [False, True], ids=["random", "extreme"])
def test_int_conv_matches_integer_reference(block, relu, extreme):
    rng = np.random.default_rng(block * 10 + relu + 100 * extreme)
    k, cin, cout = 3, 24, 8 * block * block
    if extreme:  # every product at the largest magnitude the format allows
        kernel = rng.choice([-WEIGHT_LIMIT, WEIGHT_LIMIT], (k, k, cin, cout))
        x = rng.choice([-ACTIVATION_LIMIT, ACTIVATION_LIMIT], (5, 6, cin))
    else:
        kernel = rng.integers(-WEIGHT_LIMIT, WEIGHT_LIMIT + 1, (k, k, cin, cout))
        x = rng.integers(-ACTIVATION_LIMIT, ACTIVATION_LIMIT + 1, (5, 6, cin))
    bias = rng.integers(-(1 << 30), 1 << 30, cout)
    layer = IntConv(kernel.astype(np.float64), bias.astype(np.int64), block, relu)
    out = layer(x)
    assert out.dtype == np.int64
    assert out.shape == (5 * block, 6 * block, cout // (block * block))
    assert np.array_equal(out, _reference_conv(layer, x))


def test_int_conv_rejects_inexact_layers():
    with pytest.raises(ValueError, match="weight"):
        IntConv(np.full((1, 1, 1, 1), WEIGHT_LIMIT + 1.0), np.zeros(1, np.int64), 1, False)
    cin = 1 << 15  # 9 * 2**15 * 2**15 * 2**20 > 2**53
    with pytest.raises(ValueError, match="exact"):
        IntConv(np.zeros((3, 3, cin, 1)), np.zeros(1, np.int64), 1, False)


@pytest.fixture(scope="module")
def mid_arrays() -> dict[str, np.ndarray]:
    return load_arrays(card("kae-mid").path)


@pytest.fixture(scope="module")
def random_z() -> np.ndarray:
    rng = np.random.default_rng(3)
    z = rng.integers(-6, 7, (2, 3, 128))
    z[0, 0, :4] = [Z_LIMIT + 50, -Z_LIMIT - 50, Z_LIMIT, -Z_LIMIT]  # clipped on entry
    return z


def test_hyper_synthesis_matches_integer_reference(mid_arrays, random_z):
    h_s = FixedPointHyperSynthesis(mid_arrays)
    out = h_s(random_z)
    assert out.shape == (8, 12, 2 * 192)
    x = np.clip(random_z, -Z_LIMIT, Z_LIMIT).astype(np.int64) << ACTIVATION_BITS
    for layer in h_s.layers:
        x = _reference_conv(layer, x)
    assert np.array_equal(out, x)


def test_hyper_synthesis_same_with_one_blas_thread(worker, tmp_path, mid_arrays, random_z):
    np.save(tmp_path / "z.npy", random_z)
    proc = _start(worker, "blas1", "hyper", "kae-mid", tmp_path / "z.npy", tmp_path / "out.npy")
    _finish(proc)
    one_thread = np.load(tmp_path / "out.npy")
    assert np.array_equal(one_thread, FixedPointHyperSynthesis(mid_arrays)(random_z))


def test_hyper_synthesis_approximates_float_model(random_z):
    """The integer port computes the trained h_s (same padding and depth-to-space order)."""
    from keras import ops

    from pillow_kae.entropy_models.fixed_point import scale_indices
    from pillow_kae.zoo import loader

    model = loader.load("kae-mid")
    z = np.clip(random_z, -8, 8)
    fixed = model.hyper_synthesis(z)
    float_out = ops.convert_to_numpy(model.keras_model.h_s(z[None].astype(np.float32)))[0]
    assert np.abs(fixed / (1 << ACTIVATION_BITS) - float_out).max() < 0.25
    m = model.latent_channels
    exact = scale_indices(fixed[..., m:], model.thresholds)
    approx = np.searchsorted(model.thresholds / (1 << ACTIVATION_BITS), float_out[..., m:], "right")
    assert np.abs(exact - approx).max() <= 1
