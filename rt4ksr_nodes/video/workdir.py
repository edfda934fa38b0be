"""A segmented job from start to end: its folder of segments, found again by a later run of the
same job (resume), the segments run by an executor, and the join.

The folder is dst's folder/.rt4ksr-segments/KEY, KEY a digest of everything the segments depend
on: the planner's version, the source file (path, size, mtime), the model's weights, the encoder
plan, the segment length, alpha, precision and device (resolved, for a local run); not dst's name
(a workflow's Save Video numbers each run anew). A lock held for the run keeps a second run of
the same job out; the system drops it with a killed process. The folder goes once the output is
published; a `joined` mark, written just before, lets a later run remove a folder that a run
killed in between left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from ..engine.device import resolve_device, resolve_dtype
from ..files.paths import atomic_write, is_temporary
from .codecs import EncodeOptions, EncoderPlan
from .errors import VideoError
from .join import join
from .pipeline import Cancel, Progress, Warn, copied_streams
from .segments import PLAN_VERSION, RunSegments, SegmentJob, SegmentMismatch, plan_segments, run_locally
from .source import VideoSource, open_video

try:
    import fcntl
except ImportError:  # Windows: no lock
    fcntl = None

ROOT = ".rt4ksr-segments"
LOCK = "lock"
JOINED = "joined"  # written before the output is published: see remove_joined


def upscale_in_segments(
    model: torch.nn.Module, source: VideoSource, dst: Path, encoder_plan: EncoderPlan, options: EncodeOptions, *,
    seconds: float, alpha: str, tile_size: int, precision, device, overwrite: bool, restart: bool, resume: bool,
    run_segments: RunSegments | None, fallback: bool, progress: Progress | None, cancel: Cancel | None, note: Warn,
) -> int | None:
    """Plan, run the segments not finished yet through `run_segments` (default run_locally),
    join them into dst; returns the frames written, or None where the clip is to be made in one
    pass: it cannot be cut (a note says why), or, with `fallback` (the segment length was not
    asked for), its segments do not match their plan. See upscale_video."""
    with open_video(source.path) as container:  # what the join would refuse, refused before the work
        copied_streams(container, encoder_plan.muxer, dst, note)
    remove_joined(dst.parent)
    segments = plan_segments(source.path, seconds, note)
    if segments is None:
        return None
    inputs = _key_inputs(model, source, encoder_plan, seconds, alpha, precision, device, run_segments is None)
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    workdir = (dst.parent / ROOT / key).resolve()
    job = SegmentJob(
        source=source.path.resolve(), workdir=workdir, segments=segments, extension=dst.suffix.lower(),
        options=options, alpha=alpha, tile_size=tile_size, precision=precision, device=device,
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
                    f"resume (--resume) to keep them, or delete {workdir} to start over (the quick CLI's "
                    "--overwrite does)"
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
                handle.flush()
                _mark_joined(workdir, dst, os.fstat(handle.fileno()))
        except SegmentMismatch as error:  # its segments cannot be trusted, kept or not
            _remove(workdir)
            if fallback:
                note(f"{error}; {source.path} cannot be cut into segments reliably: it is done in one pass")
                return None
            raise VideoError(f"{error}; {source.path} cannot be cut into segments reliably: upscale it in "
                             "one pass (--segment 0)") from None
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


def remove_joined(folder: Path) -> None:
    """Remove the segment folders under `folder` whose output was published but which a killed
    run left (a `joined` mark naming that very file), unless a run holds them."""
    try:
        folders = sorted((folder / ROOT).iterdir())
    except OSError:  # none there
        return
    for workdir in folders:
        try:
            mark = json.loads((workdir / JOINED).read_text())
            stat = Path(mark["destination"]).stat()
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if [stat.st_size, stat.st_mtime_ns] != [mark["size"], mark["mtime_ns"]]:
            continue
        with contextlib.suppress(VideoError, OSError), _locked(workdir):
            _remove(workdir)


def _mark_joined(workdir: Path, dst: Path, stat: os.stat_result) -> None:
    """Say which file the segments made (size and mtime survive the rename that publishes it)."""
    mark = {"destination": str(dst.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    with atomic_write(workdir / JOINED) as handle:
        handle.write(json.dumps(mark).encode())


def _said_before(message: str) -> None:
    """The join's notes: said before the segments were made."""


def _key_inputs(model, source: VideoSource, encoder_plan: EncoderPlan, seconds: float, alpha: str,
                precision, device, here: bool) -> dict:
    """What the segments depend on. Run here, "auto" precision and device are resolved (fp16 on a
    GPU, fp32 on the CPU); elsewhere (Ray) they are resolved by each worker."""
    if here:
        resolved = resolve_device(device)
        with warnings.catch_warnings():  # (bf16's warning: the engine gives it)
            warnings.simplefilter("ignore")
            precision, device = resolve_dtype(precision, resolved), resolved.type
    stat = source.path.stat()
    return {
        "version": PLAN_VERSION,
        "source": str(source.path.resolve()), "source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns,
        "model": model_digest(model), "scale": model.scale,
        "encoder": encoder_plan.codec.encoder, "settings": encoder_plan.settings, "pix_fmt": encoder_plan.pix_fmt,
        "size": [encoder_plan.width, encoder_plan.height], "muxer": encoder_plan.muxer,
        "segment_seconds": seconds, "alpha": alpha, "precision": str(precision), "device": str(device),
        "run": "here" if here else "elsewhere",
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
    """Hold the job folder's lock. A lock file that another run removed (with its folder) on
    the way is not a lock: taken again."""
    while True:
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            lock = open(workdir / LOCK, "wb")
        except FileNotFoundError:  # the folder was removed between the two
            continue
        with lock:
            if fcntl is not None:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise VideoError(f"another run of the same job is writing segments in {workdir}; "
                                     "wait for it to end") from None
                try:
                    current = os.stat(workdir / LOCK).st_ino == os.fstat(lock.fileno()).st_ino
                except FileNotFoundError:
                    current = False
                if not current:
                    continue
            yield
            return


def _remove_unfinished(job: SegmentJob, finished: list[int]) -> None:
    """Segment files not finished (damaged, short) and temporary files of killed runs: under
    the lock nobody else writes here."""
    keep = {job.segment_path(index) for index in finished}
    for path in job.workdir.iterdir():
        if path.name.startswith("segment-") and path not in keep or is_temporary(path.name):
            path.unlink()


def _remove(workdir: Path) -> None:
    """The job folder, its lock file last: called holding the lock, so that no other run finds
    the folder half removed and takes it."""
    for path in workdir.iterdir() if workdir.is_dir() else ():
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.name != LOCK:
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (workdir / LOCK).unlink()
        workdir.rmdir()
        workdir.parent.rmdir()  # .rt4ksr-segments, when no other job is in it
