"""Byte-level reader and writer for the ``.kae`` container.

The container is modelled on PNG: an 8-byte signature followed by a sequence
of length-prefixed, CRC-protected chunks.  This module knows nothing about
neural networks or pixels; it only moves opaque payloads in and out of a file
and refuses anything malformed, so that the codec layers above it can trust
what they are handed.  The byte layout is documented in ``docs/format.md``.

Every problem with the *content* of a file raises :class:`KaeFormatError`
(a :class:`ValueError`); the Pillow plugin maps it onto ``SyntaxError`` or
``OSError`` as Pillow expects.  Lengths read from a file are always checked
against the bytes that remain before anything is read, and data is read in
bounded pieces, so a hostile length field cannot make the reader allocate
memory the file does not back.
"""

from __future__ import annotations

import io
import logging
import re
import struct
import zlib
from dataclasses import dataclass
from typing import IO

__all__ = [
    "CASCADE_RESTORATION_VERSION",
    "CHANNEL_CONDITIONAL_VERSION",
    "COLOUR_RESTORATION_VERSION",
    "COMPACT_VERSION",
    "FINE_GAIN_VERSION",
    "FORMAT_VERSION",
    "GAIN_STEP_DIVISIONS",
    "MAX_CHUNK_LENGTH",
    "MAX_DIMENSION",
    "MODEL_FIELDS",
    "MODES",
    "RESTORATION_VERSION",
    "SIGNATURE",
    "SUPPORTED_VERSIONS",
    "Header",
    "KaeFile",
    "KaeFormatError",
    "accept",
    "coding_version",
    "dumps",
    "read",
    "read_header",
    "weights_hash_length",
]

logger = logging.getLogger(__name__)

#: File signature.  The high-bit first byte catches 7-bit transports, the
#: CR LF / LF pair catches newline conversion and ^Z stops ``type`` on DOS.
SIGNATURE = b"\x89KAE\r\n\x1a\n"

#: Version byte written into ``KHDR``. 2: one latent grid over the whole image, seamless
#: tiles (docs/format.md §5.1); 1: tiles coded on their own; 3: as 2, with y coded in
#: channel slices (channel-conditional models only, which are written as 3); 4: as 2 or 3
#: (as the model codes), with the gain step in sixteenths of a step, for the rate points
#: between whole steps; 5: as 4, plus a ``KRST`` chunk, the restoration filter the decoder
#: applies to the pixels; 6: as 5, the filter in shape 2 (colour terms, clipping: the shape
#: byte of ``KRST`` must match the version); 7: as 6, the filters in shape 3 (wider colour
#: terms, up to four in a cascade); 8: codes as 7 (with a filter of any shape), in a compact
#: ``KHDR`` (the first 8 bytes of the weights hash, no fields the model fixes) and without
#: ``KEND``, 47 bytes less per file. Writers use version 8; readers accept all eight.
FORMAT_VERSION = 2
CHANNEL_CONDITIONAL_VERSION = 3
FINE_GAIN_VERSION = 4
RESTORATION_VERSION = 5
COLOUR_RESTORATION_VERSION = 6
CASCADE_RESTORATION_VERSION = 7
COMPACT_VERSION = 8
SUPPORTED_VERSIONS = (1, 2, 3, 4, 5, 6, 7, 8)

#: Largest width or height a header may declare.
MAX_DIMENSION = 2**24
MAX_GAIN_STEP = 63  # |gain step|: steps along the 64-entry scale table
GAIN_STEP_DIVISIONS = 16  # version 4 stores the gain step in sixteenths

#: Largest data length a single chunk may declare (PNG's limit).
MAX_CHUNK_LENGTH = 2**31 - 1

#: Image modes the container can describe.
MODES = ("RGB", "L", "RGBA", "LA")

#: Modes that carry a lossless alpha plane in an ``ALPH`` chunk.
ALPHA_MODES = frozenset({"RGBA", "LA"})

# Chunk types.
KHDR = b"KHDR"
KTIL = b"KTIL"
KRST = b"KRST"
ALPH = b"ALPH"
KEND = b"KEND"
EXIF = b"eXIf"
ICCP = b"iCCP"
XMPS = b"xMPs"

