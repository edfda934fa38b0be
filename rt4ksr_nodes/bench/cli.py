"""Benchmarks: `python -m rt4ksr_nodes.bench [subcommand]`. Subcommands register in COMMANDS.

all (the default): speed of the train-time form, the fused form and the engine at x2 1080p and
x3 720p -> 4K, model only and end to end, checked against fp32; see speed.py.

engine: the engine's own network run bare on the whole frame against upscale() on the whole
frame and with 256-px tiles (tile_size is a tile's core; each interior side adds 16 px of
context), and the module load_model returns run bare, on synthetic frames, fp32 on the CPU.
Prints medians and the differences from the engine's bare network.

runner: the headless runner's folder batch per output format, against what its stages cost
alone (pipeline efficiency), optionally against the CLI per file; see runner.py.

encoders: the PNG/TIFF/WebP encoders this pack uses against maintained alternatives; see
encoders.py.

ray: the folder batch with --backend ray on 1 and 2 local Ray worker nodes; see ray_scaling.py.

video: the streaming video pipeline, each stage alone and end to end, with peak memory for a
short and a long clip; see video.py. With --backend ray: a clip's segments on 1, then 2 local Ray
worker nodes; see video_ray.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from . import encoders, ray_scaling, runner, speed, video
from ..engine import upscale
from ..engine.prepare import prepared
from ..engine.tiling import Box, context_for, split, window
from ..model import load_model

REPO = Path(__file__).resolve().parents[2]
ENGINE_CASES = ((2, 1920, 1080), (3, 1280, 720))
TILE = 256


def _context_share(model, height: int, width: int, tile: int) -> float:
    """Extra input pixels the tiles' context makes the network compute, as a fraction."""
    context = context_for(model)
    cores = split(Box(0, 0, height, width), tile)
    return sum(window(core, height, width, context).window.area for core in cores) / (
        height * width
    ) - 1


def _medians_ms(runs: dict, repeat: int) -> dict:
    """Median milliseconds of each run, measured in interleaved rounds after a warm-up of each,
    so that drifting machine and allocator state weighs on all of them alike."""
    times = {label: [] for label in runs}
    for run in runs.values():
        run()  # warm-up: kernel selection, model preparation
    for _ in range(repeat):
        for label, run in runs.items():
            start = time.perf_counter()
            run()
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(values) * 1000 for label, values in times.items()}


def engine(args: argparse.Namespace) -> None:
    print(f"device cpu, fp32, {torch.get_num_threads()} threads, median of {args.repeat} rounds")
    for scale, width, height in ENGINE_CASES:
        model = load_model(Path(args.weights) / f"rt4ksr_x{scale}.pth")
        frame = torch.rand(1, height, width, 3, generator=torch.Generator().manual_seed(0))
        # The very network the engine runs (engine/network.py), bare: its output before the
        # pixel shuffle, which the engine folds into writing the result.
        bare = prepared(model, torch.device("cpu"), torch.float32)
        padded = frame.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)

        def model_only():
            with torch.inference_mode():
                bare(padded)

        def loaded_model():  # the module load_model returns, as a user would call it
            with torch.inference_mode():
                model(padded)

        def engine_run(tile: int):
            return lambda: upscale(model, frame, tile_size=tile, precision="fp32", device="cpu")

        runs = {
            "model only": model_only,
            "loaded model, bare": loaded_model,
            "engine, whole frame": engine_run(0),
            f"engine, {TILE}-px tiles": engine_run(TILE),
        }
        medians = _medians_ms(runs, args.repeat)
        base = medians.pop("model only")
        print(f"x{scale} {width}x{height}: model only {base:8.1f} ms  (the engine's network, bare)")
        for label, ms in medians.items():
            print(f"   {label:20s} {ms:8.1f} ms  overhead {100 * (ms / base - 1):+6.1f}%")
        share = _context_share(model, height, width, TILE)
        print(f"   ({TILE}-px tiles compute {100 * share:.1f}% extra pixels of context)")


COMMANDS = {
    "all": speed.main,
    "engine": engine,
    "runner": runner.main,
    "ray": ray_scaling.main,
    "encoders": encoders.main,
    "video": video.main,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rt4ksr_nodes.bench")
    commands = parser.add_subparsers(dest="command")
    all_parser = commands.add_parser("all", help="the speed table (default)")
    speed.add_arguments(all_parser, str(REPO / "weights"))
    engine_parser = commands.add_parser("engine", help="engine overhead over the bare model")
    engine_parser.add_argument("--repeat", type=int, default=7)
    engine_parser.add_argument(
        "--weights", default=str(REPO / "weights"), help="folder holding rt4ksr_x2/x3.pth"
    )
    runner.add_arguments(commands.add_parser("runner", help="headless folder batch: rates and efficiency per format"))
    encoders.add_arguments(commands.add_parser("encoders", help="this pack's image encoders vs alternatives"))
    ray_scaling.add_arguments(commands.add_parser("ray", help="--backend ray on 1 and 2 local worker nodes"))
    video.add_arguments(commands.add_parser("video", help="the video pipeline: stages, end to end, memory"))
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv.insert(0, "all")
    args = parser.parse_args(argv)
    COMMANDS[args.command](args)

