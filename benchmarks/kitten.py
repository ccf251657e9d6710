""" "Is this a kitten?": how well rate-based scores separate cats from other photos.

    python -m benchmarks.kitten [--pair MODEL REFERENCE]... [--limit N]

Positives: ../shared/data/cats/valid (never trained on). Negatives, scored separately:
dogs/valid (the hard negatives: same source, same framing) and Kodak + BSDS500 val. Each
score is "lower = more cat-like"; AUROC is the probability that a random negative scores
higher than a random cat (0.5 = chance). Scores, all through the public API:

- jpeg: Pillow JPEG q75 bits per pixel, the trivial baseline (image complexity);
- kae-mid / seed-dense: ``pillow_kae.surprise`` with that shipped model (real coding);
- kae-kittens / kae-mid: the shipped kitten score, ``surprise(img, model="kae-kittens",
  reference="kae-mid")`` (when kae-kittens is installed);
- each ``--pair MODEL REFERENCE``: ``surprise(img, model=MODEL, reference=REFERENCE)``, the
  ratio of two installed models' coded rates, which cancels image complexity. A training
  run is installed for this with ``python -m training export RUN --name NAME``;
- seed-dense MSE: the blog's own anomaly score, how badly the cat model reconstructs (a
  real ``.kae`` file saved with ``model="seed-dense"`` and read back);
- and, supervised for comparison: a logistic regression on ``pillow_kae.features`` averaged
  over positions (5-fold cross-validated), the "features for other models" use.
"""

from __future__ import annotations

import argparse
import io

import numpy as np
from PIL import Image
from tqdm import tqdm

from benchmarks.rd import KODAK
from pillow_kae.analysis import features, surprise
from pillow_kae.zoo import card, installed

SHARED = KODAK.parent
MAX_SIDE = 512  # larger images are downscaled first, so every set is seen at a similar scale


def auroc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """P(negative > positive) + P(tie)/2, by ranks (Mann-Whitney U)."""
    scores = np.concatenate([positives, negatives])
    order = scores.argsort(kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks of ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    u = ranks[len(positives) :].sum() - len(negatives) * (len(negatives) + 1) / 2
    return float(u / (len(positives) * len(negatives)))


def jpeg_bpp(image: Image.Image) -> float:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=75, subsampling=2, optimize=True)
    return 8 * buffer.tell() / (image.width * image.height)


def seed_mse(image: Image.Image) -> float:
    """Mean squared error (0-1 scale) of the image saved with the seed model and read back."""
    buffer = io.BytesIO()
    image.save(buffer, "KAE", model="seed-dense")
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        error = np.asarray(decoded.convert("RGB"), np.float64) - np.asarray(image, np.float64)
    return float(np.mean(error**2)) / 255.0**2


def probe_auroc(cats: np.ndarray, others: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """AUROC of a cross-validated logistic regression (numpy, L2) on pooled features."""
    x = np.concatenate([cats, others]).astype(np.float64)
    label = np.concatenate([np.zeros(len(cats)), np.ones(len(others))])  # 1 = not a cat
    fold = np.random.default_rng(seed).permutation(len(x)) % folds
    scores = np.empty(len(x))
    for k in range(folds):
        train, test = fold != k, fold == k
        mean, std = x[train].mean(0), x[train].std(0) + 1e-6
        a, b = (x[train] - mean) / std, label[train]
        w, bias = np.zeros(x.shape[1]), 0.0
        for _ in range(500):  # gradient descent on the logistic loss
            p = 1 / (1 + np.exp(-(a @ w + bias)))
            w -= 0.1 * (a.T @ (p - b) / len(a) + 1e-2 * w)
            bias -= 0.1 * float(np.mean(p - b))
        scores[test] = ((x[test] - mean) / std) @ w + bias
    return auroc(scores[label == 0], scores[label == 1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--pair",
        nargs=2,
        action="append",
        default=[],
        metavar=("MODEL", "REFERENCE"),
        help="two installed models whose rate ratio is scored",
    )
    parser.add_argument("--limit", type=int, default=None, help="at most N images per set")
    args = parser.parse_args(argv)
    sets = {
        "cats/valid": SHARED / "cats" / "valid",
        "dogs/valid": SHARED / "dogs" / "valid",
        "kodak": KODAK,
        "bsds500/val": SHARED / "bsds500" / "val",
    }
    for name in {name for pair in args.pair for name in pair}:
        card(name)  # an unknown model fails here, naming the installed ones
    kittens = "kae-kittens" in installed()
    rows: dict[str, list[dict[str, float]]] = {}
    pooled: dict[str, list[np.ndarray]] = {}
    for label, folder in sets.items():
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg"})
        rows[label], pooled[label] = [], []
        for path in tqdm(paths[: args.limit], desc=label):
            with Image.open(path) as im:
                image = im.convert("RGB")
            image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
            score = {
                "jpeg": jpeg_bpp(image),
                "kae-mid": surprise(image, model="kae-mid"),
                "seed-dense": surprise(image, model="seed-dense"),
            }
            if kittens:
                score["kae-kittens / kae-mid"] = surprise(
                    image, model="kae-kittens", reference="kae-mid"
                )
            score["seed-dense MSE (blog)"] = seed_mse(image)
            score["seed-dense / kae-mid"] = score["seed-dense"] / score["kae-mid"]
            for model, reference in args.pair:
                score[f"{model} / {reference}"] = surprise(image, model=model, reference=reference)
            rows[label].append(score)
            pooled[label].append(features(image).mean(axis=(0, 1)))
    cats = rows["cats/valid"]
    negatives = {
        "dogs/valid": ["dogs/valid"],
        "kodak + bsds500/val": ["kodak", "bsds500/val"],
    }
    for name, labels in negatives.items():
        others = [row for label in labels for row in rows[label]]
        print(f"\npositives: cats/valid ({len(cats)}); negatives: {name} ({len(others)})")
        print(f"{'score (low = cat)':<34} {'cats mean':>10} {'others mean':>12} {'AUROC':>7}")
        for key in cats[0]:
            pos = np.array([r[key] for r in cats])
            neg = np.array([r[key] for r in others])
            print(f"{key:<34} {pos.mean():10.4f} {neg.mean():12.4f} {auroc(pos, neg):7.3f}")
        features_others = np.array([v for label in labels for v in pooled[label]])
        probe = probe_auroc(np.array(pooled["cats/valid"]), features_others)
        print(f"supervised: logistic regression on mean features(img), 5-fold CV: {probe:.3f}")


if __name__ == "__main__":
    main()
