"""Pillow plugin for KAE (.kae), the learned lossy image format of pillow-kae.

Shaped like Pillow's own format modules: ``_accept``, an ``ImageFile`` subclass that reads
only the header on open, a decoder that runs the model on ``load()``, ``_save``, and the
registration at the bottom. See docs/format.md for the container.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import IO, TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFile

from pillow_kae import container
from pillow_kae.zoo import quality as quality_ladder

if TYPE_CHECKING:
    from pillow_kae.restoration import Restoration

log = logging.getLogger(__name__)

FORMAT = "KAE"
MIME = "image/x-kae"
DEFAULT_QUALITY = 75
# The decoder works on the image padded to multiples of this many pixels (docs/format.md
# §5.1; seed-dense pads to 48): for one row of pixels, 64 times the image.
_PAD = 64

# Pillow mode -> how it is stored. Anything not here is refused.
_SAVE_MODES = {
    "RGB": "RGB",
    "L": "L",
    "RGBA": "RGBA",
    "LA": "LA",
    "1": "L",
    "I;16": "L",
    "I;16L": "L",
    "I;16B": "L",
    "I;16N": "L",
    "I": "L",
    "F": "L",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
    "RGBX": "RGB",
    "PA": "RGBA",
    "La": "LA",
    "RGBa": "RGBA",
}


def _accept(prefix: bytes) -> bool:
    return container.accept(prefix)


class KaeImageFile(ImageFile.ImageFile):
    format = FORMAT
    format_description = "pillow-kae learned image"

    def _open(self) -> None:
        try:
            header, metadata = container.read_header(self.fp)
        except container.KaeFormatError as err:
            raise SyntaxError(f"not a valid KAE file: {err}") from err
        _check_padded_size(header.width, header.height)
        self._kae_header = header
        self._mode = header.mode
        self._size = (header.width, header.height)
        self.info["kae_model"] = header.model_name
        self.info["quality"] = header.quality
        self.info.update(metadata)
        self.tile = [ImageFile._Tile("kae", (0, 0, *self.size), 0, None)]

    def verify(self) -> None:
        """Check the whole file without decoding it, as PNG's ``verify`` does: every chunk's
        CRC, their order and counts, and the restoration filters' coding and shape. Opening
        reads the header alone, so without this a damaged tile would pass the usual
        ``verify()`` scan of a folder and fail only on ``load()``. No model is loaded."""
        if self.fp is None:
            raise RuntimeError("verify must be called directly after open")
        try:
            kae, filters = _read_file(self.fp)
            if filters is not None:
                filters.check_version(kae.header.version)
        except ValueError as err:
            raise SyntaxError(f"broken KAE file: {err}") from err
        super().verify()


def _check_padded_size(width: int, height: int) -> None:
    """Pillow's decompression-bomb check on the padded area, which is what the decoder pays.

    Pillow checks width x height after ``_open``; a forged 16777216 x 1 header passes that,
    yet would make the decoder synthesise 2**30 pixels from 3 GB of latents.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None:
        return
    padded_w, padded_h = -(-width // _PAD) * _PAD, -(-height // _PAD) * _PAD
    padded = padded_w * padded_h
    message = (
        f"KAE image {width}x{height} decodes padded to {padded_w}x{padded_h} = {padded} pixels"
    )
    if padded > 2 * limit:
        raise Image.DecompressionBombError(
            f"{message}, more than twice the limit of {limit} pixels: "
            "could be a decompression bomb DOS attack."
        )
    if padded > limit >= width * height:  # otherwise Pillow warns itself
        warnings.warn(
            f"{message}, more than the limit of {limit} pixels: "
            "could be a decompression bomb DOS attack.",
            Image.DecompressionBombWarning,
            stacklevel=2,
        )


class KaeDecoder(ImageFile.PyDecoder):
    """Reads the whole file, decodes every tile with the model it names, restores the mode."""

    _pulls_fd = True

    def decode(self, buffer: bytes | Image.SupportsArrayInterface) -> tuple[int, int]:
        assert self.fd is not None
        try:
            kae, filters = _read_file(self.fd)
        except ValueError as err:
            raise OSError(f"broken KAE file: {err}") from err
        pixels = _decode_pixels(kae, filters)
        self.set_as_raw(memoryview(np.ascontiguousarray(pixels)).cast("B"), self.mode)
        return -1, 0


def _read_file(fp: IO[bytes]) -> tuple[container.KaeFile, Restoration | None]:
    """The whole file from its start, every chunk checked, and its restoration filters
    parsed; a ``ValueError`` (``KaeFormatError`` among them) if it is broken."""
    from pillow_kae import restoration

    fp.seek(0)
    kae = container.read(fp)
    if kae.restoration is None:
        return kae, None
    return kae, restoration.Restoration.unpack(kae.restoration)


def _decode_pixels(kae: container.KaeFile, restoration_filters: Restoration | None) -> np.ndarray:
    from pillow_kae import codec
    from pillow_kae.zoo import loader

    header = kae.header
    model = loader.load(header.model_name, header.weights_hash)
    stored = (header.latent_channels, header.hyper_channels, header.stride, header.hyper_stride)
    fixed = (model.latent_channels, model.hyper_channels, model.stride, model.hyper_stride)
    if header.latent_channels is not None and stored != fixed:  # before version 8
        raise OSError(f"KAE header does not match model {header.model_name!r}")
    if header.tile_size > codec.MAX_TILE_SIZE:
        raise OSError(f"KAE tile size {header.tile_size} exceeds {codec.MAX_TILE_SIZE}")
    rgb = codec.decode_image(
        model,
        kae.tiles,
        header.width,
        header.height,
        header.step,
        header.tile_size,
        header.version,
        restoration_filters,
    )
    if header.mode == "RGB":
        return rgb  # no copies: a 25 MP image is 72 MiB per copy
    color = rgb if header.mode == "RGBA" else np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    if not header.has_alpha:
        return color
    alpha = _decode_alpha(kae.alpha or b"", header.width, header.height)
    return np.dstack([color.reshape(header.height, header.width, -1), alpha])


def _decode_alpha(data: bytes, width: int, height: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as alpha:
            if alpha.mode != "L" or alpha.size != (width, height):
                raise OSError("KAE alpha plane has the wrong mode or size")
            return np.asarray(alpha)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise OSError(f"broken KAE alpha plane: {err}") from err


def _encode_alpha(alpha: Image.Image) -> bytes:
    buffer = io.BytesIO()
    alpha.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def _to_storable(im: Image.Image) -> Image.Image:
    """Convert to one of RGB, L, RGBA, LA as a Pillow user would expect, or refuse."""
    mode = im.mode
    if mode == "P":
        return im.convert("RGBA" if "transparency" in im.info else "RGB")
    if mode not in _SAVE_MODES:
        raise OSError(f"cannot write mode {mode} as KAE")
    target = _SAVE_MODES[mode]
    if mode.startswith("I;16"):
        # 16-bit samples: keep the most significant byte instead of clipping at 255.
        values = np.asarray(im, dtype=np.uint16) >> 8
        return Image.fromarray(values.astype(np.uint8), "L")
    return im if mode == target else im.convert(target)


def _metadata(im: Image.Image, key: str) -> bytes | None:
    value = im.encoderinfo.get(key, im.info.get(key))
    if value is None or value == b"" or value == "":
        return None
    if isinstance(value, Image.Exif):
        value = value.tobytes()
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, bytes | bytearray):
        raise ValueError(f"{key} must be bytes or str, not {type(value).__name__}")
    return bytes(value)


def _save(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    from pillow_kae import codec, refinement
    from pillow_kae.zoo import loader

    quality = im.encoderinfo.get("quality", DEFAULT_QUALITY)
    points = quality_ladder.candidates(
        quality, im.encoderinfo.get("model"), im.encoderinfo.get("gain_step")
    )
    effort = refinement.check_effort(im.encoderinfo.get("effort", 0))
    exif, icc, xmp = (_metadata(im, k) for k in ("exif", "icc_profile", "xmp"))
    if im.width < 1 or im.height < 1:
        raise ValueError("cannot write an empty image as KAE")
    stored = _to_storable(im)
    mode = stored.mode
    rgb = np.asarray(stored.convert("RGB"))
    coded = codec.encode_best(
        [(loader.load(name), step) for name, step in points],
        rgb,
        codec.TILE_SIZE,
        effort,
        restore=im.encoderinfo.get("restore", True),
    )
    model, gain_step = coded.model, coded.gain_step
    version = container.COMPACT_VERSION  # holds every model, gain step and filter shape
    header = container.Header(
        width=im.width,
        height=im.height,
        mode=mode,
        model_name=model.name,
        weights_hash=model.card.digest[: container.weights_hash_length(version)],
        quality=int(quality),
        tile_size=codec.TILE_SIZE,
        gain_step=container.Header.gain_step_field(gain_step, version),
        version=version,
    )
    alpha = _encode_alpha(stored.getchannel("A")) if header.has_alpha else None
    kae = container.KaeFile(
        header,
        coded.payloads,
        restoration=None if coded.restoration is None else coded.restoration.pack(),
        alpha=alpha,
        exif=exif,
        icc_profile=icc,
        xmp=xmp,
    )
    data = container.dumps(kae)
    fp.write(data)  # only once everything is encoded: a failed save writes nothing


Image.register_open(FORMAT, KaeImageFile, _accept)
Image.register_decoder("kae", KaeDecoder)
Image.register_save(FORMAT, _save)
Image.register_extension(FORMAT, ".kae")
Image.register_mime(FORMAT, MIME)
