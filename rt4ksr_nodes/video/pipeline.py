"""upscale_video(): decode -> upscale -> encode as three overlapped stages joined by bounded
queues, so memory stays flat however long the clip is.

The decode stage (a thread) demuxes the source, decodes the video stream and converts each
frame to RGB with the stream's own matrix and range; packets of the other streams (audio,
subtitles, data) travel down the same queue untouched, in file order. The model stage runs in
the calling thread (Ctrl-C lands there, between two frames' work at most) through the engine.
The encode stage (a thread) converts back to the output's pixel format, encodes, and muxes the
copied packets beside the new video. Each frame keeps its own timestamp and duration.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import av
import av.logging
import numpy as np
import torch

from ..engine import UpscaleCancelled, upscale, upscale_frames
from ..files.paths import atomic_write
from .codecs import EncodeOptions, EncoderPlan, muxable, plan
from .detect import INSTALL_HINT, available
from .errors import VideoError, VideoWarning
from .pixels import from_rgb, to_rgb
from .policy import AUTO, segment_seconds
from .source import COPIED_TYPES, VideoSource, decoder, main_stream, open_video, probe

if TYPE_CHECKING:
    from .segments import RunSegments

Progress = Callable[[int, "int | None"], None]
Cancel = Callable[[], bool]
Warn = Callable[[str], None]

# Outputs made in segments (segments.py), each segment a file of the output's own container:
# these muxers round-trip pts and dts (MP4/MOV exactly, Matroska/WebM in ms, what the output
# stores anyway). Not AVI: it keeps no pts for B-frames.
SEGMENTED = ("mp4", "mov", "matroska", "webm")
QUEUE_FRAMES = 4  # frames waiting between two stages (packets of other streams count too)
MAX_CORRUPTION_WARNINGS = 20
# Container tags the muxer writes itself; copying the source's would leave them stale.
MUXER_TAGS = ("major_brand", "minor_version", "compatible_brands", "encoder")
# Stream tags describing the old encoding (Matroska statistics, the old encoder, WebM's alpha
# flag, which the muxer sets again when the new stream has alpha).
STALE_STREAM_TAGS = (
    "encoder", "duration", "bps", "number_of_frames", "number_of_bytes", "_statistics", "alpha_mode",
)


@dataclass(frozen=True)
class VideoResult:
    destination: Path
    frames: int
    warnings: tuple[str, ...]


@dataclass
class _Frame:
    pixels: np.ndarray
    pts: int
    duration: int


class _End:
    """Marks the end of a stage's output."""


class _Stopped(Exception):
    """Another stage failed or the job was interrupted; this stage stops."""


