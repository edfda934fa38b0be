"""--backend ray: the folder batch of a workflow mapped over Ray Data workers.

The driver does what the local runner does before its first item, with the same code: the
nodes that run once (and their outputs), the folder listing and the --resume check. The items
left go through `ray.data.from_items(...).map_batches(_Worker, ...)`: each worker (one per GPU,
else one per CPU) builds the graph's per-item part once, model included, then decodes, runs
and writes one item per call, itself, through the same atomic writes. Only small rows (path,
status, error, outputs, node, seconds) come back; the driver turns them into the local
runner's item events, summary and progress.

Ray Data restarts a worker that dies and runs its unfinished items again elsewhere. A file
under its final name is always complete (temporary file + rename), and an item whose output
appeared during this run (an attempt that died before reporting) is reported done without
being computed again, so nothing is written half or twice.

On an interrupt no new item starts (a gate actor turns them away) and the driver waits for the
items already being computed to be written and reported, so the summary matches the disk and
nothing is written after the run returns.

Inputs, outputs and models are read and written by the workers at the driver's paths: they
must be on a file system every node sees at the same path.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..cluster import connected, die_once, require_ray, slots
from ..host import bridge
from .execute import Interrupted, Runner, Summary, _check_interrupt, _Writers, write_error
from .validate import is_link, needed_nodes

# Test-only: "N:MARKER" makes one worker process exit after writing its N-th item, before
# reporting it, once (MARKER is created first): a worker killed at the worst moment.
KILL_HOOK = "RT4KSR_TEST_KILL_WORKER"


class RayRunner(Runner):
    """Runner whose streamed items run on a Ray cluster: `address` as ray.init takes it (None:
    the cluster this process is connected to, else a new local one on 127.0.0.1); `workers`:
    how many (default one per GPU of the cluster, else one per CPU)."""

    def __init__(self, prompt: dict, classes: dict, *, address: str | None = None, workers: int | None = None,
                 **options):
        super().__init__(prompt, classes, **options)
        self.address, self.workers = address, workers
        self.requested_jobs = options.get("jobs")  # the driver's default would not fit a worker

    def stop_now(self) -> bool:
        super().stop_now()
        return True  # waiting on the cluster: only a KeyboardInterrupt ends the wait at once

    def _run_stream(self, source: str, after: set[str], summary: Summary) -> None:
        ray = require_ray(self.address)
        static_nodes = [n for n in self.order if n != source and n not in after]
        self.sinks = self._sinks(after)
        opened = self._open_stream(source, self._driver_nodes(source, static_nodes), summary)
        if opened is None:
            return
        static, arguments, items = opened
        rows = []
        for item in items:
            complete = self._complete(item, source, static)
            existing = None if self.resume else self._existing(item, source, static)
            if self.resume and complete:
                self._finish(summary, item, None, [], skipped=True)
            elif existing:
                self._finish(summary, item, f"{item}: {existing}", [])
            else:
                rows.append({"item": item, "existed": complete})
        if not rows:
            return
        downstream = [n for n in self.order if n in after]
        needed = needed_nodes(self.prompt, downstream)
        job = {
            "prompt": self.prompt, "outputs": self.outputs, "extra_pnginfo": self.extra_pnginfo,
            "source": source,
            "arguments": arguments, "sinks": self.sinks, "downstream": downstream,
            # What the items need of the run-once part (the model), without its outputs: written once, above.
            "static": [n for n in static_nodes if n in needed and not getattr(self._class(n), "OUTPUT_NODE", False)],
            "settings": _settings(), "kill": os.environ.get(KILL_HOOK),
        }
        with connected(ray, self.address):
            self._map(ray, rows, job, summary)

    def _driver_nodes(self, source: str, static_nodes: list[str]) -> list[str]:
        """The run-once nodes the driver needs: those the folder listing and the --resume check
        read, and the run-once outputs (written once, here) with what they depend on. The
        model loader is left to the workers."""
        seeds = [source] + [n for n in static_nodes if getattr(self._class(n), "OUTPUT_NODE", False)]
        for sink in self.sinks:
            seeds += [str(v[0]) for v in self.prompt[sink]["inputs"].values() if is_link(v)]
        wanted = needed_nodes(self.prompt, [s for s in seeds if s == source or s in static_nodes])
        return [n for n in static_nodes if n in wanted]

    def _map(self, ray, rows: list[dict], job: dict, summary: Summary) -> None:
        from ray.data import DataContext

        context = DataContext.get_current()
        context.enable_progress_bars = False  # the runner's own bar (or JSON events) reports progress
        count, resources = slots(ray)
        gpus = "num_gpus" in resources
        pool = ray.data.ActorPoolStrategy(size=self.workers or count)
        gate = _gate(ray)
        # Writer threads per worker: as asked, else one on a CPU worker (it holds one CPU), else
        # the default of the GPU worker's own machine.
        job = {**job, "gate": gate, "jobs": self.requested_jobs or (None if gpus else 1)}
        # One item per block and per call: items spread evenly and a lost worker loses one item each.
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            _Worker, fn_constructor_kwargs={"job": job}, batch_size=1, compute=pool, **resources)
        reported = set()
        results = iter(dataset.iter_rows())
        try:
            for row in results:
                self._report(row, reported, summary)
                _check_interrupt()
        except (KeyboardInterrupt, Interrupted):
            # No item starts now; those being computed are written and reported before the run
            # returns (a second Ctrl-C stops at once). An item turned away after the close was a
            # retry: the attempt that started it died.
            pending = ray.get(gate.close.remote()) - reported
            while pending and (row := next(results, None)) is not None:
                self._report(row, reported, summary)
                pending.discard(str(row["item"]))
            raise
        except Exception as error:  # noqa: BLE001 - the cluster failed: the run stops, as ReaderDied does locally
            self._finish(summary, "workflow", f"ray: {type(error).__name__}: {error}", [])
        finally:
            results.close()  # on an interrupt: stops the execution and its workers now

    def _report(self, row: dict, reported: set, summary: Summary) -> None:
        item = str(row["item"])
        if row["stopped"] or item in reported:  # turned away, or a retried batch reporting again
            return
        reported.add(item)
        details = {"node": str(row["node"]), "seconds": round(float(row["seconds"]), 4)}
        if row["recovered"]:
            details["recovered"] = True  # its output was written by an attempt that died
        self._finish(summary, item, row["error"] or None, json.loads(row["outputs"]), **details)


def _gate(ray):
    """An actor that lets items start until the run is interrupted, and says which started.
    It lives on the driver's node: losing a worker node must not lose it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)

    @ray.remote(num_cpus=0, scheduling_strategy=here)
    class Gate:
        def __init__(self):
            self.open, self.started = True, set()

        def enter(self, item: str) -> bool:
            if self.open:
                self.started.add(item)
            return self.open

        def close(self) -> set[str]:
            self.open = False
            return self.started

    return Gate.remote()


