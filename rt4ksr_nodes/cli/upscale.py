"""Quick-inference CLI: `python -m rt4ksr_nodes.upscale --input image.png --scale 2` (videos
too: the video part is video/cli.py).

Exit status: 0 when every output was written (or skipped with --skip-existing / --resume), 1
when some inputs failed (each named on stderr, the others still done), 2 for usage errors and
unusable checkpoints (found before any image is upscaled), 130 when stopped by Ctrl-C and 143
by SIGTERM (outputs already written are complete; the one being made is discarded, except a
video's finished segments, which --resume keeps).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..files import weights
from .args import checkpoint, device, non_negative_int
from ..engine import ALPHA_MODES, UpscaleError, upscale
from ..engine.cpu import tune_allocator
from ..engine.device import PRECISION_CHOICES
from ..engine.tiling import MIN_TILE
from ..files.paths import remove_stale_temps, sigterm_as_interrupt, stopped_by, unwritable
from ..files.images import (
    DEFAULT_MAX_PIXELS,
    FRAMES_FORMATS,
    IMAGE_EXTENSIONS,
    ImageReadError,
    Picture,
    Timing,
    check_storable,
    frame_count,
    read_frames,
    read_image,
    write_frames,
    write_image,
)
from ..model import CheckpointError, load_model
from ..video import cli as video
from ..video.policy import check_backend

# How this CLI names its outputs (<stem>--2x.png); a folder input skips such files.
OUTPUT_NAME = re.compile(r"--\d+x$")
EXTENSIONS = (*IMAGE_EXTENSIONS, ".gif")  # read and written
OK, FAILED, USAGE = 0, 1, 2  # and 130 / 143 when stopped (files.paths.stopped_by)


class UsageError(Exception):
    """Options that cannot work; reported before any image is upscaled (exit 2)."""


@dataclass(frozen=True)
class Job:
    source: Path
    destination: Path


def default_checkpoint(scale: int) -> Path:
    """The released checkpoint for `scale`, verified, fetched first if it is not there yet."""
    return weights.ensure(weights.release_for_scale(scale).name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rt4ksr_nodes.upscale", description="Upscale images with RT4KSR."
    )
    parser.add_argument(
        "--input", "-i", action="append", required=True, type=Path,
        help="an image file or a folder of images (not recursive); repeatable",
    )
    parser.add_argument(
        "--output", "-o",
        help="output file (one input file) or folder (several inputs, a folder input, an "
        "existing folder, or a path ending in /); default: <stem>--<s>x.png beside each input",
    )
    parser.add_argument("--scale", type=int, choices=(2, 3), help="use the released model")
    parser.add_argument("--model", type=checkpoint,
                        help="any RT4KSR checkpoint (.pth/.safetensors)")
    parser.add_argument("--tile", type=non_negative_int, default=0,
                        help="tile size in input px (0 = auto)")
    parser.add_argument("--precision", default="auto", choices=PRECISION_CHOICES)
    parser.add_argument("--device", type=device, default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--alpha", default="model", choices=ALPHA_MODES)
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    existing.add_argument("--skip-existing", action="store_true",
                          help="leave existing outputs as they are (counted as skipped)")
    parser.add_argument(
        "--resume", action="store_true",
        help="continue a stopped run: existing outputs are skipped (with --overwrite: replaced), "
        "a video's finished segments kept (see --segment)",
    )
    parser.add_argument(
        "--max-pixels", type=non_negative_int, default=DEFAULT_MAX_PIXELS,
        help=f"refuse larger inputs (default {DEFAULT_MAX_PIXELS}, about 13377^2; the frames "
        "of an animation count together); 0 = no limit",
    )
    parser.add_argument(
        "--benchmark", type=non_negative_int, default=0, metavar="N",
        help="time N runs per image after a warm-up instead of writing outputs",
    )
    parser.add_argument("--progress", action="store_true", help="progress bar even without a TTY")
    video.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    tune_allocator()  # this process's policy, before any thread picks its arena
    tally = Counter()
    try:
        with sigterm_as_interrupt():
            return _upscale_all(parser, args, tally)
    except KeyboardInterrupt as stop:
        by, code = stopped_by(stop)
        print(f"stopped by {by}; finished outputs are complete, the one being made was discarded",
              file=sys.stderr)
        _summary(tally, stopped=True)
        return code


def _upscale_all(parser: argparse.ArgumentParser, args, tally: Counter) -> int:
    """Check everything that can be checked, then run the jobs, counting them in `tally`."""
    try:
        target, is_folder = _check_options(args)
        try:
            checkpoint = args.model or default_checkpoint(args.scale)
            model = load_model(checkpoint)
        except (CheckpointError, weights.WeightsError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return USAGE
        if args.scale is not None and args.scale != model.scale:
            print(f"error: {checkpoint} is a x{model.scale} model, not x{args.scale}", file=sys.stderr)
            return USAGE
        jobs, problems = plan(args.input, target, is_folder, model.scale, args)
    except UsageError as error:
        parser.exit(USAGE, f"{parser.prog}: error: {error}\n")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    tally["unusable"], tally["jobs"] = len(problems), len(jobs)
    if not args.benchmark:
        for folder in sorted({job.destination.parent for job in jobs}):
            for temp in remove_stale_temps(folder, recursive=False):  # the CLI writes only here
                print(f"removed {temp}, left behind by a killed run", file=sys.stderr)
    for job in jobs:
        tally[run_job(model, job, args)] += 1
    _summary(tally)
    return FAILED if tally["failed"] or tally["unusable"] else OK


def _check_options(args) -> tuple[Path | None, bool]:
    """Everything that can be checked before the model is loaded; --output as (path, is folder)."""
    if args.scale is None and args.model is None:
        raise UsageError("give --scale (released model) or --model PATH")
    if args.tile and args.tile < MIN_TILE:
        raise UsageError(f"--tile must be 0 (automatic) or at least {MIN_TILE}")
    problem = check_backend(args)
    if problem:
        raise UsageError(problem)
    return output_target(args.input, args.output)


def output_target(inputs: list[Path], output: str | None) -> tuple[Path | None, bool]:
    """--output as typed -> (path or None, whether it is a folder). It is a folder when it ends
    in a separator, exists as one, or the inputs are several or a folder (then it must not be
    named like an image file); otherwise an image file name."""
    if output is None:
        return None, False
    path = Path(output)
    suffix = path.suffix.lower()
    if output.endswith(("/", os.sep)) or path.is_dir():
        return path, True
    if len(inputs) > 1 or inputs[0].is_dir():
        if suffix in EXTENSIONS + video.OUTPUT_EXTENSIONS:
            what = "a folder input" if len(inputs) == 1 else f"{len(inputs)} inputs"
            raise UsageError(
                f"--output {output} names an image file, but {what} can write several "
                f"images; give a folder (end it with / to create one: {output}/)"
            )
        return path, True
    if not suffix:
        raise UsageError(
            f"--output {output} has no extension: name a file such as {output}.png, or end it "
            "with / to make it a folder"
        )
    if suffix not in EXTENSIONS + video.OUTPUT_EXTENSIONS:
        raise UsageError(
            f"--output {output}: {suffix} is not an image format or video container this tool writes "
            f"({', '.join(EXTENSIONS + video.OUTPUT_EXTENSIONS)})"
        )
    return path, False


def plan(
    inputs: list[Path], target: Path | None, is_folder: bool, scale: int, args: argparse.Namespace
) -> tuple[list[Job], list[str]]:
    """The jobs, and the inputs that cannot be used (missing, empty folder, colliding outputs).
    Raises UsageError for outputs that cannot be written at all."""
    sources, problems = [], []
    for item in inputs:
        if item.is_dir():
            found = _folder_images(item)
            if not found:
                problems.append(
                    f"{item}: no images to upscale (extensions {', '.join(EXTENSIONS)}; "
                    "earlier results named *--2x.*, *--3x.* and hidden files are skipped)"
                )
            sources += found
        elif item.is_file():
            sources.append(item)
        else:
            problems.append(f"{item}: no such file or folder")
    jobs, claimed = [], {}
    for source in sources:
        if target is not None and not is_folder:
            destination = target
        else:
            name = f"{source.stem}--{scale}x{_default_suffix(source, args)}"
            destination = (target if target is not None else source.parent) / name
        if _same_file(source, destination):
            raise UsageError(
                f"--output {destination} is the input itself; write the result to another "
                "name (--overwrite never replaces an input)"
            )
        if destination in claimed:
            problems.append(
                f"{source}: its output {destination} is also {claimed[destination]}'s; "
                "rename one of them or give them separate --output folders"
            )
            continue
        claimed[destination] = source
        jobs.append(Job(source, destination))
    for folder in sorted({job.destination.parent for job in jobs}):
        problem = unwritable(folder)
        if problem:
            raise UsageError(problem)
    return jobs, problems


def _folder_images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and not p.name.startswith(".")  # hidden: editors' and this tool's temporary files
        and p.suffix.lower() in EXTENSIONS + video.VIDEO_EXTENSIONS
        and not OUTPUT_NAME.search(p.stem)  # earlier results, not inputs
    )


def _default_suffix(source: Path, args: argparse.Namespace) -> str:
    """PNG, except that a GIF stays a GIF and an animation or a multi-page TIFF keeps its kind;
    a video: its own container when that holds the codec, else the codec's."""
    if video.is_input(source):
        return video.output_suffix(source, args)
    suffix = source.suffix.lower()
    if suffix == ".gif":
        return suffix
    if suffix in FRAMES_FORMATS:
        try:
            if frame_count(source) > 1:
                return suffix
        except ImageReadError:
            pass  # reported when the job reads it
    return ".png"


