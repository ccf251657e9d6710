"""pillow_kae.distributed on a real Dask cluster: two local worker processes."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from pillow_kae import distributed
from tests.conftest import smooth_array

dask_distributed = pytest.importorskip("dask.distributed")


@pytest.fixture(scope="module")
def client() -> object:
    cluster = dask_distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        env={"KAE_NUM_THREADS": "1"},
    )
    with cluster, dask_distributed.Client(cluster) as client:
        yield client


def test_encode_and_decode_a_folder_on_two_workers(client: object, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for i, size in enumerate([(40, 30), (24, 50), (64, 64)]):
        folder = photos / "sub" if i == 2 else photos
        Image.fromarray(smooth_array(*size, seed=i)).save(folder / f"img{i}.png")
    (photos / "bad.png").write_bytes(b"not a png")

    summary = distributed.encode_files([photos], tmp_path / "kae", client, quality=30)
    assert summary.converted == 3 and summary.skipped == 0
    assert [path.name for path, _ in summary.failures] == ["bad.png"]
    kae_files = sorted(p.relative_to(tmp_path / "kae") for p in (tmp_path / "kae").rglob("*"))
    assert [str(p) for p in kae_files] == ["img0.kae", "img1.kae", "sub", "sub/img2.kae"]
    workers = client.run(lambda: __import__("os").getpid())
    assert len(set(workers.values())) == 2

    again = distributed.encode_files([photos], tmp_path / "kae", client, quality=30)
    assert again.converted == 0 and again.skipped == 3

    decoded = distributed.decode_files([tmp_path / "kae"], tmp_path / "png", client)
    assert decoded.converted == 3 and not decoded.failures
    with Image.open(tmp_path / "png" / "sub" / "img2.png") as im:
        assert im.size == (64, 64)
