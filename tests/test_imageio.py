"""imageio (v3) reads and writes .kae through its Pillow plugin once pillow_kae is imported."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

import pillow_kae  # noqa: F401  (registers the KAE plugin with Pillow)

SHAPES = {"rgb": (20, 28, 3), "gray": (20, 28), "rgba": (20, 28, 4)}
PLUGINS = {"auto": {}, "pillow": {"plugin": "pillow"}}


@pytest.fixture
def array(smooth, request) -> np.ndarray:
    shape = SHAPES[request.param]
    channels = shape[2] if len(shape) == 3 else 1
    return smooth(shape[1], shape[0], channels, seed=9)


@pytest.mark.parametrize("plugin", PLUGINS)
@pytest.mark.parametrize("array", SHAPES, indirect=True)
def test_write_read(tmp_path, array, plugin, psnr_db):
    path = tmp_path / "x.kae"
    iio.imwrite(path, array, **PLUGINS[plugin])
    assert path.read_bytes().startswith(b"\x89KAE")
    back = iio.imread(path, **PLUGINS[plugin])
    assert back.shape == array.shape
    assert back.dtype == np.uint8
    if array.ndim == 3 and array.shape[2] == 4:
        assert np.array_equal(back[..., 3], array[..., 3])
    assert psnr_db(array, back) > 20


@pytest.mark.parametrize("plugin", PLUGINS)
def test_metadata_and_properties(tmp_path, smooth, plugin):
    path = tmp_path / "x.kae"
    iio.imwrite(path, smooth(28, 20), quality=30, **PLUGINS[plugin])
    meta = iio.immeta(path, **PLUGINS[plugin])
    assert meta["kae_model"]
    assert meta["quality"] == 30
    props = iio.improps(path, **PLUGINS[plugin])
    assert props.shape == (20, 28, 3)
    assert props.dtype == np.uint8


def test_bytes_with_pillow_plugin(smooth):
    array = smooth(28, 20)
    data = iio.imwrite("<bytes>", array, extension=".kae", plugin="pillow")
    assert data.startswith(b"\x89KAE")
    assert iio.imread(data).shape == array.shape  # found by its signature alone
    assert iio.immeta(data)["kae_model"]


@pytest.mark.filterwarnings("ignore:Can't determine file format:UserWarning")
def test_bytes_without_plugin(smooth):
    data = iio.imwrite("<bytes>", smooth(28, 20), extension=".kae")
    assert data.startswith(b"\x89KAE")


def test_legacy_v2_api(tmp_path, smooth):
    import imageio.v2 as iio2

    path = tmp_path / "x.kae"
    array = smooth(28, 20)
    iio2.imwrite(path, array)
    assert iio2.imread(path).shape == array.shape
