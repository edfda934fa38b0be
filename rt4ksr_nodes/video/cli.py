"""The quick CLI's video part: `python -m rt4ksr_nodes.upscale --input clip.mp4 --scale 2`
writes clip--2x.mp4. cli/upscale.py dispatches here for inputs recognised as video."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..files.images import IMAGE_EXTENSIONS
from .detect import CONTAINERS, INSTALL_HINT, VIDEO_EXTENSIONS, available, is_video
from .policy import AUTO, AUTO_LONGER_THAN, AUTO_SEGMENT, seconds

OUTPUT_EXTENSIONS = tuple(CONTAINERS)  # what --output may name
CODEC_CHOICES = ("h264", "hevc", "av1", "vp9", "prores", "ffv1", "h264_nvenc", "hevc_nvenc")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("video inputs")
    group.add_argument(
        "--codec", choices=CODEC_CHOICES,
        help="video codec (default h264; vp9 for .webm; for a source with alpha, a codec that keeps it)",
    )
    group.add_argument("--crf", type=int, help="quality: lower is better (default: per codec, transparent)")
    group.add_argument(
        "--preset", help="encoder speed/profile: x264/x265 names, SVT-AV1 0-13, VP9 cpu-used 0-8, "
        "ProRes proxy|lt|standard|hq|4444|4444xq, NVENC p1-p7",
    )
    group.add_argument(
        "--segment", type=seconds, default=AUTO, metavar="SECONDS",
        help=f"encode in segments of about SECONDS (cut at keyframes), joined at the end; a stopped "
        f"run keeps the finished ones for --resume. 0 = one pass. Default: {AUTO_SEGMENT:g} s segments "
        f"for clips longer than {AUTO_LONGER_THAN:g} s and with --backend ray, else one pass",
    )
    group.add_argument(
        "--backend", choices=("local", "ray"), default="local",
        help="ray: a video's segments on Ray workers, one per GPU (else per CPU); source and output on a "
        "file system every node sees (needs rt4ksr-nodes[ray]). Images always run here",
    )
    group.add_argument("--ray-address", metavar="ADDR", help="the Ray cluster, as ray.init takes it (default: a "
                       "new local Ray on 127.0.0.1)")
    group.add_argument("--ray-workers", type=int, metavar="N", help="Ray workers (default: one per GPU, else per CPU)")


def is_input(path: Path) -> bool:
    """Whether a file goes the video way: a video extension (a broken clip is then reported as a
    video), else by content, except for image extensions."""
    suffix = path.suffix.lower()
    return suffix in VIDEO_EXTENSIONS or suffix not in IMAGE_EXTENSIONS and is_video(path)


def output_suffix(source: Path, args: argparse.Namespace) -> str:
    """The source's container when it can carry the codec, else the codec's."""
    suffix = source.suffix.lower()
    if not available():
        return suffix  # the run says what to install
    from .codecs import EncodeOptions, choose_codec, output_extension
    from .errors import VideoError
    from .source import probe

    try:
        info = probe(source)
    except VideoError:
        return suffix  # the run reports the problem
    codec = choose_codec(EncodeOptions(codec=args.codec), info, args.alpha != "discard", suffix)
    return output_extension(codec, suffix)


def upscale_file(model, source: Path, destination: Path, args: argparse.Namespace) -> None:
    """Run one video; raises ValueError (VideoError) / OSError naming what went wrong."""
    if not available():
        raise ValueError(f"{source}: {INSTALL_HINT}")
    if args.benchmark:
        raise ValueError(f"{source}: --benchmark times images; for video run python -m rt4ksr_nodes.bench video")
    import av

    from .errors import VideoError
    from .pipeline import upscale_video

    bar = _progress_bar(source, args.progress)

    def say(message: str) -> None:
        (bar.write if bar is not None else lambda text: print(text, file=sys.stderr))(f"warning: {message}")

    def progress(done: int, total: int | None) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        upscale_video(
            model, source, destination,
            codec=args.codec, crf=args.crf, preset=args.preset,
            tile_size=args.tile, precision=args.precision, device=args.device, alpha=args.alpha,
            overwrite=args.overwrite, progress=progress if bar is not None else None, warn=say,
            segment=args.segment, resume=args.resume, run_segments=args.run_segments,
        )
    except av.FFmpegError as error:
        raise VideoError(f"{source}: {error}") from error
    finally:
        if bar is not None:
            bar.close()


def remove_leftovers(destination: Path) -> None:
    """The segments of `destination` that a run killed after publishing it left behind."""
    if available() and destination.suffix.lower() in OUTPUT_EXTENSIONS:
        from .workdir import remove_joined

        remove_joined(destination.parent)


def _progress_bar(source: Path, forced: bool):
    if not (forced or sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(desc=source.name, unit="frame", file=sys.stderr, leave=False)

