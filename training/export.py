"""Export a training run into ``pillow_kae/weights``: weights, coding tables, model card.

The coding tables are computed here, once, in floating point, and stored as integers; the
runtime never recomputes them. The card records the data, steps and lambda of the run and
the rate-distortion the shipped file measures on Kodak through the real codec.

A new export that takes an installed model's name first retires the old weights (``retire``),
so files made with them keep decoding. The retired decoders then keep only the arrays the new
weights do not hold byte for byte (``share_retired``): an export that changes the entropy
model alone (a context run) leaves its predecessor's decoder costing next to nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zipfile
from pathlib import Path

import numpy as np

from pillow_kae import models
from pillow_kae.entropy_models.fixed_point import log_scale_thresholds_fixed
from pillow_kae.entropy_models.gaussian_conditional import log_scale_thresholds, scale_table
from pillow_kae.entropy_models.tables import gaussian_tables, stack_tables
from pillow_kae.runtime import graph
from pillow_kae.zoo import CARD_SUFFIX, RETIRED, WEIGHTS_DIR, ModelCard, installed, loader, retired
from pillow_kae.zoo.loader import THRESHOLDS, Y_TABLES, Z_TABLES
from pillow_kae.zoo.weights import (
    BASE_DIGEST,
    DELTA_STEP,
    SCALE_SUFFIX,
    assign_weights,
    delta_int8,
    load_arrays,
    quantize_int8,
    stored_as_int8,
    weights_to_arrays,
)
from training.lineage import CHECKPOINT, STATE, run_stages

log = logging.getLogger(__name__)

Z_SEARCH_RADIUS = 64
Z_TAIL_MASS = 1e-6
ENCODER_PREFIXES = ("g_a/", "h_a/", "encoder/")  # arrays that decoding never reads
STORAGES = ("float16", "int8")


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` as ``np.savez_compressed`` writes it, except that deltas (they carry
    ``BASE_DIGEST``) use LZMA, 12 % smaller than deflate on their small steps; ``np.load``
    reads either."""
    compression = zipfile.ZIP_LZMA if BASE_DIGEST in arrays else zipfile.ZIP_DEFLATED
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for key, value in arrays.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
    return buffer.getvalue()


def retire(name: str, uninstall: bool = False) -> Path | None:
    """Keep the decoder of installed model ``name`` in ``weights/retired/``; returns its card.

    The decoder-side arrays are copied as stored (same dtypes, same values), so files that
    name these weights decode exactly as before; the card keeps the digest they name and
    records the stripped file's own digest. ``uninstall`` then removes the installed model
    (nothing encodes with it any more). None when ``name`` is not installed.
    """
    old = installed().get(name)
    if old is None:
        return None
    _check_replaceable(name)
    with np.load(old.path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if not k.startswith(ENCODER_PREFIXES)}
    data = _npz_bytes(arrays)
    stem = f"{name}-{old.sha256[:12]}"
    folder = WEIGHTS_DIR / RETIRED
    folder.mkdir(exist_ok=True)
    (folder / f"{stem}.npz").write_bytes(data)
    card = ModelCard(
        **{
            **old.__dict__,
            "weights": f"{RETIRED}/{stem}.npz",
            "stored_sha256": hashlib.sha256(data).hexdigest(),
        }
    )
    card_path = folder / f"{stem}.json"
    card_path.write_text(card.to_json())
    retired.cache_clear()
    log.info("retired %s %s... (decoder only, %.1f MB)", name, old.sha256[:12], len(data) / 1e6)
    if uninstall:
        old.path.unlink()
        old.path.with_suffix(".json").unlink()
        installed.cache_clear()
    return card_path


#: A retired file is stored against the installed one only where that saves at least this
#: share of its bytes: a few common tables are not worth tying one file to another.
MIN_SHARED_SAVING = 0.25


