"""VIDEO values without ComfyUI: a clip in a file and a clip made of frames in memory.

They answer ComfyUI's video interface (get_components, save_to, get_stream_source,
get_dimensions, get_duration, get_container_format) the way ComfyUI's VideoFromFile and
VideoFromComponents do, written from their behaviour: the headless runner's Load Video and
Create Video return them, and Upscale Video (RT4KSR) uses them for its intermediate and
materialised clips. PyAV is imported on first use.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..files.paths import atomic_write, write_first_free

# What the mp4/mov muxers need to keep tags they do not know (ComfyUI's prompt and workflow).
MP4_OPTIONS = {"movflags": "use_metadata_tags"}
AUTO = "auto"


@dataclass
class Components:
    """ComfyUI's VideoComponents: frames (N x H x W x 3 floats), frame rate, AUDIO, tags."""

    images: torch.Tensor
    frame_rate: Fraction
    audio: dict | None = None
    metadata: dict | None = None


def choice(value) -> str:
    """A format/codec argument as text: ComfyUI passes its str enums or the widget's string."""
    return str(getattr(value, "value", value))


def tags(metadata: dict | None, *, keep_text: bool) -> dict[str, str]:
    """Container tags from a metadata dict: JSON for values (ComfyUI's SaveVideo passes the
    prompt and workflow as objects); text as is when `keep_text` (VideoFromFile's rule)."""
    return {key: value if keep_text and isinstance(value, str) else json.dumps(value)
            for key, value in (metadata or {}).items()}


def open_for_writing(path, format: str | None = None):
    """av.open for writing with ComfyUI's options; a file object needs its muxer named."""
    import av

    muxer = None if isinstance(path, (str, os.PathLike)) else (format or "mp4")
    kind = muxer or Path(path).suffix[1:].lower()
    return av.open(path, mode="w", format=muxer, options=MP4_OPTIONS if kind in ("mp4", "mov", "m4v") else {})


class FileVideo:
    """A clip in a file (a path or an in-memory file), as ComfyUI's VideoFromFile."""

    def __init__(self, file: str | os.PathLike | io.BytesIO):
        self._file = os.fspath(file) if isinstance(file, (str, os.PathLike)) else file

    def get_stream_source(self) -> str | io.BytesIO:
        if isinstance(self._file, io.BytesIO):
            self._file.seek(0)
        return self._file

    def _open(self):
        import av

        return av.open(self.get_stream_source(), mode="r")

    def get_dimensions(self) -> tuple[int, int]:
        with self._open() as container:
            if container.streams.video:
                stream = container.streams.video[0]
                return stream.width, stream.height
        raise ValueError(f"no video stream in {self._name()}")

    def get_duration(self) -> float:
        """From the headers; counting the frames only when they say nothing."""
        import av

        with self._open() as container:
            if container.duration is not None:
                return float(container.duration / av.time_base)
            stream = container.streams.video[0] if container.streams.video else None
            if stream is not None and stream.average_rate:
                frames = stream.frames or sum(1 for _ in container.decode(stream))
                if frames:
                    return float(frames / stream.average_rate)
        raise ValueError(f"cannot tell the duration of {self._name()}")

    def get_container_format(self) -> str:
        with self._open() as container:
            return container.format.name

    def get_components(self) -> Components:
        with self._open() as container:
            return decode(container)

    def save_to(self, path, format=AUTO, codec=AUTO, metadata: dict | None = None) -> None:
        """Copy the streams into `path` (no re-encoding) when the container and codec allow,
        the source's tags kept and `metadata` added; else re-encode as Create Video would."""
        format, codec = choice(format), choice(codec)
        with self._open() as source:
            container_format = source.format.name
            video_codec = source.streams.video[0].codec_context.name if source.streams.video else None
            copy = (format == AUTO or format in container_format.split(",")) and (
                codec == AUTO or video_codec is None or codec == video_codec)
            if not copy:
                ComponentsVideo(decode(source)).save_to(path, format, codec, metadata)
                return
            muxer = container_format.split(",")[0] if format == AUTO else format
            with open_for_writing(path, muxer) as output:
                for key, value in source.metadata.items():
                    if key not in (metadata or {}):
                        output.metadata[key] = value
                output.metadata.update(tags(metadata, keep_text=True))
                streams = {}
                for stream in source.streams:
                    if stream.type in ("video", "audio", "subtitle"):
                        streams[stream] = output.add_stream_from_template(template=stream, opaque=True)
                for packet in source.demux():
                    if packet.stream in streams and packet.dts is not None:
                        packet.stream = streams[packet.stream]
                        output.mux(packet)

    def _name(self) -> str:
        return self._file if isinstance(self._file, str) else "the in-memory video"


class ComponentsVideo:
    """A clip made of frames in memory, as ComfyUI's VideoFromComponents (Create Video)."""

    def __init__(self, components: Components):
        self._components = components

    def get_components(self) -> Components:
        c = self._components
        return Components(images=c.images, frame_rate=c.frame_rate, audio=c.audio)

    def get_dimensions(self) -> tuple[int, int]:
        return self._components.images.shape[2], self._components.images.shape[1]

    def get_duration(self) -> float:
        return float(self._components.images.shape[0] / self._components.frame_rate)

    def get_container_format(self) -> str:
        return "mp4"

    def save_to(self, path, format=AUTO, codec=AUTO, metadata: dict | None = None) -> None:
        """H.264 + AAC in MP4 (the only choices ComfyUI's Create Video output offers)."""
        if choice(format) not in (AUTO, "mp4"):
            raise ValueError(f"a video made of frames is saved as mp4 only, not {choice(format)}")
        if choice(codec) not in (AUTO, "h264"):
            raise ValueError(f"a video made of frames is saved with h264 only, not {choice(codec)}")
        encode(self._components, path, "h264", metadata)


