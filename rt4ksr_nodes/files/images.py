"""Image files <-> float arrays for the CLI and the runner, keeping bit depth, alpha and ICC.

Pillow decodes 16-bit RGB(A) PNG and TIFF to 8 bits (it has no 48/64-bit image modes), so for
those the file is decoded twice, once keeping the high bytes and once the low bytes of every
sample, which restores the exact 16-bit values with Pillow's own decoders. Pillow cannot write
them either: 16-bit RGB(A) output is encoded by `_png16` (PNG) and `_tiff16`
(uncompressed baseline TIFF) below. Limitation: 16-bit gray+alpha input is read at 8 bits.

Animated GIF, WebP and PNG files and multi-page TIFF files are read and written whole by
`read_frames` and `write_frames`: every frame as it is shown (Pillow composites each frame onto
the ones before), with the frame durations, play count and GIF/APNG disposal and blend kept.
Written back over the same canvas rules, such whole frames show exactly as the original did;
into another format they are written with "clear, then draw the next", which also does.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from .paths import atomic_write

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
# Formats that hold several frames (animations) or pages (TIFF), by extension.
FRAMES_FORMATS = {".gif": "GIF", ".webp": "WEBP", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}
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


@dataclass
class Timing:
    """How the frames of an animation are shown (TIFF pages have none of it)."""

    format: str | None = None  # Pillow's name of the format read ("GIF", "PNG", ...)
    durations: list[float] = field(default_factory=list)  # ms per frame; empty for TIFF
    plays: int = 1  # times the animation plays, 0 = forever (GIF stores plays - 1)
    disposal: list[int] | None = None  # GIF and APNG, per frame, as Pillow numbers them
    blend: list[int] | None = None  # APNG, per frame


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """Decode `path` upright (EXIF orientation applied). `max_pixels` = 0 lifts the size guard.
    Of an animation or a multi-page TIFF this is the first frame (see read_frames)."""
    path = Path(path)
    with _reading(path, max_pixels) as image:
        _check_size(path, image.size, 1, max_pixels)
        return _picture(path, image)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of the image read_image gives (upright), without decoding the pixels."""
    with _reading(Path(path), 0) as image:
        width, height = image.size
        tagged = image.format != "PNG" or "exif" in image.info or _png_has_exif(Path(path))
        orientation = image.getexif().get(EXIF_ORIENTATION, 1) if tagged else 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _png_has_exif(path: Path) -> bool:
    """Whether a PNG holds an eXIf chunk, from its chunk headers alone: Pillow looks for one
    after the pixels by decoding them all."""
    with open(path, "rb") as file:
        file.seek(8)  # the signature
        while len(header := file.read(8)) == 8:
            length, kind = struct.unpack(">I4s", header)
            if kind in (b"eXIf", b"IEND"):
                return kind == b"eXIf"
            file.seek(length + 4, os.SEEK_CUR)  # data and CRC
    return False


def frame_count(path: str | os.PathLike) -> int:
    """Frames of an animated GIF, WebP or PNG, pages of a TIFF; 1 for a still image."""
    with _reading(Path(path), 0) as image:
        return getattr(image, "n_frames", 1)


