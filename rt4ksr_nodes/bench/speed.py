"""The speed benchmark behind `python -m rt4ksr_nodes.bench` (subcommand `all`, the default).

Cases: x2 1920x1080 -> 3840x2160 and x3 1280x720 -> 3840x2160. Forms: the train-time network
("train"), the fused network ("fused"), both run plainly (NCHW, eager), with --upstream DIR the
paper's own code ("upstream": its train-time network as released, run as its test script runs
it, which also computes the unused high-frequency branch), and the engine's default
path ("engine": the engine's network (engine/network.py: channels_last, head folded with the
unshuffle, one-kernel LayerNorm, conv + GELU in one call, pixel shuffle folded into the write),
automatic tiles, CUDA graphs and compile policy as configured).

model: the network on a frame already on the device in the compute dtype, NTIRE protocol:
    warm-up runs, then timed repetitions (CUDA events on a GPU, perf_counter on the CPU).
    engine: the engine's tile runner, output is its clamped H x W x 3 canvas.
e2e: an 8-bit H x W x 3 frame in host memory -> an 8-bit frame in host memory. Plain forms: one
    frame at a time. engine: upscale_frames() over a stream of frames (pinned buffers, copies
    overlapped with compute on CUDA); per-frame times are the intervals between frames handed
    out, frames/s is frames over the whole stream's time.
Peak memory: CUDA: max_memory_allocated over warm-up and repetitions, minus what was allocated
    before. CPU: peak resident set (VmHWM, reset through /proc/self/clear_refs after returning
    free heap to the OS) minus the resident set before; "n/a" where /proc does not allow it.
Checks: every output against the fused network's fp32 output computed on the CPU in the same
run: PSNR (dB, on [0, 1] values) and the largest absolute difference (in 8-bit levels for e2e).
The input is a fixed synthetic frame: smooth random colour fields plus fine noise.
Order: every plain-form row, in every precision, before the engine's first use in the process:
the engine changes process-wide state (on the CPU the glibc allocator policy, cpu.py), which a
user running the bare model would not have. The environment records whether the policy was in
force for the plain rows. With --json the report is rewritten after every row, so a run cut
short keeps the rows it finished.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.accel import COMPILE_AFTER, GRAPH_AFTER, compile_policy
from ..engine import cpu
from ..engine.device import resolve_device, resolve_dtype
from ..engine.inference import make_tiler, network_input
from ..engine.prepare import accelerated
from ..engine.stream import upscale_frames
from ..model import load_model

CASES = ((2, 1920, 1080), (3, 1280, 720))
FORMS = ("upstream", "train", "fused", "engine")
MODES = ("model", "e2e")


def synthetic_frame(height: int, width: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(height * width)
    coarse = torch.rand(1, 3, height // 16 + 1, width // 16 + 1, generator=generator)
    smooth = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    noise = 0.03 * torch.randn(1, 3, height, width, generator=generator)
    pixels = (smooth + noise).clamp(0, 1)[0].permute(1, 2, 0)
    return (pixels * 255).round().to(torch.uint8).numpy()


def upstream_network(code: Path, checkpoint: Path, scale: int) -> torch.nn.Module:
    """The paper's train-time network from the `code` folder of a checkout of
    github.com/eduardzamfir/RT4KSR (which needs torchvision), with the released weights,
    built with the configuration the released checkpoints were trained with."""
    if not (code / "model" / "arch.py").is_file():
        raise SystemExit(
            f"--upstream: {code} has no model/arch.py; give the code/ folder of a checkout of "
            "github.com/eduardzamfir/RT4KSR"
        )
    loaded = sys.modules.get("model")
    here = (code / "model").resolve()
    if loaded is not None and Path(getattr(loaded, "__file__", None) or "/").resolve().parent != here:
        raise SystemExit(f"--upstream: another package named 'model' is already imported ({loaded})")
    sys.path.insert(0, str(code))  # its modules import each other as model.*
    try:
        arch = importlib.import_module("model.arch")
        activation = importlib.import_module("model.modules").activation
        network = arch.RT4KSR_Rep
    except AttributeError as error:
        raise SystemExit(
            f"--upstream: {code} is not the code this benchmark knows ({error}); use a current "
            "checkout of github.com/eduardzamfir/RT4KSR"
        ) from error
    except Exception as error:
        raise SystemExit(
            f"--upstream: cannot import the paper's code from {code}: {type(error).__name__}: "
            f"{error} (it needs torch and torchvision)"
        ) from error
    finally:
        sys.path.remove(str(code))
    net = network(
        num_channels=3, num_feats=24, num_blocks=4, upscale=scale, act=activation("gelu"),
        eca_gamma=0, is_train=True, forget=False, layernorm=True, residual=False,
    )
    # The release file itself (SHA-256 checked on install), tensors only: weights_only.
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    net.load_state_dict({key.removeprefix("module."): value for key, value in state.items()})
    return net.eval().requires_grad_(False)


def _loadavg() -> str:
    try:
        with open("/proc/loadavg", encoding="ascii") as handle:
            return " ".join(handle.read().split()[:3])
    except OSError:
        return "n/a"


class PeakMemory:
    """Peak memory a block of work adds, in bytes (None when it cannot be measured)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bytes: int | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        cpu.release_free_memory()
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
                handle.write("5")  # resets VmHWM to the current resident set
            self.base = _proc_status("VmRSS")
        except OSError:
            self.base = None
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.base
        elif self.base is not None:
            self.bytes = _proc_status("VmHWM") - self.base


