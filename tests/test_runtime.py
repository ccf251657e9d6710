"""The inference runtime (ONNX graphs) against the Keras models it is built from.

Tolerance: in float32, every transform of every shipped model agrees with Keras to 1e-4 of
its output's range (at least 1) on every installed runtime: summation order is all that
differs, and its error grows with the values summed (kae-xhigh's g_a reaches 67). g_s works
in [0, 1], so decoded pixels differ by at most one level from what the Keras transforms
would give. OpenVINO's bfloat16 (its choice on CPUs with AMX) is checked on decoded
pixels instead: within a few levels, far below the codec's own error.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from pillow_kae import codec, models
from pillow_kae.runtime import cache, graph, session
from pillow_kae.runtime.session import Transform
from pillow_kae.zoo import installed, loader
from pillow_kae.zoo.weights import weights_to_arrays
from tests.conftest import SAMPLES, decode, encode

TOLERANCE = 1e-4
keras = pytest.importorskip("keras")
RUNTIMES = [name for name in session.RUNTIMES if importlib.util.find_spec(name)]


def _keras(model: object, transform: str, x: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(getattr(model, transform)(x, training=False))


def _inputs(coder: loader.CodecModel, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs in each transform's working range: pixels, and latents of the model itself."""
    if coder.kind == "seed-dense":
        blocks = rng.random((3, 48, 48, 3), dtype=np.float32)
        return {"encoder": blocks, "decoder": np.rint(coder.transform("encoder")(blocks))}
    pixels = np.asarray(Image.open(SAMPLES / "astronaut.png").convert("RGB"))[:128, :192]
    x = pixels[None].astype(np.float32) / 255.0
    y = coder.transform("g_a")(x)
    return {"g_a": x, "h_a": y, "g_s": np.rint(y)}


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("name", sorted(installed()))
def test_shipped_transforms_match_keras(name: str, runtime: str) -> None:
    coder = loader.load(name)
    rng = np.random.default_rng(0)
    for transform, x in _inputs(coder, rng).items():
        expected = _keras(coder.keras_model, transform, x)
        layers = coder.card.graph[transform]
        built = graph.build(layers, coder.arrays, transform)
        shift = graph.centre(layers, transform)
        got = Transform(built, transform, runtime, precision="f32", centre=shift)(x)
        assert got.shape == expected.shape, transform
        scale = max(1.0, float(np.abs(expected).max()))
        assert np.abs(got - expected).max() <= TOLERANCE * scale, (name, transform)