def upscale_video(
    model: torch.nn.Module,
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    codec: str | None = None,
    crf: int | None = None,
    preset: str | None = None,
    metadata: Mapping[str, str] | None = None,
    tile_size: int = 0,
    precision: str | torch.dtype = "auto",
    device: str | torch.device = "auto",
    alpha: str = "model",
    overwrite: bool = False,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    warn: Warn | None = None,
    segment: float | str | None = None,
    resume: bool = False,
    restart: bool | None = None,
    run_segments: RunSegments | None = None,
) -> VideoResult:
    """Upscale the video `src` by `model.scale` into `dst`, streamed.

    Every frame keeps its timestamp and duration (variable frame rate stays variable); audio,
    subtitle and data streams are copied packet for packet; chapters, container metadata, the
    display matrix (rotation) and colour tags are carried over. codec / crf / preset: see
    EncodeOptions and codecs.CODECS; metadata: added to the container's. tile_size, precision,
    device, alpha: as for upscale(). The container follows dst's extension.

    progress(done, total) after each frame (total: the headers' frame count, None if unknown);
    cancel() is polled before each frame (and each tile) and a truthy answer raises
    UpscaleCancelled; warn(message) hears what was changed or concealed on the way (default:
    warnings.warn with VideoWarning).

    Checks everything it can before the first frame (VideoError, FileExistsError). dst is
    written through a temporary file renamed at the end: interrupted or failed, nothing is left
    under its name.

    segment: seconds per segment (None or 0: one pass; "auto": policy.AUTO_SEGMENT for clips
    longer than policy.AUTO_LONGER_THAN and whenever run_segments is given). The clip is cut at keyframes into
    segments of about that length, each encoded into its own file (in dst's folder, under
    .rt4ksr-segments/), by `run_segments` (default segments.run_locally, one after another;
    progress then counts the frames of the segments still to do), then joined into dst
    without re-encoding. Stopped or failed, the finished segments are kept: `resume=True` keeps
    them and does the rest; without it they raise VideoError unless `restart` (default: as
    overwrite) is true, which starts over. A source that cannot be cut reliably is done in one
    pass (a warning says why); one whose segments turn out not to match their plan raises
    VideoError, or with "auto" run here is done in one pass (a warning). See README, "Long videos".
    """
    if not available():
        raise VideoError(INSTALL_HINT)
    if segment not in (None, AUTO) and not 0 <= segment < float("inf"):
        raise VideoError(f"segment must be 0 or more seconds, or {AUTO!r}; got {segment!r}")
    source, dst = probe(src), Path(dst)
    # Segments chosen automatically and run here: a source whose segments fail their plan is
    # done in one pass rather than failing.
    fallback = segment == AUTO and run_segments is None
    segment = segment_seconds(segment, source.duration, distributed=run_segments is not None)
    options = EncodeOptions(codec=codec, crf=crf, preset=preset, metadata=dict(metadata or {}))
    encoder_plan = plan(source, model.scale, options, dst, alpha)
    said: list[str] = []

    def note(message: str) -> None:
        said.append(message)
        if warn is None:
            warnings.warn(message, VideoWarning, stacklevel=3)
        else:
            warn(message)

    for message in encoder_plan.notes:
        note(f"{dst}: {message}")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists (use --overwrite / overwrite=True to replace it)")
    if segment and encoder_plan.muxer not in SEGMENTED:
        if run_segments is not None:  # asked to run elsewhere (Ray): not silently here instead
            raise VideoError(f"{dst}: {dst.suffix} outputs are made in one pass, so not in segments elsewhere; "
                             "choose .mkv, .mp4, .mov or .webm, or run here (without --backend ray)")
        note(f"{dst}: {dst.suffix} outputs are made in one pass, not in segments")
    elif segment:
        from .workdir import upscale_in_segments

        frames = upscale_in_segments(
            model, source, dst, encoder_plan, options, seconds=segment, alpha=alpha, tile_size=tile_size,
            precision=precision, device=device, overwrite=overwrite, restart=overwrite if restart is None else restart,
            resume=resume, run_segments=run_segments, fallback=fallback, progress=progress, cancel=cancel, note=note,
        )
        if frames is not None:
            return VideoResult(dst, frames, tuple(said))
    with atomic_write(dst, overwrite=overwrite) as handle:
        job = _Job(source, encoder_plan, options, dst, note)
        frames = job.run(handle, model, dict(tile_size=tile_size, precision=precision, device=device),
                         alpha, progress, cancel)
    return VideoResult(dst, frames, tuple(said))


class Window(Protocol):
    """The frames a segment holds (segments.Segment): pts from `start` to before `end` (None:
    to the end), decoded from the keyframe at `seek` (None: from the start)."""

    start: int
    end: int | None
    seek: int | None


