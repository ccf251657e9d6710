"""``quality`` (1-100) -> (model, gain step).

The ladder lists anchor rate points in increasing order of bytes: each is a shipped model
at a whole latent gain step. Without a ``model`` option, the anchors spread evenly over the
quality scale (the first at 1, the last at 100) and the qualities between two anchors move
the gain step between them in sixteenths of a step, so that every quality is its own rate
point: a higher quality always gives a larger file and a higher PSNR (on average; the
anchors were measured on Kodak by ``benchmarks/ladder.py``, which prints the figures this
table was chosen from: every anchor is on the upper envelope of the shipped models, and
every one beats JPEG's PSNR at the same bytes). Where the next anchor is another
model, the lower model continues by up to ``BRIDGE`` of a step, which on Kodak and on clean
photos stays below the next model's bytes and PSNR (``benchmarks/quality.py``).
"""

from __future__ import annotations

from pillow_kae.container import GAIN_STEP_DIVISIONS, MAX_GAIN_STEP
from pillow_kae.entropy_models.fixed_point import check_gain_step
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
    ("kae-mid", 4),  # 0.91 bpp, 33.9 dB on Kodak; kae-xhigh -9 gives 33.3 dB at those bytes
    ("kae-xhigh", -8),
    ("kae-xhigh", -6),
    ("kae-xhigh", -4),
    ("kae-xhigh", -2),
    ("kae-xhigh", 0),
    ("kae-xhigh", 2),
    ("kae-xhigh", 4),  # 2.9 bpp, 41.6 dB on Kodak: 1.6 dB ahead of JPEG at those bytes
)
BRIDGE = 0.5  # gain steps the lower model goes beyond its last anchor before the next model
#: Where two models of the ladder overlap, the gain step of the upper one that gives about
#: the bytes of a step of the lower one, on average (Kodak and Urban100, 2026-12-03).
#: Which of the two is better at those bytes depends on the image: on most Kodak photos
#: the lower model pushed up keeps texture that the upper one, at a low gain step, blurs
#: (higher PSNR for the upper one on detailed photos, but lower MS-SSIM). So the encoder
#: tries the lower model for the upper one's rate points (``candidates``); the other way
#: round won no image by both measures.
NEIGHBOUR_STEP_OFFSETS = {("kae-low", "kae-mid"): -6.5, ("kae-mid", "kae-xhigh"): -12.5}
#: Gain steps beyond its last anchor that a model is tried at as a neighbour. On the 24 Kodak
#: and the first 20 clean photos (2026-12-03) the lower model won up to 2.5 steps beyond (kae-low
#: +4.5: 2 of 44, +5.5: none) and 3.75 (kae-mid +7.75: 1 of 44, +8.5 and +9.3: none); further
#: out it is coded and decoded for nothing, about a quarter of the encoder's time.
NEIGHBOUR_REACH = 4


def _check_quality(quality: object) -> int:
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an integer from 1 to 100, not {quality!r}")
    return quality


def ladder() -> list[tuple[str, int]]:
    """The anchors of the default ladder whose models are installed, by increasing rate."""
    models = installed()
    points = [p for p in LADDER if p[0] in models]
    if not points:
        raise OSError("no KAE model is installed")
    return points


def anchor_qualities() -> list[tuple[int, str, int]]:
    """(quality, model, gain step) of each anchor of the installed ladder."""
    points = ladder()
    last = max(len(points) - 1, 1)
    return [(1 + round(k * 99 / last), *point) for k, point in enumerate(points)]


def _to_sixteenths(step: float) -> float:
    return round(step * GAIN_STEP_DIVISIONS) / GAIN_STEP_DIVISIONS


def ladder_point(quality: int) -> tuple[str, float]:
    """The default ladder's rate point for ``quality``: an anchor, or a step between two."""
    anchors = anchor_qualities()
    if quality >= anchors[-1][0]:  # also a ladder of one anchor, at quality 1
        return anchors[-1][1:]
    k = max(i for i, (q, *_) in enumerate(anchors) if q <= quality)
    (q0, model0, step0), (q1, model1, step1) = anchors[k], anchors[k + 1]
    t = (quality - q0) / (q1 - q0)
    span = step1 - step0 if model1 == model0 else BRIDGE
    return model0, _to_sixteenths(step0 + t * span)


def neighbours(name: str, step: float) -> list[tuple[str, float]]:
    """The rate point of the installed ladder's model below ``name`` that gives about the
    bytes of ``name`` at ``step`` (``NEIGHBOUR_STEP_OFFSETS``), if it lies within
    ``NEIGHBOUR_REACH`` of that model's last anchor."""
    points = ladder()
    found = []
    for (lower, upper), offset in NEIGHBOUR_STEP_OFFSETS.items():
        steps = [s for m, s in points if m == lower]
        if name == upper and steps and step - offset <= max(steps) + NEIGHBOUR_REACH:
            found.append((lower, _to_sixteenths(step - offset)))
    return found


TRAINED_QUALITY = 75  # an explicit model's gain step 0
#: An explicit model's gain steps at quality 1 and 100 unless its card says otherwise:
#: 12.5 quality points per step around 75 (beyond -6..+2 the models trained at one rate fall
#: behind JPEG).
MODEL_QUALITY_STEPS = (-(TRAINED_QUALITY - 1) / 12.5, (100 - TRAINED_QUALITY) / 12.5)


def model_gain_step(quality: int, model: str) -> float:
    """With an explicit model, quality moves along that model's own rate: 75 is the rate it
    was trained for (gain step 0), 1 and 100 the ends of its card's ``quality_steps`` (a
    model trained over a range of gain steps declares the range), linear in between.
    seed-dense has one rate only."""
    model_card = card(model)
    if model_card.kind == "seed-dense":
        return 0.0
    low, high = model_card.quality_steps or MODEL_QUALITY_STEPS
    if quality <= TRAINED_QUALITY:
        step = low * (TRAINED_QUALITY - quality) / (TRAINED_QUALITY - 1)
    else:
        step = high * (quality - TRAINED_QUALITY) / (100 - TRAINED_QUALITY)
    return _to_sixteenths(step)


def choose(
    quality: object, model: str | None = None, gain_step: object = None
) -> tuple[str, float]:
    """Validate the save options and pick the rate point; unknown models are a ValueError.

    ``gain_step`` overrides the quality's: a number, a multiple of 1/16, within +-63."""
    quality = _check_quality(quality)
    if model is None:
        name, step = ladder_point(quality)
    elif not isinstance(model, str):
        raise ValueError(f"model must be a model name, not {model!r}")
    else:
        name, step = model, model_gain_step(quality, model)
    if gain_step is not None:
        step = check_gain_step(gain_step, "gain_step")
        if not -MAX_GAIN_STEP <= step <= MAX_GAIN_STEP:
            raise ValueError(f"gain_step must be from {-MAX_GAIN_STEP} to {MAX_GAIN_STEP}")
    return name, float(step)


def candidates(
    quality: object, model: str | None = None, gain_step: object = None
) -> list[tuple[str, float]]:
    """The rate points the encoder may code ``quality`` at, best guess first: ``choose``'s,
    and on the default ladder (no ``model`` or ``gain_step`` given) its ``neighbours``;
    the encoder keeps the one with the best rate-distortion trade-off for the image."""
    first = choose(quality, model, gain_step)
    if model is not None or gain_step is not None:
        return [first]
    return [first, *neighbours(*first)]
