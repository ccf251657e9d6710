"""``python -m training bundle``: the photos a lent GPU call carries."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.conftest import smooth_array
from training.bundle import bundle


def _folder(path, suffix: str, count: int):
    path.mkdir()
    for i in range(count):
        Image.fromarray(smooth_array(48, 64, seed=i, noise=6.0)).save(path / f"{i}{suffix}")
    return path


def test_a_bundle_samples_each_folder_and_re_saves_what_is_not_jpeg(tmp_path):
    jpegs = _folder(tmp_path / "jpegs", ".jpg", 5)
    pngs = _folder(tmp_path / "pngs", ".png", 3)
    out = tmp_path / "bundle"
    (out / "a").mkdir(parents=True)
    (out / "a" / "stale.jpg").write_bytes(b"left from an earlier bundle")
    total = bundle([("a", jpegs, 3), ("b", pngs, 10)], out, seed=1)

    copied = sorted(p.name for p in (out / "a").iterdir())
    assert len(copied) == 3 and "stale.jpg" not in copied
    for name in copied:  # JPEG files travel as they are
        assert (out / "a" / name).read_bytes() == (jpegs / name).read_bytes()
    resaved = sorted((out / "b").iterdir())
    assert [p.name for p in resaved] == ["0.jpg", "1.jpg", "2.jpg"]  # all there are
    for path in resaved:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.size == (48, 64)
    assert total == sum(p.stat().st_size for p in out.rglob("*.jpg"))
    bundle([("a", jpegs, 3), ("b", pngs, 10)], out, seed=1)  # the same seed, again
    assert sorted(p.name for p in (out / "a").iterdir()) == copied


def test_a_bundle_over_the_carry_limit_is_refused_and_removed(tmp_path):
    pngs = _folder(tmp_path / "pngs", ".png", 2)
    out = tmp_path / "bundle"
    with pytest.raises(ValueError, match="over the"):
        bundle([("b", pngs, 2)], out, limit=100)
    assert not out.exists()
