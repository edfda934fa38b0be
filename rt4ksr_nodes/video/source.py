"""The source: a video file, recognised by content, described from its headers and first frame
without decoding the rest."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from .detect import image_demuxer
from .errors import VideoError
from .pixels import Colour, Layout

# Stream types copied packet for packet (other video streams, cover art among them, too).
COPIED_TYPES = ("video", "audio", "subtitle", "data", "attachment")


@dataclass(frozen=True)
class VideoSource:
    """A video file's main video stream, as the pipeline needs it before any work starts."""

    path: Path
    width: int
    height: int
    pix_fmt: str
    layout: Layout
    colour: Colour
    time_base: Fraction
    rate: Fraction | None  # the average frame rate, when known
    frames: int | None  # the frame count from the headers, or an estimate, when known
    duration: float | None  # seconds
    display_matrix: tuple[int, ...] | None  # FFmpeg's 3 x 3 display matrix (rotation, flips)
    container_format: str


def open_video(path: str | os.PathLike) -> av.container.InputContainer:
    """The file opened by FFmpeg, or a VideoError naming it."""
    try:
        container = av.open(os.fspath(path))
    except (av.FFmpegError, OSError) as error:
        raise VideoError(f"{path}: not a video FFmpeg can open ({error})") from error
    if not container.streams.video or image_demuxer(container.format.name):
        container.close()
        raise VideoError(f"{path}: has no video stream (FFmpeg reads it as {container.format.name})")
    return container


def decoder(stream) -> av.CodecContext:
    """The stream's decoder. VP8/VP9 with alpha (WebM's alpha_mode tag) need libvpx's: FFmpeg's
    own decoders ignore the alpha plane."""
    alpha = any(key.lower() == "alpha_mode" and value == "1" for key, value in stream.metadata.items())
    libvpx = {"vp9": "libvpx-vp9", "vp8": "libvpx"}.get(stream.codec_context.name)
    context = av.CodecContext.create(libvpx, "r") if alpha and libvpx in av.codecs_available else stream.codec_context
    context.thread_type = "AUTO"
    return context


def main_stream(container) -> av.VideoStream:
    """The video stream to upscale: the first that is not a still (cover art)."""
    moving = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    return (moving or list(container.streams.video))[0]


def probe(path: str | os.PathLike) -> VideoSource:
    """Describe the file's main video stream; decodes only its first frame (the pixel format,
    colour tags and display matrix as the decoder reports them)."""
    path = Path(path)
    with open_video(path) as container:
        stream = main_stream(container)
        first = _first_frame(container, stream, path)
        layout = Layout.of(first.format.name)
        rate = stream.average_rate or stream.guessed_rate
        duration = _duration(container, stream)
        frames = stream.frames or (round(duration * rate) if duration and rate else None)
        matrix = first.side_data.get("DISPLAYMATRIX")
        return VideoSource(
            path=path,
            width=first.width,
            height=first.height,
            pix_fmt=first.format.name,
            layout=layout,
            colour=Colour.of(first, layout),
            time_base=stream.time_base,
            rate=Fraction(rate) if rate else None,
            frames=frames or None,
            duration=duration,
            display_matrix=struct.unpack("<9i", bytes(matrix)) if matrix is not None else None,
            container_format=container.format.name,
        )


def _first_frame(container, stream, path: Path) -> av.VideoFrame:
    context = decoder(stream)
    try:
        for packet in container.demux(stream):
            for frame in context.decode(packet):
                return frame
    except av.FFmpegError as error:
        raise VideoError(f"{path}: cannot decode its video stream ({error})") from error
    raise VideoError(f"{path}: its video stream has no frames")


def _duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None
