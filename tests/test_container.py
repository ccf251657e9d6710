"""Tests for the byte-level ``.kae`` container (pillow_kae.container)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import re
import struct
import tracemalloc
import zlib
from pathlib import Path

import pytest

from pillow_kae import container
from pillow_kae.container import (
    FORMAT_VERSION,
    MAX_DIMENSION,
    SIGNATURE,
    Header,
    KaeFile,
    KaeFormatError,
    accept,
    dumps,
    read,
    read_header,
)

WEIGHTS_HASH = hashlib.sha256(b"weights").digest()


def make_header(**overrides: object) -> Header:
    fields: dict[str, object] = {
        "width": 100,
        "height": 70,
        "mode": "RGB",
        "model_name": "kae-base_v1.0",
        "weights_hash": WEIGHTS_HASH,
        "quality": 75,
        "tile_size": 64,
        "latent_channels": 192,
        "hyper_channels": 128,
        "stride": 16,
        "hyper_stride": 4,
        "gain_step": 0,
    }
    fields.update(overrides)
    return Header(**fields)  # type: ignore[arg-type]


def make_kae(mode: str = "RGB", metadata: bool = False) -> KaeFile:
    header = make_header(mode=mode)
    assert header.tile_grid == (2, 2)
    tiles = [bytes([i]) * (i + 3) for i in range(4)]
    kae = KaeFile(header=header, tiles=tiles)
    if mode in ("RGBA", "LA"):
        kae.alpha = b"\x89PNG fake alpha"
    if metadata:
        kae.exif = b"Exif\x00\x00MM\x00*"
        kae.icc_profile = b"icc-profile-bytes"
        kae.xmp = b"<x:xmpmeta/>"
    return kae


def chunk(ctype: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(ctype + data)
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", crc)


def build(header: Header, *chunks: bytes) -> bytes:
    return SIGNATURE + chunk(b"KHDR", header.pack()) + b"".join(chunks)


def tile_chunks(n: int = 4) -> bytes:
    return b"".join(chunk(b"KTIL", b"t%d" % i) for i in range(n))


def end() -> bytes:
    return chunk(b"KEND", b"")


def khdr_bytes(
    *,
    version: int = 1,
    width: int = 100,
    height: int = 70,
    mode: bytes = b"RGB",
    name: bytes = b"model",
    hash_: bytes = WEIGHTS_HASH,
    tail: bytes = struct.pack(">BHHHBBH", 75, 64, 192, 128, 16, 4, 1024),
) -> bytes:
    return (
        struct.pack(">BIIB", version, width, height, len(mode))
        + mode
        + bytes([len(name)])
        + name
        + hash_
        + tail
    )


def kend_end(data: bytes) -> int:
    """Offset just past the KEND chunk of a file written by dumps()."""
    return data.rindex(b"KEND") + 8


# -------------------------------------------------------------- round trips


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA"])
@pytest.mark.parametrize("metadata", [False, True])
def test_round_trip(mode: str, metadata: bool) -> None:
    kae = make_kae(mode, metadata)
    data = dumps(kae)
    assert data.startswith(SIGNATURE)
    assert read(io.BytesIO(data)) == kae


def test_save_writes_the_file_in_one_call() -> None:
    """The plugin builds the whole file before writing: a failure never leaves half a file."""
    from PIL import Image

    import pillow_kae  # noqa: F401  (registers the plugin)

    calls: list[int] = []

    class Recorder(io.BytesIO):
        def write(self, b: bytes) -> int:  # type: ignore[override]
            calls.append(len(b))
            return super().write(b)

    fp = Recorder()
    Image.new("RGBA", (8, 8), (10, 20, 30, 40)).save(fp, "KAE", exif=b"Exif\x00\x00")
    assert len(calls) == 1
    assert read(io.BytesIO(fp.getvalue())).header.mode == "RGBA"


def test_header_pack_unpack_and_layout() -> None:
    header = make_header()
    packed = header.pack()
    assert len(packed) == 54 + len("RGB") + len("kae-base_v1.0")
    assert packed[0] == FORMAT_VERSION == 2
    assert packed[1:9] == struct.pack(">II", 100, 70)
    assert Header.unpack(packed) == header


def test_tile_grid() -> None:
    assert make_header(width=64, height=64).tile_grid == (1, 1)
    assert make_header(width=65, height=64).tile_grid == (2, 1)
    assert make_header(width=1, height=1000, tile_size=128).tile_grid == (1, 8)


def test_accept() -> None:
    assert accept(SIGNATURE + b"rest")
    assert not accept(b"\x89PNG\r\n\x1a\n")
    assert not accept(SIGNATURE[:4])


def test_chunk_order_written() -> None:
    data = dumps(make_kae("LA", metadata=True))
    order = [data.index(t) for t in (b"KHDR", b"iCCP", b"ALPH", b"KTIL", b"KEND")]
    assert order == sorted(order)


def test_bytes_after_kend_ignored() -> None:
    kae = make_kae()
    assert read(io.BytesIO(dumps(kae) + b"trailing garbage")) == kae


def test_non_seekable_stream() -> None:
    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._src = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray) -> int:  # type: ignore[override]
            # Deliver at most 3 bytes per call, like a slow pipe.
            piece = self._src.read(min(len(b), 3))
            b[: len(piece)] = piece
            return len(piece)

    kae = make_kae("RGBA", metadata=True)
    data = dumps(kae)
    assert read(Pipe(data)) == kae  # type: ignore[arg-type]
    with pytest.raises(KaeFormatError, match="truncated"):
        read(Pipe(data[:-5]))  # type: ignore[arg-type]


# -------------------------------------------------------------- read_header


def test_read_header_returns_metadata_and_stops_at_tiles() -> None:
    kae = make_kae("RGBA", metadata=True)
    data = dumps(kae)
    fp = io.BytesIO(data)
    header, metadata = read_header(fp)
    assert header == kae.header
    assert metadata == {"exif": kae.exif, "icc_profile": kae.icc_profile, "xmp": kae.xmp}
    first_tile = data.index(b"KTIL") - 4
    assert fp.tell() == first_tile


def test_read_header_without_metadata() -> None:
    kae = make_kae()
    header, metadata = read_header(io.BytesIO(dumps(kae)))
    assert header == kae.header
    assert metadata == {}


def test_read_header_works_when_tiles_are_cut_off() -> None:
    kae = make_kae("RGB", metadata=True)
    kae.tiles = [b"x" * 5000 for _ in kae.tiles]
    data = dumps(kae)
    first_tile = data.index(b"KTIL") - 4
    for cut in (first_tile, first_tile + 4, first_tile + 8, first_tile + 100):
        header, metadata = read_header(io.BytesIO(data[:cut]))
        assert header == kae.header
        assert metadata["xmp"] == kae.xmp
        with pytest.raises(KaeFormatError, match="truncated"):
            read(io.BytesIO(data[:cut]))


def test_read_header_reads_no_tile_or_alpha_data() -> None:
    kae = make_kae("RGBA", metadata=True)
    kae.alpha = b"a" * 100_000
    kae.tiles = [b"x" * 100_000 for _ in kae.tiles]
    data = dumps(kae)

    class Counting(io.BytesIO):
        bytes_read = 0

        def read(self, size: int | None = -1) -> bytes:
            out = super().read(size)
            self.bytes_read += len(out)
            return out

    fp = Counting(data)
    read_header(fp)
    assert fp.bytes_read < 1000


# -------------------------------------------------------------- damage


@pytest.fixture(scope="module")
def small_file() -> bytes:
    return dumps(make_kae("RGBA", metadata=True))


def test_every_truncation_raises(small_file: bytes) -> None:
    for cut in range(kend_end(small_file)):
        with pytest.raises(KaeFormatError, match="truncated"):
            read(io.BytesIO(small_file[:cut]))


def test_every_byte_flip_raises_or_is_after_kend(small_file: bytes) -> None:
    data = small_file + b"tail"
    good = read(io.BytesIO(data))
    stop = kend_end(data)
    for offset in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            damaged = bytearray(data)
            damaged[offset] ^= mask
            if offset < stop:
                with pytest.raises(KaeFormatError):
                    read(io.BytesIO(bytes(damaged)))
            else:
                assert read(io.BytesIO(bytes(damaged))) == good


def test_read_header_damage_raises_only_kae_format_error(small_file: bytes) -> None:
    # read_header skips what it does not need, so it need not notice every
    # flip, but whatever it does raise must be a KaeFormatError.
    for offset in range(len(small_file)):
        damaged = bytearray(small_file)
        damaged[offset] ^= 0xFF
        with contextlib.suppress(KaeFormatError):
            read_header(io.BytesIO(bytes(damaged)))
    for cut in range(len(small_file)):
        with contextlib.suppress(KaeFormatError):
            read_header(io.BytesIO(small_file[:cut]))


def test_crc_mismatch_message(small_file: bytes) -> None:
    damaged = bytearray(small_file)
    damaged[small_file.index(b"KTIL") + 4] ^= 0x01  # first byte of tile data
    with pytest.raises(KaeFormatError, match="CRC"):
        read(io.BytesIO(bytes(damaged)))


def test_bad_signature() -> None:
    data = dumps(make_kae())
    with pytest.raises(KaeFormatError, match="signature"):
        read(io.BytesIO(b"\x89PNG\r\n\x1a\n" + data[8:]))
    with pytest.raises(KaeFormatError, match="signature"):
        read_header(io.BytesIO(data.replace(b"\r\n", b"\n", 1)))
    with pytest.raises(KaeFormatError, match="truncated"):
        read(io.BytesIO(b""))


def test_huge_declared_length_fails_fast_without_allocating() -> None:
    tiny = SIGNATURE + struct.pack(">I", 2**31 - 1) + b"KHDR" + b"\x01\x02"
    tracemalloc.start()
    try:
        for reader in (read, read_header):
            with pytest.raises(KaeFormatError, match="truncated"):
                reader(io.BytesIO(tiny))
        with pytest.raises(KaeFormatError, match="exceeds"):
            read(io.BytesIO(SIGNATURE + b"\xff\xff\xff\xffKHDR"))
        # A huge tile length after a valid header.
        data = build(make_header(), struct.pack(">I", 2**31 - 1) + b"KTIL" + b"xx")
        with pytest.raises(KaeFormatError, match="truncated"):
            read(io.BytesIO(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_huge_declared_length_on_non_seekable_stream() -> None:
    class Pipe(io.BytesIO):
        def seekable(self) -> bool:
            return False

    data = build(make_header(), struct.pack(">I", 2**31 - 1) + b"KTIL" + b"xx")
    tracemalloc.start()
    try:
        with pytest.raises(KaeFormatError, match="truncated"):
            read(Pipe(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


# -------------------------------------------------------------- chunk rules


def test_unknown_ancillary_chunk_skipped() -> None:
    kae = make_kae()
    header = kae.header
    extra = chunk(b"tEXt", b"comment")
    for data in (
        build(header, extra, tile_chunks(), end()),
        build(header, chunk(b"KTIL", b"t0"), extra, tile_chunks(3), end()),
    ):
        got = read(io.BytesIO(data))
        assert len(got.tiles) == 4
    got_header, metadata = read_header(io.BytesIO(build(header, extra, tile_chunks(), end())))
    assert got_header == header
    assert metadata == {}


def test_unknown_critical_chunk_rejected() -> None:
    header = make_header()
    data = build(header, chunk(b"KZZZ", b"?"), tile_chunks(), end())
    with pytest.raises(KaeFormatError, match="unknown critical chunk KZZZ"):
        read(io.BytesIO(data))
    with pytest.raises(KaeFormatError, match="unknown critical"):
        read_header(io.BytesIO(data))


def test_invalid_chunk_type_rejected() -> None:
    data = build(make_header(), chunk(b"K1IL", b"t"), end())
    with pytest.raises(KaeFormatError, match="chunk type"):
        read(io.BytesIO(data))


def test_khdr_must_be_first() -> None:
    header = make_header()
    data = SIGNATURE + chunk(b"eXIf", b"x") + chunk(b"KHDR", header.pack()) + tile_chunks() + end()
    with pytest.raises(KaeFormatError, match="first chunk must be KHDR"):
        read(io.BytesIO(data))


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        ((chunk(b"KHDR", make_header().pack()), tile_chunks(), end()), "duplicate KHDR"),
        ((chunk(b"eXIf", b"a"), chunk(b"eXIf", b"b"), tile_chunks(), end()), "duplicate eXIf"),
        ((tile_chunks(3), end()), "expected 4 KTIL"),
        ((tile_chunks(5), end()), "more than the expected 4"),
        ((chunk(b"ALPH", b"a"), tile_chunks(), end()), "ALPH chunk present"),
        ((tile_chunks(), chunk(b"KEND", b"x")), "KEND chunk must be empty"),
        ((tile_chunks(),), "missing KEND"),
    ],
)
def test_chunk_rule_violations(chunks: tuple[bytes, ...], message: str) -> None:
    with pytest.raises(KaeFormatError, match=message):
        read(io.BytesIO(build(make_header(), *chunks)))


def test_alpha_rules() -> None:
    header = make_header(mode="RGBA")
    with pytest.raises(KaeFormatError, match="requires an ALPH"):
        read(io.BytesIO(build(header, tile_chunks(), end())))
    alph = chunk(b"ALPH", b"a")
    with pytest.raises(KaeFormatError, match="duplicate ALPH"):
        read(io.BytesIO(build(header, alph, alph, tile_chunks(), end())))
    with pytest.raises(KaeFormatError, match="before the KTIL"):
        read(io.BytesIO(build(header, chunk(b"KTIL", b"t"), alph, tile_chunks(3), end())))
    # Ancillary chunks may sit anywhere between KHDR and KEND.
    data = build(header, alph, tile_chunks(2), chunk(b"iCCP", b"p"), tile_chunks(2), end())
    got = read(io.BytesIO(data))
    assert got.alpha == b"a"
    assert got.icc_profile == b"p"


def test_dumps_refuses_inconsistent_file() -> None:
    kae = make_kae()
    with pytest.raises(KaeFormatError, match="tiles"):
        dumps(dataclasses.replace(kae, tiles=kae.tiles[:-1]))
    with pytest.raises(KaeFormatError, match="alpha"):
        dumps(dataclasses.replace(kae, alpha=b"a"))
    with pytest.raises(KaeFormatError, match="alpha"):
        dumps(KaeFile(header=make_header(mode="LA"), tiles=kae.tiles))


# -------------------------------------------------------------- header validation


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mode": "CMYK"}, "mode"),
        ({"mode": "P"}, "mode"),
        ({"width": 0}, "width"),
        ({"height": 0}, "height"),
        ({"width": MAX_DIMENSION + 1}, "width"),
        ({"height": MAX_DIMENSION + 1}, "height"),
        ({"model_name": ""}, "model name"),
        ({"model_name": "a b"}, "model name"),
        ({"model_name": "a/b"}, "model name"),
        ({"model_name": "x" * 65}, "model name"),
        ({"model_name": "café"}, "model name"),
        ({"weights_hash": b"short"}, "hash"),
        ({"quality": 0}, "quality"),
        ({"quality": 101}, "quality"),
        ({"tile_size": 100}, "multiple of 64"),
        ({"tile_size": 0}, "tile size"),
        ({"latent_channels": 0}, "latent"),
        ({"hyper_channels": 0}, "hyper channels"),
        ({"stride": 0}, "stride"),
        ({"hyper_stride": 256}, "hyper stride"),
        ({"gain_step": 64}, "gain step"),
        ({"width": True}, "width"),
    ],
)
def test_header_constructor_validation(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(KaeFormatError, match=message):
        make_header(**overrides)


def test_header_accepts_limits() -> None:
    header = make_header(width=MAX_DIMENSION, height=1, model_name="x" * 64, tile_size=65472)
    assert Header.unpack(header.pack()) == header


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (khdr_bytes(mode=b"CMYK"), "mode"),
        (khdr_bytes(mode=b"RG\xffB"), "ASCII"),
        (khdr_bytes(width=0), "width"),
        (khdr_bytes(height=MAX_DIMENSION + 1), "height"),
        (khdr_bytes(name=b"bad name"), "model name"),
        (khdr_bytes(name=b""), "model name"),
        (khdr_bytes(version=0), "version"),
        (khdr_bytes(version=9), "version"),
        (khdr_bytes(tail=struct.pack(">BHHHBBH", 75, 96, 192, 128, 16, 4, 1024)), "64"),
        (khdr_bytes(tail=struct.pack(">BHHHBBH", 0, 64, 192, 128, 16, 4, 1024)), "quality"),
        (khdr_bytes() + b"\x00", "trailing"),
        (khdr_bytes()[:-1], "truncated"),
        (khdr_bytes(mode=b"RGB")[:12], "truncated"),
    ],
)
def test_header_unpack_validation(data: bytes, message: str) -> None:
    with pytest.raises(KaeFormatError, match=message):
        Header.unpack(data)


def test_bad_khdr_in_file_rejected() -> None:
    data = SIGNATURE + chunk(b"KHDR", khdr_bytes(mode=b"CMYK")) + tile_chunks() + end()
    with pytest.raises(KaeFormatError, match="mode"):
        read(io.BytesIO(data))
    with pytest.raises(KaeFormatError, match="mode"):
        read_header(io.BytesIO(data))


def test_khdr_length_bounds_checked_before_reading() -> None:
    data = SIGNATURE + chunk(b"KHDR", b"\x00" * 500) + end()
    with pytest.raises(KaeFormatError, match="KHDR length"):
        read(io.BytesIO(data))


def test_error_is_value_error() -> None:
    assert issubclass(KaeFormatError, ValueError)
    assert container.SIGNATURE == b"\x89KAE\r\n\x1a\n"


# -------------------------------------------------------------- version 8: the compact container


def compact_header(**overrides: object) -> Header:
    return make_header(
        **{
            "version": container.COMPACT_VERSION,
            "weights_hash": WEIGHTS_HASH[:8],
            "latent_channels": None,
            "hyper_channels": None,
            "stride": None,
            "hyper_stride": None,
            **overrides,
        }
    )


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA"])
@pytest.mark.parametrize("size", [(1, 1), (100, 70), (MAX_DIMENSION, 3)])
def test_compact_header_round_trip_and_size(mode: str, size: tuple[int, int]) -> None:
    header = compact_header(mode=mode, width=size[0], height=size[1])
    packed = header.pack()
    assert len(packed) == 22 + len(header.model_name)
    assert Header.unpack(packed) == header
    legacy = make_header(mode=mode, width=size[0], height=size[1]).pack()
    assert len(legacy) - len(packed) == 32 + len(mode)  # the digest's 24 bytes, modes, fields


def test_a_compact_file_ends_with_its_last_tile() -> None:
    kae = make_kae("RGBA", metadata=True)
    kae.header = compact_header(mode="RGBA")
    data = dumps(kae)
    assert b"KEND" not in data
    assert len(dumps(make_kae("RGBA", metadata=True))) - len(data) == 32 + len("RGBA") + 12
    assert read(io.BytesIO(data)) == kae
    assert read(io.BytesIO(data + b"anything after the last tile")) == kae
    header, metadata = read_header(io.BytesIO(data))
    assert header == kae.header and set(metadata) == {"exif", "icc_profile", "xmp"}
    body = data[: data.index(b"KTIL") - 4]  # up to the first tile
    tiles = [chunk(b"KTIL", t) for t in kae.tiles]
    with pytest.raises(KaeFormatError, match="truncated after 3 of 4 KTIL"):
        read(io.BytesIO(body + b"".join(tiles[:3])))
    with pytest.raises(KaeFormatError, match="KEND after 2 of 4 KTIL"):
        read(io.BytesIO(body + b"".join(tiles[:2]) + end()))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"weights_hash": WEIGHTS_HASH}, "8 bytes"),
        ({"latent_channels": 192}, "stores no latent channels"),
        ({"hyper_stride": 4}, "stores no hyper stride"),
    ],
)
def test_compact_header_validation(overrides: dict, message: str) -> None:
    with pytest.raises(KaeFormatError, match=message):
        compact_header(**overrides)
    with pytest.raises(KaeFormatError, match="32 bytes"):
        make_header(weights_hash=WEIGHTS_HASH[:8])


def test_compact_header_unpack_rejects_bad_bytes() -> None:
    packed = compact_header().pack()
    with pytest.raises(KaeFormatError, match="mode code 4"):
        Header.unpack(packed[:7] + b"\x04" + packed[8:])
    with pytest.raises(KaeFormatError, match="truncated"):
        Header.unpack(packed[:-1])
    with pytest.raises(KaeFormatError, match="trailing"):
        Header.unpack(packed + b"\x00")
    with pytest.raises(KaeFormatError, match="KHDR length 22"):
        read(io.BytesIO(SIGNATURE + chunk(b"KHDR", packed[:22])))


def _documented_examples() -> list[bytes]:
    """The example files of docs/format.md §9, from their hex dumps."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "format.md").read_text()
    section = text[text.index("## 9. Example") : text.index("## 10.")]
    blocks = re.findall(r"```\n(.*?)```", section, re.S)
    return [bytes.fromhex("".join(line[5:] for line in b.splitlines())) for b in blocks]


def test_the_documented_examples_are_what_the_writer_writes() -> None:
    """docs/format.md is normative: its example files (version 1, and the same image as
    version 8) read as described, and the writer produces them byte for byte."""
    legacy, compact = _documented_examples()
    assert (len(legacy), len(compact)) == (168, 121)
    tiles = [b"\xa1\xa2", b"\xb1", b"\xc1\xc2\xc3", b"\xd1"]
    for data, version, digest in (
        (legacy, 1, hashlib.sha256(b"").digest()),
        (compact, container.COMPACT_VERSION, hashlib.sha256(b"").digest()[:8]),
    ):
        kae = read(io.BytesIO(data))
        header = kae.header
        assert (header.version, header.width, header.height, header.mode) == (
            version,
            100,
            70,
            "RGB",
        )
        assert (header.model_name, header.weights_hash) == ("kae-m1", digest)
        assert (header.quality, header.tile_size, header.gain_step) == (75, 64, 0)
        assert kae.tiles == tiles and kae.exif == b"Exif\x00\x00"
        assert dumps(kae) == data
