"""Quick-inference CLI: `python -m rt4ksr_nodes.upscale --input image.png --scale 2`.

Exit status: 0 when every file was written, 1 when some failed (each named on stderr, the
others still done), 2 for usage errors and unusable checkpoints.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .engine import ALPHA_MODES, UpscaleError, upscale
from .engine.device import PRECISION_CHOICES, resolve_device
from .engine.tiling import MIN_TILE
from .imageio import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageReadError,
    Picture,
    read_image,
    write_image,
)
from . import weights
from .model import CheckpointError, load_model
from .video import cli as video

# How this CLI names its outputs (<stem>--2x.png); a folder input skips such files.
OUTPUT_NAME = re.compile(r"--\d+x$")


def default_checkpoint(scale: int) -> Path:
    """The released checkpoint for `scale`, verified, fetched first if it is not there yet."""
    return weights.ensure(weights.release_for_scale(scale).name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rt4ksr_nodes.upscale", description="Upscale images and videos with RT4KSR."
    )
    parser.add_argument(
        "--input", "-i", action="append", required=True, type=Path,
        help="an image or video file, or a folder of them (not recursive); repeatable",
    )
    parser.add_argument(
        "--output", "-o",
        help="output file (one input) or folder (several inputs, an existing folder, or a path "
        "ending in /); default: <stem>--<s>x.png beside each input",
    )
    parser.add_argument("--scale", type=int, choices=(2, 3), help="use the released model")
    parser.add_argument("--model", type=Path, help="any RT4KSR checkpoint (.pth/.safetensors)")
    parser.add_argument("--tile", type=int, default=0, help="tile size in input px (0 = auto)")
    parser.add_argument("--precision", default="auto", choices=PRECISION_CHOICES)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--alpha", default="model", choices=ALPHA_MODES)
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
        help=f"refuse larger inputs (default {DEFAULT_MAX_PIXELS}, about 13377^2); 0 = no limit",
    )
    parser.add_argument(
        "--benchmark", type=int, default=0, metavar="N",
        help="time N runs per image after a warm-up instead of writing outputs",
    )
    parser.add_argument("--progress", action="store_true", help="progress bar even without a TTY")
    video.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.scale is None and args.model is None:
        parser.error("give --scale (released model) or --model PATH")
    if args.tile and args.tile < MIN_TILE:
        parser.error(f"--tile must be 0 (automatic) or at least {MIN_TILE}")
    try:
        resolve_device(args.device)
    except (ValueError, RuntimeError) as error:
        parser.error(f"--device {args.device}: {error}")
    try:
        checkpoint = args.model or default_checkpoint(args.scale)
        model = load_model(checkpoint)
    except (CheckpointError, weights.WeightsError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.scale is not None and args.scale != model.scale:
        print(f"error: {checkpoint} is a x{model.scale} model, not x{args.scale}", file=sys.stderr)
        return 2

    jobs, failures = _jobs(args.input, args.output, model.scale, args)
    for source, destination in jobs:
        try:
            if video.is_input(source):
                video.upscale_file(model, source, destination, args)
            elif args.benchmark:
                _benchmark(model, source, args)
            else:
                _upscale_file(model, source, destination, args)
        except KeyboardInterrupt:
            print(f"interrupted: {source} was not written", file=sys.stderr)
            return 130
        except (ImageReadError, UpscaleError, OSError, ValueError) as error:
            named = str(source) in str(error)
            print(f"error: {error}" if named else f"error: {source}: {error}", file=sys.stderr)
            failures += 1
    return 1 if failures else 0


def _jobs(
    inputs: list[Path], output: str | None, scale: int, args: argparse.Namespace
) -> tuple[list[tuple[Path, Path]], int]:
    """(source, destination) pairs, and how many inputs were unusable (reported on stderr).
    `output` as typed: a trailing separator makes it a folder even before it exists."""
    folder = output is not None and output.endswith(("/", os.sep))
    output = None if output is None else Path(output)
    sources, failures = [], 0
    for item in inputs:
        if item.is_dir():
            sources += sorted(
                p
                for p in item.iterdir()
                if p.is_file()
                and p.suffix.lower() in IMAGE_EXTENSIONS + video.VIDEO_EXTENSIONS
                and not OUTPUT_NAME.search(p.stem)  # earlier results, not inputs
            )
        elif item.is_file():
            sources.append(item)
        else:
            print(f"error: {item}: no such file or folder", file=sys.stderr)
            failures += 1
    single_file = len(inputs) == 1 and len(sources) == 1 and not inputs[0].is_dir()
    jobs, claimed = [], {}
    for source in sources:
        if video.is_input(source):
            name = video.output_name(source, scale, args)
        else:
            name = f"{source.stem}--{scale}x.png"
        if output is None:
            destination = source.with_name(name)
        elif single_file and not folder and not output.is_dir():
            destination = output
        else:
            destination = output / name
        if destination in claimed:
            print(
                f"error: {source}: its output {destination} is also {claimed[destination]}'s; "
                "rename one of them or give them separate --output folders",
                file=sys.stderr,
            )
            failures += 1
            continue
        claimed[destination] = source
        jobs.append((source, destination))
    return jobs, failures


def _upscale_file(model, source: Path, destination: Path, args) -> None:
    if destination.exists() and not args.overwrite:
        raise FileExistsError(f"{destination} exists (use --overwrite to replace it)")
    picture = read_image(source, args.max_pixels)
    bar = _progress_bar(source, args.progress)
    try:
        result = _run(model, picture.pixels, args, bar)
    finally:
        if bar is not None:
            bar.close()
    destination.parent.mkdir(parents=True, exist_ok=True)
    write_image(destination, Picture(result, picture.bits, picture.icc_profile))
    print(f"{source} -> {destination}", file=sys.stderr)


def _run(model, pixels: np.ndarray, args, bar=None) -> np.ndarray:
    """H x W x C in (gray, gray + alpha, RGB, RGBA), sH x sW x C out."""
    image = torch.from_numpy(pixels).unsqueeze(0)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    out = upscale(
        model, image, tile_size=args.tile, precision=args.precision, device=args.device,
        alpha=args.alpha, progress=progress if bar is not None else None,
    )[0]
    return out.numpy()


def _progress_bar(source: Path, forced: bool):
    if not (forced or sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(desc=source.name, unit="tile", file=sys.stderr, leave=False)


def _benchmark(model, source: Path, args) -> None:
    picture = read_image(source, args.max_pixels)
    height, width = picture.pixels.shape[:2]
    _run(model, picture.pixels, args)  # warm-up: model preparation, kernel selection
    times = []
    for _ in range(args.benchmark):
        start = time.perf_counter()
        _run(model, picture.pixels, args)
        times.append((time.perf_counter() - start) * 1000)
    median = statistics.median(times)
    print(
        f"{source}: {width}x{height} x{model.scale}, {args.benchmark} runs: "
        f"median {median:.1f} ms, min {min(times):.1f} ms, max {max(times):.1f} ms, "
        f"{width * height / 1e6 / (median / 1000):.2f} input megapixels/s"
    )
