"""Channel-conditional coding: the integer slice transforms, the slice-by-slice bitstream.

The models here are the shipped kae-mid transforms with small random slice transforms added
(numpy arrays, no training), so every path of the codec runs without a trained model.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from pillow_kae import codec
from pillow_kae.entropy_models.fixed_point import (
    ACTIVATION_BITS,
    FixedPointSliceTransforms,
    FixedPointSpatialTransforms,
    dequantize_fixed,
    fraction_offset_fixed,
    inverse_gain_fixed,
    scale_indices,
)
from pillow_kae.zoo import loader
from tests.conftest import SAMPLES, psnr


def slice_arrays(
    latent_channels: int,
    slices: int,
    hidden: int,
    scale: float,
    seed: int = 0,
    checkerboard: bool = False,
) -> dict[str, np.ndarray]:
    """Random slice (and spatial) transforms; ``scale`` 0 makes the last layer zero (a fresh
    model)."""
    rng = np.random.default_rng(seed)
    c = latent_channels // slices
    arrays = {}
    for i in range(slices):
        layers = {
            "slice": [(2 * c + i * c, hidden), (hidden, hidden), (hidden, 2 * c)],
            "spatial": [(3 * c, hidden), (hidden, hidden), (hidden, 2 * c), (c, 2 * c)],
        }
        for prefix in ("slice", "spatial") if checkerboard else ("slice",):
            for j, (cin, cout) in enumerate(layers[prefix]):
                last = j >= 2  # the outputs: conv2, and the spatial transform's direct conv
                std = (scale if last else 1.0) / np.sqrt(9 * cin)
                kernel = rng.normal(0, std, (3, 3, cin, cout)).astype(np.float32)
                name = f"{prefix}{i}/{'direct' if j == 3 else f'conv{j}'}"
                arrays[f"{name}/kernel"] = kernel
                arrays[f"{name}/bias"] = np.zeros(cout, np.float32)
    return arrays


def conditional(
    scale: float, slices: int = 4, hidden: int = 8, checkerboard: bool = False
) -> loader.CodecModel:
    """kae-mid's transforms and tables with slice transforms of the given output scale."""
    base = loader.load("kae-mid")
    arch = {**base.card.arch, "slices": slices, "slice_hidden": hidden}
    if checkerboard:
        arch["checkerboard"] = True
    card = replace(base.card, kind="channel-conditional", arch=arch)
    extra = slice_arrays(base.latent_channels, slices, hidden, scale, checkerboard=checkerboard)
    return loader.CodecModel(card, {**base.arrays, **extra})


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.asarray(Image.open(SAMPLES / "coffee.png").convert("RGB"))[:150, :200]


@pytest.mark.parametrize("checkerboard", [False, True])
def test_a_fresh_slice_model_codes_like_the_hyperprior(
    pixels: np.ndarray, checkerboard: bool
) -> None:
    """Zero corrections: the same means and tables, so the very same latents and pixels."""
    plain, fresh = loader.load("kae-mid"), conditional(scale=0.0, checkerboard=checkerboard)
    for step in (-3, 0, 2):
        expected = codec.decode_image(
            plain, codec.encode_image(plain, pixels, step), 200, 150, step, codec.TILE_SIZE, 2
        )
        payloads = codec.encode_image(fresh, pixels, step)
        got = codec.decode_image(fresh, payloads, 200, 150, step, codec.TILE_SIZE, 3)
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("checkerboard", [False, True])
@pytest.mark.parametrize("tile_size", [64, 1024])
def test_slice_model_round_trip(pixels: np.ndarray, tile_size: int, checkerboard: bool) -> None:
    """Random corrections change the means and tables, not what g_s gets up to rounding."""
    # corrections of a fraction of a latent unit
    model = conditional(scale=0.1, checkerboard=checkerboard)
    plain = loader.load("kae-mid")
    reference = codec.decode_image(
        plain, codec.encode_image(plain, pixels, 0, tile_size), 200, 150, 0, tile_size, 2
    )
    payloads = codec.encode_image(model, pixels, 0, tile_size)
    assert len(payloads) == len(codec.tiles(256, 192, tile_size))
    decoded = codec.decode_image(model, payloads, 200, 150, 0, tile_size, 3)
    assert abs(psnr(decoded, pixels) - psnr(reference, pixels)) < 0.3
    again = codec.decode_image(model, payloads, 200, 150, 0, tile_size, 3)
    np.testing.assert_array_equal(decoded, again)


