"""Running a validated API-format prompt with ComfyUI's semantics, headless.

Only the nodes that output nodes (OUTPUT_NODE = True) depend on run, in dependency order, each
once. Node inputs are lists, as in ComfyUI's execution.py: a node without INPUT_IS_LIST that
receives lists is called once per element (shorter lists repeat their last element) and its
results are collected into lists; OUTPUT_IS_LIST outputs are concatenated.

Streaming: when one node is a stream source (it has `stream_items` and `stream_load`, like Load
Image Folder) and nothing after it takes whole lists (INPUT_IS_LIST, unless the node says it
treats each element apart: ELEMENTWISE), the nodes that do not
depend on it run once, then the nodes after it run once per item. Each item is computed
exactly as ComfyUI would compute that element of the list, but only a few items are in memory:
a bounded prefetch queue decodes ahead on a thread, and a bounded writer pool encodes behind.
An item that fails (a corrupt file, say) is reported and the others go on.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable

from ..host import bridge
from ..engine.cpu import sharing_cores, tune_allocator, usable_cores
from ..files.paths import shorten
from ..nodes import batch
from ..nodes.upscale import compute_device
from .validate import input_spec, is_link, needed_nodes, output_nodes

Event = Callable[[dict], None]
PACKAGE = __name__.split(".")[0]  # the pack's loggers: their warnings become warning events
PREFETCH = 2  # items decoded ahead of the model


class Interrupted(Exception):
    """The user asked to stop (Ctrl-C)."""


class NodeError(RuntimeError):
    """A node raised; the message names the node."""


@dataclass
class Summary:
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {"total": self.total, "done": self.done, "skipped": self.skipped, "failed": self.failed,
                "interrupted": self.interrupted, "seconds": round(self.seconds, 3),
                "images_per_second": round(self.images_per_second, 3),
                "failures": [{"item": i, "error": e} for i, e in self.failures]}


def topological(prompt: dict, node_ids: set[str]) -> list[str]:
    """`node_ids` with every node after the nodes it takes inputs from (validated: no cycles)."""
    order, placed = [], set()

    def place(node_id):
        if node_id in placed:
            return
        placed.add(node_id)
        for value in prompt[node_id]["inputs"].values():
            if is_link(value) and str(value[0]) in node_ids:
                place(str(value[0]))
        order.append(node_id)

    for node_id in sorted(node_ids, key=lambda n: (len(n), n)):
        place(node_id)
    return order


def write_error(item: str, futures) -> str | None:
    """The first failed write of `item`'s outputs (waits for them), or None; writes dropped by
    a second Ctrl-C are not failures."""
    errors = [f"{item}: {f.exception()}" for f in futures if not f.cancelled() and f.exception() is not None]
    return errors[0] if errors else None


class Runner:
    def __init__(self, prompt: dict, classes: dict, *, outputs: list[str] | None = None,
                 extra_pnginfo: dict | None = None, resume: bool = False,
                 jobs: int | None = None, prefetch: int = PREFETCH, on_event: Event | None = None):
        """`outputs`: the output nodes to run (default: every output node of `prompt`);
        `jobs`: image writer threads (default: default_jobs())."""
        self.prompt, self.classes = prompt, classes
        self.outputs = output_nodes(prompt, classes) if outputs is None else list(outputs)
        self.extra_pnginfo = extra_pnginfo or None
        self.resume, self.prefetch = resume, max(1, prefetch)
        self.jobs = max(1, default_jobs() if jobs is None else jobs)
        self.emit = on_event or (lambda event: None)
        self.hurry = threading.Event()  # set by stop_now()
        self.in_node = False  # a node's function is running (the only place a KeyboardInterrupt may land)
        self.instances: dict[str, object] = {}
        self.specs: dict[type, dict] = {}  # INPUT_TYPES() per class, once per run (LoadImage lists a folder)
        self.order = topological(prompt, needed_nodes(prompt, self.outputs))

    # -- node calls, as ComfyUI's execution.py -------------------------------------------------

    def _class(self, node_id):
        return self.classes[self.prompt[node_id]["class_type"]]

    def _definitions(self, cls) -> dict:
        if cls not in self.specs:
            self.specs[cls] = cls.INPUT_TYPES()
        return self.specs[cls]

    def _input_data(self, node_id: str, cache: dict) -> dict:
        cls = self._class(node_id)
        definitions = self._definitions(cls)
        spec = input_spec(definitions)
        data = {}
        for name, value in self.prompt[node_id]["inputs"].items():
            if is_link(value):
                data[name] = cache[str(value[0])][value[1]]
            elif name in spec:
                data[name] = [value]
        hidden = {"PROMPT": self.prompt, "EXTRA_PNGINFO": self.extra_pnginfo, "UNIQUE_ID": node_id}
        for name, kind in (definitions.get("hidden") or {}).items():
            if kind in hidden:
                data[name] = [hidden[kind]]
        return data

    def _run_node(self, node_id: str, cache: dict, ui: list) -> None:
        cls = self._class(node_id)
        if node_id not in self.instances:
            self.instances[node_id] = cls()
        obj = self.instances[node_id]
        data = self._input_data(node_id, cache)
        function = getattr(obj, cls.FUNCTION)
        if getattr(cls, "INPUT_IS_LIST", False):
            calls = [data]
        elif not data:
            calls = [{}]
        else:
            longest = max(len(v) for v in data.values())
            calls = [{k: v[i if len(v) > i else -1] for k, v in data.items()} for i in range(longest)]
        results = []
        for arguments in calls:
            _check_interrupt()
            try:
                self.in_node = True
                result = function(**arguments)
            except Exception as error:
                # The engine stops on the interrupt flag with its own exception: still an interrupt.
                _check_interrupt()
                name = self.prompt[node_id]["class_type"]
                raise NodeError(shorten(f"node {node_id} ({name}): {type(error).__name__}: {error}")) from error
            finally:
                self.in_node = False
            if isinstance(result, dict):
                ui.append(result.get("ui") or {})
                result = result.get("result", ())
            result, expected = tuple(result), len(getattr(cls, "RETURN_TYPES", ()))
            if len(result) < expected:
                name = self.prompt[node_id]["class_type"]
                raise NodeError(f"node {node_id} ({name}): returned {len(result)} values for its {expected} outputs")
            results.append(result)
        cache[node_id] = _merge(results, cls)

    # -- whole runs -------------------------------------------------------------------------------

    def stop_now(self) -> bool:
        """After an interrupt: stop at once (a second Ctrl-C). The writes not started yet are
        dropped; the summary still counts exactly the outputs on disk. Returns True when a
        node is running, which only a KeyboardInterrupt stops (the caller raises it)."""
        bridge.headless.interrupt.set()
        self.hurry.set()
        return self.in_node

    def run(self) -> Summary:
        tune_allocator()  # a batch process's policy, before its threads pick their arenas
        summary = Summary()
        start = time.perf_counter()
        stream, after = self._stream_plan()
        warnings = _WarningEvents(self.emit)
        logging.getLogger(PACKAGE).addHandler(warnings)
        try:
            if stream:
                self._run_stream(stream, after, summary)
            else:
                self._run_once(summary)
        except (Interrupted, KeyboardInterrupt):
            # KeyboardInterrupt: a second Ctrl-C while a node runs (or a third anywhere); the
            # items reported are still complete, so the summary still counts them for --resume.
            summary.interrupted = True
        finally:
            logging.getLogger(PACKAGE).removeHandler(warnings)
        summary.seconds = time.perf_counter() - start
        self.emit({"event": "summary", **summary.as_dict()})
        return summary

    def _stream_plan(self) -> tuple[str | None, set[str]]:
        """The stream source and the nodes after it, or (None, set()) when the graph must run
        as whole lists (warned)."""
        sources = [n for n in self.order if _is_stream_source(self._class(n))]
        stream = sources[0] if len(sources) == 1 else None
        after = self._dependants(stream) if stream else set()
        whole = [n for n in after if getattr(self._class(n), "INPUT_IS_LIST", False)
                 and not getattr(self._class(n), "ELEMENTWISE", False)]
        if len(sources) > 1 or whole:
            why = (f"{len(sources)} folder sources (nodes {', '.join(sources)})" if len(sources) > 1
                   else f"node {whole[0]} ({self.prompt[whole[0]]['class_type']}) takes the whole list")
            self.emit({"event": "warning", "message": f"not streaming: {why}, so every image is loaded into "
                       "memory at once" + (" and --resume does not apply" if self.resume else "")})
            return None, set()
        return stream, after

    def _dependants(self, source: str) -> set[str]:
        after = set()
        for node_id in self.order:
            links = [str(v[0]) for v in self.prompt[node_id]["inputs"].values() if is_link(v)]
            if any(o == source or o in after for o in links):
                after.add(node_id)
        return after

    def _run_once(self, summary: Summary) -> None:
        summary.total = 1
        self.emit({"event": "start", "total": 1})
        cache, ui = {}, []

        def skipped(item: str, error: str) -> None:  # a folder file the loader could not read
            summary.total += 1
            self._finish(summary, item, error, [])

        token = batch.SKIPPED.set(skipped)
        try:
            for node_id in self.order:
                self._run_node(node_id, cache, ui)
        except NodeError as error:
            self._finish(summary, "workflow", str(error), [])
            return
        finally:
            batch.SKIPPED.reset(token)
        self._finish(summary, "workflow", None, _files(ui))

    def _sinks(self, after: set[str]) -> list[str]:
        """The output nodes that run once per item."""
        return [n for n in self.order if n in after and getattr(self._class(n), "OUTPUT_NODE", False)]

    def _open_stream(self, source: str, run_once: list[str], summary: Summary):
        """Run the `run_once` nodes and list the source's items; report the start. Returns
        (their outputs, the source's arguments, the items), or None after a reported failure."""
        static, ui = {}, []
        try:
            for node_id in run_once:
                self._run_node(node_id, static, ui)
            arguments = {k: v[0] for k, v in self._input_data(source, static).items()}
            items = self._class(source).stream_items(**arguments)
        except (NodeError, OSError, ValueError) as error:
            summary.total = 1
            self._finish(summary, "workflow", str(error), [])
            return None
        summary.total = len(items)
        summary.outputs.extend(_files(ui))  # outputs of the nodes that run once, before the items
        self.emit({"event": "start", "total": len(items), "outputs": _files(ui)})
        return static, arguments, items

    def _run_stream(self, source: str, after: set[str], summary: Summary) -> None:
        self.sinks = self._sinks(after)
        opened = self._open_stream(
            source, [n for n in self.order if n != source and n not in after], summary
        )
        if opened is None:
            return
        static, arguments, items = opened
        cls = self._class(source)
        downstream = [n for n in self.order if n in after]
        decoded: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        reader = threading.Thread(target=self._prefetch, args=(cls, items, arguments, static, source, decoded, stop),
                                  name="rt4ksr-prefetch", daemon=True)
        pending: deque = deque()
        with _Writers(self.jobs, self.hurry) as writers, self._sharing(writers):
            reader.start()
            try:
                for _ in items:
                    item, outputs, error = _next(decoded, reader)
                    _check_interrupt()
                    files, futures = [], []
                    if outputs is not None and error is None:
                        error, files, futures = self._run_item(source, outputs, static, downstream, writers)
                        error = error and f"{item}: {error}"
                    # Reported in order, once the item's writes are done; a skip has no outputs.
                    pending.append((item, error, files, futures, outputs is None and error is None))
                    self._drain(pending, summary, block=False)
            except ReaderDied as error:
                self._finish(summary, "workflow", str(error), [])
            finally:
                stop.set()
                _empty(decoded)
                self._drain(pending, summary, block=True)
                reader.join()

    @staticmethod
    def _sharing(writers: "_Writers"):
        """On the CPU, the model gets the cores the encoders leave, layer by layer
        (engine.cpu.sharing_cores); a GPU model leaves the CPU to them anyway, and its compiled
        graphs are best kept free of module hooks."""
        return sharing_cores(writers.busy) if compute_device().type == "cpu" else contextlib.nullcontext()

    def _prefetch(self, cls, items, arguments, static, source, decoded, stop) -> None:
        """Decode items in order ahead of the model; (item, None, None) marks a resume skip."""
        for item in items:
            if stop.is_set():
                return
            outputs = error = None
            try:
                if self.resume and self._complete(item, source, static):
                    pass
                elif (existing := self._existing(item, source, static)) is not None:
                    error = f"{item}: {existing}"  # found before computing it
                else:
                    outputs = cls.stream_load(item, **arguments)
            except Exception as failure:  # noqa: BLE001 - reported as this item's failure
                error = f"{item}: {failure}"
            while not stop.is_set():
                try:
                    decoded.put((item, outputs, error), timeout=0.1)
                    break
                except queue.Full:
                    continue

    def _complete(self, item: str, source: str, static: dict) -> bool:
        """Every output node after the source says the item's output exists (--resume)."""
        if not self.sinks:
            return False
        for node_id in self.sinks:
            check = getattr(self._class(node_id), "output_complete", None)
            try:
                if check is None or not check(**self._known(node_id, item, source, static)):
                    return False
            except (TypeError, ValueError):
                return False
        return True

    def _existing(self, item: str, source: str, static: dict) -> str | None:
        """Why the item must not run: an output node says its output exists and may not be
        replaced (without --resume); None when it may run."""
        for node_id in self.sinks:
            check = getattr(self._class(node_id), "existing_output", None)
            try:
                problem = check and check(**self._known(node_id, item, source, static))
            except (TypeError, ValueError):
                continue  # the node reports it when it runs
            if problem:
                return problem
        return None

    def _known(self, node_id: str, item: str, source: str, static: dict) -> dict:
        """The inputs of output node `node_id` known before `item` is computed."""
        known = {}
        for name, value in self.prompt[node_id]["inputs"].items():
            if not is_link(value):
                known[name] = value
            elif str(value[0]) == source and value[1] == batch.PATH_SLOT:
                known[name] = item
            elif str(value[0]) in static:
                known[name] = static[str(value[0])][value[1]][0]
        return known

    def _run_item(self, source, outputs, static, downstream, writers):
        """(error or None, files written, write futures) for one streamed item."""
        cache, ui = dict(static), []
        cache[source] = list(outputs)
        token = batch.WRITER.set(writers.submit)
        writers.collect()
        try:
            for node_id in downstream:
                self._run_node(node_id, cache, ui)
        except NodeError as error:
            return str(error), [], writers.collect()
        except (Interrupted, KeyboardInterrupt):
            futures = writers.collect()
            if not futures:
                raise
            # Some outputs are on their way to disk: reported with the item, as the files that
            # reach it (None: known from the writes); the loop stops at its next check.
            return "interrupted before all its outputs were written", None, futures
        finally:
            batch.WRITER.reset(token)
        return None, _files(ui), writers.collect()

    def _drain(self, pending: deque, summary: Summary, block: bool) -> None:
        """Report items, in order, whose writes have finished; after stop_now() the writes not
        started yet are dropped, and an item is reported with the files that did reach the disk
        (none: not reported, as an item never reached)."""
        while pending:
            futures = pending[0][3]
            if not all(f.done() for f in futures):
                if not block:
                    return
                if self.hurry.is_set():
                    for queued in (f for entry in pending for f in entry[3]):
                        queued.cancel()  # only those not started: a file is never half written
                wait(futures, timeout=0.05)
                continue
            item, error, files, futures, skipped = pending.popleft()
            error = error or write_error(item, futures)
            if files is None or any(f.cancelled() for f in futures):
                files = _written(futures)
                if not files:
                    continue
                error = error or f"{item}: interrupted before all its outputs were written"
            self._finish(summary, item, error, files, skipped)

    def _finish(self, summary: Summary, item: str, error: str | None, files: list[str], skipped=False,
                **details) -> None:
        if skipped:
            summary.skipped += 1
            status = "skipped"
        elif error:
            summary.failed += 1
            summary.failures.append((item, error))
            status = "failed"
        else:
            summary.done += 1
            summary.outputs.extend(files)
            status = "done"
        event = {"event": "item", "item": item, "status": status, "outputs": files, **details}
        if error:
            event["error"] = error
        self.emit(event)


def in_flight(jobs: int, prefetch: int = PREFETCH) -> int:
    """The most items a streamed run holds at once: decoded ahead (the queue and the one the
    reader waits to put), in the graph, and waiting for or in a writer."""
    return prefetch + 1 + 1 + jobs + _Writers.BACKLOG


def default_jobs() -> int:
    """Writer threads: one per core this process may use. Encoding (PNG especially) costs far
    more CPU than the model, so the writers must be able to fill every core while the model
    waits for a free slot; the encoders release the GIL, so threads run truly in parallel
    (README, Speed of batches)."""
    return usable_cores()


class _Writers:
    """A pool of encoder threads with a bounded backlog: submit blocks while jobs + BACKLOG
    writes are pending (running or queued), so finished images never pile up in memory, yet a
    writer that finishes finds the next image waiting; once `hurry` is set it refuses new
    writes (Interrupted)."""

    BACKLOG = 2

    def __init__(self, jobs: int, hurry: threading.Event | None = None):
        self.pool = ThreadPoolExecutor(jobs, thread_name_prefix="rt4ksr-writer")
        self.slots = threading.BoundedSemaphore(jobs + self.BACKLOG)
        self.jobs, self.pending, self.lock = jobs, 0, threading.Lock()
        self.recent: list[Future] = []
        self.hurry = hurry or threading.Event()

    def submit(self, job) -> None:
        while not self.slots.acquire(timeout=0.05):
            if self.hurry.is_set():
                raise Interrupted
        with self.lock:
            self.pending += 1
        future = self.pool.submit(job)
        future.add_done_callback(self._done)
        self.recent.append(future)

    def _done(self, _) -> None:
        with self.lock:
            self.pending -= 1
        self.slots.release()

    def busy(self) -> int:
        """Writer threads at work now."""
        with self.lock:
            return min(self.pending, self.jobs)

    def collect(self) -> list[Future]:
        """The futures submitted since the last call."""
        recent, self.recent = self.recent, []
        return recent

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.pool.shutdown(wait=True, cancel_futures=self.hurry.is_set())


class _WarningEvents(logging.Handler):
    """The pack's logged warnings during a run, as warning events (a file left out, a
    ComfyUI-parity quirk met), from whichever thread logs them."""

    def __init__(self, emit: Event):
        super().__init__(logging.WARNING)
        self.emit_event = emit

    def emit(self, record: logging.LogRecord) -> None:
        self.emit_event({"event": "warning", "message": shorten(record.getMessage())})



def _merge(results: list[tuple], cls) -> list[list]:
    """Per output, the values of every call; OUTPUT_IS_LIST outputs are concatenated. As in
    ComfyUI the first call's values set the count (RETURN_TYPES when there was no call)."""
    count = len(results[0]) if results else len(getattr(cls, "RETURN_TYPES", ()))
    is_list = getattr(cls, "OUTPUT_IS_LIST", (False,) * count)
    merged = []
    for index in range(count):
        if index < len(is_list) and is_list[index]:
            merged.append([v for r in results for v in r[index]])
        else:
            merged.append([r[index] for r in results])
    return merged


def _is_stream_source(cls) -> bool:
    return hasattr(cls, "stream_items") and hasattr(cls, "stream_load")


def _files(ui: list[dict]) -> list[str]:
    output = bridge.directory("output")
    files = []
    for entry in ui:
        for image in entry.get("images", []):
            if image.get("type") == "output":
                files.append(str(output / image.get("subfolder", "") / image["filename"]))
    return files


def _written(futures) -> list[str]:
    """The files that writes which ran to the end wrote (a write job returns its path)."""
    done = [f for f in futures if f.done() and not f.cancelled() and f.exception() is None]
    return [str(f.result()) for f in done if f.result() is not None]


class ReaderDied(RuntimeError):
    """The prefetch thread ended before handing over every item."""


def _next(decoded: queue.Queue, reader: threading.Thread):
    """The next decoded item; waiting in short steps so that a reader that died (it reports
    every failure it expects as an item) ends the run instead of blocking it forever."""
    while True:
        try:
            return decoded.get(timeout=0.2)
        except queue.Empty:
            if not reader.is_alive() and decoded.empty():
                raise ReaderDied("the image reader thread stopped unexpectedly; the remaining items were not run") from None


def _empty(decoded: queue.Queue) -> None:
    while True:
        try:
            decoded.get_nowait()
        except queue.Empty:
            return


def _check_interrupt() -> None:
    if bridge.headless.interrupt.is_set():
        raise Interrupted

