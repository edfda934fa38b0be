"""When a video is encoded in segments unless told: long clips (a crash near the end must not
cost the whole job) and every clip whose segments run elsewhere (Ray); and the checks of the
options that say so, shared by the quick CLI and the runner. Free of PyAV, so the CLIs' help
and argument checks read it without the extra."""

from __future__ import annotations

import argparse

AUTO = "auto"
AUTO_SEGMENT = 10.0  # seconds per segment
AUTO_LONGER_THAN = 120.0  # seconds: clips longer than this are segmented by default


def segment_seconds(segment: float | str | None, duration: float | None, distributed: bool) -> float:
    """The seconds per segment a job uses (0: one pass) for upscale_video's `segment`."""
    if segment != AUTO:
        return float(segment or 0)
    return AUTO_SEGMENT if distributed or (duration or 0) > AUTO_LONGER_THAN else 0.0


def seconds(text: str) -> float | str:
    """--segment's type: 0 or more seconds, or auto."""
    if text == AUTO:
        return AUTO
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value


def check_backend(args: argparse.Namespace) -> str | None:
    """What is wrong with --segment, --backend, --ray-address and --ray-workers, or None; sets
    args.run_segments (None: segments run here)."""
    args.run_segments = None
    if args.backend != "ray":
        if args.ray_address or args.ray_workers is not None:
            return "--ray-address and --ray-workers need --backend ray"
        return None
    if args.segment == 0:
        return "--backend ray runs a video in segments: --segment 0 asks for one pass"
    if args.ray_workers is not None and args.ray_workers < 1:
        return "--ray-workers must be at least 1"
    from ..cluster import RayUnavailable
    from .ray_segments import run_on_ray

    try:
        args.run_segments = run_on_ray(args.ray_address, args.ray_workers)
    except RayUnavailable as error:
        return str(error)
    return None