def test_decoded_pixels_match_keras_synthesis(monkeypatch) -> None:
    """A whole decode through the runtime equals g_s in Keras on the same latents, ±1 level."""
    monkeypatch.setenv(session.PRECISION_ENV, "f32")
    coder = _fresh("kae-mid")
    pixels = np.asarray(Image.open(SAMPLES / "coffee.png").convert("RGB"))[:100, :150]
    y_hat = np.rint(codec.analysis_grid(coder, pixels))
    runtime = codec.synthesis(coder, y_hat, 150, 100)
    top, left = codec._centre_offsets(100, 150, coder.pad_multiple)
    x_hat = _keras(coder.keras_model, "g_s", y_hat[None])[0, top : top + 100, left : left + 150]
    expected = np.clip(np.rint(x_hat * 255.0), 0, 255)
    assert np.abs(runtime.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("kind", ["mean-scale-hyperprior", "seed-dense"])
def test_graph_of_a_tiny_model_matches_keras(kind: str, runtime: str) -> None:
    """The builder follows the layer list, not the shipped sizes: a tiny random model agrees."""
    arch = (
        {"channels": 8, "latent_channels": 12, "hyper_channels": 6}
        if kind == "mean-scale-hyperprior"
        else {"hidden": 16, "bottleneck": 10}
    )
    model = models.build(kind, arch)
    arrays = weights_to_arrays(model, compact=False)
    rng = np.random.default_rng(1)
    description = graph.describe(model, kind)
    for transform, layers in description.items():
        shape = {
            "g_a": (2, 64, 128, 3),
            "h_a": (2, 4, 8, 12),
            "g_s": (2, 4, 8, 12),
            "encoder": (2, 48, 48, 3),
            "decoder": (2, 10),
        }[transform]
        x = rng.random(shape, dtype=np.float32)
        built = graph.build(layers, arrays, transform)
        run = Transform(built, transform, runtime, "f32", graph.centre(layers, transform))
        expected = _keras(model, transform, x)
        assert np.abs(run(x) - expected).max() <= TOLERANCE, transform


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize(
    ("taps", "stride"), [(5, 2), (3, 2), (4, 2), (2, 2), (1, 2), (5, 3), (3, 1)]
)
def test_transposed_convolution_as_subpixel_convolution(runtime: str, taps: int, stride: int):
    """Any square 'same' transposed convolution, run as phases of one plain convolution."""
    layer = keras.layers.Conv2DTranspose(5, taps, strides=stride, padding="same", name="t")
    model = keras.Sequential([layer])
    model.build((None, 7, 6, 4))
    layer.bias.assign(np.random.default_rng(4).normal(size=5))
    holder = type("Holder", (), {"encoder": model, "decoder": model})()
    layers = graph.describe(holder, "seed-dense")["encoder"]
    arrays = {f"encoder/t/{v.name}": keras.ops.convert_to_numpy(v) for v in layer.weights}
    x = np.random.default_rng(5).normal(size=(2, 7, 6, 4)).astype(np.float32)
    got = Transform(graph.build(layers, arrays, "encoder"), "t", runtime, "f32")(x)
    np.testing.assert_allclose(got, _keras(model, "__call__", x), atol=1e-5)


def test_pixel_graphs_leave_the_centre_to_the_runtime() -> None:
    """g_s outputs x - 0.5 (bfloat16 keeps its rounding small there); the Transform adds
    0.5 back. seed-dense's decoder ends in a sigmoid: nothing to move."""
    hyperprior, seed = loader.load("kae-low").card.graph, loader.load("seed-dense").card.graph
    assert graph.centre(hyperprior["g_s"], "g_s") == 0.5
    assert graph.centre(hyperprior["g_a"], "g_a") == 0.0
    assert graph.centre(seed["decoder"], "decoder") == 0.0
    y = np.random.default_rng(6).normal(0, 2, (1, 3, 4, 192)).astype(np.float32)
    built = graph.build(hyperprior["g_s"], loader.load("kae-low").arrays, "g_s")
    bare = Transform(built, "g_s", "onnxruntime")(y)
    np.testing.assert_allclose(bare + 0.5, Transform(built, "g_s", "onnxruntime", centre=0.5)(y))


@pytest.mark.skipif("openvino" not in RUNTIMES, reason="OpenVINO is not installed")
def test_openvino_in_its_own_precision_decodes_within_a_level_or_two(monkeypatch) -> None:
    """bfloat16 where the CPU has AMX (else float32): a decode within 2 levels of float32
    and far closer on average (55 dB apart; the codec's own error is 25-42 dB)."""
    pixels = np.asarray(Image.open(SAMPLES / "coffee.png").convert("RGB"))[:128, :192]
    decoded = {}
    for precision in ("f32", "auto"):
        monkeypatch.setenv(session.RUNTIME_ENV, "openvino")
        monkeypatch.setenv(session.PRECISION_ENV, precision)
        coder = _fresh("kae-mid")
        y_hat = np.rint(codec.analysis_grid(loader.load("kae-mid"), pixels))
        decoded[precision] = codec.synthesis(coder, y_hat, 192, 128).astype(int)
    difference = decoded["auto"] - decoded["f32"]
    assert np.abs(difference).max() <= 2
    assert 10 * np.log10(255**2 / max(np.mean(difference**2), 1e-12)) > 50


@pytest.mark.parametrize(
    ("variable", "value"), [("KAE_RUNTIME", "tensorflow"), ("KAE_PRECISION", "int4")]
)
def test_unknown_runtime_settings_are_clear_errors(monkeypatch, variable: str, value: str):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=variable):
        Transform(b"", "g_s")


