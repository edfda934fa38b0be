"""`python -m rt4ksr_nodes.bench video`: the streaming video pipeline on a synthetic clip (x2,
720p by default), one run of each measurement:

- decode only (demux, decode, YUV -> RGB), model only (the engine's upscale_frames on decoded
  frames held in memory), encode only (RGB -> YUV, encode, mux of those upscaled frames), each
  with its frames/s and CPU seconds per frame (all threads of the process);
- end to end: upscale_video on a 30- and a 300-frame clip, each in a fresh process so that its
  peak RSS is its own; frames/s from the longer one.

--backend ray measures segments over Ray instead (video_ray.py).

Targets (issue #22): on the CPU, end to end >= 0.85 x cores / (sum of the stages' CPU s/frame);
on a GPU, >= 0.9 x the slowest stage alone; peak RSS of 300 frames <= 30 frames + 64 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
RSS_SLACK_MB = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", default="1280x720", help="source frame size WxH (default 1280x720)")
    parser.add_argument("--frames", default="30,300", help="short and long clip lengths (default 30,300)")
    parser.add_argument("--codec", default="h264", help="output codec (default h264, the CLI's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--weights", default=str(REPO / "weights"), help="folder holding rt4ksr_x2.pth")
    parser.add_argument("--backend", choices=("local", "ray"), default="local",
                        help="ray: the longer clip in segments on 1, then 2 local Ray worker nodes (see video_ray.py)")
    parser.add_argument("--nodes", default="1,2", help="--backend ray: worker node counts (default 1,2)")
    parser.add_argument("--segment", type=float, default=1.0,
                        help="--backend ray: seconds per segment (default 1: a few segments of a short clip)")


def synthetic_clip(path: Path, width: int, height: int, frames: int, keyint: int = 250) -> None:
    """Moving detail at every scale (drifting sinusoids plus fixed grain), 24 fps H.264, a
    keyframe every `keyint` frames (x264's default: 250)."""
    import av

    rng = np.random.default_rng(0)
    grain = rng.normal(0, 6, (height, width, 1)).astype(np.float32)
    y, x = np.mgrid[:height, :width].astype(np.float32)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=24, options={"crf": "18", "preset": "veryfast", "g": str(keyint)})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            shift = 3.0 * index
            base = (
                np.sin((x + shift) / 23.0)[..., None] * [60, 40, 20]
                + np.sin((y - shift) / 11.0 + x / 37.0)[..., None] * [20, 50, 70]
                + np.cos((x * y) / 9000.0 + index / 5)[..., None] * 30
            )
            pixels = np.clip(128 + base + grain, 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def _timed(run) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process) of run()."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def _stages(model, clip: Path, work: Path, args) -> dict[str, tuple[float, float]]:
    """Each stage alone: {name: (frames/s, CPU s/frame)}."""
    import av

    from ..engine import upscale_frames
    from ..video.codecs import EncodeOptions, plan
    from ..video.pipeline import add_video_stream
    from ..video.pixels import from_rgb, to_rgb
    from ..video.source import probe

    source = probe(clip)
    encoder = plan(source, model.scale, EncodeOptions(codec=args.codec), work / "stage.mp4", "model")
    decoded, upscaled = [], []

    def decode():
        with av.open(str(clip)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            decoded.extend(to_rgb(frame, source.colour, "rgb24") for frame in container.decode(stream))

    def model_only():
        upscaled.extend(out.numpy() for out in upscale_frames(
            model, decoded, device=args.device, precision=args.precision))

    def encode():
        with av.open(str(work / "stage.mp4"), "w") as out:
            stream = add_video_stream(out, source, encoder)
            for index, pixels in enumerate(upscaled):
                frame = from_rgb(pixels[: encoder.height, : encoder.width], "rgb24", encoder.pix_fmt, encoder.colour)
                frame.pts, frame.time_base = index, Fraction(1, 24)
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))

    # Warm-up: model preparation and kernel choice belong to no stage's steady cost.
    list(upscale_frames(model, [np.zeros((source.height, source.width, 3), np.uint8)],
                        device=args.device, precision=args.precision))
    results = {}
    for name, run in (("decode only", decode), ("model only", model_only), ("encode only", encode)):
        wall, cpu = _timed(run)
        count = len(decoded)
        results[name] = (count / wall, cpu / count)
    return results