def _proc_status(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


def _time_model(run, device: torch.device, warmup: int, repeat: int) -> dict:
    """Warm-up, then `repeat` timed calls; the first call's time is kept (compile, capture)."""
    cuda = device.type == "cuda"
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        output = run()
        if cuda:
            torch.cuda.synchronize(device)
        first = time.perf_counter() - start
        for _ in range(warmup - 1):
            run()
        times = []
        for _ in range(repeat):
            if cuda:
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                run()
                end.record()
                end.synchronize()
                times.append(begin.elapsed_time(end) / 1000)
            else:
                begin = time.perf_counter()
                run()
                times.append(time.perf_counter() - begin)
    return {"times": times, "first_s": first, "peak_bytes": memory.bytes, "output": output}


def _time_stream(frames_out, device: torch.device) -> dict:
    """Consume an iterator of output frames. Per-frame times: the intervals between frames
    handed out, without the first (pipeline fill) and the last (pipeline drain)."""
    with PeakMemory(device) as memory:
        start = last = time.perf_counter()
        times, output = [], None
        for output in frames_out:
            now = time.perf_counter()
            times.append(now - last)
            last = now
        total = last - start
    return {"times": times[1:-1], "total_s": total, "peak_bytes": memory.bytes, "output": output}


def _plain_model(net, frame: np.ndarray, device, dtype):
    # contiguous(): plainly NCHW, as the network is written (a permuted frame would be
    # channels_last in disguise).
    x = torch.from_numpy(frame).permute(2, 0, 1).unsqueeze(0).contiguous().float().div(255)
    x = x.to(device=device, dtype=dtype)

    def run():
        return net(x)

    return run


def _plain_e2e(net, frame: np.ndarray, device, dtype):
    def run():
        x = torch.from_numpy(frame).to(device).permute(2, 0, 1).unsqueeze(0).contiguous()
        out = net(x.float().div(255).to(dtype)).clamp(0, 1)
        return (out[0].permute(1, 2, 0).float() * 255).round().to(torch.uint8).cpu()

    return run


def _engine_model(model, frame: np.ndarray, device, dtype):
    height, width = frame.shape[:2]
    tiler = make_tiler(model, (height, width), dtype, device)
    x = network_input(torch.from_numpy(frame).permute(2, 0, 1).unsqueeze(0).float().div(255),
                      device, dtype)

    def run():
        return tiler.run(x)

    return run


def _as_hwc(output: torch.Tensor) -> torch.Tensor:
    """A model-only output as H x W x 3 float32 on the CPU, clamped."""
    if output.dim() == 4:
        output = output[0].permute(1, 2, 0)
    return output.float().clamp(0, 1).cpu()


def _compare(output: torch.Tensor, reference: torch.Tensor, levels: bool) -> tuple[float, float]:
    """(PSNR in dB on [0, 1], largest absolute difference; in 8-bit levels when `levels`)."""
    difference = output.double() - reference.double()
    if levels:
        difference = difference / 255
    mse = difference.square().mean().item()
    psnr = math.inf if mse == 0 else 10 * math.log10(1 / mse)
    largest = difference.abs().max().item()
    return psnr, largest * 255 if levels else largest


def _row(case, form, device, precision, mode, result, psnr, largest) -> dict:
    times = sorted(result["times"])
    median = statistics.median(times)
    fps = (len(times) + 2) / result["total_s"] if "total_s" in result else 1 / median
    return {
        "case": case,
        "form": form,
        "device": device.type,
        "precision": precision,
        "mode": mode,
        "median_ms": 1000 * median,
        "min_ms": 1000 * times[0],
        "max_ms": 1000 * times[-1],
        "fps": fps,
        "peak_mib": None if result["peak_bytes"] is None else result["peak_bytes"] / 2**20,
        "first_call_ms": 1000 * result["first_s"] if "first_s" in result else None,
        "repetitions": len(times),
        "compile_policy": compile_policy(),
        "compiled": result["compiled"],
        "psnr_db": psnr,
        "max_abs_diff": largest,
    }


def run_all(args) -> dict:
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    precisions = args.precision or (["fp16", "fp32"] if cuda else ["fp32"])
    repeat = args.repeat or (100 if cuda else 10)
    train_repeat = args.train_repeat or (20 if cuda else 3)
    stream_frames = max(args.frames or (200 if cuda else 8), 3)
    report = {
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": torch.cuda.get_device_name(device) if cuda else platform.processor()
            or platform.machine(),
            "cpu_threads": torch.get_num_threads(),
            "compile_policy": compile_policy(),
            "loadavg_before": _loadavg(),
            "warmup": args.warmup,
            "repeat": repeat,
            "train_repeat": train_repeat,
            "stream_frames": stream_frames,
            "upstream": None if args.upstream is None else str(args.upstream.resolve()),
        },
        "rows": [],
    }
    weights = Path(args.weights)
    forms = sorted(set(args.forms or _default_forms(args)), key=FORMS.index)
    if "upstream" in forms and args.upstream is None:
        raise SystemExit("the upstream form needs --upstream DIR (the paper's code folder)")
    cases = []
    for scale, width, height in CASES:
        if args.scale and scale not in args.scale:
            continue
        frame = synthetic_frame(height, width)
        fused = load_model(weights / f"rt4ksr_x{scale}.pth")
        plain = {"train": load_model(weights / f"rt4ksr_x{scale}.pth", reparameterize=False),
                 "fused": fused}
        if "upstream" in forms:
            plain["upstream"] = upstream_network(
                args.upstream, weights / f"rt4ksr_x{scale}.pth", scale
            )
        with torch.inference_mode():
            reference = _as_hwc(_plain_model(fused, frame, torch.device("cpu"), torch.float32)())
        cases.append((f"x{scale} {width}x{height}", frame, plain, reference))
    environment = report["environment"]
    # Forms outermost (see the module's docstring): plain rows before any engine row.
    for form in forms:
        if form == "engine" and not cuda and forms[0] != "engine":
            environment["cpu_malloc_tuned_for_plain_forms"] = cpu.tuned()
        for precision in precisions:
            dtype = resolve_dtype(precision, device)
            for case, frame, plain, reference in cases:
                for mode in args.modes:
                    result = _measure(
                        form, mode, plain, frame, device, dtype,
                        repeat=repeat if form in ("fused", "engine") else train_repeat,
                        warmup=args.warmup, stream_frames=stream_frames,
                        reference=(reference * 255).round().to(torch.uint8)
                        if mode == "e2e" else reference,
                    )
                    row = _row(case, form, device, precision, mode, *result)
                    report["rows"].append(row)
                    print(_format(row), flush=True)
                    _save(report, args.json)
    if not cuda and "engine" in forms:
        environment["cpu_malloc_tuned_for_engine"] = cpu.tuned()
    elif not cuda:
        environment["cpu_malloc_tuned_for_plain_forms"] = cpu.tuned()
    _save(report, args.json)
    return report


