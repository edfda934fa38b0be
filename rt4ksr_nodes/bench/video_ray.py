"""`python -m rt4ksr_nodes.bench video --backend ray`: one synthetic clip upscaled in segments
on a local Ray cluster of 1, then 2 worker nodes of one CPU each (ray_scaling.local_cluster).

Workers are started (and import torch) before the timed run. Each run's wall time splits into
the segments' part (mapped over the workers) and the rest
(planning, joining the segments, muxing the copied streams), from which it estimates the
wall time on N workers of the same kind: rest + ceil(segments / N) x one segment's cost.
"""

from __future__ import annotations

import math
import os
from importlib import import_module
import tempfile
import time
from pathlib import Path

from .ray_scaling import local_cluster
from .video import synthetic_clip


def _run(model, clip: Path, out: Path, args, run_segments) -> dict:
    """One segmented upscale_video: frames, wall seconds, the segments' share, their count."""
    from ..video.pipeline import upscale_video

    spent = {}

    def timed(model, job, pending, progress, cancel, warn):
        start = time.perf_counter()
        run_segments(model, job, pending, progress, cancel, warn)
        spent.update(seconds=time.perf_counter() - start, segments=len(pending))

    start = time.perf_counter()
    result = upscale_video(model, clip, out, codec=args.codec, device=args.device, precision=args.precision,
                           segment=args.segment, overwrite=True, run_segments=timed, warn=lambda message: None)
    wall = time.perf_counter() - start
    return {"frames": result.frames, "wall": wall, "segments_s": spent["seconds"], "segments": spent["segments"]}


def _on_cluster(nodes: int, model, clip: Path, out: Path, args) -> dict:
    from ..video.ray_segments import run_on_ray

    with local_cluster(nodes) as ray:
        _warm_up(ray)
        return _run(model, clip, out, args, run_on_ray())


def _warm_up(ray) -> None:
    """Start one worker process per node and import torch and the pipeline there: a cost paid
    once per worker, whatever the clip's length, kept out of the timed run."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"] and node["Resources"].get("CPU")]
    ray.get([ray.remote(_load_pipeline).options(
        num_cpus=1, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote() for node in nodes])


def _load_pipeline() -> None:
    import_module("..video.segments", __package__)  # torch, PyAV and the pipeline


def main(args) -> None:
    from ..cluster import require_ray
    from ..engine.cpu import usable_cores
    from ..model import load_model

    require_ray()  # keeps Ray on the loopback address; says how to install it when missing
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    width, height = (int(side) for side in args.size.lower().split("x"))
    frames = int(args.frames.split(",")[-1])
    counts = [int(n) for n in args.nodes.split(",")]
    model = load_model(Path(args.weights) / "rt4ksr_x2.pth")
    with tempfile.TemporaryDirectory(prefix="rt4ksr_bench_video_ray_") as folder:
        work = Path(folder)
        clip = work / "clip.mp4"
        # x264 puts its keyframes keyint - 1 frames apart: one GOP per segment
        synthetic_clip(clip, width, height, frames, keyint=max(1, round(24 * args.segment)) + 1)
        runs = {nodes: _on_cluster(nodes, model, clip, work / f"out{nodes}.mp4", args) for nodes in counts}
    print(f"video x2 on Ray: {frames} frames {width}x{height} -> {2 * width}x{2 * height} at 24 fps, "
          f"segments of {args.segment} s, codec {args.codec}, worker nodes of 1 CPU (each pinned to its own "
          f"core), {usable_cores()} cores")
    print("| worker nodes | segments | frames/s | wall s | segments s | plan + join s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for nodes, run in runs.items():
        print(f"| {nodes} | {run['segments']} | {run['frames'] / run['wall']:.3f} | {run['wall']:.1f} "
              f"| {run['segments_s']:.1f} | {run['wall'] - run['segments_s']:.2f} |")
    first, last = counts[0], counts[-1]
    if last != first:
        ratio = runs[first]["wall"] / runs[last]["wall"]
        print(f"scaling {first} -> {last} worker nodes: {ratio:.2f}x (target >= 1.7x for 1 -> 2: "
              f"{'met' if ratio >= 1.7 else 'NOT met'})")
    base = runs[first]
    segment_s = base["segments_s"] * first / base["segments"]  # one segment on one worker
    rest_s = base["wall"] - base["segments_s"]
    print(f"one segment ({base['frames'] / base['segments']:.0f} frames) on one worker: {segment_s:.2f} s; "
          f"plan + join: {rest_s:.2f} s. Estimated wall time for this clip on N such workers:")
    for workers in (1, 2, 4, 8):
        estimate = rest_s + math.ceil(base["segments"] / workers) * segment_s
        print(f"  N={workers}: {estimate:.1f} s ({base['frames'] / estimate:.2f} frames/s)")
