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
from .source import VideoSource, main_stream, open_video, probe

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


def plan_segments(path: Path, seconds: float, note: Warn) -> tuple[Segment, ...]:
    """Cut the main video stream at keyframes into segments of about `seconds` (at least),
    from its packets' timestamps. A source that cannot be cut reliably gives one segment (and a
    note saying why)."""
    with open_video(path) as container:
        video = main_stream(container)
        stamps, keys, count, unkeyed, keyed, problem = [], [], 0, 0, False, None
        for packet in container.demux(video):
            if not packet.size:  # the demuxer's end-of-stream marker
                continue
            keyed = keyed or packet.is_keyframe
            if packet.is_discard:  # an edit list's trim (decoded, not shown)
                continue
            if not keyed:  # a file cut mid-GOP: the decoder shows none of it
                unkeyed += 1
                continue
            count += 1
            if packet.pts is None:
                problem = "some video packets have no timestamp"
                continue
            stamps.append(packet.pts)
            if packet.is_keyframe:
                keys.append(packet.pts)
        if not count:  # no keyframe flags at all: the decoder finds its own way in
            count, problem = unkeyed, "no packet is marked as a keyframe"
        if not count:
            raise VideoError(f"{path}: its video stream has no frames")
        stamps.sort()
        keys.sort()
        step = seconds / video.time_base
        first = stamps[0] if stamps else 0
        cuts = []  # (start, seek) of each segment after the first
        for previous, key in zip(keys, keys[1:]):
            if key - (cuts[-1][0] if cuts else first) >= step:
                cuts.append((key, previous))
        if problem is None and len(set(stamps)) < len(stamps):
            problem = "some video packets share a timestamp"
        if problem is None and len(keys) < 2:
            problem = "it has a single keyframe"
        if problem is None and cuts and not _seeks(container, video, cuts[-1][1]):
            problem = "FFmpeg cannot seek in it"
    if problem is not None:
        note(f"{path}: cannot be cut into segments ({problem}); it is done in one piece")
        return (Segment(0, first, None, None, count),)
    starts = [first] + [start for start, _ in cuts]
    seeks = [None] + [seek for _, seek in cuts]
    ends = starts[1:] + [None]
    below = [bisect_left(stamps, start) for start in starts] + [len(stamps)]  # frames before each start
    return tuple(
        Segment(index, start, end, seek, below[index + 1] - below[index])
        for index, (start, end, seek) in enumerate(zip(starts, ends, seeks))
    )


def _seeks(container, video, pts: int) -> bool:
    """Whether seeking to the keyframe at `pts` lands on it or before (not past it)."""
    try:
        container.seek(pts, stream=video, backward=True)
        packet = next(p for p in container.demux(video) if p.size and not p.is_discard)
    except (av.FFmpegError, OSError, StopIteration):
        return False
    return packet.pts is not None and packet.pts <= pts


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
            raise VideoError(
                f"{job.source}: segment {index} has {frames} frames where its packets promise "
                f"{segment.frames}; upscale this file in one pass (--segment 0)"
            )
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
