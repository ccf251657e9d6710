"""The stages of training behind a set of weights, for the model card.

A run records the history of the weights it started from (``--init``) when it starts, not
when it is exported: by then an export of the same name may have replaced the init file.
Export writes that history plus the run's own stage, so no card is edited by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

CHECKPOINT = "checkpoint.npz"
STATE = "state.json"


def init_run(init: str | Path) -> Path | None:
    """The run directory whose checkpoint ``init`` is, or None (shipped weights)."""
    path = Path(init)
    return path.parent if path.name == CHECKPOINT and (path.parent / STATE).is_file() else None


def init_history(init: str | None) -> list[dict]:
    """Stages behind ``init``: a run's checkpoint (its state.json) or shipped weights (card)."""
    if not init:
        return []
    path = Path(init)
    if (run := init_run(path)) is not None:
        return run_stages(json.loads((run / STATE).read_text()))
    card = path.with_suffix(".json")
    if card.is_file():
        training = json.loads(card.read_text()).get("training", {})
        stages = training.get("stages") or [{"steps": training.get("steps")}]
        # Cards written before stages named their data said it once for all of them.
        return [{"data": training.get("data"), **stage} for stage in stages]
    raise ValueError(f"{init}: neither a run checkpoint beside {STATE} nor weights with a card")


def stage(state: dict) -> dict:
    """One run's own stage, from its state.json."""
    config = state["config"]
    folders = config["data"]
    weights = config.get("weights") or [1.0 / len(folders)] * len(folders)
    return {
        "init": config.get("init"),
        "steps": int(state["step"]),
        "minutes": state.get("minutes", config.get("minutes")),
        "peak_lr": config.get("lr"),
        "lmbda": config.get("lmbda"),
        "batch": config.get("batch"),
        "patch": config.get("patch"),
        "data": {folder: weight for folder, weight in zip(folders, weights, strict=True)},
        **({"gain_steps": config["gain_steps"]} if config.get("gain_steps") else {}),
        **({"arch": config["arch"]} if config.get("arch") else {}),
        **({"train_only": config["train_only"]} if config.get("train_only") else {}),
        **({"note": config["note"]} if config.get("note") else {}),
        **({"precision": p} if (p := config.get("precision", "float32")) != "float32" else {}),
        **({"int8_kernels": True} if config.get("int8_kernels") else {}),
    }


def run_stages(state: dict) -> list[dict]:
    """Every stage behind a run's checkpoint, oldest first."""
    history = state.get("history")
    if history is None:  # runs made before histories were recorded: resolve the init now
        history = init_history(state["config"].get("init"))
    return [*history, stage(state)]