def read_frames(
    path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[list[Picture], Timing]:
    """Every frame of an animation (as shown: composited) or page of a TIFF, and their timing.

    The frames of an animation share one layout (gray or colour, alpha or not: the widest any
    frame has); TIFF pages keep their own.
    `max_pixels` counts the pixels of all frames. Animated PNG frames are read at 8 bits.
    """
    path = Path(path)
    with _reading(path, max_pixels) as image:
        count = getattr(image, "n_frames", 1)
        _check_size(path, image.size, count, max_pixels)
        kind = image.format
        loop = image.info.get("loop")  # GIF: repeats after the first play; others: plays
        if kind == "GIF":
            plays = 1 if loop is None else loop + 1 if loop else 0
        else:
            plays = loop or 0
        timing = Timing(kind, plays=plays, disposal=[] if kind in ("GIF", "PNG") else None,
                        blend=[] if kind == "PNG" else None)
        # An APNG's default image is shown only where animation is not: it is left out.
        first = 1 if kind == "PNG" and image.info.get("default_image") else 0
        # Pillow composites APNG frames at 8 bits: the 16-bit path would read one frame alone.
        exact = kind != "PNG" or count == 1
        frames = []
        for index in range(first, count):
            image.seek(index)
            frames.append(_picture(path, image, index if exact else None))
            if kind != "TIFF":  # WebP knows a frame's duration once it is decoded
                timing.durations.append(image.info.get("duration", 0))
            if kind == "GIF":
                timing.disposal.append(image.disposal_method)
            elif kind == "PNG":
                timing.disposal.append(image.info.get("disposal", 0))
                timing.blend.append(image.info.get("blend", 0))
    # Pages of a TIFF stand alone; the frames of an animation are shown in one canvas.
    return (frames if kind == "TIFF" else _common_layout(frames)), timing


@contextlib.contextmanager
def _reading(path: Path, max_pixels: int):
    """The open image, with Pillow's and decoding errors turned into ImageReadError."""
    try:
        with _open(path, max_pixels) as image:
            yield image
    except ImageReadError:
        raise
    except UnidentifiedImageError as error:
        raise ImageReadError(
            f"{path}: cannot read image: not a PNG, JPEG, WebP, TIFF, BMP or GIF file"
        ) from error
    except (IndexError, struct.error) as error:  # how Pillow meets some cut files (GIF)
        raise ImageReadError(f"{path}: cannot read image: damaged or cut short") from error
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise ImageReadError(f"{path}: cannot read image: {error}") from error


def _check_size(path: Path, size: tuple[int, int], frames: int, max_pixels: int) -> None:
    width, height = size
    if max_pixels and width * height * frames > max_pixels:
        what = f"{width}x{height}" + (f" x {frames} frames" if frames > 1 else "")
        raise ImageReadError(
            f"{path}: {what} is over the {max_pixels}-pixel limit "
            "(possible decompression bomb; raise or lift it with --max-pixels)"
        )


def _picture(path: Path, image: Image.Image, frame: int | None = 0) -> Picture:
    """The current frame (number `frame`, None: read at 8 bits) of `image`, upright."""
    # A CMYK or Lab profile would be wrong on the RGB pixels they are converted to.
    icc = image.info.get("icc_profile") if image.mode in ICC_MODES else None
    # Decode first: for PNG, getexif() loads the image, after which the tile list that the
    # 16-bit path needs is gone.
    pixels, bits = _decode(path, image, frame)
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    return Picture(_orient(pixels, orientation), bits, icc)


def _common_layout(frames: list[Picture]) -> list[Picture]:
    """Give every frame the widest layout among them: colour if any is, alpha if any has."""
    colour = any(f.pixels.shape[-1] >= 3 for f in frames)
    alpha = any(f.pixels.shape[-1] in (2, 4) for f in frames)
    result = []
    for frame in frames:
        pixels = frame.pixels
        has_alpha = pixels.shape[-1] in (2, 4)
        base = pixels[..., :-1] if has_alpha else pixels
        if colour and base.shape[-1] == 1:
            base = np.repeat(base, 3, axis=-1)
        if alpha:
            opaque = np.ones(base.shape[:2] + (1,), np.float32)
            base = np.concatenate([base, pixels[..., -1:] if has_alpha else opaque], axis=-1)
        result.append(frame if base is pixels else Picture(base, frame.bits, frame.icc_profile))
    return result


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
                text: dict[str, str] | None = None, *, overwrite: bool = True,
                compress_level: int = PNG_LEVEL, lossless: bool = False) -> None:
    """Write atomically: a temporary file in the destination folder, then os.replace.

    The format follows the extension; 16-bit data goes to PNG and TIFF at 16 bits and to the
    8-bit formats (JPEG, WebP, BMP) quantised to 8 bits. `quality` (1-100) is the JPEG and
    lossy WebP quality; `lossless` makes WebP lossless (at its fastest effort). PNG uses zlib
    level `compress_level` (0-9). EXR stores the values unquantised as half floats
    (`picture.bits` 16) or floats (32). `text` becomes PNG text chunks (ComfyUI's workflow
    metadata); other formats have no place for it. With `overwrite=False` an existing file is
    never replaced (FileExistsError).
    """
    path = Path(path)
    suffix = _checked_suffix(path, WRITE_EXTENSIONS, quality)
    if not 0 <= compress_level <= 9:
        raise ValueError(f"{path}: PNG compression level must be 0-9, got {compress_level}")
    check_storable(path, picture.pixels.shape[-1])
    if suffix == ".exr":
        exr = _openexr(path)  # before any file is created
        with atomic_write(path, overwrite=overwrite) as out:
            _write_exr(exr, out, path, picture)
        return
    with atomic_write(path, overwrite=overwrite) as out:
        _write(out, path, suffix, picture, quality, text or {}, compress_level, lossless)