def _same_file(source: Path, destination: Path) -> bool:
    if source.resolve() == destination.resolve():
        return True
    return destination.exists() and os.path.samefile(source, destination)


def run_job(model, job: Job, args) -> str:
    """Upscale one input: "done", "skipped" or "failed" (the cause reported on stderr)."""
    try:
        is_video = video.is_input(job.source)
        if args.benchmark and not is_video:
            _benchmark(model, job.source, args)
            return "done"
        if job.destination.exists() and not args.overwrite:
            raise FileExistsError(job.destination)
        (video.upscale_file if is_video else upscale_file)(model, job.source, job.destination, args)
    except FileExistsError as error:
        if not job.destination.exists():  # a folder on the way is a file, say
            _report(job.source, error)
            return "failed"
        if args.skip_existing or args.resume:
            print(f"{job.source}: skipped, {job.destination} exists", file=sys.stderr)
            video.remove_leftovers(job.destination)
            return "skipped"
        _report(job.source, f"{job.destination} exists (use --overwrite to replace it, "
                            "--skip-existing to leave it)")
        return "failed"
    except (ImageReadError, UpscaleError, OSError, ValueError) as error:
        _report(job.source, error)
        return "failed"
    print(f"{job.source} -> {job.destination}", file=sys.stderr)
    return "done"


