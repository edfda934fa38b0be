"""Pixel layouts and colour tags: what a stream's frames carry, and the YUV <-> RGB conversion
that keeps them (libswscale through PyAV, with the stream's own matrix and range)."""

from __future__ import annotations

from dataclasses import dataclass

import av
from av.video.reformatter import ColorRange, Colorspace, Interpolation

# FFmpeg's AVColorSpace / AVColorPrimaries / AVColorTransferCharacteristic / AVColorRange codes.
RGB, BT709, UNSPECIFIED, BT470BG, SMPTE170M = 0, 1, 2, 5, 6
MPEG, JPEG = 1, 2  # limited ("tv") and full ("pc") range

# The matrices libswscale knows, by AVColorSpace code (BT.2020 constant luminance uses the
# non-constant matrix: the best swscale offers).
_MATRICES = {
    1: Colorspace.ITU709,
    4: Colorspace.FCC,
    5: Colorspace.ITU601,
    6: Colorspace.SMPTE170M,
    7: Colorspace.SMPTE240M,
    9: Colorspace.BT2020,
    10: Colorspace.BT2020,
}
# Bilinear chroma, full horizontal chroma interpolation and accurate rounding: a flat patch
# converts to within a code value of the exact formula, in both directions.
CONVERSION = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT


@dataclass(frozen=True)
class Layout:
    """What a pixel format carries: bits per sample, alpha, RGB or YUV, chroma subsampling."""

    bits: int
    alpha: bool
    rgb: bool
    sub_x: bool  # chroma halved horizontally (4:2:x)
    sub_y: bool  # chroma halved vertically (4:2:0)

    @classmethod
    def of(cls, pix_fmt: str) -> Layout:
        fmt = av.VideoFormat(pix_fmt)
        bits = max(c.bits for c in fmt.components)
        alpha = any(c.is_alpha for c in fmt.components) or fmt.has_palette
        return cls(
            bits=bits,
            alpha=alpha,
            rgb=fmt.is_rgb or fmt.has_palette,
            sub_x=fmt.chroma_width(2) == 1,
            sub_y=fmt.chroma_height(2) == 1,
        )

    @property
    def wide(self) -> bool:
        """Processed as 16-bit RGB(A) rather than 8-bit."""
        return self.bits > 8


@dataclass(frozen=True)
class Colour:
    """A stream's colour tags (AVColorSpace, AVColorRange, AVColorPrimaries, AVColorTransfer
    codes), with the untagged ones resolved to what players assume."""

    matrix: int
    range: int
    primaries: int
    transfer: int

    @classmethod
    def of(cls, frame: av.VideoFrame, layout: Layout) -> Colour:
        """The frame's tags; untagged: BT.709 for HD, BT.601 for SD (625 lines: BT.470BG
        primaries, else SMPTE 170M), limited range for YUV (full for yuvj* and RGB)."""
        hd = frame.width >= 1280 or frame.height > 576
        sd_primaries = BT470BG if frame.height == 576 else SMPTE170M
        matrix, primaries, transfer = int(frame.colorspace), int(frame.color_primaries), int(frame.color_trc)
        if layout.rgb:
            matrix = RGB
        elif matrix in (UNSPECIFIED, 3) or matrix not in _MATRICES:  # 3: reserved
            matrix = BT709 if hd else SMPTE170M
        if primaries in (UNSPECIFIED, 0, 3):
            primaries = BT709 if hd else sd_primaries
        if transfer in (UNSPECIFIED, 0, 3):
            transfer = BT709
        colour_range = int(frame.color_range)
        if layout.rgb or frame.format.name.startswith("yuvj"):
            colour_range = JPEG
        elif colour_range not in (MPEG, JPEG):
            colour_range = MPEG
        return cls(matrix, colour_range, primaries, transfer)

    def as_rgb(self) -> Colour:
        """The tags of the same colours stored as RGB (matrix RGB, full range)."""
        return Colour(RGB, JPEG, self.primaries, self.transfer)

    def swscale(self) -> tuple[Colorspace, ColorRange]:
        """The matrix and range arguments for VideoFrame.reformat."""
        matrix = _MATRICES.get(self.matrix, Colorspace.ITU709)
        return matrix, ColorRange.JPEG if self.range == JPEG else ColorRange.MPEG

    def tag(self, target) -> None:
        """Write the tags onto a frame or an encoder context."""
        target.colorspace = self.matrix
        target.color_range = self.range
        target.color_primaries = self.primaries
        target.color_trc = self.transfer


def to_rgb(frame: av.VideoFrame, colour: Colour, rgb_format: str):
    """The frame as an H x W x C numpy array in `rgb_format` (rgb24, rgba, rgb48le, rgba64le)."""
    matrix, colour_range = colour.swscale()
    rgb = frame.reformat(
        format=rgb_format,
        src_colorspace=matrix,
        src_color_range=colour_range,
        dst_color_range=ColorRange.JPEG,
        interpolation=CONVERSION,
    )
    return rgb.to_ndarray()


def from_rgb(pixels, rgb_format: str, pix_fmt: str, colour: Colour) -> av.VideoFrame:
    """An H x W x C array in `rgb_format` as a `pix_fmt` frame tagged `colour`."""
    frame = av.VideoFrame.from_ndarray(pixels, format=rgb_format)
    matrix, colour_range = colour.swscale()
    out = frame.reformat(
        format=pix_fmt,
        src_color_range=ColorRange.JPEG,
        dst_colorspace=matrix,
        dst_color_range=colour_range,
        interpolation=CONVERSION,
    )
    colour.tag(out)
    return out