def test_describe_refuses_what_the_runtime_cannot_build() -> None:
    model = keras.Sequential([keras.layers.Conv2D(4, 3, padding="valid", name="c")])
    model.build((None, 8, 8, 3))
    holder = type("Holder", (), {"encoder": model, "decoder": model})()
    with pytest.raises(ValueError, match="'same' padding"):
        graph.describe(holder, "seed-dense")
    with pytest.raises(ValueError, match="unknown layer op"):
        graph.build([{"op": "lstm", "name": "x"}], {}, "g_s")


def test_card_without_graph_is_a_clear_error() -> None:
    coder = loader.load("kae-mid")
    bare = loader.CodecModel(replace(coder.card, graph={}), coder.arrays)
    with pytest.raises(OSError, match="no inference graph"):
        bare.transform("g_s")


def test_decoding_never_imports_tensorflow(tmp_path) -> None:
    """Open, load and save: the whole codec runs without Keras or TensorFlow."""
    path = tmp_path / "x.kae"
    image = Image.open(SAMPLES / "chelsea.png").convert("RGB").crop((0, 0, 80, 64))
    path.write_bytes(encode(image))
    code = f"""
        import io, sys
        import pillow_kae
        from PIL import Image
        im = Image.open({str(path)!r})
        im.load()
        im.save(io.BytesIO(), "KAE", quality=30)
        heavy = [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")]
        assert not heavy, heavy
        """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", "a successful decode and encode print nothing"
    assert decode(path.read_bytes()).size == (80, 64)


def _fresh(name: str = "kae-low") -> loader.CodecModel:
    """A model object with nothing built yet (``loader.load`` caches one per process)."""
    shipped = loader.load(name)
    return loader.CodecModel(shipped.card, shipped.arrays)


def test_graph_cache_serves_a_fresh_process(tmp_path, monkeypatch) -> None:
    """The second build of a transform comes from the cache, and computes the same."""
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    y = np.random.default_rng(2).normal(0, 2, (1, 4, 4, 192)).astype(np.float32)
    expected = _fresh().transform("g_s")(y)
    assert len(list(tmp_path.glob("*.onnx"))) == 1

    def no_build(*args: object) -> bytes:
        raise AssertionError("built again despite the cache")

    monkeypatch.setattr(graph, "build", no_build)
    np.testing.assert_array_equal(_fresh().transform("g_s")(y), expected)


def test_damaged_cache_entry_is_rebuilt(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    y = np.random.default_rng(3).normal(0, 2, (1, 4, 4, 192)).astype(np.float32)
    expected = _fresh().transform("g_s")(y)
    (entry,) = tmp_path.glob("*.onnx")
    entry.write_bytes(entry.read_bytes()[:1000])
    np.testing.assert_array_equal(_fresh().transform("g_s")(y), expected)


@pytest.mark.parametrize("setting", ["off", "file"])
def test_no_cache_when_off_or_unwritable(tmp_path, monkeypatch, setting: str) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    monkeypatch.setenv(cache.CACHE_ENV, "off" if setting == "off" else str(blocker / "sub"))
    y = np.zeros((1, 4, 4, 192), np.float32)
    assert _fresh().transform("g_s")(y).shape == (1, 64, 64, 3)
    assert list(tmp_path.iterdir()) == [blocker]


def test_cache_key_names_everything_that_shapes_the_graph() -> None:
    card = loader.load("kae-low").card
    layers = card.graph["g_s"]
    base = cache.key(layers, card.sha256, "g_s")
    assert base == cache.key(layers, card.sha256, "g_s")
    assert base != cache.key(layers, "0" * 64, "g_s")
    assert base != cache.key(layers[:-1], card.sha256, "g_s")
    assert base != cache.key(layers, card.sha256, "g_a")