def _stored_arrays(model_card: ModelCard) -> dict[str, np.ndarray]:
    """A weights file's arrays as stored (int8 steps, scales, deltas), without its base's."""
    with np.load(model_card.path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _held_by(key: str, arrays: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> bool:
    """Whether ``other`` stores ``arrays[key]`` byte for byte (a kernel with the same scales;
    a scale goes with its kernel)."""
    if key.endswith(SCALE_SUFFIX):
        return _held_by(key.removesuffix(SCALE_SUFFIX), arrays, other)
    if key not in other or not _same(arrays[key], other[key]):
        return False
    scale = key + SCALE_SUFFIX
    if scale not in arrays or scale not in other:
        return scale not in arrays and scale not in other
    return _same(arrays[scale], other[scale])


def share_retired(name: str) -> list[Path]:
    """Store the retired decoders of ``name`` against its installed weights; returns the
    cards rewritten.

    A retired file that is not yet stored against a base, and would shrink by at least
    ``MIN_SHARED_SAVING``, drops every array the installed file stores byte for byte (an
    int8 kernel only together with its scales) and names the installed weights as its base
    (``BASE_DIGEST``, as a delta does); ``loader.load`` reads the rest from there, so the
    pixels its files decode to stay exactly the same. A later export of ``name`` retires
    that base in turn, keeping all of its decoder arrays, so the chain always resolves.
    """
    current = installed().get(name)
    if current is None or current.base:
        return []
    shared = _stored_arrays(current)
    rewritten = []
    for old in [c for (n, _), c in retired().items() if n == name and not c.base]:
        arrays = _stored_arrays(old)
        kept = {k: v for k, v in arrays.items() if not _held_by(k, arrays, shared)}
        dropped = len(arrays) - len(kept)
        kept[BASE_DIGEST] = np.frombuffer(current.digest, np.uint8)
        data = _npz_bytes(kept)
        before = old.path.stat().st_size
        if len(data) > before * (1 - MIN_SHARED_SAVING):
            continue
        old.path.write_bytes(data)
        card = ModelCard(
            **{
                **old.__dict__,
                "stored_sha256": hashlib.sha256(data).hexdigest(),
                "base": {"name": name, "sha256": current.sha256},
            }
        )
        card_path = old.path.with_suffix(CARD_SUFFIX)
        card_path.write_text(card.to_json())
        rewritten.append(card_path)
        log.info(
            "retired %s %s... takes %d arrays from the installed weights (%.1f -> %.1f MB)",
            name,
            old.sha256[:12],
            dropped,
            before / 1e6,
            len(data) / 1e6,
        )
    retired.cache_clear()
    return rewritten


def _dependents(name: str) -> list[str]:
    """Installed models stored as deltas of ``name``."""
    return [c.name for c in installed().values() if c.base.get("name") == name]


def _check_replaceable(name: str) -> None:
    """Refuse to retire a model others are stored against: they would lose their encoder."""
    if dependents := _dependents(name):
        raise ValueError(
            f"{', '.join(dependents)} {'is' if len(dependents) == 1 else 'are'} stored as a "
            f"delta of {name!r}; export {'it' if len(dependents) == 1 else 'them'} again "
            f"against another base, or retire {'it' if len(dependents) == 1 else 'them'}, first"
        )


def _delta_base(base: str, name: str) -> ModelCard:
    """The installed card a delta export of ``name`` is stored against."""
    base_card = installed().get(base)
    if base_card is None or base_card.storage != "int8" or base_card.base or base == name:
        raise ValueError(f"a delta needs another installed int8 model as its base, not {base!r}")
    return base_card


def _unchanged_decoder_arrays(name: str, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The stored form (dtype, int8 scales) of every decoder-side array of the installed
    ``name`` that ``values`` holds unchanged.

    An export keeps these as they are stored, whatever ``storage`` asks for the rest: what
    earlier files decode with stays byte for byte, so the retired decoder shares all of it
    (``share_retired``) and costs next to nothing. That is how a float16 model gets int8
    encoder kernels (and new entropy-model arrays) without paying for its decoder twice.
    """
    current = installed().get(name)
    if current is None or current.base:
        return {}
    stored = _stored_arrays(current)
    installed_values = load_arrays(current.path)
    kept: dict[str, np.ndarray] = {}
    for key, value in values.items():
        old = installed_values.get(key)
        if key.startswith(ENCODER_PREFIXES) or old is None or key not in stored:
            continue
        if old.shape == value.shape and np.array_equal(
            np.asarray(old, np.float64), np.asarray(value, np.float64)
        ):
            kept[key] = stored[key]
            if key + SCALE_SUFFIX in stored:
                kept[key + SCALE_SUFFIX] = stored[key + SCALE_SUFFIX]
    return kept


def _storage_of(arrays: dict[str, np.ndarray]) -> str:
    """The card's ``storage``: "int8" if every conv kernel quantize_int8 would take is int8,
    "float16" if none is, else "mixed" (which cannot be a delta's base)."""
    kinds = {
        value.dtype == np.int8 for key, value in arrays.items() if stored_as_int8(key, value.shape)
    }
    return "mixed" if len(kinds) > 1 else "int8" if kinds == {True} else "float16"


def z_tables(model: object) -> dict[str, np.ndarray]:
    """Per-channel tables of the factorized prior, each trimmed to where its mass is.

    (For the seed-dense model the factorized prior codes the bottleneck itself.)
    """
    pmf = model.entropy_bottleneck.pmf(-Z_SEARCH_RADIUS, Z_SEARCH_RADIUS)
    offsets, pmfs = [], []
    for row in pmf:
        cdf = np.cumsum(row)
        low = int(np.searchsorted(cdf, Z_TAIL_MASS / 2))
        high = int(np.searchsorted(cdf, cdf[-1] - Z_TAIL_MASS / 2))
        high = min(max(high, low), row.size - 1)
        offsets.append(low - Z_SEARCH_RADIUS)
        pmfs.append(row[low : high + 1])
    return stack_tables(offsets, pmfs).to_arrays(Z_TABLES)


def training_record(state: dict, data_note: str | None = None) -> dict:
    """The card's ``training``: every stage behind the weights, oldest first, and the total."""
    stages = run_stages(state)
    record = {"steps": sum(int(s.get("steps") or 0) for s in stages), "stages": stages}
    if data_note:
        record["data"] = data_note
    return record


def describe_installed(name: str) -> Path:
    """(Re)write the inference graph into an installed card, from the Keras model.

    The weights file is untouched (files name it by its hash), so a card written before the
    runtime existed gains its graph without a new export.
    """
    model_card = installed()[name]
    model = models.build(model_card.kind, model_card.arch)
    assign_weights(model, loader.load(name).arrays)
    description = graph.describe(model, model_card.kind)
    model_card = ModelCard(**{**model_card.__dict__, "graph": description})
    model_card.path.with_suffix(".json").write_text(model_card.to_json())
    installed.cache_clear()
    return model_card.path.with_suffix(".json")


def export(
    run: str | Path,
    name: str,
    kodak: str | Path | None = None,
    data_note: str | None = None,
    storage: str = "int8",
    base: str | None = None,
    quality_steps: tuple[float, float] | None = None,
    delta_step: int = DELTA_STEP,
    **eval_args: object,
) -> Path:
    """Write ``NAME.npz`` and ``NAME.json`` into the package; returns the card's path.

    ``storage="int8"`` stores the conv kernels as int8 (``zoo.weights.quantize_int8``);
    ``base`` (an installed int8 model the run was fine-tuned from) stores them as the
    difference from that model's (``zoo.weights.delta_int8``), a fraction of the bytes, in
    units of ``delta_step`` of the base's steps.
    ``quality_steps`` (LOW, HIGH) spreads the quality scale of ``model=NAME`` over the gain
    steps a variable-rate run was trained for. The card's evaluation measures the file as
    stored.
    """
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, not {storage!r}")
    base_card = _delta_base(base, name) if base is not None else None
    run = Path(run)
    state = json.loads((run / STATE).read_text())
    config = state["config"]
    kind = config.get("kind", "mean-scale-hyperprior")
    model = models.build(kind, config.get("arch", {}))
    assign_weights(model, load_arrays(run / CHECKPOINT))

    if kind == "seed-dense":  # no conv kernels to store as int8
        storage = "float16"
    arrays = weights_to_arrays(model, compact=True)
    if storage == "int8" and base_card is None:
        arrays = quantize_int8(arrays)
    kept = {}
    if base_card is None:  # a delta stores its kernels against the base's, not as they were
        kept = _unchanged_decoder_arrays(name, weights_to_arrays(model, compact=False))
    if kept:
        arrays = {k: v for k, v in arrays.items() if k.removesuffix(SCALE_SUFFIX) not in kept}
        arrays.update(kept)
        storage = _storage_of(arrays)
    arrays.update(z_tables(model))
    if kind != "seed-dense":
        arrays.update(gaussian_tables(scale_table()).to_arrays(Y_TABLES))
        arrays[THRESHOLDS] = log_scale_thresholds_fixed(log_scale_thresholds())
    if base_card is not None:
        with np.load(base_card.path, allow_pickle=False) as stored:
            arrays = delta_int8(arrays, {k: stored[k] for k in stored.files}, delta_step)
        arrays[BASE_DIGEST] = np.frombuffer(base_card.digest, np.uint8)
    data = _npz_bytes(arrays)
    digest = hashlib.sha256(data).hexdigest()

    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    if name in installed() and installed()[name].sha256 != digest:
        retire(name)
    weights_path = WEIGHTS_DIR / f"{name}.npz"
    weights_path.write_bytes(data)
    card = ModelCard(
        name=name,
        weights=weights_path.name,
        sha256=digest,
        arch=config.get("arch", {}),
        lmbda=float(config["lmbda"]),
        kind=kind,
        training=training_record(state, data_note),
        graph=graph.describe(model, kind),
        storage=storage,
        base={"name": base_card.name, "sha256": base_card.sha256} if base_card else {},
        quality_steps=list(quality_steps or ()),
    )
    card_path = WEIGHTS_DIR / f"{name}.json"
    card_path.write_text(card.to_json())
    installed.cache_clear()
    log.info("exported %s (%.1f MB)", name, len(data) / 1e6)
    share_retired(name)

    if kodak is not None and Path(kodak).is_dir():
        from training.evaluate import evaluate_model

        result = evaluate_model(name, kodak, **eval_args)
        card = ModelCard(**{**card.__dict__, "evaluation": result})
        card_path.write_text(card.to_json())
        installed.cache_clear()
        log.info("%s on %s: %s", name, kodak, result)
    return card_path
