"""Widening a hyperprior keeps what its old channels compute (training/widen.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from pillow_kae import models  # noqa: E402
from pillow_kae.zoo.weights import assign_weights, weights_to_arrays  # noqa: E402
from training.widen import arch_of, widen_arrays  # noqa: E402

NARROW = {"channels": 8, "latent_channels": 12, "hyper_channels": 8}
WIDE = {"channels": 12, "latent_channels": 20, "hyper_channels": 8}


def _coupled(model: object, seed: int) -> object:
    """``model`` with GDNs that couple every channel, so that a leak from a new one shows."""
    rng = np.random.default_rng(seed)
    arrays = weights_to_arrays(model, compact=False)
    for key, value in arrays.items():
        if key.endswith("gamma"):
            arrays[key] = np.sqrt(rng.uniform(0.01, 0.2, value.shape)).astype(value.dtype)
        elif key.endswith("bias") and not key.startswith("entropy"):
            arrays[key] = rng.normal(0, 0.1, value.shape).astype(value.dtype)
    assign_weights(model, arrays)
    return model


def _narrow_model() -> object:
    return _coupled(models.build("mean-scale-hyperprior", NARROW), seed=0)


def test_widened_model_reconstructs_as_the_narrow_one() -> None:
    narrow = _narrow_model()
    arrays = weights_to_arrays(narrow, compact=False)
    assert arch_of(arrays) == NARROW
    wide = _coupled(models.build("mean-scale-hyperprior", WIDE), seed=3)  # any initial values
    assign_weights(wide, widen_arrays(arrays, wide, NARROW, WIDE))
    x = np.random.default_rng(1).uniform(0, 1, (2, 64, 64, 3)).astype("float32")

    y_narrow, y_wide = (np.asarray(m.g_a(x)) for m in (narrow, wide))
    np.testing.assert_allclose(y_wide[..., :12], y_narrow, rtol=1e-4, atol=1e-4)
    assert np.abs(y_wide[..., 12:]).max() > 0  # the new channels are live, not dead

    params_narrow = np.asarray(narrow.h_s(narrow.h_a(y_narrow)))
    params_wide = np.asarray(wide.h_s(wide.h_a(y_wide)))
    means_and_scales = np.r_[0:12, 20:32]  # where the old means and log-scales sit
    np.testing.assert_allclose(
        params_wide[..., means_and_scales], params_narrow, rtol=1e-4, atol=1e-4
    )

    x_narrow = np.asarray(narrow(x)["x_hat"])
    x_wide = np.asarray(wide(x)["x_hat"])
    np.testing.assert_allclose(x_wide, x_narrow, rtol=1e-4, atol=1e-4)


def test_widening_refuses_to_narrow_or_change_the_hyper_latent() -> None:
    arrays = weights_to_arrays(_narrow_model(), compact=False)
    narrower = {"channels": 4, "latent_channels": 12, "hyper_channels": 8}
    model = models.build("mean-scale-hyperprior", narrower)
    with pytest.raises(ValueError, match="cannot narrow"):
        widen_arrays(arrays, model, NARROW, narrower)
    other_z = {**WIDE, "hyper_channels": 12}
    model = models.build("mean-scale-hyperprior", other_z)
    with pytest.raises(ValueError, match="hyper-latent"):
        widen_arrays(arrays, model, NARROW, other_z)


def test_checkpoint_parts_split_under_the_limit_and_join_back(tmp_path: Path) -> None:
    from training import parts
    from training.lineage import CHECKPOINT

    rng = np.random.default_rng(2)
    arrays = {f"g_a/conv{i}/kernel": rng.normal(size=(64, 64)).astype("float32") for i in range(5)}
    np.savez(tmp_path / CHECKPOINT, **arrays)
    assert parts.split(tmp_path, limit=40_000) and not (tmp_path / CHECKPOINT).exists()
    pieces = sorted(tmp_path.glob("checkpoint.part*.npz"))
    assert len(pieces) == 3  # two 16 kB arrays fit in 40 kB, three do not
    parts.join(tmp_path)
    with np.load(tmp_path / CHECKPOINT) as joined:
        assert sorted(joined.files) == sorted(arrays)
        for key, value in arrays.items():
            np.testing.assert_array_equal(joined[key], value)
    assert not list(tmp_path.glob("checkpoint.part*.npz"))
    assert parts.split(tmp_path) == []  # under the default limit: left whole
