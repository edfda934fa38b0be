"""Encoding choices: the codecs --codec offers, their transparent-looking defaults, the pixel
format and colour tags an output gets, and every check that can fail before work starts."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import av

from .detect import CONTAINERS
from .errors import VideoError
from .pixels import BT709, MPEG, RGB, SMPTE170M, Colour, Layout
from .source import VideoSource

X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")
PRORES_PROFILES = ("proxy", "lt", "standard", "hq", "4444", "4444xq")


@dataclass(frozen=True)
class Codec:
    name: str  # what --codec takes
    encoder: str  # FFmpeg's encoder
    extension: str  # the container used when the output's own cannot carry it
    crf: tuple[int, int, int] | None  # default, lowest, highest; None: no --crf (lossless / profiles)
    presets: tuple[str, ...] = ()  # what --preset takes
    preset: str | None = None  # its default
    options: Mapping[str, str] = field(default_factory=dict)  # fixed encoder options
    rgb: bool = False  # stores RGB (lossless of what the model wrote) rather than YUV
    max_samples: int = 0  # luma samples per picture (level 6.2-class limits); 0 = none
    max_side: int = 0

    def settings(self, crf: int | None, preset: str | None) -> dict[str, str]:
        """The encoder's options for a --crf / --preset choice (validated by plan())."""
        options = dict(self.options)
        crf = self.crf[0] if crf is None and self.crf else crf
        preset = preset or self.preset
        if self.encoder.endswith("_nvenc"):
            options.update(rc="vbr", cq=str(crf), b="0", preset=preset)
        elif self.encoder == "libvpx-vp9":
            options.update(crf=str(crf), b="0", **{"cpu-used": preset})
        elif self.encoder == "prores_ks":
            options["profile"] = str(PRORES_PROFILES.index(preset))
        elif self.crf is not None:
            options.update(crf=str(crf), preset=preset)
        return options


CODECS = {
    codec.name: codec
    for codec in (
        # H.264 level 6.2: 139264 macroblocks a picture, a side at most sqrt(8 * that) of them.
        # A 20-frame look-ahead (x264's own for "faster"), not medium's 40: at 4K each frame
        # x264 holds is ~30 MB, and memory is to stay flat from a short clip to a long one.
        Codec("h264", "libx264", ".mp4", (18, 0, 51), X26X_PRESETS, "medium", {"rc-lookahead": "20"},
              max_samples=139264 * 256, max_side=16 * 1055),
        # x265's CRF 20 looks like x264's 18.
        Codec("hevc", "libx265", ".mp4", (20, 0, 51), X26X_PRESETS, "medium",
              {"x265-params": "log-level=error"}, max_samples=35651584, max_side=16888),
        Codec("av1", "libsvtav1", ".mp4", (24, 1, 63), tuple(str(p) for p in range(14)), "8",
              max_samples=35651584, max_side=16384),
        Codec("vp9", "libvpx-vp9", ".webm", (24, 0, 63), tuple(str(p) for p in range(9)), "4",
              {"deadline": "good", "row-mt": "1"}, max_samples=35651584, max_side=16384),
        Codec("prores", "prores_ks", ".mov", None, PRORES_PROFILES, "hq", {"vendor": "apl0"}),
        Codec("ffv1", "ffv1", ".mkv", None, options={"level": "3", "slicecrc": "1", "g": "1"}, rgb=True),
        Codec("h264_nvenc", "h264_nvenc", ".mp4", (19, 0, 51), tuple(f"p{i}" for i in range(1, 8)), "p5",
              max_samples=139264 * 256, max_side=4096),
        Codec("hevc_nvenc", "hevc_nvenc", ".mp4", (21, 0, 51), tuple(f"p{i}" for i in range(1, 8)), "p5",
              max_samples=35651584, max_side=8192),
    )
}