def frame_rate_of(components: Components) -> Fraction:
    """The rate the frames are written at: ComfyUI's, to a thousandth of a frame per second."""
    return Fraction(round(components.frame_rate * 1000), 1000)


def encode(components: Components, path, codec: str, metadata: dict | None = None) -> None:
    """Write frames and audio: "h264" as ComfyUI's VideoFromComponents does (yuv420p, x264's
    defaults, AAC, truncating quantisation); "ffv1" for lossless intermediate clips (RGB,
    frames as they are quantised for h264)."""
    import av

    images = components.images
    rate = frame_rate_of(components)
    with open_for_writing(path) as output:
        output.metadata.update(tags(metadata, keep_text=False))
        video = output.add_stream("h264" if codec == "h264" else "ffv1", rate=rate)
        video.width, video.height = images.shape[2], images.shape[1]
        video.pix_fmt = "yuv420p" if codec == "h264" else "bgr0"
        audio = components.audio
        audio_stream = output.add_stream("aac", rate=int(audio["sample_rate"])) if audio else None
        for image in images:
            pixels = (image[..., :3] * 255).clamp(0, 255).byte().cpu().numpy()
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(format=video.pix_fmt)
            output.mux(video.encode(frame))
        output.mux(video.encode(None))
        if audio_stream is not None:
            sample_rate = int(audio["sample_rate"])
            waveform = audio["waveform"][:, :, : math.ceil(sample_rate / rate * len(images))]
            samples = waveform.movedim(2, 1).reshape(1, -1).float().cpu().numpy()
            layout = "mono" if waveform.shape[1] == 1 else "stereo"
            frame = av.AudioFrame.from_ndarray(samples, format="flt", layout=layout)
            frame.sample_rate, frame.pts = sample_rate, 0
            output.mux(audio_stream.encode(frame))
            output.mux(audio_stream.encode(None))


def decode(container) -> Components:
    """Every frame (FFmpeg's default RGB conversion, as ComfyUI's Load Video gives them), the
    first audio stream as AUDIO, the average frame rate and the container's tags."""
    frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    images = (torch.from_numpy(np.stack(frames)).float() / 255.0 if frames
              else torch.zeros(0, 0, 0, 3))
    stream = container.streams.video[0]
    frame_rate = Fraction(stream.average_rate) if stream.average_rate else Fraction(1)
    audio = None
    if container.streams.audio:
        container.seek(0)
        stream = container.streams.audio[0]
        chunks = [frame.to_ndarray() for packet in container.demux(stream) for frame in packet.decode()]
        if chunks:
            planar = [c if c.shape[0] == stream.channels else c.reshape(-1, stream.channels).T for c in chunks]
            waveform = torch.from_numpy(np.concatenate(planar, axis=1)).float().unsqueeze(0)
            audio = {"waveform": waveform, "sample_rate": int(stream.sample_rate or 1)}
    return Components(images=images, frame_rate=frame_rate, audio=audio, metadata=dict(container.metadata))


def save_video(video, names: Iterable[Path], format=AUTO, codec=AUTO, metadata: dict | None = None, *,
               overwrite: bool = False) -> Path:
    """video.save_to through a hidden temporary file beside the target (with its extension,
    which picks the muxer), given its name when complete: a file under its final name is whole.
    The name is the first of `names` that is free, claimed by creating it, so concurrent savers
    never take the same name or replace each other's file (FileExistsError when none is free);
    with `overwrite`, the first of `names`, replaced if it exists. Returns the name taken."""
    def write(temporary: str) -> None:
        video.save_to(temporary, format=format, codec=codec, metadata=metadata)

    if overwrite:
        target = next(iter(names))
        with atomic_write(target, to_path=True) as temporary:
            write(temporary)
        return target
    return write_first_free(names, write, to_path=True)


def comfy_metadata(prompt, extra_pnginfo) -> dict | None:
    """What core Save Video stores in the container: the prompt and the editor's workflow
    (extra_pnginfo), unless metadata is turned off."""
    from ..host import bridge

    if not bridge.save_metadata():
        return None
    metadata = {**(extra_pnginfo or {}), **({"prompt": prompt} if prompt is not None else {})}
    return metadata or None


def source_path(video, workdir: Path) -> Path:
    """A file holding `video`'s clip for the pipeline: its own file when it has one (an
    in-memory file is written out), else its frames and audio written losslessly (FFV1)."""
    stream = getattr(video, "get_stream_source", None) if _has_file(video) else None
    if stream is not None:
        source = stream()
        if isinstance(source, (str, os.PathLike)):
            return Path(source)
        path = workdir / "source"
        source.seek(0)
        path.write_bytes(source.read())
        return path
    path = workdir / "source.mp4"  # MP4 keeps the 1 / frame rate time base (Matroska rounds to ms)
    encode(video.get_components(), path, "ffv1")
    return path


def _has_file(video) -> bool:
    """Whether the video's class gives its own stream source (a file), rather than the base
    class's default, which encodes the frames (ComfyUI's VideoFromComponents, Create Video)."""
    from ..host import bridge

    own = getattr(type(video), "get_stream_source", None)
    base = bridge.video_input_class()
    return own is not None and own is not getattr(base, "get_stream_source", None)
