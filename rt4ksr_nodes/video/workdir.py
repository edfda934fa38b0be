"""A segmented job from start to end: its folder of segments, found again by a later run of the
same job (resume), the segments run by an executor, and the join.

The folder is dst's folder/.rt4ksr-segments/KEY, KEY a digest of everything the segments depend
on: the source file (path, size, mtime), the model's weights, the encoder plan, the segment
length, alpha and precision; not dst's name (a workflow's Save Video numbers each run anew). A
lock held for the run keeps a second run of the same job out; the system drops it with a killed
process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from ..files.paths import TEMP_SUFFIX, atomic_write
from .codecs import EncodeOptions, EncoderPlan
from .errors import VideoError
from .join import join
from .pipeline import Cancel, Progress, Warn, copied_streams
from .segments import RunSegments, SegmentJob, plan_segments, run_locally
from .source import VideoSource, open_video

try:
    import fcntl
except ImportError:  # Windows: no lock
    fcntl = None

ROOT = ".rt4ksr-segments"


def upscale_in_segments(
    model: torch.nn.Module, source: VideoSource, dst: Path, encoder_plan: EncoderPlan, options: EncodeOptions, *,
    seconds: float, alpha: str, tile_size: int, precision, device, overwrite: bool, restart: bool, resume: bool,
    run_segments: RunSegments | None, progress: Progress | None, cancel: Cancel | None, note: Warn,
) -> int:
    """Plan, run the segments not finished yet through `run_segments` (default run_locally),
    join them into dst; returns the frames written. See upscale_video."""
    with open_video(source.path) as container:  # what the join would refuse, refused before the work
        copied_streams(container, encoder_plan.muxer, dst, note)
    inputs = _key_inputs(model, source, encoder_plan, seconds, alpha, precision)
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    workdir = (dst.parent / ROOT / key).resolve()
    job = SegmentJob(
        source=source.path.resolve(), workdir=workdir, segments=plan_segments(source.path, seconds, note),
        extension=dst.suffix.lower(), options=options, alpha=alpha, tile_size=tile_size,
        precision=precision, device=device,
    )
    count = len(job.segments)
    with _locked(workdir):
        with atomic_write(workdir / "plan.json") as handle:  # for people and debugging
            plan = dict(inputs, segments=[dataclasses.asdict(s) for s in job.segments])
            handle.write(json.dumps(plan, indent=1).encode())
        finished = [index for index in range(count) if job.is_done(index)]
        if finished and not resume:
            if not restart:
                raise VideoError(
                    f"{len(finished)} of {count} segments of an earlier run are in {workdir}: rerun with "
                    "--resume (resume=True) to keep them, or --overwrite (overwrite=True) to start over"
                )
            finished = []
        _remove_unfinished(job, finished)
        pending = [index for index in range(count) if index not in finished]
        try:
            if pending:
                (run_segments or run_locally)(model, job, pending, progress, cancel, note)
            missing = [str(index) for index in range(count) if not job.segment_path(index).is_file()]
            if missing:
                raise VideoError(f"{workdir}: segments {', '.join(missing)} were not made")
            with atomic_write(dst, overwrite=overwrite) as handle:
                frames = join(job, handle, encoder_plan, source, options.metadata, dst, _said_before)
        except BaseException:
            kept = sum(map(job.is_done, range(count)))
            if kept:
                note(f"{kept} of {count} segments are kept in {workdir}: rerun with --resume "
                     "(resume=True) to finish the rest")
            else:
                _remove(workdir)
            raise
    _remove(workdir)
    return frames


def _said_before(message: str) -> None:
    """The join's notes: said before the segments were made."""


def _key_inputs(model, source: VideoSource, encoder_plan: EncoderPlan, seconds: float, alpha: str,
                precision) -> dict:
    stat = source.path.stat()
    return {
        "source": str(source.path.resolve()), "source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns,
        "model": model_digest(model), "scale": model.scale,
        "encoder": encoder_plan.codec.encoder, "settings": encoder_plan.settings, "pix_fmt": encoder_plan.pix_fmt,
        "size": [encoder_plan.width, encoder_plan.height], "muxer": encoder_plan.muxer,
        "segment_seconds": seconds, "alpha": alpha, "precision": str(precision),
    }


def model_digest(model: torch.nn.Module) -> str:
    """SHA-256 over the model's parameter and buffer names and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(workdir: Path) -> Iterator[None]:
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "lock", "wb") as lock:
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise VideoError(f"another run of the same job is writing segments in {workdir}; "
                                 "wait for it to end") from None
        yield


def _remove_unfinished(job: SegmentJob, finished: list[int]) -> None:
    """Segment files not finished (damaged, short) and temporary files of killed runs: under
    the lock nobody else writes here."""
    keep = {job.segment_path(index) for index in finished}
    for path in job.workdir.iterdir():
        if path.name.startswith("segment-") and path not in keep or path.name.endswith(TEMP_SUFFIX):
            path.unlink()


def _remove(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
    with contextlib.suppress(OSError):
        workdir.parent.rmdir()  # .rt4ksr-segments, when no other job is in it