#: Ancillary chunks this module understands, and the KaeFile field of each.
_METADATA_CHUNKS: dict[bytes, str] = {
    EXIF: "exif",
    ICCP: "icc_profile",
    XMPS: "xmp",
}

#: The ``Header`` fields the model fixes: stored as a check before version 8, left out from it.
MODEL_FIELDS = ("latent_channels", "hyper_channels", "stride", "hyper_stride")
_MODEL_FIELD_LIMITS = (0xFFFF, 0xFFFF, 0xFF, 0xFF)

_MODEL_NAME_RE = re.compile(rb"[A-Za-z0-9._-]{1,64}")
_HASH_LENGTH = 32
#: Version 8 stores the first bytes of the SHA-256 only: 64 bits tell any two exports apart
#: (two share them with a chance of 2**-64), where a whole digest is 24 bytes more per file.
_COMPACT_HASH_LENGTH = 8
# KHDR without its two variable-length strings (whose length bytes are counted).
_KHDR_FIXED_LENGTH = 54
_COMPACT_FIXED_LENGTH = 22  # version 8: no mode string (a code), the name's length counted
_KHDR_MIN_LENGTH = _COMPACT_FIXED_LENGTH + 1  # a 1-char name
_KHDR_MAX_LENGTH = _KHDR_FIXED_LENGTH + 4 + 64
# Reads are done in pieces of at most this size, so memory grows only as fast
# as the stream actually delivers data.
_READ_PIECE = 1 << 20


class KaeFormatError(ValueError):
    """A ``.kae`` file (or a value destined for one) is malformed."""


def _check_int(name: str, value: object, low: int, high: int) -> None:
    # bool is an int subclass; True as a width would be a caller bug.
    if not isinstance(value, int) or isinstance(value, bool):
        raise KaeFormatError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise KaeFormatError(f"{name} {value} out of range [{low}, {high}]")


def weights_hash_length(version: int) -> int:
    """Bytes of the weights' SHA-256 a ``KHDR`` of ``version`` stores: all 32 before
    version 8, the first 8 from it."""
    return _COMPACT_HASH_LENGTH if version >= COMPACT_VERSION else _HASH_LENGTH


def coding_version(version: int) -> int:
    """The version whose coding rules a file of ``version`` follows: version 8 differs from
    7 in its container only (a compact ``KHDR``, no ``KEND``) and in taking a restoration
    filter of any shape."""
    return CASCADE_RESTORATION_VERSION if version >= COMPACT_VERSION else version