def _settings() -> dict:
    """The driver's headless settings, which the workers take over (paths resolved here)."""
    headless = bridge.headless
    # A long clip's segments run where its item runs: --segment and --resume go along, the Ray
    # executor (the driver's) does not.
    segments = {key: value for key, value in headless.video_segments.items() if key != "run_segments"}
    return {"input": str(bridge.directory("input")), "output": str(bridge.directory("output")),
            "models": str(headless.models_dir) if headless.models_dir else None, "device": headless.device,
            "metadata": headless.metadata, "video_segments": segments}


class _Worker:
    """One Ray Data actor: the per-item part of the graph, built once (the model loads here)."""

    def __init__(self, job: dict):
        from . import registry

        settings = job["settings"]
        bridge.headless.input_dir, bridge.headless.output_dir = Path(settings["input"]), Path(settings["output"])
        bridge.headless.models_dir = Path(settings["models"]) if settings["models"] else None
        bridge.headless.device, bridge.headless.metadata = settings["device"], settings["metadata"]
        bridge.headless.video_segments = settings["video_segments"]
        self.runner = Runner(job["prompt"], registry.node_classes(), outputs=job["outputs"],
                             extra_pnginfo=job["extra_pnginfo"], jobs=job["jobs"])
        self.runner.sinks = job["sinks"]
        self.source, self.arguments, self.downstream = job["source"], job["arguments"], job["downstream"]
        self.static, ui = {}, []
        for node_id in job["static"]:
            self.runner._run_node(node_id, self.static, ui)
        self.writers = _Writers(self.runner.jobs)
        self.kill, self.count, self.gate = job["kill"], 0, job["gate"]
        import ray

        self.ray, self.node = ray, ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict) -> dict:
        rows = [self._one(str(item), bool(existed)) for item, existed in zip(batch["item"], batch["existed"])]
        return {key: [row[key] for row in rows] for key in rows[0]}

    def _one(self, item: str, existed: bool) -> dict:
        start = time.perf_counter()
        error, files, recovered = None, [], False
        stopped = not self.ray.get(self.gate.enter.remote(item))
        if not stopped:
            # Complete now but not when the run began: an attempt of this run died after writing it.
            recovered = not existed and self.runner._complete(item, self.source, self.static)
            if not recovered:
                error, files = self._compute(item)
            self._maybe_die()
        return {"item": item, "error": error or "", "outputs": json.dumps(files), "node": self.node,
                "seconds": time.perf_counter() - start, "recovered": recovered, "stopped": stopped}

    def _compute(self, item: str) -> tuple[str | None, list[str]]:
        cls = self.runner._class(self.source)
        try:
            outputs = cls.stream_load(item, **self.arguments)
        except Exception as failure:  # noqa: BLE001 - reported as this item's failure
            return f"{item}: {failure}", []
        error, files, futures = self.runner._run_item(self.source, outputs, self.static, self.downstream,
                                                      self.writers)
        return (f"{item}: {error}" if error else write_error(item, futures)), files

    def _maybe_die(self) -> None:
        self.count += 1
        die_once(self.kill, self.count)