@dataclass(frozen=True)
class EncodeOptions:
    """How the output is encoded. codec: a CODECS name, or None for h264 unless the output or
    the source asks otherwise (.webm: vp9; a source with alpha: a codec that keeps it);
    crf / preset: None for the codec's default; metadata: added to the container's."""

    codec: str | None = None
    crf: int | None = None
    preset: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EncoderPlan:
    """Everything the encode stage needs, settled before work starts."""

    codec: Codec
    muxer: str
    pix_fmt: str
    layout: Layout  # of pix_fmt
    colour: Colour  # the output's tags
    width: int
    height: int
    settings: dict[str, str]
    notes: tuple[str, ...]  # what differs from the source, for warnings


@lru_cache(maxsize=None)
def muxable(muxer: str, codec: str) -> bool:
    """Whether FFmpeg's `muxer` can store `codec` (a codec name, e.g. h264, aac, mov_text)."""
    with av.open(io.BytesIO(), "w", format=muxer) as container:
        return codec in container.supported_codecs


def choose_codec(options: EncodeOptions, source: VideoSource, keep_alpha: bool, extension: str | None) -> Codec:
    """The Codec for `options.codec`, or the default for this source and output extension."""
    if options.codec is not None:
        try:
            return CODECS[options.codec]
        except KeyError:
            raise VideoError(f"unknown codec {options.codec!r}; choose one of {', '.join(CODECS)}") from None
    if source.layout.alpha and keep_alpha:
        by_container = {".webm": "vp9", ".mkv": "ffv1", ".mov": "prores"}
        return CODECS[by_container.get(extension, "prores")]
    return CODECS["vp9" if extension == ".webm" else "h264"]


def output_extension(codec: Codec, wanted: str) -> str:
    """`wanted` (the source's or the output's extension) when it can carry the codec, else the
    codec's own container."""
    muxer = CONTAINERS.get(wanted.lower())
    if muxer is not None and muxable(muxer, _codec_id(codec)):
        return wanted.lower()
    return codec.extension


def plan(source: VideoSource, scale: int, options: EncodeOptions, destination: Path, alpha: str) -> EncoderPlan:
    """Check the choices against the source, the output's container and the codec's limits."""
    extension = destination.suffix.lower()
    muxer = CONTAINERS.get(extension)
    if muxer is None:
        raise VideoError(
            f"{destination}: unsupported video container {extension or '(no extension)'}; "
            f"use one of {', '.join(CONTAINERS)}"
        )
    keep_alpha = alpha != "discard"
    codec = choose_codec(options, source, keep_alpha, extension)
    if not muxable(muxer, _codec_id(codec)):
        raise VideoError(
            f"{destination}: a {extension} file cannot hold {codec.name}; use {codec.extension} "
            "(or another --codec)"
        )
    _check_quality(codec, options)
    if codec.name not in av.codecs_available and codec.encoder not in av.codecs_available:
        raise VideoError(f"this FFmpeg build has no {codec.encoder} encoder; choose another --codec")
    preset = options.preset or codec.preset
    alpha_wanted = keep_alpha and source.layout.alpha
    if codec.name == "prores" and options.preset is None and (alpha_wanted or not source.layout.sub_x):
        preset = "4444"  # the profile that keeps alpha and full chroma
    # ProRes' 4:2:2 profiles take 4:2:2 without alpha, whatever the source has.
    four_two_two = codec.name == "prores" and preset in PRORES_PROFILES[:4]
    pix_fmt, notes = _pixel_format(codec, source.layout, alpha_wanted, four_two_two)
    layout = Layout.of(pix_fmt)
    width, height = scale * source.width, scale * source.height
    if layout.sub_x and width % 2 or layout.sub_y and height % 2:
        even = (width - width % 2 * layout.sub_x, height - height % 2 * layout.sub_y)
        notes.append(
            f"{pix_fmt} needs even sizes: {width}x{height} is cropped to {even[0]}x{even[1]} "
            "(--codec ffv1 keeps every pixel)"
        )
        width, height = even
    _check_size(codec, width, height)
    return EncoderPlan(
        codec=codec,
        muxer=muxer,
        pix_fmt=pix_fmt,
        layout=layout,
        colour=_output_colour(source.colour, layout, width, height),
        width=width,
        height=height,
        settings=codec.settings(options.crf, preset),
        notes=tuple(notes),
    )