def _save(report: dict, path: Path | None) -> None:
    """Write the report as it stands, atomically: a run killed mid-write leaves the last one."""
    report["environment"]["loadavg_after"] = _loadavg()
    _speedups(report["rows"])
    if path is None:
        return
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n", encoding="utf-8")
    os.replace(partial, path)


def _default_forms(args) -> list[str]:
    return [form for form in FORMS if form != "upstream" or args.upstream is not None]


def _measure(form, mode, plain, frame, device, dtype, *, repeat, warmup, stream_frames,
             reference):
    # The engine warms up past its thresholds, so graphs are captured and (as the compile
    # policy says) the network compiled before timing. With RT4KSR_COMPILE=always the first
    # call is the compiling one, so "first" shows the compile time.
    # One stream around warm-up and timing keeps the graphs; waiting for a background compile
    # (RT4KSR_COMPILE=auto) times the compiled kernels, not a mix.
    engine_warmup = max(warmup, GRAPH_AFTER, COMPILE_AFTER) + 1
    fused = plain["fused"]
    with torch.inference_mode(), contextlib.ExitStack() as stack:
        if form == "engine":
            runner = stack.enter_context(accelerated(fused, device, dtype).stream())
        if form == "engine" and mode == "e2e":
            frames = [frame] * stream_frames
            for _ in upscale_frames(fused, [frame] * engine_warmup, precision=dtype, device=device):
                pass
            runner.wait_for_compiler()
            result = _time_stream(upscale_frames(fused, frames, precision=dtype, device=device),
                                  device)
        elif form == "engine":
            run = _settled(_engine_model(fused, frame, device, dtype), runner, engine_warmup)
            result = _time_model(run, device, engine_warmup, repeat)
        else:
            # A copy: the engine's rows must start from the untouched fp32 model.
            net = copy.deepcopy(plain[form]).to(device=device, dtype=dtype)
            build = _plain_e2e if mode == "e2e" else _plain_model
            result = _time_model(build(net, frame, device, dtype), device, warmup, repeat)
    output = result.pop("output")
    # Only the engine's rows look at its runner: preparing a copy for a plain form would apply
    # the engine's CPU allocator policy to the plain rows measured after it.
    result["compiled"] = form == "engine" and accelerated(fused, device, dtype).compiled
    if mode == "e2e":
        psnr, largest = _compare(output, reference, levels=True)
    else:
        psnr, largest = _compare(_as_hwc(output), reference, levels=False)
    return result, psnr, largest