@dataclass(frozen=True)
class Header:
    """Contents of the ``KHDR`` chunk.

    Validated on construction, so a ``Header`` that exists is always one that
    can be written and read back; :meth:`unpack` therefore validates too.
    """

    width: int
    height: int
    mode: str
    model_name: str
    weights_hash: bytes
    quality: int
    tile_size: int
    gain_step: int
    version: int = FORMAT_VERSION
    # What the model fixes, stored before version 8 as a check (None in version 8, where the
    # weights hash alone names the model).
    latent_channels: int | None = None
    hyper_channels: int | None = None
    stride: int | None = None
    hyper_stride: int | None = None

    def __post_init__(self) -> None:
        if self.version not in SUPPORTED_VERSIONS:
            raise KaeFormatError(
                f"unsupported KHDR version {self.version} (this decoder reads "
                f"{', '.join(map(str, SUPPORTED_VERSIONS))}); a newer pillow-kae may read it"
            )
        _check_int("width", self.width, 1, MAX_DIMENSION)
        _check_int("height", self.height, 1, MAX_DIMENSION)
        if self.mode not in MODES:
            raise KaeFormatError(f"unsupported mode {self.mode!r}; expected one of {MODES}")
        if not isinstance(self.model_name, str) or not self.model_name.isascii():
            raise KaeFormatError(f"model name {self.model_name!r} is not ASCII text")
        if not _MODEL_NAME_RE.fullmatch(self.model_name.encode("ascii")):
            raise KaeFormatError(
                f"model name {self.model_name!r} must match [A-Za-z0-9._-]{{1,64}}"
            )
        length = weights_hash_length(self.version)
        if not isinstance(self.weights_hash, bytes) or len(self.weights_hash) != length:
            raise KaeFormatError(
                f"weights hash must be {length} bytes (of a SHA-256 digest) in version "
                f"{self.version}"
            )
        _check_int("quality", self.quality, 1, 100)
        _check_int("tile size", self.tile_size, 64, 0xFFFF)
        if self.tile_size % 64:
            raise KaeFormatError(f"tile size {self.tile_size} is not a multiple of 64")
        for name, high in zip(MODEL_FIELDS, _MODEL_FIELD_LIMITS, strict=True):
            field, value = name.replace("_", " "), getattr(self, name)
            if self.version < COMPACT_VERSION:
                _check_int(field, value, 1, high)
            elif value is not None:
                raise KaeFormatError(f"version {self.version} stores no {field}")
        limit = MAX_GAIN_STEP * (GAIN_STEP_DIVISIONS if self.version >= FINE_GAIN_VERSION else 1)
        _check_int("gain step", self.gain_step, -limit, limit)

    @staticmethod
    def gain_step_field(step: float, version: int) -> int:
        """The ``gain_step`` field that stores ``step`` in a file of ``version``."""
        field = step * GAIN_STEP_DIVISIONS if version >= FINE_GAIN_VERSION else step
        if field != int(field):
            raise KaeFormatError(f"gain step {step} cannot be stored in version {version}")
        return int(field)

    @property
    def step(self) -> float:
        """The latent gain step the file was coded at (``gain_step`` is whole steps before
        version 4, sixteenths from it)."""
        if self.version >= FINE_GAIN_VERSION:
            return self.gain_step / GAIN_STEP_DIVISIONS
        return float(self.gain_step)

    @property
    def tile_grid(self) -> tuple[int, int]:
        """(columns, rows) of tiles covering the image; edge tiles may be smaller."""
        return (-(-self.width // self.tile_size), -(-self.height // self.tile_size))

    @property
    def tile_count(self) -> int:
        """Number of ``KTIL`` chunks a file with this header must contain."""
        columns, rows = self.tile_grid
        return columns * rows

    @property
    def has_alpha(self) -> bool:
        """Whether the mode requires an ``ALPH`` chunk."""
        return self.mode in ALPHA_MODES

    def pack(self) -> bytes:
        """Serialise to ``KHDR`` chunk data (big-endian, see docs/format.md)."""
        mode = self.mode.encode("ascii")
        name = self.model_name.encode("ascii")
        if self.version >= COMPACT_VERSION:
            return b"".join(
                (
                    struct.pack(">B", self.version),
                    (self.width - 1).to_bytes(3, "big"),
                    (self.height - 1).to_bytes(3, "big"),
                    struct.pack(">BB", MODES.index(self.mode), len(name)),
                    name,
                    self.weights_hash,
                    struct.pack(">BHh", self.quality, self.tile_size, self.gain_step),
                )
            )
        return b"".join(
            (
                struct.pack(">BII", self.version, self.width, self.height),
                struct.pack(">B", len(mode)),
                mode,
                struct.pack(">B", len(name)),
                name,
                self.weights_hash,
                struct.pack(
                    ">BHHHBBh",
                    self.quality,
                    self.tile_size,
                    self.latent_channels,
                    self.hyper_channels,
                    self.stride,
                    self.hyper_stride,
                    self.gain_step,
                ),
            )
        )

    @classmethod
    def unpack(cls, data: bytes) -> Header:
        """Parse ``KHDR`` chunk data, rejecting short, long or out-of-range fields."""
        view = memoryview(data)
        offset = 0

        def take(size: int, field: str) -> bytes:
            nonlocal offset
            if offset + size > len(view):
                raise KaeFormatError(f"KHDR data truncated in field {field!r}")
            piece = bytes(view[offset : offset + size])
            offset += size
            return piece

        def ascii_field(field: str) -> str:
            (size,) = struct.unpack(">B", take(1, f"{field} length"))
            raw = take(size, field)
            try:
                return raw.decode("ascii")
            except UnicodeDecodeError:
                raise KaeFormatError(f"KHDR {field} {raw!r} is not ASCII") from None

        (version,) = struct.unpack(">B", take(1, "version"))
        if version not in SUPPORTED_VERSIONS:
            raise KaeFormatError(
                f"unsupported KHDR version {version} (this decoder reads "
                f"{', '.join(map(str, SUPPORTED_VERSIONS))}); a newer pillow-kae may read it"
            )
        model: dict[str, int] = {}
        if version >= COMPACT_VERSION:
            width = int.from_bytes(take(3, "width"), "big") + 1
            height = int.from_bytes(take(3, "height"), "big") + 1
            (code,) = struct.unpack(">B", take(1, "mode"))
            if code >= len(MODES):
                raise KaeFormatError(f"unknown mode code {code} (0 to {len(MODES) - 1})")
            mode = MODES[code]
            model_name = ascii_field("model name")
            weights_hash = take(_COMPACT_HASH_LENGTH, "weights hash")
            quality, tile_size, gain_step = struct.unpack(">BHh", take(5, "coding parameters"))
        else:
            width, height = struct.unpack(">II", take(8, "width/height"))
            mode = ascii_field("mode")
            model_name = ascii_field("model name")
            weights_hash = take(_HASH_LENGTH, "weights hash")
            quality, tile_size, *fixed, gain_step = struct.unpack(
                ">BHHHBBh", take(11, "coding parameters")
            )
            model = dict(zip(MODEL_FIELDS, fixed, strict=True))
        if offset != len(view):
            raise KaeFormatError(f"KHDR has {len(view) - offset} unexpected trailing bytes")
        return cls(
            width=width,
            height=height,
            mode=mode,
            model_name=model_name,
            weights_hash=weights_hash,
            quality=quality,
            tile_size=tile_size,
            gain_step=gain_step,
            version=version,
            **model,
        )


@dataclass
class KaeFile:
    """A whole ``.kae`` file: header, per-tile payloads and optional extras."""

    header: Header
    tiles: list[bytes]
    restoration: bytes | None = None  # KRST data (versions 5-7): pillow_kae.restoration parses it
    alpha: bytes | None = None
    exif: bytes | None = None
    icc_profile: bytes | None = None
    xmp: bytes | None = None


def accept(prefix: bytes) -> bool:
    """Whether ``prefix`` starts with the ``.kae`` signature (Pillow's ``_accept``)."""
    return prefix[: len(SIGNATURE)] == SIGNATURE


# --------------------------------------------------------------------------
# Writing


def _chunk(ctype: bytes, data: bytes) -> bytes:
    if len(data) > MAX_CHUNK_LENGTH:
        raise KaeFormatError(
            f"{ctype.decode('ascii')} chunk of {len(data)} bytes exceeds {MAX_CHUNK_LENGTH}"
        )
    crc = zlib.crc32(data, zlib.crc32(ctype))
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", crc)


def dumps(kae: KaeFile) -> bytes:
    """Serialise ``kae`` to bytes, refusing anything :func:`read` would reject."""
    header = kae.header
    if not isinstance(header, Header):
        raise TypeError(f"header must be a Header, got {type(header).__name__}")
    if len(kae.tiles) != header.tile_count:
        raise KaeFormatError(
            f"{len(kae.tiles)} tiles given but a {header.width}x{header.height} image with "
            f"tile size {header.tile_size} needs {header.tile_count}"
        )
    if header.has_alpha and kae.alpha is None:
        raise KaeFormatError(f"mode {header.mode} requires alpha data")
    if not header.has_alpha and kae.alpha is not None:
        raise KaeFormatError(f"mode {header.mode} has no alpha channel but alpha data was given")
    if kae.restoration is not None and header.version < RESTORATION_VERSION:
        raise KaeFormatError(f"a restoration filter needs version {RESTORATION_VERSION}")

    parts = [SIGNATURE, _chunk(KHDR, header.pack())]
    for ctype, field in _METADATA_CHUNKS.items():
        value = getattr(kae, field)
        if value is not None:
            parts.append(_chunk(ctype, bytes(value)))
    if kae.alpha is not None:
        parts.append(_chunk(ALPH, bytes(kae.alpha)))
    if kae.restoration is not None:
        parts.append(_chunk(KRST, bytes(kae.restoration)))
    parts.extend(_chunk(KTIL, bytes(tile)) for tile in kae.tiles)
    if header.version < COMPACT_VERSION:  # version 8 ends with its last tile
        parts.append(_chunk(KEND, b""))
    return b"".join(parts)


# --------------------------------------------------------------------------
# Reading


def _is_critical(ctype: bytes) -> bool:
    # PNG convention: bit 5 of the first byte clear (uppercase) = critical.
    return not ctype[0] & 0x20


class _ChunkReader:
    """Reads chunks from a stream, bounding every read by the bytes that remain.

    On a seekable stream the end is found once up front, so an oversized
    length is rejected before any data is read.  On a non-seekable stream the
    data is read in bounded pieces and a short read reports truncation.
    """

    def __init__(self, fp: IO[bytes]) -> None:
        self._fp = fp
        self.pos = 0
        self._end: int | None = None
        try:
            seekable = fp.seekable()
        except (AttributeError, OSError, ValueError):
            seekable = False
        if seekable:
            try:
                self.pos = fp.tell()
                self._end = fp.seek(0, io.SEEK_END)
                fp.seek(self.pos)
            except (OSError, ValueError):
                self._end = None
        self.seekable = self._end is not None

    def remaining(self) -> int | None:
        return None if self._end is None else max(self._end - self.pos, 0)

    def read_exact(self, size: int, what: str) -> bytes:
        """Read exactly ``size`` bytes or raise a "truncated" error."""
        remaining = self.remaining()
        if remaining is not None and size > remaining:
            raise KaeFormatError(f"file truncated: {what} needs {size} bytes, {remaining} left")
        pieces = []
        left = size
        while left:
            piece = self._fp.read(min(left, _READ_PIECE))
            if not piece:
                raise KaeFormatError(f"file truncated in {what}")
            pieces.append(piece)
            left -= len(piece)
            self.pos += len(piece)
        return b"".join(pieces)

    def skip(self, size: int, what: str) -> None:
        """Advance ``size`` bytes without keeping them (seeks when possible)."""
        if self.seekable:
            remaining = self.remaining()
            assert remaining is not None
            if size > remaining:
                raise KaeFormatError(f"file truncated: {what} needs {size} bytes, {remaining} left")
            self.pos += size
            self._fp.seek(self.pos)
        else:
            left = size
            while left:
                step = min(left, _READ_PIECE)
                self.read_exact(step, what)
                left -= step

    def seek(self, pos: int) -> None:
        self._fp.seek(pos)
        self.pos = pos

    def read_signature(self) -> None:
        prefix = b""
        while len(prefix) < len(SIGNATURE):
            piece = self._fp.read(len(SIGNATURE) - len(prefix))
            if not piece:
                break
            prefix += piece
        self.pos += len(prefix)
        if len(prefix) < len(SIGNATURE) and SIGNATURE.startswith(prefix):
            raise KaeFormatError("file truncated in signature")
        if prefix != SIGNATURE:
            raise KaeFormatError("not a KAE file (bad signature)")

    def read_chunk_head(self) -> tuple[bytes, int]:
        """Read a chunk's length and type; validate both before any data is read."""
        if self.remaining() == 0:
            raise KaeFormatError("file truncated: missing KEND chunk")
        ctype, length = self.read_chunk_type()
        self.check_chunk_length(ctype, length)
        return ctype, length

    def read_chunk_type(self) -> tuple[bytes, int]:
        """Read a chunk's length and type, validating only the type."""
        head = self.read_exact(8, "chunk header")
        length, ctype = struct.unpack(">I4s", head)
        if not (ctype.isascii() and ctype.isalpha()):
            raise KaeFormatError(f"invalid chunk type {ctype!r}")
        return ctype, length

    def check_chunk_length(self, ctype: bytes, length: int) -> None:
        """Reject a length the format forbids or the rest of the file cannot hold."""
        if length > MAX_CHUNK_LENGTH:
            raise KaeFormatError(
                f"{ctype.decode()} chunk length {length} exceeds {MAX_CHUNK_LENGTH}"
            )
        remaining = self.remaining()
        if remaining is not None and length + 4 > remaining:
            raise KaeFormatError(
                f"file truncated: {ctype.decode()} chunk declares {length} data bytes "
                f"but only {remaining} bytes remain (including its 4-byte CRC)"
            )

    def read_chunk_body(self, ctype: bytes, length: int) -> bytes:
        """Read a chunk's data and CRC, and check the CRC."""
        name = ctype.decode()
        data = self.read_exact(length, f"{name} chunk data")
        (stored,) = struct.unpack(">I", self.read_exact(4, f"{name} chunk CRC"))
        actual = zlib.crc32(data, zlib.crc32(ctype))
        if stored != actual:
            raise KaeFormatError(
                f"CRC mismatch in {name} chunk at offset {self.pos - length - 12}: "
                f"stored {stored:#010x}, computed {actual:#010x}"
            )
        return data


def _read_khdr(reader: _ChunkReader) -> Header:
    reader.read_signature()
    ctype, length = reader.read_chunk_head()
    if ctype != KHDR:
        raise KaeFormatError(f"first chunk must be KHDR, found {ctype.decode()}")
    if not _KHDR_MIN_LENGTH <= length <= _KHDR_MAX_LENGTH:
        raise KaeFormatError(
            f"KHDR length {length} outside [{_KHDR_MIN_LENGTH}, {_KHDR_MAX_LENGTH}]"
        )
    return Header.unpack(reader.read_chunk_body(ctype, length))


def _store_metadata(metadata: dict[str, bytes], ctype: bytes, data: bytes) -> None:
    field = _METADATA_CHUNKS[ctype]
    if field in metadata:
        raise KaeFormatError(f"duplicate {ctype.decode()} chunk")
    metadata[field] = data


def _check_restoration(header: Header, seen: bool) -> None:
    if header.version < RESTORATION_VERSION:
        raise KaeFormatError(f"KRST chunk in a version {header.version} file")
    if seen:
        raise KaeFormatError("duplicate KRST chunk")


def _unknown_chunk(ctype: bytes) -> None:
    """Reject an unknown critical chunk; log (and let the caller skip) an ancillary one."""
    if _is_critical(ctype):
        raise KaeFormatError(f"unknown critical chunk {ctype.decode()}")
    logger.debug("skipping unknown ancillary chunk %s", ctype.decode())


def read_header(fp: IO[bytes]) -> tuple[Header, dict[str, bytes]]:
    """Read the signature, ``KHDR`` and the metadata that precedes the tiles.

    This is what ``Image.open`` needs, so it must be cheap: tile data is never
    read and an ``ALPH`` chunk is skipped by seeking (its CRC is left to
    :func:`read`).  The returned dict has the keys ``exif``, ``icc_profile``
    and ``xmp`` for the chunks present.  ``fp`` is left at the start of the
    first ``KTIL`` (or ``KEND``) chunk.  A file cut off after the metadata
    still opens here; :func:`read` reports the truncation.  ``fp`` must be
    seekable.
    """
    reader = _ChunkReader(fp)
    if not reader.seekable:
        raise io.UnsupportedOperation("read_header needs a seekable stream")
    header = _read_khdr(reader)
    metadata: dict[str, bytes] = {}
    seen_alpha = seen_restoration = False
    while True:
        start = reader.pos
        remaining = reader.remaining()
        assert remaining is not None
        if remaining < 8:
            # Cut off before the tiles: opening may succeed, loading will not.
            return header, metadata
        ctype, length = reader.read_chunk_type()
        if ctype in (KTIL, KEND):
            # Tile data is not needed here, so its length is not checked yet.
            reader.seek(start)
            return header, metadata
        reader.check_chunk_length(ctype, length)
        if ctype == ALPH:
            if not header.has_alpha:
                raise KaeFormatError(f"ALPH chunk present but mode is {header.mode}")
            if seen_alpha:
                raise KaeFormatError("duplicate ALPH chunk")
            seen_alpha = True
            reader.skip(length + 4, "ALPH chunk")
        elif ctype == KRST:
            _check_restoration(header, seen_restoration)
            seen_restoration = True
            reader.skip(length + 4, "KRST chunk")
        elif ctype == KHDR:
            raise KaeFormatError("duplicate KHDR chunk")
        elif ctype in _METADATA_CHUNKS:
            _store_metadata(metadata, ctype, reader.read_chunk_body(ctype, length))
        else:
            _unknown_chunk(ctype)
            reader.skip(length + 4, f"{ctype.decode()} chunk")


def read(fp: IO[bytes]) -> KaeFile:
    """Read and fully validate a ``.kae`` file.

    Every chunk's CRC is checked, chunk order and counts are enforced, and the
    file must end with ``KEND``, or from version 8 with its last ``KTIL`` (anything after
    that is ignored).
    """
    reader = _ChunkReader(fp)
    header = _read_khdr(reader)
    expected_tiles = header.tile_count
    compact = header.version >= COMPACT_VERSION
    tiles: list[bytes] = []
    alpha: bytes | None = None
    restoration: bytes | None = None
    metadata: dict[str, bytes] = {}
    while not (compact and len(tiles) == expected_tiles):
        if compact and reader.remaining() == 0:
            raise KaeFormatError(
                f"file truncated after {len(tiles)} of {expected_tiles} KTIL chunks"
            )
        ctype, length = reader.read_chunk_head()
        if ctype == KTIL:
            if len(tiles) >= expected_tiles:
                raise KaeFormatError(f"more than the expected {expected_tiles} KTIL chunks")
            tiles.append(reader.read_chunk_body(ctype, length))
        elif ctype == KEND:
            if compact:
                raise KaeFormatError(
                    f"KEND after {len(tiles)} of {expected_tiles} KTIL chunks in a version "
                    f"{header.version} file, which ends with its last KTIL"
                )
            if length:
                raise KaeFormatError(f"KEND chunk must be empty, has length {length}")
            reader.read_chunk_body(ctype, length)
            break
        elif ctype == ALPH:
            if not header.has_alpha:
                raise KaeFormatError(f"ALPH chunk present but mode is {header.mode}")
            if alpha is not None:
                raise KaeFormatError("duplicate ALPH chunk")
            if tiles:
                raise KaeFormatError("ALPH chunk must come before the KTIL chunks")
            alpha = reader.read_chunk_body(ctype, length)
        elif ctype == KRST:
            _check_restoration(header, restoration is not None)
            if tiles:
                raise KaeFormatError("KRST chunk must come before the KTIL chunks")
            restoration = reader.read_chunk_body(ctype, length)
        elif ctype == KHDR:
            raise KaeFormatError("duplicate KHDR chunk")
        elif ctype in _METADATA_CHUNKS:
            _store_metadata(metadata, ctype, reader.read_chunk_body(ctype, length))
        else:
            _unknown_chunk(ctype)
            # Read (not seek) so the CRC of skipped chunks is still verified.
            reader.read_chunk_body(ctype, length)

    if len(tiles) != expected_tiles:
        raise KaeFormatError(
            f"expected {expected_tiles} KTIL chunks for a {header.width}x{header.height} "
            f"image with tile size {header.tile_size}, found {len(tiles)}"
        )
    if header.has_alpha and alpha is None:
        raise KaeFormatError(f"mode {header.mode} requires an ALPH chunk")
    if reader.remaining():
        logger.debug("ignoring %d bytes after the last chunk", reader.remaining())
    return KaeFile(header=header, tiles=tiles, restoration=restoration, alpha=alpha, **metadata)