class _Job:
    """One source through one encoder plan into one output file."""

    def __init__(self, source: VideoSource, encoder_plan: EncoderPlan, options: EncodeOptions,
                 dst: Path, note: Warn, window: Window | None = None) -> None:
        self.source, self.plan, self.options, self.dst, self.note = source, encoder_plan, options, dst, note
        self.window = window  # a segment's frames only, its video stream only
        wide = source.layout.wide or encoder_plan.layout.wide
        # The RGB(A) format the model stage sees: alpha only when the output keeps it.
        self.rgb_format = (
            ("rgba64le" if wide else "rgba") if encoder_plan.layout.alpha else ("rgb48le" if wide else "rgb24")
        )
        self.corruptions = 0
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.decoded: queue.Queue = queue.Queue(QUEUE_FRAMES)
        self.upscaled: queue.Queue = queue.Queue(QUEUE_FRAMES)

    def run(self, handle, model, engine_options: dict, alpha: str, progress, cancel) -> int:
        source = open_video(self.source.path)
        try:
            output = open_output(handle, self.plan.muxer)
        except BaseException:
            source.close()
            raise
        done, closed = 0, False
        try:
            video, copied = self._setup(source, output)
            if self.window is not None and self.window.seek is not None:
                source.seek(self.window.seek, stream=main_stream(source), backward=True)
            stages = [
                threading.Thread(target=self._guard, args=(self._decode, source, copied), daemon=True),
                threading.Thread(target=self._guard, args=(self._encode, output, video, copied), daemon=True),
            ]
            for stage in stages:
                stage.start()
            try:
                for done, _ in enumerate(self._model(model, engine_options, alpha, cancel), 1):
                    if progress is not None:
                        progress(done, self.source.frames)
                self._put(self.upscaled, _End)
                stages[1].join()
            except _Stopped:
                pass  # a stage failed: its error is raised below
            finally:
                self.stop.set()  # (everything has ended when all went well)
                for stage in stages:
                    stage.join()
            if self.errors:
                raise self.errors[0]
            output.close()
            closed = True
        finally:
            source.close()
            if not closed:  # the temporary file is removed by the caller
                close_quietly(output)
        return done

    # -- setup -----------------------------------------------------------------------------

    def _setup(self, source, output) -> tuple[av.VideoStream, dict[int, av.stream.Stream]]:
        """Add the streams, metadata and chapters (a segment: its video stream only), and start
        the encoder (its errors, a missing NVENC among them, surface here, before any work)."""
        in_video = main_stream(source)
        video = add_video_stream(output, self.source, self.plan)
        if in_video.sample_aspect_ratio:
            video.codec_context.sample_aspect_ratio = in_video.sample_aspect_ratio
        copy_tags(in_video, video)
        copied = {} if self.window is not None else copy_container(
            source, output, self.options.metadata, self.dst, self.note)
        try:
            output.start_encoding()
        except av.FFmpegError as error:
            raise VideoError(self._encoder_problem(error)) from error
        return video, copied

    def _encoder_problem(self, error: av.FFmpegError) -> str:
        plan = self.plan
        if plan.codec.encoder.endswith("_nvenc"):
            return (f"{plan.codec.encoder} is unavailable here: it needs an NVIDIA GPU with NVENC and "
                    f"its driver ({error}); use --codec {plan.codec.name.split('_')[0]} for the CPU encoder")
        return (f"{self.dst}: cannot start the {plan.codec.encoder} encoder for "
                f"{plan.width}x{plan.height} {plan.pix_fmt}: {error}")

    # -- stages ----------------------------------------------------------------------------

    def _guard(self, stage, *args) -> None:
        try:
            stage(*args)
        except _Stopped:
            pass
        except BaseException as error:  # handed to the calling thread
            self.errors.append(error)
            self.stop.set()

    def _decode(self, source, copied: dict) -> None:
        video = main_stream(source)
        context = decoder(video)
        time_base = video.time_base
        last = None  # (pts, duration) of the previous frame
        streams = [video] + [source.streams[index] for index in copied]
        with _libav_errors() as errors:
            for packet in source.demux(streams):
                if packet.stream.index != video.index:
                    if packet.size:  # not the demuxer's end-of-stream marker
                        self._put(self.decoded, packet)
                    continue
                try:
                    frames = context.decode(packet)
                except av.FFmpegError as error:
                    errors.append((av.logging.ERROR, context.name, str(error)))
                    frames = []
                if errors and self._before_window(packet):  # the GOP before a segment's start
                    errors.clear()  # (its leading pictures miss their references; not shown)
                if errors:  # FFmpeg conceals what it can; the job goes on
                    self._report_corruption(errors, packet.pts, time_base)
                for frame in frames:
                    if self.window is not None and frame.pts is not None:  # (in presentation order)
                        if frame.pts < self.window.start:
                            continue
                        if self.window.end is not None and frame.pts >= self.window.end:
                            self._put(self.decoded, _End)
                            return
                    last = self._frame(frame, last, time_base)
        self._put(self.decoded, _End)

    def _before_window(self, packet: av.Packet) -> bool:
        return self.window is not None and packet.pts is not None and packet.pts < self.window.start

    def _frame(self, frame: av.VideoFrame, last: tuple | None, time_base: Fraction) -> tuple[int, int]:
        """Queue one decoded frame as RGB with a usable timestamp; returns (pts, duration)."""
        if (frame.width, frame.height) != (self.source.width, self.source.height):
            raise VideoError(
                f"{self.source.path}: the picture changes size at {_clock(frame.pts, time_base)} "
                f"({self.source.width}x{self.source.height} -> {frame.width}x{frame.height}); "
                "this is not supported"
            )
        pts = frame.pts
        if last is not None and (pts is None or pts <= last[0]):
            pts = last[0] + max(last[1], 1)  # missing or repeated timestamp: the next tick
        elif pts is None:
            pts = 0
        duration = frame.duration or 0
        pixels = to_rgb(frame, self.source.colour, self.rgb_format)
        self._put(self.decoded, _Frame(pixels, pts, duration))
        return pts, duration

    def _report_corruption(self, errors: list, pts: int | None, time_base: Fraction) -> None:
        self.corruptions += 1
        if self.corruptions <= MAX_CORRUPTION_WARNINGS:
            details = "; ".join(dict.fromkeys(f"{name}: {text.strip()}" for _, name, text in errors))
            more = " (further corruption is not reported)" if self.corruptions == MAX_CORRUPTION_WARNINGS else ""
            self.note(f"{self.source.path}: corrupt video data at about {_clock(pts, time_base)} "
                      f"({details}); the decoder conceals it and the job goes on{more}")
        errors.clear()

    def _model(self, model, engine_options: dict, alpha: str, cancel) -> Iterator[None]:
        """Upscale each decoded frame onto the encode queue; packets pass straight through.
        Yields once per frame."""
        pending: deque[_Frame] = deque()

        def frames():
            while True:
                item = self._get(self.decoded)
                if item is _End:
                    return
                if isinstance(item, av.Packet):
                    self._put(self.upscaled, item)
                    continue
                if cancel is not None and cancel():
                    raise UpscaleCancelled("video upscale cancelled")
                pending.append(item)
                yield item.pixels

        if self.rgb_format == "rgb24":  # the engine's streaming path (overlapped copies on CUDA)
            results = (out.numpy() for out in upscale_frames(model, frames(), cancel=cancel, **engine_options))
        else:
            results = (_upscale_wide(model, pixels, alpha, cancel, engine_options) for pixels in frames())
        for pixels in results:
            item = pending.popleft()
            item.pixels = pixels
            self._put(self.upscaled, item)
            yield

    def _encode(self, output, video, copied: dict) -> None:
        plan, time_base = self.plan, self.source.time_base
        while True:
            item = self._get(self.upscaled)
            if item is _End:
                break
            if isinstance(item, av.Packet):
                item.stream = copied[item.stream.index]
                output.mux(item)
                continue
            pixels = item.pixels[: plan.height, : plan.width]  # the even crop, where 4:2:x needs it
            frame = from_rgb(pixels, self.rgb_format, plan.pix_fmt, plan.colour)
            frame.pts, frame.time_base, frame.duration = item.pts, time_base, item.duration
            output.mux(video.encode(frame))
        output.mux(video.encode(None))

    # -- queues that give up when another stage has failed ----------------------------------

    def _put(self, channel: queue.Queue, item) -> None:
        while not self.stop.is_set():
            try:
                channel.put(item, timeout=0.1)
                return
            except queue.Full:
                pass
        raise _Stopped

    def _get(self, channel: queue.Queue):
        while not self.stop.is_set():
            try:
                return channel.get(timeout=0.1)
            except queue.Empty:
                pass
        raise _Stopped


