"""Tiny clips for the video tests, written with PyAV: frames from a benchmark image, optional
AAC tone, subtitles, chapters, metadata, rotation, colour tags, variable frame rate."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

av = __import__("pytest").importorskip("av")

from ground_truth import image_paths  # noqa: E402
from PIL import Image  # noqa: E402

MS = Fraction(1, 1000)


def pictures(count: int, height: int, width: int, *, step: int = 3) -> list[np.ndarray]:
    """`count` H x W x 3 uint8 views panning across a benchmark image (real detail)."""
    with Image.open(image_paths("Set14")[2]) as image:
        source = np.asarray(image.convert("RGB"))
    return [
        np.ascontiguousarray(source[(i * step) % 40 : (i * step) % 40 + height, i * step : i * step + width])
        for i in range(count)
    ]


def write_clip(
    path,
    frames: list[np.ndarray],
    *,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    rgb_format: str = "rgb24",
    options: dict | None = None,
    pts: list[int] | None = None,
    time_base: Fraction = Fraction(1, 24),
    rate: int = 24,
    colour: dict | None = None,
    yuv: bool = False,
    rotation: int | None = None,
    audio: bool = False,
    subtitles: bool = False,
    chapters: bool = False,
    metadata: dict | None = None,
) -> None:
    """frames: arrays in `rgb_format`, or (yuv=True) lists of planes written as they are.
    colour: colorspace / color_range / color_primaries / color_trc codes for stream and frames."""
    out = av.open(str(path), "w")
    out.metadata.update(metadata or {})
    video = out.add_stream(codec, rate=rate, options=options or {})
    height, width = (frames[0][0].shape if yuv else frames[0].shape[:2])
    video.width, video.height, video.pix_fmt = width, height, pix_fmt
    video.codec_context.time_base = time_base
    video.time_base = time_base
    for key, value in (colour or {}).items():
        setattr(video.codec_context, key, value)
    if rotation is not None:
        video.set_display_rotation(rotation)
    sound = subtitle = None
    if audio:
        sound = out.add_stream("aac", rate=48000)
        sound.layout = "mono"
    if subtitles:
        subtitle = out.add_mux_stream("subrip")
        subtitle.time_base = MS
    if chapters:
        out.set_chapters([
            {"id": 1, "start": 0, "end": 400, "time_base": MS, "metadata": {"title": "One"}},
            {"id": 2, "start": 400, "end": 800, "time_base": MS, "metadata": {"title": "Two"}},
        ])
    out.start_encoding()
    for index, pixels in enumerate(frames):
        if yuv:
            frame = av.VideoFrame(width, height, pix_fmt)
            for plane, values in zip(frame.planes, pixels):
                _fill(plane, values)
        else:
            frame = av.VideoFrame.from_ndarray(pixels, format=rgb_format)
            if frame.format.name != pix_fmt:
                frame = frame.reformat(format=pix_fmt)
        for key, value in (colour or {}).items():
            setattr(frame, key, value)
        frame.pts = index if pts is None else pts[index]
        frame.time_base = time_base
        out.mux(video.encode(frame))
        if subtitle is not None and index % 4 == 0:
            packet = av.Packet(f"line {index}".encode())
            packet.stream, packet.time_base = subtitle, MS
            packet.pts = packet.dts = int(frame.pts * time_base * 1000)
            packet.duration = 100
            out.mux(packet)
    out.mux(video.encode(None))
    if sound is not None:
        seconds = float((frame.pts + 1) * time_base)
        samples = np.sin(np.arange(int(48000 * seconds)) * 2 * np.pi * 440 / 48000).astype(np.float32)
        for start in range(0, len(samples), 1024):
            chunk = av.AudioFrame.from_ndarray(samples[None, start : start + 1024], format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = 48000, start
            out.mux(sound.encode(chunk))
        out.mux(sound.encode(None))
    out.close()


def _fill(plane, values: np.ndarray) -> None:
    """Write a 2-D array of samples into a plane, honouring its line stride."""
    rows = np.frombuffer(plane, dtype=values.dtype).reshape(plane.height, -1)
    buffer = rows.copy()
    buffer[:, : values.shape[1]] = values
    plane.update(buffer.tobytes())


def decode(path, rgb_format: str = "rgb24", decoder: str | None = None) -> tuple[list[np.ndarray], list[int], Fraction]:
    """Every frame of the first video stream as `rgb_format` arrays (PyAV's own conversion),
    their pts and the stream's time base. decoder: an FFmpeg decoder to use instead of the
    stream's default (libvpx-vp9 reads VP9's alpha)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        context = stream.codec_context if decoder is None else av.CodecContext.create(decoder, "r")
        frames, stamps = [], []
        for frame in (f for packet in container.demux(stream) for f in context.decode(packet)):
            frames.append(frame.to_ndarray(format=rgb_format))
            stamps.append(frame.pts)
        return frames, stamps, stream.time_base


def frame_times(path) -> list[tuple[Fraction, Fraction]]:
    """(start, duration) of every frame in seconds, exact."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [(frame.pts * stream.time_base, frame.duration * stream.time_base)
                for frame in container.decode(stream)]


def packets(path, kind: str) -> list[tuple[bytes, Fraction]]:
    """(bytes, pts in seconds) of every packet of the first `kind` stream."""
    with av.open(str(path)) as container:
        stream = getattr(container.streams, kind)[0]
        return [(bytes(p), p.pts * stream.time_base) for p in container.demux(stream) if p.size]
