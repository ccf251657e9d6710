"""Integer coding tables and the range coder that uses them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pillow_kae.entropy_models import rounding
from pillow_kae.entropy_models.coder import VALUE_LIMIT, TableCoder, new_decoder, new_encoder
from pillow_kae.entropy_models.tables import (
    ESCAPE_MIN_MASS,
    GAUSSIAN_TAIL_SIGMAS,
    TOTAL,
    PmfTables,
    gaussian_tables,
    quantize_pmf,
    stack_tables,
)


def _payload(encode_steps) -> np.ndarray:
    """Run encode steps on a fresh encoder; return the words as a decoder gets them from a file."""
    encoder = new_encoder()
    for coder, values, index in encode_steps:
        coder.encode(encoder, values, index)
    data = np.asarray(encoder.get_compressed(), dtype="<u4").tobytes()
    return np.frombuffer(data, dtype="<u4").astype(np.uint32)


def _roundtrip(coder: TableCoder, values: np.ndarray, index: np.ndarray) -> np.ndarray:
    decoder = new_decoder(_payload([(coder, values, index)]))
    return coder.decode(decoder, index)


@pytest.fixture(scope="module")
def small_tables() -> PmfTables:
    gauss = np.exp(-0.5 * (np.arange(-4, 5) / 1.5) ** 2)
    pmfs = [
        gauss / gauss.sum() * 0.97,  # some tail mass for the escape
        np.array([1.0]),  # a single regular symbol
        np.full(20, 1 / 20),  # uniform, escape gets the minimum mass
        np.array([0.5, 0.0, 0.0, 0.5]),  # zero-probability entries stay codable
        np.array([1e-9, 1.0 - 1e-9]),
    ]
    return stack_tables([-4, 7, -10, 1000, -(2**20)], pmfs)


def _edge_values(tables: PmfTables) -> tuple[np.ndarray, np.ndarray]:
    """For every table: its first/last regular value, one outside each end, 0, +-limit."""
    values, index = [], []
    for k in range(len(tables)):
        lo = int(tables.offsets[k])
        hi = lo + int(tables.lengths[k]) - 1
        edge = [lo, hi, lo - 1, hi + 1, 0, VALUE_LIMIT, -VALUE_LIMIT, lo - 2**20, hi + 2**20]
        values += edge
        index += [k] * len(edge)
    return np.array(values, dtype=np.int64), np.array(index, dtype=np.int64)


def test_roundtrip_random_values_and_escapes(small_tables):
    rng = np.random.default_rng(0)
    coder = TableCoder(small_tables)
    n = 3000
    index = rng.integers(0, len(small_tables), n)
    centre = small_tables.offsets[index] + small_tables.lengths[index] // 2
    values = centre + np.rint(rng.normal(0, 3, n)).astype(np.int64)
    huge = rng.random(n) < 0.05
    values[huge] = rng.integers(-VALUE_LIMIT, VALUE_LIMIT, huge.sum(), endpoint=True)
    edge_values, edge_index = _edge_values(small_tables)
    values = np.concatenate([values, edge_values])
    index = np.concatenate([index, edge_index])
    order = rng.permutation(values.size)
    values, index = values[order].reshape(-1, 7), index[order].reshape(-1, 7)
    decoded = _roundtrip(coder, values, index)
    assert decoded.shape == values.shape
    assert decoded.dtype == np.int64
    assert np.array_equal(decoded, values)


def test_roundtrip_every_shipped_gaussian_table():
    from pillow_kae.entropy_models.gaussian_conditional import scale_table

    tables = gaussian_tables(scale_table())
    values, index = _edge_values(tables)
    assert np.array_equal(_roundtrip(TableCoder(tables), values, index), values)


def test_float_symbols_roundtrip(small_tables):
    # codec.encode_image hands the coder float64 symbols from np.rint.
    values = np.array([-3.0, 0.0, 4.0, 2.0**31 - 1, -(2.0**31 - 1), 12345.0])
    index = np.array([0, 0, 0, 2, 3, 4])
    decoded = _roundtrip(TableCoder(small_tables), values, index)
    assert np.array_equal(decoded, values.astype(np.int64))


def test_values_beyond_limit_are_clipped(small_tables):
    values = np.array([2**40, -(2**40), VALUE_LIMIT + 1, -VALUE_LIMIT - 1], dtype=np.int64)
    index = np.zeros(4, dtype=np.int64)
    decoded = _roundtrip(TableCoder(small_tables), values, index)
    assert decoded.tolist() == [VALUE_LIMIT, -VALUE_LIMIT, VALUE_LIMIT, -VALUE_LIMIT]


def test_huge_float_values_clip_with_their_sign(small_tables):
    values = np.array([1e19, -1e19, 5e18])
    index = np.zeros(3, dtype=np.int64)
    with np.errstate(invalid="ignore"):
        decoded = _roundtrip(TableCoder(small_tables), values, index)
    assert decoded.tolist() == [VALUE_LIMIT, -VALUE_LIMIT, VALUE_LIMIT]


def test_two_coders_share_one_stream(small_tables):
    """As in a tile: z with one coder, then y with another, decoded in the same order."""
    from pillow_kae.entropy_models.gaussian_conditional import scale_table

    rng = np.random.default_rng(1)
    z_coder = TableCoder(small_tables)
    y_coder = TableCoder(gaussian_tables(scale_table()[::8]))
    z = rng.integers(-6, 6, (3, 4, 5))
    z_index = np.broadcast_to(np.arange(5), z.shape)
    y = rng.integers(-40, 40, (6, 8, 8))
    y_index = rng.integers(0, 8, y.shape)
    words = _payload([(z_coder, z, z_index), (y_coder, y, y_index)])
    decoder = new_decoder(words)
    assert np.array_equal(z_coder.decode(decoder, z_index), z)
    assert np.array_equal(y_coder.decode(decoder, y_index), y)


def test_empty_input(small_tables):
    coder = TableCoder(small_tables)
    empty = np.zeros((0, 3), dtype=np.int64)
    assert _roundtrip(coder, empty, empty).shape == (0, 3)


@pytest.mark.parametrize("bad", [-1, 5])
def test_table_index_out_of_range(small_tables, bad):
    coder = TableCoder(small_tables)
    index = np.array([0, bad])
    with pytest.raises(ValueError, match="table index"):
        coder.encode(new_encoder(), np.zeros(2, dtype=np.int64), index)
    with pytest.raises(ValueError, match="table index"):
        coder.decode(new_decoder(np.zeros(2, dtype=np.uint32)), index)


# --------------------------------------------------------------------------
# quantize_pmf


def _check_quantized(pmf: np.ndarray) -> np.ndarray:
    freqs = quantize_pmf(pmf)
    assert freqs.dtype == np.int32
    assert freqs.shape == (len(pmf) + 1,)
    assert int(freqs.sum(dtype=np.int64)) == TOTAL
    assert freqs.min() >= 1
    return freqs


@pytest.mark.parametrize(
    "pmf",
    [
        np.array([1.0]),
        np.array([0.0, 0.0, 1.0, 0.0, 0.0]),  # all mass in one bin
        np.eye(1, 300, 150)[0],
        np.full(7, 1e-12),  # tiny: almost everything escapes
        np.zeros(4),
        np.array([0.6, 0.7, 0.9]),  # sums to more than 1
        np.array([3.0, 5.0]),
        np.array([-0.5, 1.0, np.nextafter(0, 1)]),  # negative entries count as 0
        np.full(1000, 1 / 1000),
        np.full(TOTAL - 1, 1 / (TOTAL - 1)),  # the most entries a table can have
    ],
    ids=[
        "single",
        "one-hot",
        "one-hot-300",
        "tiny",
        "zeros",
        "sum>1",
        "sum>>1",
        "negative",
        "uniform-1000",
        "uniform-65535",
    ],
)
def test_quantize_pmf_edge_cases(pmf):
    _check_quantized(pmf)


def test_quantize_pmf_tracks_probabilities():
    pmf = np.array([0.1, 0.2, 0.3, 0.35])  # tail 0.05
    freqs = _check_quantized(pmf)
    assert np.allclose(freqs / TOTAL, [0.1, 0.2, 0.3, 0.35, 0.05], atol=2 / TOTAL)


def test_quantize_pmf_escape_minimum():
    freqs = _check_quantized(np.array([0.25, 0.25, 0.25, 0.25]))
    assert freqs[-1] >= int(ESCAPE_MIN_MASS * TOTAL) - 1


def test_quantize_pmf_too_many_entries_is_an_error():
    code = textwrap.dedent(
        """
        import numpy as np
        from pillow_kae.entropy_models.tables import TOTAL, quantize_pmf
        try:
            quantize_pmf(np.full(TOTAL, 1.0 / TOTAL))
        except ValueError:
            raise SystemExit(0)
        raise SystemExit(1)
        """
    )
    try:
        # A hang guard, not a timing: generous for a loaded CI machine.
        result = subprocess.run([sys.executable, "-c", code], timeout=300, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("quantize_pmf did not return for a pmf of 2**16 entries")
    assert result.returncode == 0


# --------------------------------------------------------------------------
# PmfTables


def _valid_arrays() -> dict[str, np.ndarray]:
    return {
        "offsets": np.array([0, -2], dtype=np.int32),
        "lengths": np.array([2, 3], dtype=np.int32),
        "freqs": np.array([[TOTAL - 2, 1, 1, 0], [1, 1, 1, TOTAL - 3]], dtype=np.int32),
    }


def test_pmf_tables_valid():
    tables = PmfTables(**_valid_arrays())
    assert len(tables) == 2
    assert tables.table(0).tolist() == [TOTAL - 2, 1, 1]
    again = PmfTables.from_arrays(tables.to_arrays("t"), "t")
    assert np.array_equal(again.freqs, tables.freqs)


def _broken(field: str, value: object) -> dict[str, np.ndarray]:
    arrays = _valid_arrays()
    arrays[field] = np.asarray(value, dtype=np.int32)
    return arrays


@pytest.mark.parametrize(
    "arrays",
    [
        _broken("offsets", [0, 1, 2]),  # three offsets, two tables
        _broken("lengths", [2]),
        _broken("freqs", [TOTAL - 2, 1, 1, 0]),  # 1-D
        _broken("lengths", [0, 3]),  # empty table
        _broken("lengths", [2, 4]),  # escape would not fit
        _broken("freqs", [[TOTAL - 1, 0, 1, 0], [1, 1, 1, TOTAL - 3]]),  # zero inside
        _broken("freqs", [[TOTAL - 3, 1, 1, 1], [1, 1, 1, TOTAL - 3]]),  # nonzero padding
        _broken("freqs", [[TOTAL - 1, 1, 1, 0], [1, 1, 1, TOTAL - 3]]),  # sum too big
        _broken("freqs", [[TOTAL, -1, 1, 0], [1, 1, 1, TOTAL - 3]]),  # negative
    ],
    ids=[
        "offsets-shape",
        "lengths-shape",
        "freqs-1d",
        "zero-length",
        "too-long",
        "zero-freq",
        "padding",
        "sum",
        "negative",
    ],
)
def test_pmf_tables_rejects_bad_arrays(arrays):
    with pytest.raises(ValueError):
        PmfTables(**arrays)


# --------------------------------------------------------------------------
# Gaussian tables


def test_gaussian_tables_of_the_scale_table():
    from pillow_kae.entropy_models.gaussian_conditional import SCALE_LEVELS, scale_table

    scales = scale_table()
    tables = gaussian_tables(scales)
    assert len(tables) == SCALE_LEVELS
    assert np.all(tables.freqs.sum(axis=1, dtype=np.int64) == TOTAL)
    radius = np.array([max(1, int(np.ceil(GAUSSIAN_TAIL_SIGMAS * s))) for s in scales])
    assert np.array_equal(tables.offsets, -radius)
    assert np.array_equal(tables.lengths, 2 * radius + 1)
    for k in range(len(tables)):
        table = tables.table(k)
        assert table.min() >= 1
        regular = table[:-1]
        centre = int(radius[k])
        assert int(regular.max()) - int(regular[centre]) <= 1  # peak at 0, up to rounding
        assert abs(int(regular[0]) - int(regular[-1])) <= 1  # symmetric up to rounding
    # Wider scales spread the mass: the probability of 0 falls along the table.
    assert np.all(np.diff(tables.freqs[np.arange(len(tables)), radius]) <= 0)


def test_shipped_tables_match_the_export():
    """The y tables and thresholds in every weights file are what the exporter computes."""
    from pillow_kae.entropy_models.fixed_point import log_scale_thresholds_fixed
    from pillow_kae.entropy_models.gaussian_conditional import log_scale_thresholds, scale_table
    from pillow_kae.zoo import installed, loader

    expected = gaussian_tables(scale_table())
    thresholds = log_scale_thresholds_fixed(log_scale_thresholds())
    for model_card in installed().values():
        arrays = loader.load(model_card.name).arrays  # a delta model's with its base's
        PmfTables.from_arrays(arrays, "tables/z")  # validated on construction
        if model_card.kind == "seed-dense":  # one factorized prior, no y tables
            continue
        shipped = PmfTables.from_arrays(arrays, "tables/y")
        assert np.array_equal(shipped.freqs, expected.freqs), model_card.name
        assert np.array_equal(shipped.offsets, expected.offsets)
        assert np.array_equal(shipped.lengths, expected.lengths)
        assert np.array_equal(arrays["tables/log_scale_thresholds"], thresholds)


# --------------------------------------------------------------------------
# The format relies on constriction's exact behaviour (pinned in pyproject.toml): a stream
# written today must decode to the same symbols, and the same symbols must give the same words.


def _golden_tables() -> PmfTables:
    freqs = np.zeros((2, 6), dtype=np.int32)
    freqs[0, :4] = [30000, 20000, 15000, 536]
    freqs[1, :6] = [1, 2, 60000, 5000, 500, 33]
    return PmfTables(
        offsets=np.array([0, -2], dtype=np.int32),
        lengths=np.array([3, 5], dtype=np.int32),
        freqs=freqs,
    )


GOLDEN_VALUES = [0, 1, 2, 0, 7, -2, 0, 1, 2, -1, 0, 0, -300, 2, 1, 0, 0, 1]
GOLDEN_TABLES = [0, 0, 0, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1, 0, 1, 1, 0, 0]
GOLDEN_WORDS = [1494386054, 218301230, 3732055121, 1159142888, 1331179264]  # constriction 0.5.0


def test_constriction_stream_is_stable():
    coder = TableCoder(_golden_tables())
    encoder = new_encoder()
    coder.encode(encoder, np.array(GOLDEN_VALUES), np.array(GOLDEN_TABLES))
    words = [int(w) for w in encoder.get_compressed()]
    assert words == GOLDEN_WORDS
    decoded = coder.decode(new_decoder(np.array(GOLDEN_WORDS, np.uint32)), np.array(GOLDEN_TABLES))
    assert decoded.tolist() == GOLDEN_VALUES


# -- rate-distortion optimised rounding (the encoder's choice of integers) -------------------


def _cost(tables: PmfTables, k: int, q: float, r: float) -> float:
    entry = q - tables.offsets[k]
    inside = 0 <= entry < tables.lengths[k]
    freq = tables.freqs[k, int(entry) if inside else tables.lengths[k]]
    return -np.log2(freq / TOTAL) + (0 if inside else 32) + rounding.WEIGHT * (r - q) ** 2


def test_rounding_picks_the_cheaper_of_nearest_and_one_step_inward(small_tables):
    """Checked one by one against its definition, over every table, escapes included."""
    coder = TableCoder(small_tables)
    rng = np.random.default_rng(8)
    index = rng.integers(0, len(small_tables), 4000)
    residual = small_tables.offsets[index] + rng.uniform(-3, 25, 4000)
    residual[:5] = [0.49, -0.5, 1e6, -np.inf, np.nan]
    got = coder.round(residual, index)
    for r, k, q in zip(residual[5:], index[5:], got[5:], strict=True):
        nearest = np.rint(r)
        options = [nearest] if nearest == 0 else [nearest, nearest - np.sign(nearest)]
        costs = [_cost(small_tables, k, option, r) for option in options]
        assert q == options[int(np.argmin(costs))], (r, k)
    assert list(got[:4]) == [0, -0, 1e6, -np.inf] and np.isnan(got[4])


def test_rounding_moves_only_inward_and_by_one_step():
    """On Gaussian tables: some move, never away from zero, never more than one step."""
    tables = gaussian_tables(np.geomspace(0.11, 60, 24))
    coder = TableCoder(tables)
    rng = np.random.default_rng(9)
    residual = rng.normal(0, 8, 20000)
    index = rng.integers(0, len(tables), 20000)
    got = coder.round(residual, index)
    nearest = np.rint(residual)
    moved = got != nearest
    assert moved.any() and np.all(np.abs(got) <= np.abs(nearest))
    assert np.all(np.abs(got - nearest) <= 1)


def test_rounding_makes_smaller_files_that_decode(monkeypatch):
    """Through the codec: fewer bytes than plain rounding, and the file decodes."""
    from PIL import Image

    from tests.conftest import SAMPLES, decode, encode

    image = Image.open(SAMPLES / "coffee.png").convert("RGB").crop((0, 0, 192, 128))
    rounded = encode(image, quality=50, restore=False)
    monkeypatch.setattr(rounding, "WEIGHT", np.inf)
    plain = encode(image, quality=50, restore=False)
    assert len(rounded) < len(plain)
    assert decode(rounded).size == image.size
