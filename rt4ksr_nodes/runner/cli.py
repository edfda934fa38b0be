"""python -m rt4ksr_nodes.run workflow.json: run a ComfyUI workflow without ComfyUI.

Exit codes: 0 every item done (or skipped by --resume), 1 some items failed or some outputs
could not run (the others completed), 2 invalid workflow or usage, 130 interrupted by Ctrl-C
(SIGINT) and 143 stopped by SIGTERM (rerun with --resume to finish).

Like ComfyUI's server, a workflow some of whose outputs fail validation runs the others (a muted
node that leaves a required input unconnected only loses the outputs after it); a node of an
unknown class, or no valid output at all, refuses the whole workflow.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from ..host import bridge
from ..files.paths import brief, remove_stale_temps, unwritable
from ..video.policy import AUTO, AUTO_LONGER_THAN, AUTO_SEGMENT, check_backend, seconds
from . import convert, core_nodes, formats, object_info, registry
from .execute import Runner, Summary, default_jobs
from .validate import input_spec, is_link, output_nodes, runnable_outputs, validate

OK, FAILED, INVALID = 0, 1, 2
STOPPED = {s: 128 + s for s in (signal.SIGINT, signal.SIGTERM)}  # 130, 143: as a shell reports them


class UsageError(ValueError):
    pass


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rt4ksr_nodes.run",
        description="Run a ComfyUI workflow headless: the editor's saved .json, its API export, "
        "a /prompt body, or a PNG saved by ComfyUI.",
    )
    p.add_argument("workflow", type=Path)
    p.add_argument("--input-dir", type=Path, default=Path("input"), help="images are read from here (default: ./input)")
    p.add_argument("--output-dir", type=Path, default=Path("output"), help="results are written here (default: ./output)")
    p.add_argument("--models-dir", type=Path, help="a ComfyUI-style models folder holding rt4ksr/ and upscale_models/ "
                   "(default: the pack's weights/ folder with the released models)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="change an input; NODE is a node id or title, e.g. --set \"Load Image.image=a.png\"")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--validate-only", action="store_true", help="check the workflow and stop")
    p.add_argument("--object-info", type=Path, metavar="FILE",
                   help="node definitions saved from a ComfyUI server's /object_info: lets the editor format "
                   "and --validate-only handle nodes this runner cannot run (running them still needs ComfyUI)")
    p.add_argument("--resume", action="store_true", help="skip items whose output already exists; keep a long "
                   "video's finished segments")
    p.add_argument("--segment", type=seconds, default=AUTO, metavar="SECONDS",
                   help="long videos: encode in segments of about SECONDS, joined at the end (0: one pass; "
                   f"default: {AUTO_SEGMENT:g} s segments for clips longer than {AUTO_LONGER_THAN:g} s, and "
                   "always with --backend ray)")
    p.add_argument("--jobs", type=int, help=f"image writer threads (default: one per CPU core, {default_jobs()} here)")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local (default): this process; ray: the folder batch's items, or a video's segments, on "
                   "Ray workers, one per GPU (else per CPU), inputs and outputs on a file system every node sees "
                   "(needs rt4ksr-nodes[ray])")
    p.add_argument("--ray-address", metavar="ADDR", help="the Ray cluster to use, as ray.init takes it, e.g. "
                   "auto or ray://head:10001 (default: a new local Ray on 127.0.0.1)")
    p.add_argument("--ray-workers", type=int, metavar="N", help="Ray workers (default: one per GPU, else per CPU)")
    p.add_argument("--json", action="store_true", help="one JSON event per line on stdout")
    p.add_argument("--no-metadata", action="store_true", help="do not embed the workflow in saved PNGs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = _Output(args.json)
    try:
        if args.jobs is not None and args.jobs < 1:
            raise UsageError("--jobs must be at least 1")
        problem = check_backend(args)
        if problem:
            raise UsageError(problem)
        _configure(args)
        workflow = formats.load(args.workflow)
        classes = registry.node_classes()
        described = {**(object_info.load(args.object_info) if args.object_info else {}), **classes}
        prompt = copy.deepcopy(workflow.prompt) if workflow.prompt else convert.to_api(workflow.editor, described)
        extra_pnginfo = copy.deepcopy(workflow.extra_pnginfo)
        for override in args.overrides:
            node_id, name, value = apply_override(prompt, described, override)
            graph = extra_pnginfo.get("workflow")
            cls = described.get(prompt[node_id].get("class_type"))
            if isinstance(graph, dict) and not convert.set_widget(graph, node_id, name, value, cls):
                # Saved PNGs must not carry an editor graph that differs from what ran.
                del extra_pnginfo["workflow"]
    except (formats.WorkflowError, object_info.ObjectInfoError, UsageError) as error:
        out.error(str(error))
        return INVALID
    # A run checks against what it can execute, so described-only nodes report needing ComfyUI.
    problems = validate(prompt, described if args.validate_only else classes)
    runnable = runnable_outputs(prompt, classes, problems)
    if problems and (args.validate_only or not runnable):
        out.problems(problems)
        return INVALID
    if problems:
        left_out = [o for o in output_nodes(prompt, classes) if o not in runnable]
        out.problems(problems, left_out=[(o, prompt[o]["class_type"]) for o in left_out])
    if args.validate_only:
        out.message(f"{args.workflow}: valid ({len(prompt)} nodes)", {"event": "valid", "nodes": len(prompt)})
        return OK
    try:
        _check_writable(bridge.directory("output"))
    except UsageError as error:
        out.error(str(error))
        return INVALID
    removed = len(remove_stale_temps(bridge.directory("output")))
    if removed:
        out.message(f"removed {removed} temporary files left by a killed run",
                    {"event": "cleaned", "temporary_files": removed})
    core_nodes.clear_previews()
    options = dict(outputs=runnable, extra_pnginfo=extra_pnginfo, resume=args.resume, jobs=args.jobs,
                   on_event=out.event)
    if args.backend == "ray":
        from .ray_backend import RayRunner

        runner = RayRunner(prompt, classes, address=args.ray_address, workers=args.ray_workers, **options)
    else:
        runner = Runner(prompt, classes, **options)
    with _interrupt_handler(out, runner) as handler:
        summary = runner.run()
    out.close()
    code = _exit_code(summary, out, handler.signal)
    return FAILED if problems and code == OK else code


def run() -> None:
    """The command: exit with main()'s code. A stopped run exits at once, its results written
    and its output flushed: the interpreter's teardown of torch alone takes a second or two,
    which a second Ctrl-C or a scheduler's grace period should not wait for."""
    code = main()
    if code in STOPPED.values():
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


