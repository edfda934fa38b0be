"""`python -m rt4ksr_nodes.bench runner`: a folder of synthetic frames through x2 to PNG, by the
headless runner's folder-batch workflow against the quick-inference CLI called once per file
(a subprocess per image, as a shell pipeline would).

Reports images/s and the device's busy fraction: time inside the engine's upscale() (the model,
its tiling and transfers; the result is back on the CPU when it returns, so no work is left
queued) over wall time. The runner's is measured in-process; the CLI's is estimated from the
runner's engine time per image, the same computation on the same frames.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from . import comfy_bridge as bridge
from .nodes import upscale as upscale_node
from .runner import registry
from .runner.execute import Runner


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=8, help="frames in the folder (default 8)")
    parser.add_argument("--size", default="1920x1080", help="frame size WxH (default 1920x1080)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: the best available)")
    parser.add_argument("--workdir", type=Path,
                        help="work here and keep the frames and both outputs (a new or empty "
                             "folder; default: a temporary one)")


def input_frames(root: Path, count: int, size: str) -> tuple[int, int]:
    """`count` synthetic frames of `size` ("WxH") in root/input/frames, where folder_prompt()
    reads them; returns (width, height)."""
    width, height = (int(v) for v in size.lower().split("x"))
    (root / "input" / "frames").mkdir(parents=True)
    synthetic_frames(root / "input" / "frames", count, width, height)
    return width, height


def synthetic_frames(folder: Path, count: int, width: int, height: int) -> None:
    """Smooth gradients with texture and mild noise: PNG costs like a photo, not like noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    for index in range(count):
        phase = index * 0.7
        channels = [np.sin(x / (37 + 9 * c) + phase) * np.cos(y / (23 + 7 * c) - phase) for c in range(3)]
        pixels = 127.5 + 100 * np.stack(channels, -1) + rng.normal(0, 4, (height, width, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"frame_{index:04}.png")


def folder_prompt() -> dict:
    return {
        "1": {"class_type": "RT4KSRLoadImageFolder", "inputs": {"folder": "frames", "pattern": "*.png", "recursive": False}},
        "2": {"class_type": "RT4KSRModelLoader", "inputs": {"model_name": "rt4ksr_x2.pth", "reparameterize": True}},
        "3": {"class_type": "RT4KSRUpscale", "inputs": {"model": ["2", 0], "image": ["1", 0], "tile_size": 0,
                                                         "precision": "auto"}},
        "4": {"class_type": "RT4KSRSaveImageBatch", "inputs": {
            "images": ["3", 0], "path": ["1", 2], "name_template": "{stem}--2x", "subfolder": "",
            "format": "png", "bit_depth": "8", "quality": 95}},
    }


class _EngineClock:
    """Wraps the engine's upscale() as the RT4KSR nodes call it and sums the time spent inside."""

    def __init__(self):
        self.seconds = 0.0
        self.original = upscale_node.upscale

    def __enter__(self):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return self.original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        upscale_node.upscale = timed
        return self

    def __exit__(self, *exc):
        upscale_node.upscale = self.original


def run_runner(root: Path, device: str | None) -> tuple[float, float, int]:
    """(wall seconds, engine seconds, images done) for the folder workflow, in-process."""
    saved = (bridge.headless.input_dir, bridge.headless.output_dir, bridge.headless.device)
    bridge.headless.input_dir, bridge.headless.output_dir = root / "input", root / "runner_out"
    if device:
        import torch

        bridge.headless.device = torch.device(device)
    bridge.headless.output_dir.mkdir()
    try:
        with _EngineClock() as clock:
            start = time.perf_counter()
            summary = Runner(folder_prompt(), registry.node_classes()).run()
            wall = time.perf_counter() - start
    finally:
        bridge.headless.input_dir, bridge.headless.output_dir, bridge.headless.device = saved
    if summary.failed:
        raise RuntimeError(f"runner failed: {summary.failures[:3]}")
    return wall, clock.seconds, summary.done


def run_cli_per_file(root: Path, device: str | None) -> tuple[float, int]:
    """(wall seconds, images written) calling `python -m rt4ksr_nodes.upscale` once per file."""
    out = root / "cli_out"
    out.mkdir()
    frames = sorted((root / "input" / "frames").glob("*.png"))
    command = [sys.executable, "-m", "rt4ksr_nodes.upscale", "--scale", "2", "--output", str(out)]
    command += ["--device", device] if device else []
    start = time.perf_counter()
    for frame in frames:
        subprocess.run([*command, "--input", str(frame)], check=True, capture_output=True,
                       cwd=Path(__file__).resolve().parents[1], env=dict(os.environ))
    return time.perf_counter() - start, len(list(out.glob("*.png")))


@contextmanager
def _workdir(folder: Path | None) -> Iterator[Path]:
    if folder is None:
        with tempfile.TemporaryDirectory(prefix="rt4ksr_bench_runner_") as temporary:
            yield Path(temporary)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        yield folder


def main(args: argparse.Namespace) -> None:
    with _workdir(args.workdir) as root:
        width, height = input_frames(root, args.images, args.size)
        wall, engine, done = run_runner(root, args.device)
        cli_wall, cli_done = run_cli_per_file(root, args.device)
    per_image = engine / done
    rows = [
        ("headless runner, folder batch", done / wall, engine / wall, "measured"),
        ("quick-inference CLI per file", cli_done / cli_wall, per_image * cli_done / cli_wall, "estimated"),
    ]
    device = args.device or "auto"
    print(f"{args.images} synthetic {width}x{height} PNG frames, x2 to PNG, device {device}")
    print(f"images done: runner {done}, CLI {cli_done}")
    print(f"engine time per image {1000 * per_image:.0f} ms")
    print("| path | images/s | device busy | busy is |")
    print("|---|---:|---:|---|")
    for label, rate, busy, how in rows:
        print(f"| {label} | {rate:.3f} | {100 * busy:.0f}% | {how} |")
    print(f"runner speed-up over per-file CLI: {rows[0][1] / rows[1][1]:.2f}x")
