"""`python -m rt4ksr_nodes.bench runner`: the headless runner's folder batch of synthetic frames,
x2, saved in several formats (default: PNG at compression levels 1 and 4, and lossless WebP),
against what its stages cost alone.

First each stage alone, in CPU seconds per image (every thread of the process counted): decode
(Load Image Folder), model (Upscale Image (RT4KSR)), quantise (to 8 bits) and encode (each
format, to memory). Then the folder batch once per format, and its pipeline efficiency,

    images/s / (cores / CPU seconds of all stages per image),

1.0 when the cores never idle and the stages cost together what they cost alone. It is taken
in the steady state, the images finished between the first and the last `in_flight` ones (the
most a run holds at once): before, the pipeline fills (the first image passes every stage with
nothing beside it), after, it drains (the last encodes with the model done); a long batch is
nearly all steady state. The whole run's images/s (model loading, fill and drain included) and
the time to the first image are printed beside it. Other processes taking the cores lower the
efficiency too: each run reports the cores they took meanwhile (Linux), and the efficiency on
the cores they left (cores less theirs in the formula), so that a figure from a busy machine
is known as such. `--cli` adds the quick-inference CLI called once per file (a subprocess per
image, as a shell pipeline would) on the first few frames; its device's busy fraction is
estimated from the runner's engine time per image.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..cli.args import positive_int
from ..host import bridge
from ..engine.cpu import usable_cores
from ..files.images import Picture, _quantise, _write
from ..nodes import upscale as upscale_node
from ..nodes.batch import FORMATS, RT4KSRLoadImageFolder
from ..nodes.models import RT4KSRModelLoader
from ..runner import registry
from ..runner.execute import Runner, default_jobs, in_flight

DEFAULT_FORMATS = "png:1,png:4,webp lossless"
CLI_FILES = 4  # frames the quick-inference CLI is timed on: a process per file, ~2 s each to start


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=positive_int,
                        help="frames in the folder (default: four times what a run holds at once, "
                             "32 with 2 writer threads, so that half of them finish in the steady "
                             "state)")
    parser.add_argument("--size", default="1920x1080", help="frame size WxH (default 1920x1080)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: the best available)")
    parser.add_argument("--formats", type=_formats, default=_formats(DEFAULT_FORMATS),
                        help="comma-separated Save Image Batch formats, png:LEVEL for a PNG "
                             f"compression level (default {DEFAULT_FORMATS!r})")
    parser.add_argument("--jobs", type=positive_int, help="writer threads (default: the runner's, one per core)")
    parser.add_argument("--cli", action="store_true",
                        help=f"also time the quick-inference CLI per file (on the first {CLI_FILES})")
    parser.add_argument("--workdir", type=Path,
                        help="work here and keep the frames and the outputs (a new or empty "
                             "folder; default: a temporary one)")


def _formats(text: str) -> list[tuple[str, int]]:
    """'png:1,webp lossless' -> [("png", 1), ("webp lossless", 4)]."""
    chosen = []
    for entry in text.split(","):
        name, _, level = entry.strip().partition(":")
        if name not in FORMATS or (level and not level.isdigit()):
            raise argparse.ArgumentTypeError(f"{entry!r}: give one of {list(FORMATS)}, png:0 to png:9")
        chosen.append((name, int(level or 4)))
    return chosen


def _label(format: str, level: int) -> str:
    return f"{format} level {level}" if format == "png" else format


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


def folder_prompt(format: str = "png", compression: int = 4) -> dict:
    return {
        "1": {"class_type": "RT4KSRLoadImageFolder", "inputs": {"folder": "frames", "pattern": "*.png", "recursive": False}},
        "2": {"class_type": "RT4KSRModelLoader", "inputs": {"model_name": "rt4ksr_x2.pth", "reparameterize": True}},
        "3": {"class_type": "RT4KSRUpscale", "inputs": {"model": ["2", 0], "image": ["1", 0], "tile_size": 0,
                                                         "precision": "auto"}},
        "4": {"class_type": "RT4KSRSaveImageBatch", "inputs": {
            "images": ["3", 0], "path": ["1", 2], "name_template": "{stem}--2x", "subfolder": "",
            "format": format, "bit_depth": "8", "quality": 95, "compression": compression}},
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


@contextmanager
def _headless(root: Path, output: str, device: str | None) -> Iterator[Path]:
    """The bridge's folders (root/input, root/`output`) and device for the duration."""
    saved = (bridge.headless.input_dir, bridge.headless.output_dir, bridge.headless.device)
    bridge.headless.input_dir, bridge.headless.output_dir = root / "input", root / output
    if device:
        import torch

        bridge.headless.device = torch.device(device)
    bridge.headless.output_dir.mkdir(exist_ok=True)
    try:
        yield bridge.headless.output_dir
    finally:
        bridge.headless.input_dir, bridge.headless.output_dir, bridge.headless.device = saved