def _check_writable(folder: Path) -> None:
    """Refuse, before any work, an output folder that cannot hold the results (a usage error,
    not a failure of every item after its compute), then create it."""
    problem = unwritable(folder)
    if problem:
        raise UsageError(f"--output-dir: {problem}")
    folder.mkdir(parents=True, exist_ok=True)


def _configure(args) -> None:
    if args.output_dir.exists() and not args.output_dir.is_dir():
        raise UsageError(f"--output-dir {args.output_dir} is a file, not a folder")
    bridge.headless.input_dir = args.input_dir.resolve()
    bridge.headless.output_dir = args.output_dir.resolve()
    if args.models_dir:
        bridge.headless.models_dir = args.models_dir.resolve()
    if args.device:
        import torch

        try:
            device = torch.device(args.device)
        except RuntimeError as error:
            raise UsageError(f"--device {args.device}: {error}") from error
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {args.device}: this torch sees no CUDA GPU")
        bridge.headless.device = device
    bridge.headless.metadata = not args.no_metadata
    segments = {"segment": args.segment, "resume": args.resume}
    if args.run_segments is not None:
        segments["run_segments"] = args.run_segments
    bridge.headless.video_segments = segments


def find_node(prompt: dict, reference: str) -> str:
    """A node id from an id or a title (the editor's, or the class's display name)."""
    if reference in prompt:
        return reference
    titled = [i for i, n in prompt.items()
              if ((n.get("_meta") or {}).get("title") or registry.display_name(n.get("class_type", ""))) == reference]
    if len(titled) == 1:
        return titled[0]
    if titled:
        raise UsageError(f"--set: {len(titled)} nodes are titled {brief(reference)} ({', '.join(titled)}); use an id")
    raise UsageError(f"--set: no node with id or title {brief(reference)}")


def apply_override(prompt: dict, classes: dict, override: str) -> tuple[str, str, object]:
    """Set one NODE.INPUT=VALUE in `prompt`; returns (node id, input name, value)."""
    target, equals, text = override.partition("=")
    reference, dot, name = target.rpartition(".")
    if not equals or not dot or not name:
        raise UsageError(f"--set {brief(override)}: expected NODE.INPUT=VALUE")
    node_id = find_node(prompt, reference)
    cls = classes.get(prompt[node_id].get("class_type"))
    spec = input_spec(cls.INPUT_TYPES()) if cls else {}
    if cls and name not in spec:
        raise UsageError(f"--set: node {node_id} ({prompt[node_id]['class_type']}) has no input {brief(name)}; "
                         f"it has {', '.join(spec)}")
    inputs = prompt[node_id].setdefault("inputs", {})
    if is_link(inputs.get(name)):
        raise UsageError(f"--set: input {name!r} of node {node_id} ({prompt[node_id]['class_type']}) is "
                         f"connected to node {inputs[name][0]}; --set changes values, not links")
    kind = spec[name][1] if name in spec else "STRING"
    value = inputs[name] = parse_value(text, kind)
    return node_id, name, value