def write_frames(path: str | os.PathLike, frames: Iterable[Picture], timing: Timing,
                 quality: int = 95, *, overwrite: bool = True) -> None:
    """Write an animated GIF, WebP or PNG, or a multi-page TIFF (by the extension), atomically.

    `frames` are whole frames, as read_frames gives them; they may be produced while this
    runs (each becomes a Pillow image as it comes; TIFF pages are kept until all are there,
    for the 16-bit writer). GIF frames get a 256-colour
    palette each, alpha below one half becoming transparent; WebP is lossy at `quality`;
    TIFF pages keep 16 bits. The timing's durations, plays, disposal and blend are kept where
    the format has them.
    """
    path = Path(path)
    suffix = _checked_suffix(path, tuple(FRAMES_FORMATS), quality)
    if suffix in (".tif", ".tiff"):
        pages = list(frames)
        wide = [p.bits == 16 and p.pixels.shape[-1] in (3, 4) for p in pages]
        if any(wide) and not all(wide):
            raise ValueError(f"{path}: cannot mix 16-bit colour pages with other pages in a TIFF")
        if pages and all(wide):
            with atomic_write(path, overwrite=overwrite) as out:
                out.writelines(_tiff16([(_quantise(p.pixels, 16), p.icc_profile) for p in pages]))
            return
        images = [_with_icc(_pillow_image(p.pixels, p.bits), p) for p in pages]
    elif suffix == ".gif":
        images = [_gif_frame(p) for p in frames]  # GIF has no place for ICC profiles
    else:
        images = [_with_icc(_pillow_image(p.pixels, 8), p) for p in frames]
    if not images:
        raise ValueError(f"{path}: no frames to write")
    options = _frames_options(suffix, timing, len(images), quality)
    if suffix == ".webp" and images[0].info.get("icc_profile"):  # WebP takes it only this way
        options["icc_profile"] = images[0].info["icc_profile"]
    encoded = io.BytesIO()  # Pillow's TIFF writer reads back what it wrote: not a plain file
    images[0].save(encoded, format=FRAMES_FORMATS[suffix], save_all=True,
                   append_images=images[1:], **options)
    with atomic_write(path, overwrite=overwrite) as out:
        out.write(encoded.getbuffer())


def _with_icc(image: Image.Image, picture: Picture) -> Image.Image:
    # Each page's own profile (TIFF); animations have one, which their first frame carries.
    if picture.icc_profile:
        image.info["icc_profile"] = picture.icc_profile
    return image


def check_storable(path: Path, channels: int) -> None:
    """Refuse what the file format of `path` cannot hold, before any work is done for it."""
    if path.suffix.lower() in (".jpg", ".jpeg") and channels in (2, 4):
        raise ValueError(f"{path.name}: JPEG cannot store alpha; write PNG, WebP or TIFF")