def upscale_file(model, source: Path, destination: Path, args) -> None:
    """One image file; an animation or a multi-page TIFF frame by frame, into the same kind."""
    frames = frame_count(source)
    if frames > 1 and destination.suffix.lower() not in FRAMES_FORMATS:
        raise ValueError(
            f"{source} has {frames} frames but {destination.suffix} holds one image; write "
            ".gif, .webp, .png (animated) or .tif (pages)"
        )
    if frames > 1 or destination.suffix.lower() == ".gif":
        pictures, timing = (
            read_frames(source, args.max_pixels) if frames > 1
            else ([read_image(source, args.max_pixels)], Timing())
        )
        results = (
            Picture(_upscaled(model, p.pixels, args, f"{source.name} [{n}/{len(pictures)}]"),
                    p.bits, p.icc_profile)
            for n, p in enumerate(pictures, 1)
        )
        write_frames(destination, results, timing, overwrite=args.overwrite)
        return
    picture = read_image(source, args.max_pixels)
    check_storable(destination, picture.pixels.shape[-1])
    result = _upscaled(model, picture.pixels, args, source.name)
    write_image(destination, Picture(result, picture.bits, picture.icc_profile),
                overwrite=args.overwrite)


def _report(source: Path, error) -> None:
    named = str(source) in str(error)
    print(f"error: {error}" if named else f"error: {source}: {error}", file=sys.stderr)


def _summary(tally: Counter, stopped: bool = False) -> None:
    """One line: jobs done, skipped, failed (with unusable inputs), and when stopped, not done."""
    parts = [f"done {tally['done']}"]
    if tally["skipped"]:
        parts.append(f"skipped {tally['skipped']}")
    parts.append(f"failed {tally['failed'] + tally['unusable']}")
    if stopped:
        left = tally["jobs"] - tally["done"] - tally["skipped"] - tally["failed"]
        parts.append(f"not done {left}")
    print(", ".join(parts), file=sys.stderr)


def _upscaled(model, pixels: np.ndarray, args, label: str) -> np.ndarray:
    bar = _progress_bar(label, args.progress)
    try:
        return _run(model, pixels, args, bar)
    finally:
        if bar is not None:
            bar.close()


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


def _progress_bar(label: str, forced: bool):
    if not (forced or sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(desc=label, unit="tile", file=sys.stderr, leave=False)


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
