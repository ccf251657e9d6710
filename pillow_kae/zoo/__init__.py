"""The registry of shipped models: model cards (JSON) beside weights (.npz) in ``weights/``.

Reading the registry never imports TensorFlow: ``Image.open``, ``kae info`` and
``kae models`` only need the cards. ``load`` builds the inference graphs (ONNX Runtime)
when pixels are needed; only training builds the Keras models.

When a better export takes a model's name, the old weights move to ``weights/retired/``
with their decoder-side arrays only, byte for byte: files that name the old weights keep
decoding exactly as before, and nothing encodes with them any more.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
RETIRED = "retired"  # subfolder of WEIGHTS_DIR
CARD_SUFFIX = ".json"
MAX_QUALITY_STEP = 16  # a model's quality scale spans at most this many gain steps each way


@dataclass(frozen=True)
class ModelCard:
    """What a shipped model is, how it was made and what it measured."""

    name: str
    weights: str  # file name in WEIGHTS_DIR
    sha256: str  # hex digest of the weights file; files name the model by it
    arch: dict
    lmbda: float
    kind: str = "mean-scale-hyperprior"
    training: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)
    graph: dict = field(default_factory=dict)  # transform -> layer list (runtime.graph)
    storage: str = "float16"  # conv kernels as stored: "float16", "int8" or "mixed" (zoo.weights)
    stored_sha256: str = ""  # a retired model's stripped file; sha256 stays what files name
    base: dict = field(default_factory=dict)  # delta storage: the base's name and sha256
    #: The gain steps of quality 1 and 100 when the model is chosen by name (quality 75 is
    #: step 0); empty: the default range (``zoo.quality.model_gain_step``).
    quality_steps: list = field(default_factory=list)

    def __post_init__(self) -> None:
        steps = self.quality_steps
        if steps and not (
            len(steps) == 2 and -MAX_QUALITY_STEP <= steps[0] <= 0 <= steps[1] <= MAX_QUALITY_STEP
        ):
            raise ValueError(
                f"model card {self.name}: quality_steps {steps} is not LOW <= 0 <= HIGH"
            )

    @property
    def file_sha256(self) -> str:
        """The digest the weights file on disk must have."""
        return self.stored_sha256 or self.sha256

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.weights

    @property
    def digest(self) -> bytes:
        return bytes.fromhex(self.sha256)

    @classmethod
    def from_file(cls, path: Path) -> ModelCard:
        data = json.loads(path.read_text())
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in fields})

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n"


@cache
def installed() -> dict[str, ModelCard]:
    """Every model whose card is in WEIGHTS_DIR, by name."""
    cards = [ModelCard.from_file(p) for p in sorted(WEIGHTS_DIR.glob(f"*{CARD_SUFFIX}"))]
    return {card.name: card for card in cards}


@cache
def retired() -> dict[tuple[str, str], ModelCard]:
    """Every retired model, by name and the weights digest its files carry."""
    folder = WEIGHTS_DIR / RETIRED
    cards = [ModelCard.from_file(p) for p in sorted(folder.glob(f"*{CARD_SUFFIX}"))]
    return {(card.name, card.sha256): card for card in cards}


def retired_card(name: str, digest: bytes) -> ModelCard | None:
    """The retired model ``name`` whose weights digest is or starts with ``digest`` (files
    of format version 8 carry its first 8 bytes), if there is one."""
    found = [c for (n, sha), c in retired().items() if n == name and sha.startswith(digest.hex())]
    return found[0] if len(found) == 1 else None


def card(name: str) -> ModelCard:
    """The card of an installed model; an unknown name is a ValueError naming the choices."""
    models = installed()
    if name not in models:
        choices = ", ".join(sorted(models)) or "none installed"
        raise ValueError(f"unknown KAE model {name!r}; installed models: {choices}")
    return models[name]