@contextmanager
def _threads(count: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cpu_seconds(run, repeats: int = 1) -> float:
    """CPU seconds of the whole process (every thread) that run() takes: the median of
    `repeats` calls."""

    def once() -> float:
        start = time.process_time()
        run()
        return time.process_time() - start

    return statistics.median(once() for _ in range(repeats))


def beside_python(job) -> float:
    """CPU seconds a pure-Python thread gets while `job` runs on another thread, per CPU second
    of `job`: near 0 when `job` holds the GIL (the thread waits for it), about 1 or more when
    it releases it and the two run in parallel."""
    done, spent = threading.Event(), []

    def run():
        start = time.thread_time()
        job()
        spent.append(time.thread_time() - start)
        done.set()

    worker = threading.Thread(target=run)
    start = time.thread_time()
    worker.start()
    while not done.is_set():
        pass
    python = time.thread_time() - start
    worker.join()
    return python / max(spent[0], 1e-9)


def stage_seconds(root: Path, device: str | None, formats, samples: int = 2,
                  repeats: int = 3) -> tuple[dict[str, float], dict[str, float]]:
    """Per-image CPU seconds of each stage alone, on the folder's first `samples` frames (the
    decoder and the model warmed up first), the median of `repeats` passes (on a shared machine
    the same work costs 20% more or less from one minute to the next; one pass made the
    efficiency as noisy): "decode", "model", "quantise" and one entry per format (its encoder,
    quantising excluded); and per format, beside_python() of its encoder on one frame. The
    model's is the lower of its cost on every core and on one thread: on a busy machine its
    threads, descheduled by other processes, spin waiting for each other, which would count as
    work the stage needs and flatter the efficiency."""
    with _headless(root, "stages", device):
        items = RT4KSRLoadImageFolder.stream_items("frames", "*.png", False)[:samples]
        load = lambda item: RT4KSRLoadImageFolder.stream_load(item, "frames", "*.png", False)  # noqa: E731
        images = [load(item)[0][0] for item in items]
        model = RT4KSRModelLoader().load("rt4ksr_x2.pth", True)[0]
        node = upscale_node.RT4KSRUpscale()
        outputs = [node.upscale(model, image, 0, "auto")[0][0].float().cpu().numpy() for image in images]
        per_image = {
            "decode": lambda: [load(item) for item in items],
            "model": lambda: [node.upscale(model, image, 0, "auto") for image in images],
            "quantise": lambda: [_quantise(o, 8) for o in outputs],
        }
        seconds = {stage: _cpu_seconds(run, repeats) / len(items) for stage, run in per_image.items()}
        with _threads(1):
            seconds["model"] = min(seconds["model"], _cpu_seconds(per_image["model"], repeats) / len(items))
        parallel = {}
        for format, level in formats:
            suffix = FORMATS[format]

            def encode(frames, suffix=suffix, level=level, format=format):
                for frame in frames:
                    _write(io.BytesIO(), Path("x" + suffix), suffix, Picture(frame, 8), 95, {}, level,
                           format == "webp lossless")

            label = _label(format, level)
            seconds[label] = _cpu_seconds(lambda: encode(outputs), repeats) / len(items) - seconds["quantise"]
            parallel[label] = beside_python(lambda: encode(outputs[:1]))
    return seconds, parallel


@dataclass
class Span:
    """Part of a run: images finished, wall and CPU seconds of this process, CPU seconds of every
    other process (None where unknown)."""

    images: int
    wall: float
    cpu: float
    others: float | None

    @classmethod
    def between(cls, start: "_Mark", end: "_Mark", images: int) -> "Span":
        others = None
        if start.machine is not None and end.machine is not None:
            others = max(0.0, end.machine - start.machine - (end.cpu - start.cpu))
        return cls(images, end.wall - start.wall, end.cpu - start.cpu, others)


@dataclass
class _Mark:
    wall: float
    cpu: float
    machine: float | None

    @classmethod
    def now(cls) -> "_Mark":
        return cls(time.perf_counter(), time.process_time(), machine_cpu_seconds())


@dataclass
class Run:
    whole: Span
    steady: Span | None  # None: too few images for a steady state
    first: float  # seconds to the first image finished
    engine: float  # seconds inside the engine's upscale()


def run_runner(root: Path, device: str | None, format: str = "png", compression: int = 4,
               jobs: int | None = None) -> Run:
    """The folder workflow, in-process: the whole run and its steady state, the images finished
    after the first `in_flight` and up to the last `in_flight` (None with fewer than three times
    that many)."""
    marks: list[_Mark] = []

    def on_event(event: dict) -> None:
        if event.get("event") == "item":
            marks.append(_Mark.now())

    with _headless(root, f"runner_{format}_{compression}".replace(" ", "_"), device):
        with _EngineClock() as clock:
            runner = Runner(folder_prompt(format, compression), registry.node_classes(), jobs=jobs,
                            on_event=on_event)
            start = _Mark.now()
            summary = runner.run()
            end = _Mark.now()
    if summary.failed:
        raise RuntimeError(f"runner failed: {summary.failures[:3]}")
    steady, fill = None, in_flight(runner.jobs, runner.prefetch)
    if len(marks) >= 3 * fill:
        steady = Span.between(marks[fill - 1], marks[-fill - 1], len(marks) - 2 * fill)
    return Run(Span.between(start, end, summary.done), steady, marks[0].wall - start.wall, clock.seconds)


def machine_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (every process, and time the hypervisor
    took away: steal), from Linux's /proc/stat; None elsewhere."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:9]]  # user .. steal
    except (OSError, ValueError):
        return None
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def run_cli_per_file(root: Path, device: str | None) -> tuple[float, int]:
    """(wall seconds, images written) calling `python -m rt4ksr_nodes.upscale` once per file, on
    the first CLI_FILES frames."""
    out = root / "cli_out"
    out.mkdir()
    frames = sorted((root / "input" / "frames").glob("*.png"))[:CLI_FILES]
    command = [sys.executable, "-m", "rt4ksr_nodes.upscale", "--scale", "2", "--output", str(out)]
    command += ["--device", device] if device else []
    start = time.perf_counter()
    for frame in frames:
        subprocess.run([*command, "--input", str(frame)], check=True, capture_output=True,
                       cwd=Path(__file__).resolve().parents[2], env=dict(os.environ))
    return time.perf_counter() - start, len(list(out.glob("*.png")))


@contextmanager
def _workdir(folder: Path | None) -> Iterator[Path]:
    if folder is None:
        with tempfile.TemporaryDirectory(prefix="rt4ksr_bench_runner_") as temporary:
            yield Path(temporary)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        yield folder


def _load() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def main(args: argparse.Namespace) -> None:
    jobs = args.jobs or default_jobs()
    images = args.images or 4 * in_flight(jobs)
    load_before = _load()
    with _workdir(args.workdir) as root:
        width, height = input_frames(root, images, args.size)
        stages, parallel = stage_seconds(root, args.device, args.formats)
        runs = [(format, level, run_runner(root, args.device, format, level, jobs)) for format, level in args.formats]
        if args.cli:
            cli_wall, cli_done = run_cli_per_file(root, args.device)
    device, cores = args.device or "auto", usable_cores()
    print(f"{images} synthetic {width}x{height} PNG frames, x2, 8 bits, device {device}, {cores} cores, "
          f"{jobs} writer threads; loadavg (1/5/15 min) before {load_before}, after {_load()}")
    common = stages["decode"] + stages["model"] + stages["quantise"]
    print("stage CPU seconds per image, alone: " + ", ".join(f"{k} {v:.3f}" for k, v in stages.items()))
    print("GIL: a Python thread beside each encoder got (per encoder CPU second; ~0 = the encoder holds "
          "the GIL): " + ", ".join(f"{k} {v:.2f}" for k, v in parallel.items()))
    # efficiency = (CPU the stages need / CPU the run took) x (CPU the run took / the cores' time):
    # the first factor is work wasted (threads waiting on each other), the second idle cores,
    # or cores taken by other processes on a busy machine.
    # Other processes' cores: what the machine's other work took meanwhile (on a quiet machine
    # ~0; 0.5 means half a core was not ours to fill), and the efficiency on the cores left.
    print("steady state: the images finished after the first and up to the last "
          f"{in_flight(jobs)} (what a run holds at once)")
    print("| format | encode CPU s | stages CPU s | ideal images/s | images/s | efficiency "
          "| = work used x cores used | other processes' cores | efficiency on the cores left "
          "| whole run images/s | whole run efficiency | first image s | engine busy |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for format, level, run in runs:
        label = _label(format, level)
        total = common + stages[label]
        ideal = cores / total
        print(f"| {label} | {stages[label]:.3f} | {total:.3f} | {ideal:.3f} "
              f"| {_steady(run.steady, total, cores)} | {run.whole.images / run.whole.wall:.3f} "
              f"| {run.whole.images / run.whole.wall / ideal:.2f} | {run.first:.2f} "
              f"| {100 * run.engine / run.whole.wall:.0f}% |")
    if args.cli:
        format, level, run = runs[0]
        estimated = run.engine / run.whole.images * cli_done / cli_wall
        rate = run.steady or run.whole
        print(f"quick-inference CLI per file: {cli_done} images, {cli_done / cli_wall:.3f} "
              f"images/s, device busy {100 * estimated:.0f}% (estimated); runner ({_label(format, level)}) "
              f"{(rate.images / rate.wall) / (cli_done / cli_wall):.2f}x faster")


def _steady(span: Span | None, total: float, cores: int) -> str:
    """images/s | **efficiency** | work used x cores used | others' cores | efficiency on the
    cores left, in the steady state."""
    if span is None:
        return "n/a | n/a | n/a | n/a | n/a"
    rate = span.images / span.wall
    taken = left = "n/a"
    if span.others is not None:
        taken = f"{span.others / span.wall:.2f}"
        left = f"{rate * total / max(cores - span.others / span.wall, 1e-9):.2f}"
    return (f"{rate:.3f} | **{rate * total / cores:.2f}** | {span.images * total / span.cpu:.2f} x "
            f"{span.cpu / (span.wall * cores):.2f} | {taken} | {left}")