def _codec_id(codec: Codec) -> str:
    return av.codec.Codec(codec.encoder, "w").name if codec.encoder in av.codecs_available else codec.name


def _check_quality(codec: Codec, options: EncodeOptions) -> None:
    if options.crf is not None:
        if codec.crf is None:
            what = "is lossless" if codec.name == "ffv1" else "has profiles, not CRF (--preset)"
            raise VideoError(f"--crf does not apply to {codec.name}: it {what}")
        low, high = codec.crf[1:]
        if not low <= options.crf <= high:
            raise VideoError(f"--crf for {codec.name} must be {low} to {high}, got {options.crf}")
    if options.preset is not None and options.preset not in codec.presets:
        if not codec.presets:
            raise VideoError(f"--preset does not apply to {codec.name}")
        raise VideoError(f"--preset for {codec.name} must be one of {', '.join(codec.presets)}, got {options.preset!r}")


def _check_size(codec: Codec, width: int, height: int) -> None:
    if codec.max_samples and (width * height > codec.max_samples or max(width, height) > codec.max_side):
        side = math.isqrt(codec.max_samples * 16 // 9)
        raise VideoError(
            f"{codec.name} cannot carry {width}x{height}: at most {codec.max_samples} pixels a "
            f"picture (about {side}x{side * 9 // 16}) and {codec.max_side} px a side; "
            "use --codec ffv1 or prores, or a smaller scale"
        )


def _pixel_format(codec: Codec, source: Layout, alpha: bool, four_two_two: bool) -> tuple[str, list[str]]:
    """The encoder's pixel format closest to the source's: its bit depth, alpha and chroma
    subsampling where the encoder has them, else the nearest below, with a note of the loss."""
    supported = [f.name for f in av.codec.Codec(codec.encoder, "w").video_formats or ()]
    # The source's depth or the nearest below, else above (ProRes is 10-bit only).
    depths = [bits for bits in (16, 14, 12, 10, 9, 8) if bits <= max(source.bits, 8)]
    depths += [bits for bits in (10, 12, 16) if bits > depths[0]]
    # YUV sources keep their subsampling; RGB ones get 4:2:0, what players expect of these codecs.
    own = "420" if source.sub_y or source.rgb else "422" if source.sub_x else "444"
    chromas = [own, "422", "444", "420"]
    if four_two_two:
        chromas = ["422"]
    candidates = []
    for keep in ((True, False) if alpha and not four_two_two else (False,)):
        for bits in depths:
            if codec.rgb:
                candidates.append(("bgra" if keep else "bgr0") if bits == 8 else f"gbr{'a' * keep}p{bits}le")
            else:
                suffix = "" if bits == 8 else f"{bits}le"
                candidates += [f"yuv{'a' * keep}{chroma}p{suffix}" for chroma in chromas]
                candidates.append({8: "nv12", 10: "p010le"}.get(bits, ""))
    pix_fmt = next((name for name in candidates if name in supported), None)
    if pix_fmt is None:
        raise VideoError(f"{codec.encoder} takes none of the pixel formats this source needs ({source})")
    chosen, notes = Layout.of(pix_fmt), []
    if alpha and not chosen.alpha:
        keeps = "--preset 4444 or 4444xq" if four_two_two else "--codec prores, vp9 or ffv1"
        notes.append(f"{codec.name} as chosen carries no alpha: the alpha plane is dropped ({keeps} keeps it)")
    if chosen.bits < source.bits:
        notes.append(f"{codec.encoder} here takes at most {chosen.bits} bits: the {source.bits}-bit source is reduced")
    return pix_fmt, notes


def _output_colour(colour: Colour, layout: Layout, width: int, height: int) -> Colour:
    if layout.rgb:
        return colour.as_rgb()
    if colour.matrix == RGB:  # RGB source, YUV output: the matrix players assume for the size
        hd = width >= 1280 or height > 576
        return Colour(BT709 if hd else SMPTE170M, MPEG, colour.primaries, colour.transfer)
    return colour