def _checked_suffix(path: Path, allowed: tuple[str, ...], quality: int) -> str:
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise ValueError(f"{path}: unknown output format {suffix!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"{path}: quality must be 1-100, got {quality}")
    return suffix


# Disposal that clears a frame's area before the next is drawn (Pillow's numbers): right for
# any sequence of whole frames, used where the source's own disposal does not apply.
_CLEAR = {"GIF": 2, "PNG": 1}


def _frames_options(suffix: str, timing: Timing, count: int, quality: int) -> dict:
    kind = FRAMES_FORMATS[suffix]
    if kind == "TIFF":
        return {}
    options = {}
    if len(timing.durations) == count:
        options["duration"] = timing.durations
    if kind != "GIF":
        options["loop"] = timing.plays
    elif timing.plays != 1:  # no loop setting: plays once
        options["loop"] = max(timing.plays - 1, 0)
    same = timing.format == kind  # disposal and blend numbers mean the same only then
    if kind in _CLEAR:
        options["disposal"] = timing.disposal if same and timing.disposal else _CLEAR[kind]
    if kind == "PNG":
        options["blend"] = timing.blend if same and timing.blend else 0  # replace, not blend
    if kind == "WEBP":
        options.update(lossless=False, quality=quality)
    return options


def _pillow_image(pixels: np.ndarray, bits: int) -> Image.Image:
    """A Pillow image of H x W x C samples: 16-bit gray if `bits` is 16 and C is 1, else 8-bit."""
    if bits == 16 and pixels.shape[-1] == 1:
        return Image.fromarray(_quantise(pixels[..., 0], 16))
    samples = _quantise(pixels, 8)
    return Image.fromarray(samples[..., 0] if samples.shape[-1] == 1 else samples)


def _gif_frame(picture: Picture) -> Image.Image:
    """A palette image of up to 256 colours; with alpha, index 255 is kept for transparency."""
    samples = _quantise(picture.pixels, 8)
    channels = samples.shape[-1]
    colour = samples[..., : 3 if channels >= 3 else 1]
    rgb = Image.fromarray(np.repeat(colour, 3, axis=-1) if colour.shape[-1] == 1 else colour)
    if channels not in (2, 4):
        return rgb.quantize(256)
    palette_image = rgb.quantize(255)
    indices = np.asarray(palette_image).copy()
    indices[samples[..., -1] < 128] = 255
    image = Image.fromarray(indices, "P")
    palette = palette_image.getpalette()[: 255 * 3]
    image.putpalette(palette + [0] * (256 * 3 - len(palette)))
    image.info["transparency"] = 255
    return image


def _decode(path: Path, image: Image.Image, frame: int | None) -> tuple[np.ndarray, int]:
    mode = image.mode
    if mode in ("RGB", "RGBA") and frame is not None:
        wide = _decode_16bit_colour(path, image, frame)
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


def _decode_16bit_colour(path: Path, image: Image.Image, frame: int) -> np.ndarray | None:
    """Exact 16-bit samples of a 16-bit RGB(A) file (of its page `frame`, for a TIFF) Pillow
    would truncate to 8 bits, or None."""
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
        again.seek(frame)
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
    if wide and channels > 1 and suffix == ".png":
        out.write(_png16(_quantise(pixels, 16), icc, text, compress_level))
        return
    if wide and channels > 1:
        out.writelines(_tiff16([(_quantise(pixels, 16), icc)]))
        return
    image = _pillow_image(pixels, 16 if wide else 8)
    options = {"icc_profile": icc} if icc else {}
    if suffix in (".jpg", ".jpeg"):
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


def _tiff16(pages: list[tuple[np.ndarray, bytes | None]]) -> list:
    """An uncompressed little-endian baseline TIFF of 16-bit RGB or RGBA pages, each given as
    (H x W x C samples, ICC profile or None), as the buffers to write one after the other (the
    samples are not copied)."""
    # Layout: header (8 bytes), every page's blobs (word-aligned), then the IFDs, one per
    # page, each pointing at the next.
    blobs, page_entries, position = [], [], 8
    for samples, icc in pages:
        height, width, channels = samples.shape
        data = np.ascontiguousarray(samples, dtype="<u2").data.cast("B")  # even: word-aligned
        bits = struct.pack("<" + "H" * channels, *[16] * channels)
        offsets = []
        for blob in [data, bits] + ([icc] if icc else []):
            blobs.append(blob if len(blob) % 2 == 0 else bytes(blob) + b"\0")
            offsets.append(position)
            position += len(blobs[-1])
        entries = [
            (256, 4, 1, width),  # ImageWidth
            (257, 4, 1, height),  # ImageLength
            (258, 3, channels, offsets[1]),  # BitsPerSample, 6 or 8 bytes: stored at an offset
            (259, 3, 1, 1),  # Compression: none
            (262, 3, 1, 2),  # PhotometricInterpretation: RGB
            (273, 4, 1, offsets[0]),  # StripOffsets
            (277, 3, 1, channels),  # SamplesPerPixel
            (278, 4, 1, height),  # RowsPerStrip
            (279, 4, 1, len(data)),  # StripByteCounts
            (284, 3, 1, 1),  # PlanarConfiguration: chunky
        ]
        if channels == 4:
            entries.append((338, 3, 1, 2))  # ExtraSamples: unassociated alpha
        if icc:
            entries.append((34675, 7, len(icc), offsets[2]))  # ICC profile
        page_entries.append(entries)
    first_ifd, ifds = position, []
    for number, entries in enumerate(page_entries):
        position += 2 + 12 * len(entries) + 4
        ifd = struct.pack("<H", len(entries))
        for tag, kind, count, value in entries:
            inline = kind == 3 and count == 1  # a single SHORT sits in the entry itself
            ifd += struct.pack("<HHI", tag, kind, count)
            ifd += struct.pack("<HH", value, 0) if inline else struct.pack("<I", value)
        ifds.append(ifd + struct.pack("<I", position if number + 1 < len(pages) else 0))
    return [b"II*\0" + struct.pack("<I", first_ifd), *blobs, *ifds]