def _end_to_end(clip: Path, out: Path, args) -> dict:
    """upscale_video in a fresh process: {fps, frames, rss_mb}."""
    command = [sys.executable, "-m", "rt4ksr_nodes.bench.video", str(clip), str(out), args.codec,
               args.device, args.precision, str(Path(args.weights) / "rt4ksr_x2.pth")]
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    if done.returncode:
        raise RuntimeError(f"end-to-end run failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child(argv: list[str]) -> None:
    """One end-to-end run, reported as JSON (the process's own peak RSS)."""
    from ..engine.cpu import tune_allocator
    from ..model import load_model
    from ..video.pipeline import upscale_video

    tune_allocator()  # before the pipeline's threads start, as the quick CLI does

    clip, out, codec, device, precision, weights = argv
    model = load_model(weights)
    start = time.perf_counter()
    result = upscale_video(model, clip, out, codec=codec, device=device, precision=precision,
                           overwrite=True, warn=lambda message: None)
    wall = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"fps": result.frames / wall, "frames": result.frames, "rss_mb": peak_kb / 1024}))


def main(args: argparse.Namespace) -> None:
    if args.backend == "ray":
        from . import video_ray

        return video_ray.main(args)
    from ..engine.cpu import usable_cores
    from ..engine.device import resolve_device
    from ..model import load_model

    width, height = (int(side) for side in args.size.lower().split("x"))
    short, long = (int(count) for count in args.frames.split(","))
    device = resolve_device(args.device)
    cores = usable_cores()
    model = load_model(Path(args.weights) / "rt4ksr_x2.pth")
    print(f"video x2: {width}x{height} -> {2 * width}x{2 * height}, codec {args.codec}, device {device}, "
          f"{cores} cores, {torch.get_num_threads()} torch threads")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        clips = {count: work / f"clip{count}.mp4" for count in (short, long)}
        for count, clip in clips.items():
            synthetic_clip(clip, width, height, count)
        stages = _stages(model, clips[short], work, args)
        runs = {count: _end_to_end(clip, work / f"out{count}.mp4", args) for count, clip in clips.items()}
    print(f"{'stage':14s} {'frames/s':>9s} {'CPU s/frame':>12s}   ({short} frames)")
    for name, (fps, cpu) in stages.items():
        print(f"{name:14s} {fps:9.2f} {cpu:12.3f}")
    fps = runs[long]["fps"]
    print(f"{'end to end':14s} {fps:9.2f} {'':12s}   ({long} frames, own process, model load excluded)")
    if device.type == "cpu":
        bound = cores / sum(cpu for _, cpu in stages.values())
        print(f"CPU target: >= 0.85 x {cores} cores / {sum(c for _, c in stages.values()):.3f} CPU s/frame "
              f"= {0.85 * bound:.2f} frames/s: {fps / bound:.2f} x the bound, "
              f"{'met' if fps >= 0.85 * bound else 'NOT met'}")
    else:
        slowest = min(fps_alone for fps_alone, _ in stages.values())
        print(f"GPU target: >= 0.9 x the slowest stage ({slowest:.2f} frames/s): {fps / slowest:.2f} x, "
              f"{'met' if fps >= 0.9 * slowest else 'NOT met'}")
    grown = runs[long]["rss_mb"] - runs[short]["rss_mb"]
    print(f"peak RSS: {short} frames {runs[short]['rss_mb']:.0f} MB, {long} frames {runs[long]['rss_mb']:.0f} MB "
          f"({grown:+.0f} MB; target <= +{RSS_SLACK_MB} MB: {'met' if grown <= RSS_SLACK_MB else 'NOT met'})")


if __name__ == "__main__":
    _child(sys.argv[1:])
