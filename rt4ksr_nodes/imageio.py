"""Image files <-> float arrays for the CLI and the runner, keeping bit depth, alpha and ICC.

Pillow decodes 16-bit RGB(A) PNG and TIFF to 8 bits (it has no 48/64-bit image modes), so for
those the file is decoded twice, once keeping the high bytes and once the low bytes of every
sample, which restores the exact 16-bit values with Pillow's own decoders. Pillow cannot write
them either: 16-bit RGB(A) output is encoded by `_png16` (PNG) below and by tifffile
(uncompressed TIFF). Limitation: 16-bit gray+alpha input is read at 8 bits.
OpenEXR output (half or float) needs the optional OpenEXR package (the `exr` extra).
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import sys
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from .fileio import atomic_write

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
WRITE_EXTENSIONS = (*IMAGE_EXTENSIONS, ".exr")
# ComfyUI's Save Image level. Pillow's default, 6, took 2.3x as long on a 4K frame for a file no
# smaller; level 1 takes less than half as long again for files ~15% larger (README, Encoders).
PNG_LEVEL = 4
# Default decompression-bomb guard: Pillow's own limit (about 13377 x 13377 pixels).
DEFAULT_MAX_PIXELS = 2 * 89_478_485
EXIF_ORIENTATION = 0x0112
ICC_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "I", "I;16", "I;16B", "I;16L")
# Pillow's 16-to-8-bit unpackers keep one byte of each sample, named by the byte order: the
# other order keeps the other byte. ";16N" (libtiff's output for compressed TIFF) is native.
_NATIVE_LOW = ";16B" if sys.byteorder == "little" else ";16L"
_HIGH_TO_LOW = {";16B": ";16L", ";16L": ";16B", ";16N": _NATIVE_LOW}
# Held while Pillow's own limit is lifted for a read allowed more pixels than it permits.
_PILLOW_LIMIT_LOCK = threading.Lock()


class ImageReadError(ValueError):
    """A file could not be read as an image; the message names the file and the cause."""


@dataclass
class Picture:
    pixels: np.ndarray  # H x W x C float32 in [0, 1]; C = 1 (gray), 2 (gray+alpha), 3 or 4
    bits: int  # 8 or 16 bits per sample in the file (written as EXR: 16 half, 32 float)
    icc_profile: bytes | None = None


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """Decode `path` upright (EXIF orientation applied). `max_pixels` = 0 lifts the size guard."""
    path = Path(path)
    try:
        with _open(path, max_pixels) as image:
            width, height = image.size
            if max_pixels and width * height > max_pixels:
                raise ImageReadError(
                    f"{path}: {width}x{height} is over the {max_pixels}-pixel limit "
                    "(possible decompression bomb; raise or lift it with --max-pixels)"
                )
            # A CMYK or Lab profile would be wrong on the RGB pixels they are converted to.
            icc = image.info.get("icc_profile") if image.mode in ICC_MODES else None
            # Decode first: for PNG, getexif() loads the image, after which the tile list that
            # the 16-bit path needs is gone.
            pixels, bits = _decode(path, image)
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except ImageReadError:
        raise
    except UnidentifiedImageError as error:
        raise ImageReadError(
            f"{path}: cannot read image: not a PNG, JPEG, WebP, TIFF or BMP file"
        ) from error
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageReadError(f"{path}: cannot read image: {error}") from error
    return Picture(_orient(pixels, orientation), bits, icc)


@contextlib.contextmanager
def _open(path: Path, max_pixels: int):
    """Image.open under read_image's own size limit, which read_image checks itself.

    Pillow's guard is process-wide and also checks while decoding (TIFF), so a limit above
    Pillow's own lifts it for the whole read, one such read at a time. Meanwhile other
    read_image calls are still held to their own limit; other Image.open users in the process
    are not guarded by Pillow for that moment.
    """
    pillow = Image.MAX_IMAGE_PIXELS
    if pillow is None or (max_pixels and max_pixels <= 2 * pillow):
        with Image.open(path) as image:
            yield image
        return
    with _PILLOW_LIMIT_LOCK:
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(path) as image:
                yield image
        finally:
            Image.MAX_IMAGE_PIXELS = pillow


def write_image(path: str | os.PathLike, picture: Picture, quality: int = 95,
                text: dict[str, str] | None = None, *, compress_level: int = PNG_LEVEL,
                lossless: bool = False) -> None:
    """Write atomically: a temporary file in the destination folder, then os.replace.

    The format follows the extension; 16-bit data goes to PNG and TIFF at 16 bits and to the
    8-bit formats (JPEG, WebP, BMP) quantised to 8 bits. `quality` (1-100) is the JPEG and
    lossy WebP quality; `lossless` makes WebP lossless (at its fastest effort). PNG uses zlib
    level `compress_level` (0-9). EXR stores the values unquantised as half floats
    (`picture.bits` 16) or floats (32). `text` becomes PNG text chunks (ComfyUI's workflow
    metadata); other formats have no place for it.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_EXTENSIONS:
        raise ValueError(f"{path}: unknown output format {suffix!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"{path}: quality must be 1-100, got {quality}")
    if not 0 <= compress_level <= 9:
        raise ValueError(f"{path}: PNG compression level must be 0-9, got {compress_level}")
    if suffix == ".exr":
        exr = _openexr(path)  # before any file is created
        with atomic_write(path) as out:
            _write_exr(exr, out, path, picture)
        return
    with atomic_write(path) as out:
        _write(out, path, suffix, picture, quality, text or {}, compress_level, lossless)


def _decode(path: Path, image: Image.Image) -> tuple[np.ndarray, int]:
    mode = image.mode
    if mode in ("RGB", "RGBA"):
        wide = _decode_16bit_colour(path, image)
        if wide is not None:
            return wide, 16
    if mode.startswith("I;16") or mode == "I":  # "I": 16-bit gray decoded as 32-bit integers
        gray = np.clip(np.asarray(image), 0, 65535).astype(np.float32) / 65535
        return gray[..., None], 16
    if mode not in ("L", "LA", "RGB", "RGBA"):
        alpha = "A" in mode or "a" in mode or "transparency" in image.info
        gray = mode in ("1", "F")
        image = image.convert(("LA" if alpha else "L") if gray else ("RGBA" if alpha else "RGB"))
    pixels = np.asarray(image, dtype=np.float32) / 255
    return (pixels[..., None] if pixels.ndim == 2 else pixels), 8


def _decode_16bit_colour(path: Path, image: Image.Image) -> np.ndarray | None:
    """Exact 16-bit samples of a 16-bit RGB(A) file Pillow would truncate to 8 bits, or None."""
    rawmode = _rawmode(image.tile[0].args) if len(image.tile) >= 1 else ""
    if ";16" not in rawmode:
        return None
    ending = rawmode[-4:]
    if ending not in _HIGH_TO_LOW or any(_rawmode(t.args) != rawmode for t in image.tile):
        raise ImageReadError(
            f"{path}: 16-bit samples stored as {rawmode!r}, which this reader cannot decode "
            "exactly; convert the file to a 16-bit PNG"
        )
    low_rawmode = rawmode[:-4] + _HIGH_TO_LOW[ending]
    high = np.asarray(image).astype(np.uint16)
    with Image.open(path) as again:
        again.tile = [t._replace(args=_with_rawmode(t.args, low_rawmode)) for t in again.tile]
        low = np.asarray(again).astype(np.uint16)
    return ((high << 8) | low).astype(np.float32) / 65535


def _rawmode(args) -> str:
    rawmode = args[0] if isinstance(args, tuple) and args else args
    return rawmode if isinstance(rawmode, str) else ""


def _with_rawmode(args, rawmode: str):
    return (rawmode, *args[1:]) if isinstance(args, tuple) else rawmode


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8), as PIL.ImageOps.exif_transpose does."""
    transforms = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda a: np.rot90(a, 1),
    }
    transform = transforms.get(orientation)
    return np.ascontiguousarray(transform(pixels)) if transform else pixels


def _quantise(pixels: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    return np.rint(np.clip(pixels, 0, 1) * top).astype(np.uint16 if bits == 16 else np.uint8)


def _write(out: BinaryIO, path: Path, suffix: str, picture: Picture, quality: int, text: dict[str, str],
           compress_level: int, lossless: bool) -> None:
    pixels, icc = picture.pixels, picture.icc_profile
    channels = pixels.shape[-1]
    wide = picture.bits == 16 and suffix in (".png", ".tif", ".tiff") and channels != 2
    if wide and channels == 1:
        image = Image.fromarray(_quantise(pixels[..., 0], 16))
    elif wide and suffix == ".png":
        out.write(_png16(_quantise(pixels, 16), icc, text, compress_level))
        return
    elif wide:
        _tiff16(out, _quantise(pixels, 16), icc)
        return
    else:
        samples = _quantise(pixels, 8)
        image = Image.fromarray(samples[..., 0] if channels == 1 else samples)
    options = {"icc_profile": icc} if icc else {}
    if suffix in (".jpg", ".jpeg"):
        if channels in (2, 4):
            raise ValueError(f"{path.name}: JPEG cannot store alpha; write PNG, WebP or TIFF")
        options["quality"] = quality
    elif suffix == ".webp" and lossless:
        # libwebp's lossless effort: method 0 / quality 0 is its fastest, 30x faster than its
        # default (4 / 80) on a 4K frame for a file 20% larger, and faster than PNG level 1.
        # exact: keep the colour of fully transparent pixels (libwebp drops it by default).
        options.update(lossless=True, method=0, quality=0, exact=True)
    elif suffix == ".webp":
        options.update(lossless=False, quality=quality)
    elif suffix == ".png":
        options["compress_level"] = compress_level
        if text:
            options["pnginfo"] = PngInfo()
            for key, value in text.items():
                options["pnginfo"].add_text(key, value)  # tEXt, or iTXt beyond Latin-1
    image.save(out, format=Image.registered_extensions()[suffix], **options)


def _openexr(path: Path):
    try:
        import OpenEXR
    except ImportError:
        raise ValueError(
            f"{path.name}: writing EXR needs the OpenEXR package: pip install 'rt4ksr-nodes[exr]' "
            "(or pip install OpenEXR)"
        ) from None
    return OpenEXR


def _write_exr(exr, out: BinaryIO, path: Path, picture: Picture) -> None:
    """Scanlines, PIZ-compressed (lossless, the fastest of OpenEXR's here); the values as they
    are: display-referred, not linearised."""
    if picture.bits not in (16, 32):
        raise ValueError(f"{path.name}: EXR stores 16-bit (half) or 32-bit floats, not {picture.bits} bits")
    pixels = picture.pixels.astype(np.float16 if picture.bits == 16 else np.float32)
    names = {1: ("Y",), 2: ("Y", "A"), 3: ("RGB",), 4: ("RGBA",)}[pixels.shape[-1]]
    # "RGB(A)" takes the H x W x C array at once; gray planes go one channel each.
    channels = {names[0]: pixels} if len(names[0]) > 1 else {
        name: np.ascontiguousarray(pixels[..., i]) for i, name in enumerate(names)}
    header = {"compression": exr.PIZ_COMPRESSION, "type": exr.scanlineimage}
    exr.File(header, channels).write(out)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _text_chunk(key: str, value: str) -> bytes:
    """tEXt when the text is Latin-1 (what PNG's tEXt holds), else uncompressed UTF-8 iTXt."""
    try:
        return _png_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:
        return _png_chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8"))


def _png16(samples: np.ndarray, icc: bytes | None, text: dict[str, str], level: int) -> bytes:
    """A 16-bit PNG of RGB or RGBA samples (H x W x C uint16), rows "Up"-filtered."""
    height, width, channels = samples.shape
    colour_type = 6 if channels == 4 else 2
    rows = samples.astype(">u2").view(np.uint8).reshape(height, width * channels * 2)
    filtered = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # filter type Up: difference with the row above, modulo 256
    filtered[0, 1:] = rows[0]
    filtered[1:, 1:] = rows[1:] - rows[:-1]
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    chunks = [_png_chunk(b"IHDR", header)]
    if icc:
        chunks.append(_png_chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(icc)))
    chunks.extend(_text_chunk(key, value) for key, value in text.items())
    chunks.append(_png_chunk(b"IDAT", zlib.compress(filtered, level)))
    chunks.append(_png_chunk(b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def _tiff16(out: BinaryIO, samples: np.ndarray, icc: bytes | None) -> None:
    """An uncompressed TIFF of 16-bit RGB or RGBA samples (H x W x C uint16)."""
    import tifffile  # only this format needs it; keeps it off the nodes' import time

    alpha = ["unassalpha"] if samples.shape[-1] == 4 else None
    encoded = io.BytesIO()  # tifffile takes a file object by its name, which `out` lacks
    tifffile.imwrite(encoded, samples, photometric="rgb", extrasamples=alpha, iccprofile=icc, metadata=None,
                     software=False)
    out.write(encoded.getbuffer())