def _settled(run, runner, warmup: int):
    """`run`, which on its last warm-up call waits for a background compile and runs once
    more (capturing the compiled kernels), so that no timed call compiles or captures."""
    calls = 0

    def settled():
        nonlocal calls
        calls += 1
        output = run()
        if calls == warmup:
            runner.wait_for_compiler()
            output = run()
        return output

    return settled


def _speedups(rows: list[dict]) -> None:
    """Each row's speed against the train-time form and the paper's code in the same case,
    precision and mode."""
    for row in rows:
        for form in ("train", "upstream"):
            base = next(
                (other for other in rows if other["form"] == form and all(
                    other[key] == row[key] for key in ("case", "device", "precision", "mode"))),
                None,
            )
            speedup = None if base is None else base["median_ms"] / row["median_ms"]
            row[f"speedup_vs_{form}"] = speedup


HEADER = (
    f"{'case':15s} {'form':8s} {'dev':4s} {'prec':4s} {'mode':5s} {'compile':7s} {'median':>9s} "
    f"{'min':>9s} {'max':>9s} {'fps':>7s} {'peakMiB':>8s} {'first':>9s} {'PSNR':>6s} "
    f"{'max|d|':>8s}"
)


def _format(row: dict) -> str:
    def number(value, width, digits=1):
        return f"{'n/a':>{width}s}" if value is None else f"{value:{width}.{digits}f}"

    largest = row["max_abs_diff"]
    largest = f"{largest:8.0f}" if row["mode"] == "e2e" else f"{largest:8.1e}"
    form = row["form"] + ("+c" if row["compiled"] else "")
    return (
        f"{row['case']:15s} {form:8s} {row['device']:4s} {row['precision']:4s} "
        f"{row['mode']:5s} {row['compile_policy']:7s} {row['median_ms']:9.2f} "
        f"{row['min_ms']:9.2f} {row['max_ms']:9.2f} {row['fps']:7.1f} "
        f"{number(row['peak_mib'], 8)} {number(row['first_call_ms'], 9)} "
        f"{row['psnr_db']:6.1f} {largest}"
    )


