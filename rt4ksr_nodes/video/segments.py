"""Long videos in segments: the plan (cuts at the source's keyframes, from a demux-only scan),
one segment encoded into its own file, and the local executor. Each segment is self-contained
work a worker on another machine can do from a SegmentJob (plain data and paths) and the model;
join.py makes the final file from the segments, workdir.py keeps them across runs.

A segment holds the frames whose pts lie in [start, end). Its worker seeks to the keyframe before
start, decodes (leading pictures of an open GOP need the GOP before them), drops what precedes
start and stops at the first frame at or past end: decoders give frames in presentation order,
so the frames of the next GOP that are shown before `end` are still this segment's.
"""

from __future__ import annotations

import warnings
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import torch

from ..files.paths import atomic_write
from .codecs import EncodeOptions, EncoderPlan, plan
from .detect import CONTAINERS
from .errors import VideoError, VideoWarning
from .pipeline import Cancel, Progress, Warn, _Job
from .source import VideoSource, decoder, main_stream, open_video, probe

# In the resume key: segments planned or encoded by an older version are never reused.
PLAN_VERSION = 2


class SegmentMismatch(VideoError):
    """A segment's frames are not what its plan says: the source cannot be cut reliably."""


@dataclass(frozen=True)
class Segment:
    index: int
    start: int  # the pts (source video time base) of its first frame
    end: int | None  # the first pts of the next segment; None: to the end
    seek: int | None  # the keyframe to seek to before decoding; None: from the file's start
    frames: int  # frames the plan expects in it


@dataclass(frozen=True)
class SegmentJob:
    """Everything a worker needs to encode any segment of one job (picklable: plain data and
    paths, no model, no open file)."""

    source: Path  # absolute
    workdir: Path  # absolute; where the segment files live
    segments: tuple[Segment, ...]
    extension: str  # the final output's (".mp4"): the encoder plan and the segments' container follow it
    options: EncodeOptions
    alpha: str = "model"
    tile_size: int = 0
    precision: str | torch.dtype = "auto"
    device: str | torch.device = "auto"

    @property
    def muxer(self) -> str:
        return CONTAINERS[self.extension]

    def segment_path(self, index: int) -> Path:
        return self.workdir / f"segment-{index:05d}{self.extension}"

    def encoder_plan(self, scale: int, source: VideoSource) -> EncoderPlan:
        return plan(source, scale, self.options, Path(f"output{self.extension}"), self.alpha)

    def is_done(self, index: int) -> bool:
        """Whether the segment's file is there, complete: as many video packets as the plan says
        frames (a demux, no decoding)."""
        path = self.segment_path(index)
        if not path.is_file():
            return False
        try:
            with av.open(str(path)) as container:
                video = container.streams.video[0]
                # MP4/MOV: the sample table (complete when the file opens) has the count.
                count = video.frames if self.muxer in ("mp4", "mov") else sum(
                    1 for packet in container.demux(video) if packet.size)
        except (av.FFmpegError, OSError, IndexError):
            return False
        return count == self.segments[index].frames


# Runs the given pending segments of a job, however it likes (run_locally: one after another):
# (model, job, pending indices, progress(done, total) over them, cancel, warn).
RunSegments = Callable[
    [torch.nn.Module, SegmentJob, list[int], Progress | None, Cancel | None, Warn | None], None
]


def plan_segments(path: Path, seconds: float, note: Warn) -> tuple[Segment, ...] | None:
    """Cut the main video stream at keyframes into segments of about `seconds` (at least),
    from its packets' timestamps and a decode of its first two GOPs (what the decoder shows).
    None for a source that cannot be cut reliably, with a note saying why: it is done in one
    pass."""
    with open_video(path) as container:
        video = main_stream(container)
        stamps, keys, problem = _scan(container, video)
        if problem is None and "avi" in container.format.name.split(","):
            problem = "AVI stores no presentation times"
        if problem is None and len(keys) < 2:
            problem = "it has a single keyframe"
        if problem is None:
            first, problem = _shown_from(path, stamps, keys[2] if len(keys) > 2 else None)
        if problem is None:
            step = seconds / video.time_base
            cuts = []  # (start, seek) of each segment after the first
            for previous, key in zip(keys, keys[1:]):
                if key > first and key - (cuts[-1][0] if cuts else first) >= step:
                    cuts.append((key, previous))
            if not all(_seeks(container, video, seek, set(keys)) for _, seek in cuts):
                problem = "FFmpeg cannot seek in it to a keyframe"
    if problem is not None:
        note(f"{path}: cannot be cut into segments ({problem}); it is done in one pass")
        return None
    starts = [first] + [start for start, _ in cuts]
    seeks = [None] + [seek for _, seek in cuts]
    ends = starts[1:] + [None]
    below = [bisect_left(stamps, start) for start in starts] + [len(stamps)]  # frames before each start
    return tuple(
        Segment(index, start, end, seek, below[index + 1] - below[index])
        for index, (start, end, seek) in enumerate(zip(starts, ends, seeks))
    )