def parse_value(text: str, kind) -> object:
    """The command-line text as the input's type: booleans and whole numbers must read as
    such (a typo is a usage error, not a silent True or a truncated number); a choice from a
    list takes the choice's own type. Range, NaN and list membership are left to validation."""
    if kind == "BOOLEAN":
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise UsageError(f"--set: {brief(text)} is not a boolean (true/false, yes/no, on/off, 1/0)")
    if kind == "INT":
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is not None and number.is_integer():  # 90.0, 1e3
            return int(number)
        raise UsageError(f"--set: {brief(text)} is not a whole number")
    if kind == "FLOAT":
        try:
            return float(text)
        except ValueError:
            raise UsageError(f"--set: {brief(text)} is not a number") from None
    if isinstance(kind, (list, tuple)):
        return next((choice for choice in kind if str(choice) == text), text)
    return text


def _exit_code(summary: Summary, out, stopped_by=None) -> int:
    if summary.interrupted:
        hint = "Interrupted: finished items are complete. Run the same command with --resume to do the rest."
        out.message(hint, {"event": "interrupted", "message": hint})
        return STOPPED.get(stopped_by, STOPPED[signal.SIGINT])
    return FAILED if summary.failed else OK


class _interrupt_handler:
    """Ctrl-C or SIGTERM (how schedulers and containers stop a job), counted together. First:
    stop computing; the images already computed are still written. Second: stop at once, the
    writes not started yet dropped (a running write finishes: no half-written file). Every item
    reported is complete on disk, and every complete item is reported. A third is a plain
    KeyboardInterrupt, for whatever still does not stop."""

    def __init__(self, out, runner):
        self.out, self.runner = out, runner
        self.signal, self.count, self.previous = None, 0, {}

    def __enter__(self):
        bridge.headless.interrupt.clear()
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in STOPPED}
        return self

    def _handle(self, signum, frame):
        self.signal = self.signal or signum
        self.count += 1
        if self.count == 1:
            bridge.headless.interrupt.set()
            self.out.message("Stopping: finished images are still written (Ctrl-C again to drop those not "
                             "started)...", {"event": "stopping"})
        elif self.count == 2:
            self.out.message("Stopping now: writes not started are dropped...", {"event": "stopping_now"})
            if self.runner.stop_now():
                raise KeyboardInterrupt  # a node is running: this stops it
        else:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)


class _Output:
    """Human output (tqdm bars and messages on stderr) or JSON events on stdout."""

    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.overall = self.item = None
        self.bars = not as_json and sys.stderr.isatty()
        if self.bars:
            bridge.headless.progress_factory = self._item_progress

    def _write_json(self, event: dict) -> None:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    def message(self, text: str, event: dict) -> None:
        if self.as_json:
            self._write_json(event)
        else:
            self._print(text)

    def _print(self, text: str) -> None:
        if self.overall is not None:
            self.overall.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def error(self, text: str) -> None:
        self.message(f"error: {text}", {"event": "error", "message": text})

    def problems(self, problems, left_out: list[tuple[str, str]] | None = None) -> None:
        """Validation problems; with `left_out` (output node ids and classes), the outputs that
        will not run because of them, the others running."""
        if self.as_json:
            for p in problems:
                self._write_json({"event": "problem", "node": p.node_id, "class_type": p.class_type,
                                  "input": p.input_name, "kind": p.kind, "message": p.message})
            if left_out:
                self._write_json({"event": "outputs_left_out", "nodes": [node for node, _ in left_out]})
            return
        count = f"{len(problems)} problem{'s' * (len(problems) != 1)}"
        if left_out:
            names = ", ".join(f"{node} ({class_type})" for node, class_type in left_out)
            self._print(f"Some outputs cannot run ({count}); left out: {names}. The others run, as in ComfyUI:")
        else:
            self._print(f"The workflow is not valid ({count}):")
        for p in problems:
            self._print(f"  - {p}")

    def event(self, event: dict) -> None:
        if self.as_json:
            self._write_json(event)
            return
        kind = event["event"]
        if kind == "start" and self.bars:
            from tqdm import tqdm

            self.overall = tqdm(total=event["total"], unit="img", desc="overall", file=sys.stderr, position=0)
        elif kind == "warning":
            self._print(f"warning: {event['message']}")
        elif kind == "item":
            if event["status"] == "failed":
                self._print(f"failed: {event['error']}")
            if self.overall is not None:
                self.overall.update(1)
        elif kind == "summary":
            self.close()
            self._print(
                f"done {event['done']}, skipped {event['skipped']}, failed {event['failed']} of {event['total']} "
                f"in {event['seconds']:.1f} s ({event['images_per_second']:.2f} images/s)"
            )

    def _item_progress(self):
        from tqdm import tqdm

        if self.item is not None:
            self.item.close()
        self.item = tqdm(total=1, unit="tile", desc="current", file=sys.stderr, position=1, leave=False)

        def update(done: int, total: int) -> None:
            self.item.total = total
            self.item.n = done
            self.item.refresh()

        return update

    def close(self) -> None:
        for bar in (self.item, self.overall):
            if bar is not None:
                bar.close()
        self.item = self.overall = None