@pytest.mark.parametrize("tile_size", [64, 1024])
@pytest.mark.parametrize("step", [0, -1.25])
def test_the_encoders_y_hat_is_the_decoders(pixels: np.ndarray, tile_size: int, step: float):
    """The restoration fit uses the encoder's ŷ instead of decoding its own payloads again:
    it must be the decoder's, bit for bit, with and without channel slices."""
    models = [loader.load("kae-mid"), conditional(0.1), conditional(0.1, checkerboard=True)]
    for model in models:
        payloads, y_hat = codec.encode_image_latents(model, pixels, step, tile_size)
        decoded = codec._decode_latent_grid(model, payloads, 200, 150, step, tile_size)
        np.testing.assert_array_equal(y_hat, decoded)
        assert payloads == codec.encode_image(model, pixels, step, tile_size)


def test_version_2_cannot_name_a_slice_model(pixels: np.ndarray) -> None:
    model = conditional(scale=0.5)
    payloads = codec.encode_image(model, pixels, 0)
    with pytest.raises(codec.TileDecodeError, match="version 2 does not match"):
        codec.decode_image(model, payloads, 200, 150, 0, codec.TILE_SIZE, 2)


def test_version_3_needs_a_slice_model(pixels: np.ndarray) -> None:
    plain = loader.load("kae-mid")
    payloads = codec.encode_image(plain, pixels, 0)
    with pytest.raises(codec.TileDecodeError, match="without channel slices"):
        codec.decode_image(plain, payloads, 200, 150, 0, codec.TILE_SIZE, 3)