def _scan(container, video) -> tuple[list[int], list[int], str | None]:
    """The sorted pts of the video packets from the first keyframe on (an edit list's trimmed
    ones left out) and of the keyframes among them; what makes them unusable, if anything."""
    stamps, keys, keyed = [], [], False
    for packet in container.demux(video):
        if not packet.size:  # the demuxer's end-of-stream marker
            continue
        keyed = keyed or packet.is_keyframe
        if packet.is_discard or not keyed:  # an edit list's trim; a file cut mid-GOP
            continue
        if packet.pts is None:
            return [], [], "some video packets have no timestamp"
        stamps.append(packet.pts)
        if packet.is_keyframe:
            keys.append(packet.pts)
    if not stamps:
        return [], [], "no packet is marked as a keyframe"
    stamps.sort()
    keys.sort()
    if len(set(stamps)) < len(stamps):
        return [], [], "some video packets share a timestamp"
    return stamps, keys, None


def _shown_from(path: Path, stamps: list[int], limit: int | None) -> tuple[int, str | None]:
    """The pts of the first frame the decoder shows, decoding from the start up to `limit`
    (None: the end); a problem unless the frames it shows there are the packets' timestamps in
    order. Leading pictures of an open GOP the file starts with are not shown (their references
    are not in the file); a demuxer that guesses pts (AVI with B-frames) gives frames out of
    order."""
    shown = []
    with open_video(path) as container:
        video = main_stream(container)
        context = decoder(video)
        try:
            for packet in container.demux(video):
                frames = context.decode(packet) if packet.size else context.decode(None)
                shown.extend(frame.pts for frame in frames)
                if shown and (shown[-1] is None or limit is not None and shown[-1] >= limit):
                    break
        except av.FFmpegError as error:
            return 0, f"its start cannot be decoded: {error}"
    if not shown or None in shown:
        return 0, "its first frames decode without timestamps"
    first = shown[0]
    span = [t for t in shown if limit is None or t < limit]
    if span != [t for t in stamps if first <= t and (limit is None or t < limit)]:
        return first, "its packets' timestamps are not the order the frames are shown in"
    return first, None


def _seeks(container, video, pts: int, keys: set[int]) -> bool:
    """Whether seeking to the keyframe at `pts` (as a segment's worker seeks) lands on a
    keyframe of the scan, at it or before it (a demux, no decoding)."""
    try:
        container.seek(pts, stream=video, backward=True)
        packet = next(p for p in container.demux(video) if p.size and not p.is_discard)
    except (av.FFmpegError, OSError, StopIteration):
        return False
    return packet.is_keyframe and packet.pts in keys and packet.pts <= pts


def run_segment(model: torch.nn.Module, job: SegmentJob, index: int, *, progress: Callable[[int], None] | None = None,
                cancel: Cancel | None = None, warn: Warn | None = None) -> int:
    """Encode segment `index` into job.segment_path(index), atomically (a killed run leaves
    nothing under that name). Returns the frames written; VideoError if they are not the plan's
    count. progress(done in this segment) after each frame."""
    segment = job.segments[index]
    source = probe(job.source)
    encoder_plan = job.encoder_plan(model.scale, source)
    path = job.segment_path(index)

    def note(message: str) -> None:
        if warn is None:
            warnings.warn(message, VideoWarning, stacklevel=3)
        else:
            warn(message)

    engine_options = dict(tile_size=job.tile_size, precision=job.precision, device=job.device)
    with atomic_write(path) as handle:
        job_run = _Job(source, encoder_plan, job.options, path, note, window=segment)
        frames = job_run.run(handle, model, engine_options, job.alpha,
                             None if progress is None else lambda done, total: progress(done), cancel)
        if frames != segment.frames:
            raise SegmentMismatch(f"{job.source}: segment {index} has {frames} frames where the plan has "
                                  f"{segment.frames}")
    return frames


def run_locally(model: torch.nn.Module, job: SegmentJob, pending: list[int], progress: Progress | None,
                cancel: Cancel | None, warn: Warn | None) -> None:
    """The pending segments one after another, here; progress(frames done, frames pending)."""
    total = sum(job.segments[index].frames for index in pending)
    before = 0
    for index in pending:
        run_segment(model, job, index, cancel=cancel, warn=warn,
                    progress=None if progress is None else lambda done: progress(before + done, total))
        before += job.segments[index].frames