def add_video_stream(output, source: VideoSource, plan: EncoderPlan) -> av.VideoStream:
    """The output's video stream as `plan` says: encoder and options, size, pixel format, the
    source's time base and frame rate, colour tags and display matrix."""
    video = output.add_stream(plan.codec.encoder, rate=source.rate, options=plan.settings)
    video.width, video.height, video.pix_fmt = plan.width, plan.height, plan.pix_fmt
    video.codec_context.time_base = source.time_base
    video.time_base = source.time_base
    plan.colour.tag(video.codec_context)
    tag_video_stream(video, source, plan)
    return video


def tag_video_stream(video, source: VideoSource, plan: EncoderPlan) -> None:
    """What a stream copy does not carry: the codec tag, the display matrix."""
    if plan.codec.name.startswith("hevc") and plan.muxer in ("mp4", "mov"):
        video.codec_tag = "hvc1"  # what Apple players require for HEVC
    if source.display_matrix is not None:
        video.set_display_matrix(list(source.display_matrix))


def open_output(handle, muxer: str) -> av.container.OutputContainer:
    # MP4/MOV keep tags they do not know (ComfyUI's prompt, workflow) only when asked.
    # Matroska/WebM draw a random segment UID unless bitexact: the same job must give the same
    # file (a resumed or Ray run, a rerun), and bitexact only drops Lavf's version from a tag.
    options = {"mp4": {"movflags": "use_metadata_tags"}, "mov": {"movflags": "use_metadata_tags"},
               "matroska": {"fflags": "+bitexact"}, "webm": {"fflags": "+bitexact"}}.get(muxer, {})
    return av.open(handle, "w", format=muxer, options=options)


