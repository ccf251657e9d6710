"""``quality`` (1-100) -> (model, gain step).

The ladder lists rate points in increasing order of bytes: each is a shipped model at a
latent gain step. Without a ``model`` option, quality spreads evenly over the ladder, so a
lower quality never gives a larger file (on average; the steps were measured on Kodak by
``benchmarks/ladder.py``, which prints the figures this table was chosen from: every point
is on the upper envelope of the shipped models; all but the top one beat JPEG's PSNR at the
same bytes, and the top one is kept so that quality reaches 35 dB rather than stopping).
"""

from __future__ import annotations

from pillow_kae.container import MAX_GAIN_STEP
from pillow_kae.zoo import card, installed

LADDER: tuple[tuple[str, int], ...] = (
    ("kae-low", -10),
    ("kae-low", -8),
    ("kae-low", -6),
    ("kae-low", -4),
    ("kae-low", -2),
    ("kae-low", 0),
    ("kae-low", 2),
    ("kae-mid", -4),
    ("kae-mid", -2),
    ("kae-mid", 0),
    ("kae-mid", 2),
    ("kae-high", -4),
    ("kae-high", -2),
    ("kae-high", 0),
    ("kae-high", 2),
    ("kae-high", 4),  # 1.6 bpp, 35.5 dB on Kodak: 0.35 dB behind JPEG at those bytes
)


def _check_quality(quality: object) -> int:
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an integer from 1 to 100, not {quality!r}")
    return quality


def ladder() -> list[tuple[str, int]]:
    """The rate points of the default ladder whose models are installed, by increasing rate."""
    models = installed()
    points = [p for p in LADDER if p[0] in models]
    if not points:
        raise OSError("no KAE model is installed")
    return points


def model_gain_step(quality: int, model: str) -> int:
    """With an explicit model, quality moves along that model's own rate: 75 is the rate it
    was trained for (gain step 0), each 12.5 quality points one gain step, within -6..+2
    (beyond those the shipped models fall behind JPEG). seed-dense has one rate only."""
    if card(model).kind == "seed-dense":
        return 0
    return min(max(round((quality - 75) / 12.5), -6), 2)


def choose(quality: object, model: str | None = None, gain_step: object = None) -> tuple[str, int]:
    """Validate the save options and pick the rate point; unknown models are a ValueError."""
    quality = _check_quality(quality)
    if model is None:
        points = ladder()
        name, step = points[round((quality - 1) / 99 * (len(points) - 1))]
    elif not isinstance(model, str):
        raise ValueError(f"model must be a model name, not {model!r}")
    else:
        name, step = model, model_gain_step(quality, model)
    if gain_step is not None:
        if isinstance(gain_step, bool) or not isinstance(gain_step, int):
            raise ValueError(f"gain_step must be an integer, not {gain_step!r}")
        if not -MAX_GAIN_STEP <= gain_step <= MAX_GAIN_STEP:
            raise ValueError(f"gain_step must be from {-MAX_GAIN_STEP} to {MAX_GAIN_STEP}")
        step = gain_step
    return name, step
