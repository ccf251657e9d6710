"""Forged and damaged ``.kae`` files: each must decode or raise a clean error (issue 7).

    python -m benchmarks.fuzz [--cases 100000] [--mode forged|damage|both] [--seed 0]
                              [--workers N] [--timeout 10] [--max-pixels 262144]
                              [--json out/fuzz.json] [--save out/fuzz-cases]

A small corpus of real files is encoded through the public API (RGB, RGBA with metadata,
L, LA, the seed-dense model, several sizes, a 1100x70 image of two tiles, one row of
pixels, a photo crop that carries a restoration filter). ``--cases`` is per mode;
``--workers`` defaults to one per CPU:

* forged: a corpus file is parsed into its chunks, chunk bodies are altered (tile payloads,
  KHDR fields or bytes, ALPH, the restoration filter, metadata, chunk order) and the file
  is written back with valid lengths and CRCs, so that the forgery reaches the decoder:
  what an attacker sends;
* damage: random bit flips, cuts, deletions and insertions in the raw bytes: what a disk or
  a network does. A damaged file that decodes without an error to other pixels (or another
  mode or size) than the intact file is *silent garbage*.

Each case is opened and loaded in a long-lived worker process (the runtime is loaded once
per worker) under a time limit; a worker that dies (crash) or overruns (hang) is replaced.
Outcomes: decoded, clean error (the exceptions Pillow's own fuzzer accepts), unclean
exception (the first few are printed with tracebacks), crash, hang, silent garbage, and the
workers' peak RSS. Like Pillow's fuzzers, which turn its DecompressionBombWarning into an
error, images above ``--max-pixels`` are refused at open, so that a hang is a slow decode
rather than a large legal image. Case i depends only on the seed, the mode and i, so a
run is reproducible whatever the number of workers; the bytes of every bad case are saved
in ``--save`` to replay with ``Image.open``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import random
import re
import resource
import struct
import time
import traceback
import warnings
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from multiprocessing import connection, get_context
from multiprocessing.context import SpawnContext
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from pillow_kae import KaeImagePlugin, container, restoration  # the plugin registers .kae
from pillow_kae.zoo import loader

#: What Pillow's own fuzzer (Tests/test_fuzzers.py) accepts from a hostile file.
CLEAN_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes PIL.UnidentifiedImageError
    SyntaxError,
    ValueError,
    MemoryError,
    NotImplementedError,
    OverflowError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)
_MASKED_BY_PILLOW = (IndexError, TypeError, KeyError, EOFError, struct.error)
# Bytes reprs, hex digests and numbers: what varies between messages of the same check.
_MESSAGE_NUMBERS = re.compile(r"b'[^']*'|b\"[^\"]*\"|[0-9a-f]{8,}|0x[0-9a-f]+|\d+")
MODES = ("forged", "damage")
OUTCOMES = ("decoded", "error", "unclean", "crash", "hang", "garbage")
BAD = ("unclean", "crash", "hang", "garbage")
SHOWN = 3  # tracebacks printed per mode; the JSON keeps up to EXAMPLES per outcome
EXAMPLES = 20
STARTUP_S = 600.0  # a worker's start-up on a loaded machine is slow, but not this slow


@dataclasses.dataclass(frozen=True)
class Spec:
    """One corpus file: an image of ``size`` and ``mode`` saved with ``options``; generated,
    or cut from ``crop_of`` in sample_images/ (photos get a restoration filter)."""

    name: str
    size: tuple[int, int]
    mode: str
    options: dict[str, object] = dataclasses.field(default_factory=dict)
    crop_of: str | None = None


_EXIF = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00"
CORPUS: tuple[Spec, ...] = (
    Spec("rgb-20x20-q75", (20, 20), "RGB", {"quality": 75}),
    Spec(
        "rgba-20x12-q50-meta",
        (20, 12),
        "RGBA",
        {"quality": 50, "exif": _EXIF, "xmp": b"<x/>", "icc_profile": b"not an ICC profile"},
    ),
    Spec("l-16x16-q30", (16, 16), "L", {"quality": 30}),
    Spec("seed-dense-50x40", (50, 40), "RGB", {"model": "seed-dense"}),
    Spec("kae-mid-24x24-step3", (24, 24), "RGB", {"model": "kae-mid", "gain_step": 3}),
    Spec("la-24x20-q90", (24, 20), "LA", {"quality": 90}),
    Spec("rgb-130x70-q10", (130, 70), "RGB", {"quality": 10}),
    Spec("rgb-1100x70-q60-2tiles", (1100, 70), "RGB", {"quality": 60}),
    Spec("rgb-1024x1-q60", (1024, 1), "RGB", {"quality": 60}),  # a one-row tile to repeat
    Spec("photo-48x40-q80", (48, 40), "RGB", {"quality": 80}, crop_of="coffee.png"),
)
SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"


def _image(spec: Spec, seed: int) -> Image.Image:
    """A smooth gradient with a little noise, the kind of image the codec is made for, or
    the crop of a photo."""
    width, height = spec.size
    if spec.crop_of is not None:
        with Image.open(SAMPLES / spec.crop_of) as photo:
            return photo.convert(spec.mode).crop((150, 100, 150 + width, 100 + height))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = xx / max(width - 1, 63), yy / max(height - 1, 63)
    planes = np.stack([40 + 170 * u, 60 + 150 * v, 200 - 60 * (u + v), 90 + 100 * u * v], -1)
    noise = np.random.default_rng(seed).normal(0, 2, planes.shape)
    rgba = np.clip(np.rint(planes + noise), 0, 255).astype(np.uint8)
    return Image.fromarray(rgba).convert(spec.mode)


def build_corpus(specs: Sequence[Spec] = CORPUS) -> list[bytes]:
    """Every spec encoded through ``Image.save`` (this loads the runtime and the models)."""
    files = []
    for number, spec in enumerate(specs):
        buffer = io.BytesIO()
        _image(spec, seed=number).save(buffer, "KAE", **spec.options)
        files.append(buffer.getvalue())
    return files


# -- decoding a case ------------------------------------------------------------------------


def decode(data: bytes) -> str:
    """Open and load ``data`` as KAE; a digest of mode, size and pixels. Errors propagate."""
    with Image.open(io.BytesIO(data), formats=["KAE"]) as im:
        im.load()
        return hashlib.sha256(f"{im.mode} {im.size}".encode() + im.tobytes()).hexdigest()


def _why_unidentified(data: bytes) -> BaseException:
    """What the plugin raised where ``Image.open`` only says "cannot identify image file".

    Pillow turns IndexError, TypeError, KeyError, EOFError and struct.error in a plugin's
    ``_open`` into SyntaxError and then into UnidentifiedImageError: a bug would hide there.
    """
    try:
        KaeImagePlugin.KaeImageFile(io.BytesIO(data)).close()
    except KeyboardInterrupt:
        raise
    except BaseException as err:
        return err.__cause__ if isinstance(err.__cause__, _MASKED_BY_PILLOW) else err
    return UnidentifiedImageError("the plugin opens it when called directly")


def run_case(data: bytes, reference: str | None = None) -> tuple[str, str]:
    """(outcome, detail) of decoding ``data``.

    'decoded', or 'garbage' when a ``reference`` digest is given and the pixels differ;
    'error' with "Type: message" for a clean error (for UnidentifiedImageError, the message
    of the plugin's own error); 'unclean' with the traceback of any other exception
    (BaseException included: a Rust panic in an extension is one), also one Pillow hid.
    """
    try:
        digest = decode(data)
    except CLEAN_ERRORS as err:
        if not isinstance(err, UnidentifiedImageError):
            return "error", f"{type(err).__name__}: {err}"
        cause = _why_unidentified(data)
        if not isinstance(cause, CLEAN_ERRORS):
            return "unclean", "".join(traceback.format_exception(cause))
        return "error", f"UnidentifiedImageError: {cause}"
    except KeyboardInterrupt:
        raise
    except BaseException:
        return "unclean", traceback.format_exc()
    if reference is not None and digest != reference:
        return "garbage", ""
    return "decoded", ""


@contextmanager
def pixel_limit(max_pixels: int) -> Iterator[None]:
    """Refuse images above ``max_pixels`` at open, as Pillow's fuzzers do with the bomb check.

    Pillow warns above ``MAX_IMAGE_PIXELS`` and raises above twice that; the warning becomes
    an error here.
    """
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


# -- making cases ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """One file to decode, and how it was made from corpus file ``source``."""

    mode: str
    index: int
    source: int
    mutation: str
    data: bytes


Chunks = list[tuple[bytes, bytes]]
_METADATA = ((b"iCCP", "icc_profile"), (b"eXIf", "exif"), (b"xMPs", "xmp"))
_MODEL_FIELDS = ("model_name", "weights_hash", *container.MODEL_FIELDS)
_MODE_CODES = {mode.encode("ascii"): code for code, mode in enumerate(container.MODES)}
_SIDES = (0, 1, 2, 15, 16, 17, 47, 48, 49, 63, 64, 65, 1023, 1024, 1025, 4097, 2**24, 2**32 - 1)
_TILE_SIZES = (0, 1, 63, 64, 65, 128, 960, 1024, 1088, 4096, 4160, 65472, 65535)
_GAIN_STEPS = (-32768, -64, -63, -11, -10, -1, 0, 1, 2, 4, 5, 63, 64, 32767)
_MODEL_NAMES = (b"", b"not-installed", b"../weights/kae-mid", b"kae-mid\0", b"KAE-MID")
_MODEL_NAMES += (b"kae-mid.npz", "été".encode(), b"a" * 64, b"a" * 65, b"a" * 255)
_FIELD_VALUES: dict[str, tuple[int | bytes, ...]] = {
    "version": (0, 1, 2, 3, 7, 8, 9, 255),
    "quality": (0, 1, 100, 101, 255),
    "latent_channels": (0, 1, 127, 128, 129, 191, 192, 193, 320, 1728, 65535),
    "hyper_channels": (0, 1, 127, 128, 129, 191, 192, 193, 320, 1728, 65535),
    "stride": (0, 1, 2, 4, 8, 16, 32, 48, 255),
    "hyper_stride": (0, 1, 2, 4, 8, 16, 32, 48, 255),
    "mode": (b"RGB", b"L", b"RGBA", b"LA", b"", b"P", b"1", b"I;16", b"RGBX", b"rgb", b"\xff"),
}
# Whole shapes: a legal pixel count in extreme aspect ratios (the codec pads to 64), bombs.
_SHAPES = ((1, 1), (1, 2), (63, 1), (65, 65), (1100, 70), (1024, 1024), (4096, 64), (64, 4096))
_SHAPES += ((16384, 16), (65472, 1), (1, 65472), (2**24, 1), (2**24, 2**24), (2**32 - 1, 1))
_MAX_FIXED_TILES = 256  # a forged grid larger than this keeps the tiles it has
# The methods of _Forgery that forge, and how often each is picked.
_FORGERIES = {
    "tile": 30,
    "field": 25,
    "size": 5,
    "model": 5,
    "khdr_bytes": 5,
    "alpha": 10,
    "restoration": 10,
    "metadata": 10,
    "structure": 15,
}


def chunk(ctype: bytes, data: bytes) -> bytes:
    """A chunk (PNG's framing, as in .kae) with a valid length and CRC, whatever it holds."""
    crc = zlib.crc32(ctype + data)
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", crc)


def pack_khdr(fields: dict[str, int | bytes]) -> bytes:
    """KHDR data from any field values, each wrapped to its width: Header.pack would refuse.
    Version 8 and above in its compact layout (an unknown mode gets an unknown code)."""

    def wrap(name: str, bits: int, less: int = 0) -> int:
        value = fields[name]
        assert isinstance(value, int)
        return (value - less) % (1 << bits)

    mode, name, digest = (bytes(fields[k]) for k in ("mode", "model_name", "weights_hash"))
    if wrap("version", 8) >= container.COMPACT_VERSION:
        code = _MODE_CODES.get(mode, len(container.MODES) + len(mode))
        return b"".join(
            (
                bytes([wrap("version", 8)]),
                wrap("width", 24, 1).to_bytes(3, "big"),
                wrap("height", 24, 1).to_bytes(3, "big"),
                bytes([code % 256, len(name)]) + name,
                digest,
                struct.pack(
                    ">BHH", wrap("quality", 8), wrap("tile_size", 16), wrap("gain_step", 16)
                ),
            )
        )
    return b"".join(
        (
            struct.pack(">BII", wrap("version", 8), wrap("width", 32), wrap("height", 32)),
            bytes([len(mode)]) + mode,
            bytes([len(name)]) + name,
            digest,
            struct.pack(
                ">BHHHBBH",  # the signed gain step, wrapped to 16 bits, has the same bytes
                wrap("quality", 8),
                wrap("tile_size", 16),
                wrap("latent_channels", 16),
                wrap("hyper_channels", 16),
                wrap("stride", 8),
                wrap("hyper_stride", 8),
                wrap("gain_step", 16),
            ),
        )
    )


def _header_fields(header: container.Header) -> dict[str, int | bytes]:
    """Every field a KHDR of any version can hold; those version 8 leaves out (what the
    model fixes) from the model, so that a forged older version gets them right."""
    fields: dict[str, int | bytes] = {
        k: v for k, v in dataclasses.asdict(header).items() if isinstance(v, int | bytes)
    }
    model = loader.load(header.model_name, header.weights_hash)
    for name in container.MODEL_FIELDS:
        fields.setdefault(name, getattr(model, name))
    fields["mode"] = header.mode.encode("ascii")
    fields["model_name"] = header.model_name.encode("ascii")
    return fields


def _chunks(kae: container.KaeFile) -> Chunks:
    """The chunks after KHDR, in the writer's order."""
    out = [(ctype, getattr(kae, name)) for ctype, name in _METADATA if getattr(kae, name)]
    if kae.alpha is not None:
        out.append((b"ALPH", kae.alpha))
    if kae.restoration is not None:
        out.append((b"KRST", kae.restoration))
    out += [(b"KTIL", tile) for tile in kae.tiles]
    if kae.header.version < container.COMPACT_VERSION:  # version 8 ends with its last tile
        out.append((b"KEND", b""))
    return out


def _png(im: Image.Image) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, "PNG")
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` but whose data is a few bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _flip_bits(rng: random.Random, data: bytes, count: int) -> bytes:
    out = bytearray(data)
    for _ in range(count if out else 0):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


class Corpus:
    """The files to mutate, parsed once, and the material forged chunks are made of."""

    def __init__(self, files: Sequence[bytes]) -> None:
        self.files = list(files)
        self.parsed = [container.read(io.BytesIO(data)) for data in self.files]
        self.tiles = [tile for kae in self.parsed for tile in kae.tiles]
        self.filters = [kae.restoration for kae in self.parsed if kae.restoration is not None]
        self.fields = [_header_fields(kae.header) for kae in self.parsed]
        models = {fields["model_name"]: fields for fields in self.fields}
        self.models = [{k: fields[k] for k in _MODEL_FIELDS} for fields in models.values()]
        self._alpha_pngs: dict[tuple[int, int], list[bytes]] = {}

    def case(self, mode: str, seed: int, index: int) -> Case:
        """Case ``index`` of ``mode``: a function of (seed, mode, index) alone."""
        rng = random.Random(f"{seed}:{mode}:{index}")
        source = rng.randrange(len(self.files))
        if mode == "forged":
            forgery = _Forgery(self, rng, source)
            data, mutation = forgery.forge()
        else:
            data, mutation = damage(rng, self.files[source])
        return Case(mode, index, source, mutation, data)

    def alpha_pngs(self, width: int, height: int) -> list[bytes]:
        """Alpha planes for a width x height header: a valid one and near misses."""
        if min(width, height) < 1 or width * height > 1 << 20:
            width, height = 5, 5
        if (width, height) not in self._alpha_pngs:
            rng = np.random.default_rng(width * 7919 + height)
            plane = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8))
            self._alpha_pngs[(width, height)] = [
                _png(plane),
                _png(plane.resize((width + 1, height))),
                _png(plane.convert("RGB")),
                _png(plane.convert("1")),
                _png(plane.convert("P")),
                _png(plane.convert("I;16")),
                _png(plane.convert("LA")),
                _png(plane)[:-20],
                _png_claiming(width, height),
                _png_claiming(40000, 40000),
            ]
        return self._alpha_pngs[(width, height)]


class _Forgery:
    """A corpus file taken apart: KHDR fields (or raw KHDR bytes) and the other chunks."""

    def __init__(self, corpus: Corpus, rng: random.Random, source: int) -> None:
        self.corpus, self.rng = corpus, rng
        kae = corpus.parsed[source]
        self.fields = dict(corpus.fields[source])
        self.khdr: bytes | None = None  # raw KHDR data, once bytes rather than fields change
        self.chunks = _chunks(kae)
        self.trailer = b""

    def forge(self) -> tuple[bytes, str]:
        """One to three forgeries, then the file with valid lengths and CRCs."""
        names = self.rng.choices(
            list(_FORGERIES), weights=list(_FORGERIES.values()), k=self.rng.choice((1, 1, 2, 3))
        )
        notes = [getattr(self, name)() for name in names]
        khdr = pack_khdr(self.fields) if self.khdr is None else self.khdr
        body = chunk(b"KHDR", khdr) + b"".join(chunk(t, d) for t, d in self.chunks)
        return container.SIGNATURE + body + self.trailer, "; ".join(notes)

    def _positions(self, ctype: bytes) -> list[int]:
        return [i for i, (t, _) in enumerate(self.chunks) if t == ctype]

    def _random_bytes(self, most: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, most))

    # -- tile payloads

    def tile(self) -> str:
        """One tile payload: random, flipped, cut, extended, emptied, swapped or spliced."""
        rng = self.rng
        positions = self._positions(b"KTIL")
        if not positions:
            return "tile: none left"
        at = rng.choice(positions)
        payload = self.chunks[at][1]
        kind = rng.choice(
            (
                "random-words",
                "random-bytes",
                "flip",
                "set-bytes",
                "truncate",
                "truncate-words",
                "extend",
                "zeros",
                "ones",
                "empty",
                "swap",
                "splice",
                "repeat",
            )
        )
        words = rng.randint(1, 64)
        if kind == "random-words":
            payload = rng.randbytes(4 * words)
        elif kind == "random-bytes":
            payload = self._random_bytes(256)
        elif kind == "flip":
            payload = _flip_bits(rng, payload, rng.randint(1, 8))
        elif kind == "set-bytes":
            out = bytearray(payload)
            for _ in range(rng.randint(1, 4) if out else 0):
                out[rng.randrange(len(out))] = rng.choice((0, 0xFF, rng.randrange(256)))
            payload = bytes(out)
        elif kind == "truncate":
            payload = payload[: rng.randrange(len(payload) + 1)]
        elif kind == "truncate-words":
            payload = payload[: 4 * rng.randrange(len(payload) // 4 + 1)]
        elif kind == "extend":
            payload += rng.choice((rng.randbytes(4 * words), bytes(4 * words)))
        elif kind == "zeros":
            payload = bytes(len(payload) or 4 * words)
        elif kind == "ones":
            payload = b"\xff" * (len(payload) or 4 * words)
        elif kind == "empty":
            payload = b""
        elif kind == "swap" and len(positions) > 1:
            other = rng.choice([p for p in positions if p != at])
            self.chunks[at], self.chunks[other] = self.chunks[other], self.chunks[at]
            return f"tile {positions.index(at)}: swap with {positions.index(other)}"
        elif kind == "repeat":
            payload *= 2
        else:  # "splice", or a swap with one tile: a payload from another file
            payload = rng.choice(self.corpus.tiles)
        self.chunks[at] = (b"KTIL", payload)
        return f"tile {positions.index(at)}: {kind} -> {len(payload)} bytes"

    def _fix_tiles(self) -> str:
        """Give the forged grid as many tiles as it needs, so the forgery gets past the count."""
        width, height = self._int("width") % 2**32, self._int("height") % 2**32
        size = self._int("tile_size") % 2**16
        if not (width and height and size):
            return ""
        count = -(-width // size) * -(-height // size)
        positions = self._positions(b"KTIL")
        if count > _MAX_FIXED_TILES or not positions or self.rng.random() < 0.3:
            return ""
        own = self.rng.random() < 0.6
        pool = [self.chunks[p][1] for p in positions] if own else self.corpus.tiles
        new = [(b"KTIL", pool[i % len(pool)]) for i in range(count)]
        self.chunks[positions[0] : positions[-1] + 1] = new
        return f", {count} {'own' if own else 'corpus'} tiles"

    def _fix_alpha(self) -> str:
        """Add or drop ALPH to suit a forged mode (most of the time)."""
        mode = self.fields["mode"]
        positions = self._positions(b"ALPH")
        if self.rng.random() < 0.3:
            return ""
        if mode in (b"RGBA", b"LA") and not positions:
            self._insert_alpha(self.corpus.alpha_pngs(self._int("width"), self._int("height"))[0])
            return ", ALPH added"
        if mode not in (b"RGBA", b"LA") and positions:
            del self.chunks[positions[0]]
            return ", ALPH dropped"
        return ""

    def _insert_alpha(self, data: bytes) -> None:
        tiles = self._positions(b"KTIL")
        self.chunks.insert(tiles[0] if tiles else len(self.chunks), (b"ALPH", data))

    # -- KHDR

    def _int(self, name: str) -> int:
        value = self.fields[name]
        assert isinstance(value, int)
        return value

    def _value(self, name: str) -> int | bytes:
        """A value for KHDR field ``name``: edge cases, out-of-range values, other models'."""
        rng, current = self.rng, self.fields[name]
        if name in ("width", "height"):
            assert isinstance(current, int)
            near = [current - 1, current + 1, current // 2, current * 3 // 2, current * 2]
            return rng.choice([*_SIDES, *near, rng.randint(1, 2000)])
        if name == "tile_size":
            return rng.choice([*_TILE_SIZES, 64 * rng.randint(1, 64)])
        if name == "gain_step":
            return rng.choice([*_GAIN_STEPS, rng.randint(-63, 63)])
        if name == "model_name":
            return rng.choice([*(m["model_name"] for m in self.corpus.models), *_MODEL_NAMES])
        if name == "weights_hash":
            assert isinstance(current, bytes)
            near_misses = [
                bytes(len(current)),
                _flip_bits(rng, current, 1),
                current[:-1],
                current + b"\0",
                hashlib.sha256(current).digest(),
            ]
            return rng.choice([*(m["weights_hash"] for m in self.corpus.models), *near_misses])
        return rng.choice(_FIELD_VALUES[name])

    def field(self) -> str:
        """One KHDR field: edge and out-of-range values, with tiles or ALPH to match."""
        name = self.rng.choice(sorted(self.fields))
        self.fields[name] = value = self._value(name)
        self.khdr = None
        note = f"KHDR {name} = {value!r}"[:100]
        if name in ("width", "height", "tile_size"):
            note += self._fix_tiles()
        elif name == "mode":
            note += self._fix_alpha()
        return note

    def size(self) -> str:
        """Width and height together, so that an extreme shape gets past the tile count."""
        rng = self.rng
        shape = rng.choice([*_SHAPES, (rng.randint(1, 2000), rng.randint(1, 2000))])
        self.fields["width"], self.fields["height"] = shape
        if rng.random() < 0.5:
            self.fields["tile_size"] = rng.choice((64, 1024, 4096))
        self.khdr = None
        return f"KHDR size = {shape[0]}x{shape[1]}, tile {self.fields['tile_size']}" + (
            self._fix_tiles()
        )

    def model(self) -> str:
        """Another corpus model's name, hash, channels and strides: the payload reaches it."""
        model = self.rng.choice(self.corpus.models)
        self.fields.update(model)
        self.khdr = None
        return f"KHDR model = {model['model_name']!r}"

    def khdr_bytes(self) -> str:
        """Raw KHDR data: flipped, overwritten, cut or extended (the CRC still fits)."""
        rng = self.rng
        data = pack_khdr(self.fields) if self.khdr is None else self.khdr
        # An earlier cut may have left nothing: then only extending is possible.
        kind = rng.choice(("flip", "set-byte", "truncate", "extend") if data else ("extend",))
        if kind == "flip":
            data = _flip_bits(rng, data, rng.randint(1, 4))
        elif kind == "set-byte":
            out = bytearray(data)
            out[rng.randrange(len(out))] = rng.randrange(256)
            data = bytes(out)
        elif kind == "truncate":
            data = data[: rng.randrange(len(data))]
        else:
            data += rng.randbytes(rng.randint(1, 8))
        self.khdr = data
        return f"KHDR bytes: {kind}"

    # -- ALPH and metadata

    def alpha(self) -> str:
        """ALPH: other PNGs (wrong size or mode, a bomb), damaged PNG, noise; or added."""
        rng = self.rng
        positions = self._positions(b"ALPH")
        pngs = self.corpus.alpha_pngs(self._int("width"), self._int("height"))
        if not positions:
            self._insert_alpha(rng.choice(pngs))
            if rng.random() < 0.3:
                return "ALPH added"
            self.fields["mode"] = rng.choice((b"RGBA", b"LA"))
            self.khdr = None
            return f"ALPH added, mode {self.fields['mode']!r}"
        at = positions[0]
        data = self.chunks[at][1]
        kind = rng.choice(("png", "png", "flip", "truncate", "random", "empty"))
        if kind == "png":
            number = rng.randrange(len(pngs))
            data = pngs[number]
            kind = f"png {number}"
        elif kind == "flip":
            data = _flip_bits(rng, data, rng.randint(1, 8))
        elif kind == "truncate":
            data = data[: rng.randrange(len(data) + 1)]
        elif kind == "random":
            data = self._random_bytes(512)
        else:
            data = b""
        self.chunks[at] = (b"ALPH", data)
        return f"ALPH: {kind}"

    # -- KRST

    def restoration(self) -> str:
        """KRST: noise, flipped bits, cut, extended, another file's, extreme coefficients,
        forged counts; or added (to any version)."""
        rng = self.rng
        positions = self._positions(b"KRST")
        kind = rng.choice(
            ("random", "flip", "truncate", "extend", "splice", "extreme", "counts", "added")
        )
        if not positions or kind == "added":
            data = rng.choice(self.corpus.filters + _EXTREME_FILTERS)
            tiles = self._positions(b"KTIL")
            self.chunks.insert(tiles[0] if tiles else len(self.chunks), (b"KRST", data))
            return f"KRST added, version {self.fields['version']}"
        at = positions[0]
        data = self.chunks[at][1]
        if kind == "random":
            data = self._random_bytes(200)
        elif kind == "flip":
            data = _flip_bits(rng, data, rng.randint(1, 8))
        elif kind == "truncate":
            data = data[: rng.randrange(len(data) + 1)]
        elif kind == "extend":
            data += self._random_bytes(16)
        elif kind == "splice":
            data = rng.choice(self.corpus.filters or [data])
        elif kind == "extreme":
            data = rng.choice(_EXTREME_FILTERS)
        else:
            data = data[:1] + bytes([rng.randrange(256), rng.randrange(256)]) + data[3:]
        self.chunks[at] = (b"KRST", data)
        return f"KRST: {kind} -> {len(data)} bytes"

    def metadata(self) -> str:
        """Metadata and unknown chunks (ancillary and critical), replaced or inserted."""
        rng = self.rng
        ctype = rng.choice((b"iCCP", b"eXIf", b"xMPs", b"teSt", b"zzzz", b"TEST", b"Ktil"))
        data = rng.choice(
            (self._random_bytes(300), b"", _EXIF, rng.randbytes(1 << 16), b"<x/>" * 100)
        )
        positions = self._positions(ctype)
        if positions and rng.random() < 0.7:
            self.chunks[positions[0]] = (ctype, data)
            return f"{ctype.decode()}: {len(data)} bytes"
        self.chunks.insert(rng.randrange(len(self.chunks) + 1), (ctype, data))
        return f"{ctype.decode()}: inserted, {len(data)} bytes"

    def structure(self) -> str:
        """Chunk order and framing: drop, duplicate, swap, move, cut, bad types, trailer."""
        rng, chunks = self.rng, self.chunks
        kind = rng.choice(
            ("drop", "duplicate", "swap", "move", "khdr", "kend-body", "cut", "trailer", "type")
        )
        if not chunks:
            kind = "khdr"
        at = rng.randrange(len(chunks)) if chunks else 0
        if kind == "drop":
            del chunks[at]
        elif kind == "duplicate":
            chunks.insert(rng.randrange(len(chunks) + 1), chunks[at])
        elif kind == "swap":
            other = rng.randrange(len(chunks))
            chunks[at], chunks[other] = chunks[other], chunks[at]
        elif kind == "move":
            chunks.insert(rng.randrange(len(chunks)), chunks.pop(at))
        elif kind == "khdr":
            chunks.insert(at, (b"KHDR", pack_khdr(self.fields)))
        elif kind == "kend-body":
            positions = self._positions(b"KEND") or [len(chunks) - 1]
            chunks[positions[-1]] = (b"KEND", rng.randbytes(rng.randint(1, 8)))
        elif kind == "cut":
            del chunks[at:]
        elif kind == "trailer":
            self.trailer = rng.randbytes(rng.randint(1, 64))
        else:
            ctype = rng.choice((b"K1IL", b"\x00\x00\x00\x00", b"KT L", b"\xcbTIL"))
            chunks[at] = (ctype, chunks[at][1])
        return f"structure: {kind} at {at}"


#: Valid filters at the limits, one per shape: one filter of the largest coefficients,
#: alternating sign, the tightest clip.
_EXTREME_FILTERS = [
    restoration.RestorationFilter(
        (),
        np.zeros((1, shape.classes), np.uint8),
        restoration.MAX_COEFFICIENT
        * np.resize(np.array([1, -1], np.int32), (3, 1, shape.coefficients)),
        shape,
        1 if shape.clipped else restoration.NO_CLIP,
    ).pack()
    for shape in restoration.SHAPES.values()
]


def damage(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """1-3 random byte-level changes: bit flips, byte sets, cuts, deletions, insertions."""
    out = bytearray(data)
    notes = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        kind = rng.choice(("flip", "byte", "cut", "delete", "insert", "duplicate"))
        at = rng.randrange(len(out) + 1)
        size = rng.randint(1, 16)
        if kind in ("flip", "byte") and at < len(out):
            if kind == "flip":
                out[at] ^= 1 << rng.randrange(8)
            else:
                out[at] = rng.randrange(256)
        elif kind == "cut":
            del out[at:]
        elif kind == "delete":
            del out[at : at + size]
        elif kind == "insert":
            out[at:at] = rng.randbytes(size)
        elif kind == "duplicate":
            out[at:at] = out[at : at + size]
        notes.append(f"{kind} at {at}")
    return bytes(out), ", ".join(notes)


# -- the campaign ---------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    """This process's peak RSS (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _serve(conn: connection.Connection, files: list[bytes], max_pixels: int) -> None:
    """Worker: load the runtime and decode the corpus (the damage references), then run cases."""
    with pixel_limit(max_pixels):
        references = [decode(data) for data in files]
        conn.send(_peak_rss_mb())
        while (job := conn.recv()) is not None:
            mode, source, data = job
            start = time.perf_counter()
            outcome, detail = run_case(data, references[source] if mode == "damage" else None)
            conn.send((outcome, detail, time.perf_counter() - start, _peak_rss_mb()))


class _Worker:
    """A long-lived decoding process, the case it is running and that case's deadline."""

    def __init__(self, context: SpawnContext, files: list[bytes], max_pixels: int) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, files, max_pixels), daemon=True)
        self.process.start()
        child.close()
        self.case: Case | None = None
        self.ready = False
        self.deadline = time.monotonic() + STARTUP_S

    def start(self, case: Case, timeout: float) -> None:
        self.case = case
        self.deadline = time.monotonic() + timeout
        self.conn.send((case.mode, case.source, case.data))

    def stop(self) -> None:
        if self.process.is_alive() and self.ready and self.case is None:
            self.conn.send(None)
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()


@dataclasses.dataclass
class Tally:
    """Outcomes of one mode's cases."""

    counts: Counter[str] = dataclasses.field(default_factory=Counter)
    errors: Counter[str] = dataclasses.field(default_factory=Counter)  # clean errors by type
    messages: Counter[str] = dataclasses.field(default_factory=Counter)  # digits as '#'
    examples: dict[str, list[dict[str, object]]] = dataclasses.field(default_factory=dict)
    slowest: tuple[float, int, str] = (0.0, -1, "")

    def add(self, case: Case, outcome: str, detail: str, seconds: float) -> None:
        self.counts[outcome] += 1
        if outcome == "error":
            self.errors[detail.split(":", 1)[0]] += 1
            self.messages[_MESSAGE_NUMBERS.sub("#", detail)[:120]] += 1
        if seconds > self.slowest[0]:
            self.slowest = (seconds, case.index, case.mutation)
        if outcome in BAD:
            kept = self.examples.setdefault(outcome, [])
            if len(kept) < EXAMPLES:
                kept.append({"index": case.index, "mutation": case.mutation, "detail": detail})

    def summary(self) -> dict[str, object]:
        return {
            "counts": {o: self.counts[o] for o in OUTCOMES},
            "clean_errors": dict(self.errors.most_common()),
            "messages": dict(self.messages.most_common(15)),
            "slowest": {
                "seconds": self.slowest[0],
                "index": self.slowest[1],
                "mutation": self.slowest[2],
            },
            "examples": self.examples,
        }


def _jobs(corpus: Corpus, modes: Sequence[str], cases: int, seed: int) -> Iterator[Case]:
    """The cases of every mode, interleaved, so an interrupted run still has both."""
    for index in range(cases):
        for mode in modes:
            yield corpus.case(mode, seed, index)


def campaign(
    corpus: Corpus,
    modes: Sequence[str],
    cases: int,
    seed: int,
    workers: int,
    timeout: float,
    max_pixels: int,
    save: Path | None,
) -> dict[str, object]:
    """Run every case in ``workers`` processes; the tallies, worker RSS and wall time."""
    context = get_context("spawn")
    tallies = {mode: Tally() for mode in modes}
    jobs = _jobs(corpus, modes, cases, seed)
    left = cases * len(modes)  # cases not yet sent to a worker
    pool = [_Worker(context, corpus.files, max_pixels) for _ in range(min(workers, left))]
    startup_rss, peak_rss, peak_case = 0.0, 0.0, ""
    shown: Counter[str] = Counter()
    progress = tqdm(total=cases * len(modes), desc="fuzz", smoothing=0.05)
    start = time.perf_counter()
    interrupted = False

    def replace(worker: _Worker) -> None:
        """Stop a worker that crashed or hung; start another if cases are left."""
        worker.stop()
        pool.remove(worker)
        if left:
            pool.append(_Worker(context, corpus.files, max_pixels))

    def finish(worker: _Worker, outcome: str, detail: str, seconds: float) -> None:
        case = worker.case
        assert case is not None
        worker.case = None
        tallies[case.mode].add(case, outcome, detail, seconds)
        progress.update()
        if outcome not in BAD:
            return
        progress.set_postfix({o: sum(t.counts[o] for t in tallies.values()) for o in BAD})
        if save is not None:
            save.mkdir(parents=True, exist_ok=True)
            (save / f"{case.mode}-{case.index}.kae").write_bytes(case.data)
        if shown[case.mode] < SHOWN:
            shown[case.mode] += 1
            progress.write(
                f"\n{outcome}: {case.mode} case {case.index} ({case.mutation})\n{detail}"
            )

    try:
        while True:
            for worker in pool:
                if worker.ready and worker.case is None and left:
                    worker.start(next(jobs), timeout)
                    left -= 1
            active = [w for w in pool if not w.ready or w.case is not None]
            if not active:
                break
            wait = max(min(w.deadline for w in active) - time.monotonic(), 0)
            readable = connection.wait([w.conn for w in active], timeout=wait)
            for worker in active:
                if worker.conn in readable:
                    try:
                        message = worker.conn.recv()
                    except EOFError:
                        if worker.case is None:
                            raise RuntimeError("a fuzz worker died while starting") from None
                        code = worker.process.exitcode
                        finish(worker, "crash", f"worker exit code {code}", timeout)
                        replace(worker)
                        continue
                    if not worker.ready:
                        worker.ready = True
                        startup_rss = max(startup_rss, message)
                        continue
                    outcome, detail, seconds, rss = message
                    if rss > peak_rss:
                        assert worker.case is not None
                        peak_rss = rss
                        peak_case = f"{worker.case.mode} {worker.case.index}"
                    finish(worker, outcome, detail, seconds)
                elif time.monotonic() > worker.deadline:
                    if worker.case is None:
                        raise RuntimeError(f"a fuzz worker did not start in {STARTUP_S:.0f} s")
                    finish(worker, "hang", f"no result in {timeout} s", timeout)
                    replace(worker)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
        for worker in pool:
            worker.stop()
    return {
        "modes": {mode: tally.summary() for mode, tally in tallies.items()},
        "worker_rss_after_startup_mb": startup_rss,
        "worker_peak_rss_mb": peak_rss,
        "worker_peak_rss_case": peak_case,
        "wall_s": time.perf_counter() - start,
        "interrupted": interrupted,
    }


def _build_corpus_elsewhere() -> list[bytes]:
    """Encode the corpus in a process of its own, so this one never loads the runtime."""
    with get_context("spawn").Pool(1) as pool:
        return pool.apply(build_corpus)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=100_000, help="cases per mode")
    parser.add_argument("--mode", choices=(*MODES, "both"), default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per case")
    parser.add_argument("--max-pixels", type=int, default=1 << 18, help="bomb limit at open")
    parser.add_argument("--json", type=Path, default=Path("out/fuzz.json"))
    parser.add_argument(
        "--save",
        type=Path,
        default=Path("out/fuzz-cases"),
        help="folder for the bytes of bad cases",
    )
    args = parser.parse_args(argv)
    modes = MODES if args.mode == "both" else (args.mode,)
    # One thread per worker: the workers, not the runtime's thread pools, share the cores.
    for knob in ("KAE_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(knob, "1")

    corpus = Corpus(_build_corpus_elsewhere())
    print(
        "corpus: "
        + ", ".join(f"{s.name} ({len(f)} B)" for s, f in zip(CORPUS, corpus.files, strict=True))
    )
    report = campaign(
        corpus, modes, args.cases, args.seed, args.workers, args.timeout, args.max_pixels, args.save
    )
    print(f"\n{'mode':<7} {'cases':>7} " + " ".join(f"{o:>8}" for o in OUTCOMES))
    for mode, summary in report["modes"].items():  # type: ignore[union-attr]
        counts = summary["counts"]
        row = " ".join(
            f"{'-' if o == 'garbage' and mode == 'forged' else counts[o]:>8}" for o in OUTCOMES
        )
        print(f"{mode:<7} {sum(counts.values()):>7} {row}")
        errors = ", ".join(f"{k} {v}" for k, v in summary["clean_errors"].items())
        print(f"        clean errors: {errors or 'none'}")
        slowest = summary["slowest"]
        print(
            f"        slowest: {slowest['seconds']:.2f} s, case {slowest['index']} "
            f"({slowest['mutation']})"
        )
    print(
        f"worker RSS: {report['worker_rss_after_startup_mb']:.0f} MB after start-up, peak "
        f"{report['worker_peak_rss_mb']:.0f} MB (case {report['worker_peak_rss_case']}); "
        f"wall {report['wall_s']:.0f} s with {args.workers} workers"
        + (" (interrupted)" if report["interrupted"] else "")
    )
    report.update(
        {
            "seed": args.seed,
            "cases_per_mode": args.cases,
            "timeout_s": args.timeout,
            "max_pixels": args.max_pixels,
            "workers": args.workers,
            "corpus": {s.name: len(f) for s, f in zip(CORPUS, corpus.files, strict=True)},
        }
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