def copy_container(source, output, metadata: Mapping[str, str], dst: Path, note: Warn) -> dict[int, av.stream.Stream]:
    """Give `output` (its video stream added) the source's container metadata (and `metadata`),
    chapters and other streams; returns the copied streams by the source's stream index."""
    output.metadata.update({k: v for k, v in source.metadata.items() if k.lower() not in MUXER_TAGS})
    output.metadata.update(metadata)
    copied = {}
    for stream in copied_streams(source, output.format.name, dst, note):
        copied[stream.index] = output.add_stream_from_template(stream)
        copy_tags(stream, copied[stream.index])
    chapters = source.chapters()
    if chapters:
        output.set_chapters(chapters)
    return copied


def copied_streams(source, muxer: str, dst: Path, note: Warn) -> list[av.stream.Stream]:
    """The source's streams other than the main video that `muxer` takes; VideoError for one it
    cannot take, unless a data stream (left out, with a note)."""
    in_video = main_stream(source)
    streams = []
    for stream in source.streams:
        if stream.type not in COPIED_TYPES or stream.index == in_video.index:
            continue
        name = stream.codec_context.name if stream.codec_context else "unknown"
        if not muxable(muxer, name):
            message = f"stream #{stream.index} ({stream.type}, {name}) cannot be stored in a {dst.suffix} file"
            if stream.type == "data":
                note(f"{dst}: {message}; it is left out")
                continue
            raise VideoError(f"{dst}: {message}; use a .mkv or .mov output")
        streams.append(stream)
    return streams


def _upscale_wide(model, pixels: np.ndarray, alpha: str, cancel, engine_options: dict) -> np.ndarray:
    """16-bit or alpha frames: the engine's upscale() on floats, quantised back to the same
    sample type (round half to even, as the image path writes files)."""
    top = 65535 if pixels.dtype == np.uint16 else 255
    image = torch.from_numpy(pixels.astype(np.float32) / top).unsqueeze(0)
    out = upscale(model, image, alpha=alpha, cancel=cancel, **engine_options)[0]
    return (out * top).round_().numpy().astype(pixels.dtype)


@contextlib.contextmanager
def _libav_errors() -> Iterator[list]:
    """FFmpeg's error messages while the block runs, from every thread (the decoder's frame
    threads included), as (level, component, message) tuples: decoders conceal damage and say so
    only there. Lowers no log level another user of PyAV has raised."""
    previous = av.logging.get_level()
    if previous is None or previous < av.logging.ERROR:
        av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture(local=False) as logs:
            yield logs
    finally:
        av.logging.set_level(previous)


def copy_tags(source_stream, target) -> None:
    target.metadata.update({
        key: value for key, value in source_stream.metadata.items()
        if not key.lower().startswith(STALE_STREAM_TAGS)
    })
    target.disposition = source_stream.disposition


def _clock(pts: int | None, time_base: Fraction) -> str:
    return "an unknown time" if pts is None else f"{float(pts * time_base):.3f} s"


def close_quietly(output) -> None:
    try:
        output.close()
    except av.FFmpegError:
        pass
