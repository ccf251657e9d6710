"""Training past one device: ``python -m training train --devices 2`` on two virtual CPUs.

Runs the real command in a subprocess under JAX with the host split into two XLA devices,
on a tiny model and four generated photos, for two steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import smooth_array

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