@pytest.mark.parametrize("checkerboard", [False, True])
def test_a_damaged_slice_payload_is_a_clean_error(pixels: np.ndarray, checkerboard: bool) -> None:
    model = conditional(scale=0.5, checkerboard=checkerboard)
    (payload,) = codec.encode_image(model, pixels, 0)
    cut = payload[: len(payload) // 2]
    try:
        out = codec.decode_image(model, [cut], 200, 150, 0, codec.TILE_SIZE, 3)
    except codec.TileDecodeError:
        return
    assert out.shape == (150, 200, 3)  # a range decoder may also run on past the end


def test_inverse_gain_is_fixed_integers() -> None:
    """Golden values: computed in decimal arithmetic, the same on every machine."""
    assert inverse_gain_fixed(0) == 1 << (ACTIVATION_BITS + 16)
    assert [inverse_gain_fixed(s) for s in (-10, -1, 1, 4, 63)] == [
        229720679,
        75896528,
        59338678,
        41021525,
        28836,
    ]


def test_fractions_of_a_gain_step_are_fixed_integers() -> None:
    """Golden values of version 4's fractional steps; a whole step adds nothing."""
    assert [fraction_offset_fixed(k / 16) for k in (0, 1, 8, 15)] == [0, 8, 63, 118]
    assert inverse_gain_fixed(0.5) == 63104289
    assert inverse_gain_fixed(2.0) == inverse_gain_fixed(2)


def test_fractional_gain_steps_pick_tables_between_whole_ones() -> None:
    thresholds = loader.load("kae-mid").thresholds
    log_scales = np.random.default_rng(3).integers(-6000, 7000, 5000)
    whole = {s: scale_indices(log_scales, thresholds, s) for s in (-3, 2)}
    assert np.array_equal(scale_indices(log_scales, thresholds, 2.0), whole[2])
    previous = whole[-3]
    for sixteenths in range(-47, 33):  # -2.9375 .. +2: never below the step before
        index = scale_indices(log_scales, thresholds, sixteenths / 16)
        assert np.all(index >= previous) and np.all(index - previous <= 1)
        previous = index
    assert np.array_equal(previous, whole[2])


@pytest.mark.parametrize("version", [4, 8])
def test_a_fraction_of_a_step_codes_slices(pixels: np.ndarray, version: int) -> None:
    """Versions 4 to 8 store fractions of a gain step (8 is what the writer uses)."""
    model = conditional(scale=0.5)
    payloads = codec.encode_image(model, pixels, -1.25)
    out = codec.decode_image(model, payloads, 200, 150, -1.25, codec.TILE_SIZE, version)
    assert psnr(pixels, out) > 20
    sizes = [sum(map(len, codec.encode_image(model, pixels, s))) for s in (-2, -1.25, -1)]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3


def test_dequantize_fixed_is_bounded() -> None:
    means = np.array([0, 1 << 20, -(1 << 20)], np.int64)
    symbols = np.array([(1 << 31) - 1, 5, -(1 << 31) + 1], np.int64)
    out = dequantize_fixed(means, symbols, inverse_gain_fixed(-63))
    assert np.abs(out).max() <= 1 << 20


def test_fixed_point_slices_approximate_keras() -> None:
    """The integer slice transforms track the float Keras layers they are exported from."""
    keras = pytest.importorskip("keras")
    from pillow_kae import models
    from pillow_kae.zoo.weights import assign_weights, weights_to_arrays

    arch = {"channels": 8, "latent_channels": 12, "hyper_channels": 6, "slices": 3}
    model = models.build("channel-conditional", {**arch, "slice_hidden": 8})
    arrays = weights_to_arrays(model, compact=False)
    arrays.update(slice_arrays(12, 3, 8, scale=1.0, seed=3))
    assign_weights(model, arrays)
    fixed = FixedPointSliceTransforms(arrays, 3)
    rng = np.random.default_rng(4)
    hyper = rng.normal(0, 2, (6, 7, 24))
    decoded = [rng.normal(0, 3, (6, 7, 4)) for _ in range(2)]
    scale = 1 << ACTIVATION_BITS
    for i in range(3):
        means, logs = model.slice_params(
            hyper[None].astype(np.float32), [d[None].astype(np.float32) for d in decoded[:i]], i
        )
        expected = np.concatenate([keras.ops.convert_to_numpy(t)[0] for t in (means, logs)], -1)
        hyper_i = np.concatenate(
            [hyper[..., i * 4 : i * 4 + 4], hyper[..., 12 + i * 4 :][..., :4]], -1
        )
        inputs = np.rint(np.concatenate([hyper_i, *decoded[:i]], -1) * scale).astype(np.int64)
        got = (inputs[..., :8] + fixed(i, inputs)) / scale
        assert np.abs(got - expected).max() < 0.02, i


def test_the_checkerboard_codes_anchors_first_and_conditions_the_rest_on_them(
    pixels: np.ndarray,
) -> None:
    """Each slice is two groups: the anchors with the slice's parameters, then the other
    half with parameters that depend on the decoded anchors (and only there)."""
    model = conditional(scale=0.5, checkerboard=True)
    hyper = codec._tile_hyper(model, *_z_grid_and_box(model, pixels))
    context = codec._SliceContext(model, hyper, 0)
    assert context.steps == 2 * model.slices
    anchors = context.anchors
    assert anchors[0, 0] and not anchors[0, 1] and anchors[1, 1]
    means_a, indices_a, _, positions = context.params()
    assert positions is anchors and means_a.shape == (anchors.sum(), 48)
    context.add(np.zeros(indices_a.shape, np.int64))
    means_zero, _, _, positions = context.params()
    assert np.array_equal(positions, ~anchors)
    # Other anchor symbols give other parameters for the second half.
    again = codec._SliceContext(model, hyper, 0)
    again.params()
    again.add(np.full(indices_a.shape, 3, np.int64))
    means_three, _, _, _ = again.params()
    assert means_three.shape == means_zero.shape and not np.array_equal(means_three, means_zero)


def _z_grid_and_box(
    model: loader.CodecModel, pixels: np.ndarray
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    y, z_grid = codec._latent_grids(model, pixels, codec.TILE_SIZE)
    return z_grid, (0, 0, y.shape[1] * model.stride, y.shape[0] * model.stride)


def test_fixed_point_spatial_transforms_approximate_keras() -> None:
    """The integer spatial transforms (network and direct convolution) track the Keras
    model's."""
    keras = pytest.importorskip("keras")
    from pillow_kae import models
    from pillow_kae.models.channel_conditional import anchor_mask
    from pillow_kae.zoo.weights import assign_weights, weights_to_arrays

    arch = {"channels": 8, "latent_channels": 12, "hyper_channels": 6, "slices": 3}
    model = models.build("channel-conditional", {**arch, "slice_hidden": 8, "checkerboard": True})
    arrays = weights_to_arrays(model, compact=False)
    arrays.update(slice_arrays(12, 3, 8, scale=1.0, seed=5, checkerboard=True))
    assign_weights(model, arrays)
    fixed = FixedPointSpatialTransforms(arrays, 3)
    rng = np.random.default_rng(6)
    params = rng.normal(0, 2, (1, 6, 7, 8)).astype(np.float32)
    y_hat = rng.normal(0, 3, (1, 6, 7, 4)).astype(np.float32)
    anchors = keras.ops.convert_to_numpy(anchor_mask(y_hat))
    assert anchors[0, 0, 0, 0] == 1 and anchors[0, 0, 1, 0] == 0
    scale = 1 << ACTIVATION_BITS
    for i in range(3):
        inputs = np.concatenate([params, y_hat * anchors], -1)
        expected = keras.ops.convert_to_numpy(model.spatial_transforms[i](inputs))[0]
        got = fixed(i, np.rint(inputs[0] * scale).astype(np.int64)) / scale
        assert np.abs(got - expected).max() < 0.02, i