def _environment_line(environment: dict) -> str:
    line = (
        f"device {environment['device']} ({environment['cpu_threads']} CPU threads), torch "
        f"{environment['torch']}, compile policy {environment['compile_policy']}, loadavg "
        f"{environment['loadavg_before']} -> {environment.get('loadavg_after', 'n/a')}"
    )
    policy = []
    for key, forms in (("cpu_malloc_tuned_for_plain_forms", "plain forms"),
                       ("cpu_malloc_tuned_for_engine", "engine")):
        if environment.get(key) is not None:
            policy.append(f"{'on' if environment[key] else 'off'} for the {forms}")
    return line + (f"; CPU allocator policy {', '.join(policy)}" if policy else "")


def table(reports: list[dict]) -> str:
    """One table from one or more reports (e.g. one per compile policy): each report's
    environment on a line of its own, then all rows, each with its compile policy."""
    rows = [row for report in reports for row in report["rows"]]
    _speedups(rows)  # across reports: compiled engine rows against the other run's train rows
    bases = ["train"] + (["upstream"] if any(row["form"] == "upstream" for row in rows) else [])
    lines = [_environment_line(report["environment"]) for report in reports]
    lines += [
        "plain forms (upstream = the paper's code, train, fused) run before the engine in each "
        "process; times in ms (model: NTIRE protocol; e2e: uint8 host -> uint8 host), first = "
        "first call incl. planning/capture/compile; +c = compiled; PSNR/max|d| vs fused fp32 on "
        "the CPU (max|d| in 8-bit levels for e2e)",
        HEADER + "".join(f" {'vs ' + base:>11s}" for base in bases),
    ]
    for row in rows:
        speedups = (row.get(f"speedup_vs_{base}") for base in bases)
        lines.append(_format(row) + "".join(
            f" {speedup:10.1f}x" if speedup else f" {'':11s}" for speedup in speedups))
    return "\n".join(lines)


def add_arguments(parser, weights_default: str) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--precision", nargs="+", choices=("fp32", "fp16", "bf16"),
                        help="default: fp16 and fp32 on CUDA, fp32 elsewhere")
    parser.add_argument("--forms", nargs="+", choices=FORMS,
                        help="default: all; upstream only with --upstream")
    parser.add_argument("--upstream", type=Path, metavar="DIR",
                        help="the code/ folder of a checkout of github.com/eduardzamfir/RT4KSR "
                             "(needs torchvision): adds the paper's own code as a baseline")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--scale", type=int, nargs="+", choices=(2, 3))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=0, help="default 100 on CUDA, 10 on CPU")
    parser.add_argument("--train-repeat", type=int, default=0,
                        help="repetitions of the slow train-time forms (train, upstream); "
                             "default 20 CUDA, 3 CPU")
    parser.add_argument("--frames", type=int, default=0,
                        help="frames in the e2e stream; default 200 on CUDA, 8 on CPU")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--table-from", type=Path, nargs="+", metavar="JSON",
                        help="measure nothing: print one table from earlier --json reports")
    parser.add_argument("--weights", default=weights_default, help="folder with rt4ksr_x2/x3.pth")


def load_reports(paths: list[Path]) -> list[dict]:
    reports = [json.loads(path.read_text(encoding="utf-8")) for path in paths]
    for report in reports:  # rows written before rows carried their compile policy
        for row in report["rows"]:
            row.setdefault("compile_policy", report["environment"]["compile_policy"])
    return reports


def main(args) -> None:
    if args.table_from:
        print(table(load_reports(args.table_from)))
        return
    report = run_all(args)
    print()
    print(table([report]))
    if args.json:
        print(f"wrote {args.json}")
