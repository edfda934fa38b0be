"""--backend ray for one long video: its segments mapped over Ray workers (one per GPU of the
cluster, else one per CPU), each encoded by run_segment exactly as a local run encodes it; the
driver then joins them as a local run does.

A worker that dies (or a node that leaves) has its segment redone elsewhere: Ray retries the
task, and a segment file appears under its final name only when complete (temporary file +
rename), so a lost attempt leaves nothing that counts and nothing is encoded twice once
finished. Progress is the sum of each segment's frames done, as the workers report them (a
retried segment starts its count again). Cancel (or Ctrl-C) cancels what is running; finished
segments stay for --resume.

Source, segments and model reach the workers at the driver's paths: they must be on a file
system every node sees at the same path.
"""

from __future__ import annotations

import os

from typing import TYPE_CHECKING

from ..cluster import connected, die_once, require_ray, slots
from ..engine import UpscaleCancelled
from .errors import VideoError

if TYPE_CHECKING:  # segments imports PyAV: checked when a video runs, not when the runner starts
    from .segments import RunSegments, SegmentJob

RETRIES = 3  # attempts after the first when a worker or its node dies
POLL_SECONDS = 0.25
# Test-only: "N:MARKER" makes the worker encoding segment N exit halfway through it, once
# (MARKER is created first): a worker lost mid-segment.
KILL_HOOK = "RT4KSR_TEST_KILL_SEGMENT"


def run_on_ray(address: str | None = None, workers: int | None = None) -> RunSegments:
    """A RunSegments that maps segments over the Ray cluster at `address` (as ray.init takes
    it; None: the one this process is connected to, else a new local one on 127.0.0.1), at
    most `workers` at a time (default: one per GPU, else per CPU)."""
    ray = require_ray(address)

    def run(model, job: SegmentJob, pending: list[int], progress, cancel, warn) -> None:
        with connected(ray, address):
            _Map(ray, job, workers).run(model, pending, progress, cancel, warn)

    return run


class _Map:
    def __init__(self, ray, job: SegmentJob, workers: int | None):
        self.ray, self.job = ray, job
        _, self.resources = slots(ray)
        # Without a limit every segment is submitted at once: Ray starts the next on a worker
        # the moment one is free, with no round trip to this driver in between.
        self.width = workers or len(job.segments)

    def run(self, model, pending: list[int], progress, cancel, warn) -> None:
        ray, job = self.ray, self.job
        counter = _counter(ray)
        task = ray.remote(_encode).options(max_retries=RETRIES, retry_exceptions=False, **self.resources)
        model_ref = ray.put(model)
        waiting, running = list(pending), {}
        total = sum(job.segments[index].frames for index in pending)
        kill = os.environ.get(KILL_HOOK)
        try:
            while waiting or running:
                while waiting and len(running) < self.width:
                    index = waiting.pop(0)
                    running[task.remote(model_ref, job, index, counter, kill)] = index
                done, _ = ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS)
                for ref in done:
                    index = running.pop(ref)
                    for message in self._result(ref, index):
                        warn(message)
                if progress is not None:
                    progress(sum(ray.get(counter.snapshot.remote()).values()), total)
                if cancel is not None and cancel():
                    raise UpscaleCancelled("video upscale cancelled")
        except BaseException:
            for ref in running:  # finished segments stay; what runs stops now
                ray.cancel(ref, force=True)
            raise

    def _result(self, ref, index: int) -> list[str]:
        """The segment's warnings, or its failure as a VideoError naming it."""
        from ray.exceptions import RayTaskError, TaskCancelledError

        try:
            return self.ray.get(ref)
        except RayTaskError as error:  # the segment's own failure: the same error a local run raises
            cause = error.cause if isinstance(error.cause, Exception) else None
            if isinstance(cause, (VideoError, OSError)):
                raise cause from None
            raise VideoError(f"{self.job.source}: segment {index}: {cause or error}") from None
        except TaskCancelledError:
            raise UpscaleCancelled("video upscale cancelled") from None
        except Exception as error:  # noqa: BLE001 - the worker died more often than retried, the cluster failed
            raise VideoError(
                f"{self.job.source}: segment {index} was lost {RETRIES + 1} times on the Ray cluster "
                f"({type(error).__name__}: {error}); the finished segments are kept: rerun with --resume"
            ) from None


def _encode(model, job: SegmentJob, index: int, counter, kill: str | None) -> list[str]:
    """One segment on a worker (a Ray task). An attempt that died after writing its file but
    before reporting left it complete: it is not encoded again."""
    from .segments import run_segment

    _check_shared(job)
    said: list[str] = []
    if job.is_done(index):
        counter.set.remote(index, job.segments[index].frames)
        return said
    expected = job.segments[index].frames

    def progress(done: int) -> None:
        counter.set.remote(index, done)
        if done == max(1, expected // 2):
            die_once(kill, index)

    run_segment(model, job, index, progress=progress, warn=said.append)
    return said


def _check_shared(job: SegmentJob) -> None:
    """The source and the segments' folder, seen at the driver's paths, or a VideoError saying
    which node lacks them (without it FFmpeg's "No such file" would not say where)."""
    for path, what in ((job.source, "the source"), (job.workdir, "the segments' folder")):
        if not path.exists():
            import ray

            node = ray.util.get_node_ip_address()
            raise VideoError(
                f"Ray node {node} does not see {what} {path}: every node must see the source and the "
                "output folder at the driver's paths (a shared file system mounted at the same path)"
            )


def _counter(ray):
    """An actor holding each segment's frames done. It lives on the driver's node: losing a
    worker node must not lose it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)

    @ray.remote(num_cpus=0, scheduling_strategy=here)
    class Counter:
        def __init__(self):
            self.done: dict[int, int] = {}

        def set(self, index: int, frames: int) -> None:
            self.done[index] = frames

        def snapshot(self) -> dict[int, int]:
            return self.done

    return Counter.remote()
