"""Running the prepared network on one window at a time, as fast as the device allows.

Two accelerations pay only over a stream of frames, so they act only inside `stream()`, which
upscale_frames() (video, frame services) and the benchmark open: a single image (upscale(), a
ComfyUI node) runs eager, never waits for a capture or a compiler, and leaves no memory behind.

- CUDA graphs (CUDA, inside a stream): a window shape seen GRAPH_AFTER times in the stream is
  captured once and replayed, which removes the ~30 kernel launches per window from the CPU's
  critical path (they matter for small windows, whose kernels are short; on large windows the
  launches hide behind the kernels, which is why a single image gains nothing from a capture
  that costs an extra forward pass). The MAX_GRAPHS most recently used shapes keep their
  graphs: a tiled frame has up to 16 window shapes, four per axis (first, interior, the one
  before a last core thinner than the context, last; see tiling.window). All graphs of a
  network share one memory pool and one capture stream: the caching allocator reuses a block
  only on the stream that freed it, so with a stream per capture the warm-ups' memory would add
  up. Sharing the pool is safe because calls are serialised (lock) and each call's output is
  consumed before the next (see Accelerated; "consumed" means the consuming kernels are
  enqueued, which orders them before the next replay on the same CUDA stream: every caller in
  this package uses the thread's current stream). The graphs and their pool go when the last
  stream ends and when the Tiler runs out of memory (release()). A capture that fails for any
  reason but memory turns graphs off for the network (a failed capture can leave CUDA state
  behind that a second one would trip over).
- torch.compile, chosen by RT4KSR_COMPILE (read when a model is first prepared):
  "auto" (default): on CUDA, inside a stream, a window shape seen COMPILE_AFTER times is compiled
  (mode "default", the quickest to compile) in a background thread while the stream carries on
  eager; the shape switches to the compiled kernels once they exist. Nothing waits for the
  compiler, so there is no stall and Cancel keeps working. Never on the CPU, where inductor
  measured slower than eager (416-px windows: 18.6 vs 14.9 ms) after a ~17 s compile.
  Compiled kernels serve their shapes outside streams too; no compile starts there.
  "always": opt-in, compile at first sight, in the caller's thread, with
  "max-autotune-no-cudagraphs" on CUDA (benchmarks, services that warm up before serving).
  "never": eager only.
  The compiled network always gets channels_last contiguous input (a graph's static input has
  that layout anyway), so kernels compiled on the background thread's copy fit later calls.
  Shapes are left to dynamo's automatic dynamism (dynamic=None): the first shape gets kernels
  specialised to it (a whole-frame stream has one shape); a second shape, one more compile with
  symbolic height and width that serves the shapes after it (measured on the CPU, 5 shapes: 3
  compiles, the third for windows past a size guard dynamo adds). dynamic=False would compile
  each of a tiled frame's 16 shapes, past dynamo's recompile limit (8), beyond which it runs
  eager with only a log message; dynamic=True would give up the specialised kernels of the
  common single shape.
  A compiler that fails (no C++ compiler, no Triton, unsupported GPU) is reported once and the
  network stays eager from then on.
While a CUDA call runs: cuDNN autotuning on (cudnn.benchmark), and for fp32 networks TF32 off:
cuDNN's default runs fp32 convolutions in TF32 on Ampere and later GPUs, 8-bit results up to 2
levels off at x3; "fp32" means fp32.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from .device import is_out_of_memory

GRAPH_AFTER = 3
COMPILE_AFTER = 8
MAX_GRAPHS = 16
COMPILE_ENV = "RT4KSR_COMPILE"
COMPILE_POLICIES = ("auto", "always", "never")
COMPILE_MODES = {"auto": "default", "always": "max-autotune-no-cudagraphs"}  # on CUDA


def compile_policy() -> str:
    policy = os.environ.get(COMPILE_ENV, "auto").strip().lower() or "auto"
    if policy not in COMPILE_POLICIES:
        raise ValueError(f"{COMPILE_ENV} must be one of {', '.join(COMPILE_POLICIES)}: {policy!r}")
    return policy


class _Graph:
    """One captured forward pass on static input and output buffers. Replay runs on the
    current stream of the current device: the caller makes the network's device current."""

    def __init__(self, function, example: torch.Tensor, pool, stream) -> None:
        self.function = function
        self.input = torch.empty_like(example, memory_format=torch.channels_last)
        self.input.copy_(example)
        # Warm up on the capture stream, as capture requires: lazy initialisations happen here.
        current = torch.cuda.current_stream(example.device)
        stream.wait_stream(current)
        with torch.cuda.stream(stream):
            function(self.input)
        current.wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: another thread's CUDA calls during the capture (ComfyUI's, a compile
        # in the background) neither fail nor invalidate it.
        with torch.cuda.graph(
            self.graph, pool=pool, stream=stream, capture_error_mode="thread_local"
        ):
            self.output = function(self.input)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.input.copy_(x)
        self.graph.replay()
        return self.output


class Accelerated:
    """Calls `net` through the fastest available means.

    The returned tensor may be a graph's static output, which the next call (of any shape)
    overwrites: consume (copy) it before calling again. Threads sharing a network hold `lock`
    (re-entrant; every call takes it too) across the call and that copy.
    """

    def __init__(self, net: nn.Module, device: torch.device, policy: str) -> None:
        self.net, self.device = net, device
        self.lock = threading.RLock()
        self.compile_policy = policy if policy == "always" or device.type == "cuda" else "never"
        self.graphs_enabled = True  # off after a capture that failed other than for memory
        self._streams = 0  # open stream() contexts
        self._runs: dict[tuple, int] = {}  # calls per (shape, dtype) in the open streams
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()  # least recently used first
        self._pool = None  # the graphs' shared memory pool, made at the first capture
        self._capture_stream = None  # made at the first capture, on the network's device
        self._compiled: Callable | None = None  # calls torch.compile(net); made when needed
        self._ready: set[tuple] = set()  # keys the compiled network has kernels for
        self._skipped: set[tuple] = set()  # keys whose background compile ran out of memory
        self._compiler: threading.Thread | None = None  # the background compile, if running
        self._compile_error: Exception | None = None  # a background failure, not yet reported

    @property
    def compiled(self) -> bool:
        """Whether compiled kernels serve at least one shape."""
        return bool(self._ready)

    @contextmanager
    def stream(self):
        """Declares a stream of frames: graphs and automatic compilation may pay off while it
        is open. Nests and may be open in several threads; the graphs go with the last one."""
        with self.lock:
            self._streams += 1
        try:
            yield self
        finally:
            with self.lock:
                self._streams -= 1
                if self._streams == 0:
                    self._runs.clear()
                    self.release()

    def wait_for_compiler(self) -> None:
        """Wait until no background compile runs (benchmarks, before timing)."""
        compiler = self._compiler
        if compiler is not None:
            compiler.join()

    def release(self) -> None:
        """Drop every CUDA graph and their memory pool (out of memory, end of a stream)."""
        with self.lock:
            if self._graphs and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # no replay may still be using the pool
            self._graphs.clear()
            self._pool = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with self.lock:
            if self._compile_error is not None:
                self._stop_compiling(self._compile_error)
            key = (tuple(x.shape), x.dtype)
            runs = 0
            if self._streams:
                runs = self._runs[key] = self._runs.get(key, 0) + 1
            function = self._function(key, runs, x)
            try:
                out = self._run(key, runs, function, x)
            except Exception as error:
                if function is self.net or is_out_of_memory(error, self.device):
                    raise
                self._stop_compiling(error)
                return self._run(key, runs, self.net, x)
            if function is not self.net:
                self._ready.add(key)
            return out

    def _function(self, key: tuple, runs: int, x: torch.Tensor) -> Callable:
        if self.compile_policy == "never":
            return self.net
        if self.compile_policy == "always":
            return self._compiled or self._make_compiled()
        if key in self._ready:
            return self._compiled
        if runs >= COMPILE_AFTER and self._compiler is None and key not in self._skipped:
            self._compile_in_background(key, x)
        return self.net

    def _make_compiled(self) -> Callable:
        mode = COMPILE_MODES[self.compile_policy] if self.device.type == "cuda" else None
        compiled = torch.compile(self.net, mode=mode, dynamic=None, fullgraph=True)

        def call(x: torch.Tensor) -> torch.Tensor:
            return compiled(x.contiguous(memory_format=torch.channels_last))

        self._compiled = call
        return call

    def _compile_in_background(self, key: tuple, x: torch.Tensor) -> None:
        compiled = self._compiled or self._make_compiled()
        example = torch.empty_like(x, memory_format=torch.channels_last).copy_(x)
        self._compiler = threading.Thread(
            target=self._compile, args=(compiled, key, example), name="rt4ksr-compile",
            daemon=True,
        )
        self._compiler.start()

    def _compile(self, compiled: Callable, key: tuple, example: torch.Tensor) -> None:
        """The background thread: compile for `example`'s shape, without the lock (the stream
        runs on meanwhile); the outcome is picked up by the next call."""
        error = None
        try:
            with torch.inference_mode(), _call_settings(self.device, example.dtype):
                compiled(example)
        except Exception as caught:  # noqa: BLE001 - reported in the caller's thread
            error = caught
        with self.lock:
            self._compiler = None
            if self._compiled is not compiled:  # compiling was stopped meanwhile
                return
            if error is None:
                self._ready.add(key)
            elif is_out_of_memory(error, self.device):
                self._skipped.add(key)  # that shape stays eager; no retry loop
            else:
                self._compile_error = error

    def _stop_compiling(self, error: Exception) -> None:
        warnings.warn(f"torch.compile failed, running eager from now on: {error}", stacklevel=3)
        self.compile_policy, self._compiled, self._compile_error = "never", None, None
        self._ready.clear()
        self.release()  # graphs captured from the compiled network go with it

    def _run(self, key: tuple, runs: int, function, x: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return function(x)
        # Streams, capture and replay all act on the current device: make it this network's.
        with _call_settings(self.device, x.dtype):
            if runs < GRAPH_AFTER or not self.graphs_enabled:
                return function(x)
            graph = self._graphs.get(key)
            if graph is None or graph.function is not function:
                if self._compiler is not None:
                    # No capture while the compiler runs kernels on this device: replay an
                    # older graph of the shape if there is one.
                    return graph(x) if graph is not None else function(x)
                graph = self._capture(key, function, x)
                if graph is None:
                    return function(x)
            else:
                self._graphs.move_to_end(key)
            return graph(x)

    def _capture(self, key: tuple, function, x: torch.Tensor) -> _Graph | None:
        # Release the shape's stale graph (captured before compiling) or the least recently
        # used one before capturing, so their memory can serve the new one.
        self._graphs.pop(key, None)
        if len(self._graphs) >= MAX_GRAPHS:
            self._graphs.popitem(last=False)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        if self._capture_stream is None:
            self._capture_stream = torch.cuda.Stream(self.device)
        saved = torch.cuda.current_stream(self.device)
        try:
            graph = _Graph(function, x, self._pool, self._capture_stream)
        except Exception as error:
            # A capture_end that raised leaves the capture stream current.
            torch.cuda.set_stream(saved)
            if is_out_of_memory(error, self.device):
                raise
            warnings.warn(
                f"CUDA graph capture failed; running without graphs from now on: {error}",
                stacklevel=4,
            )
            self.graphs_enabled = False
            self.release()
            return None
        self._graphs[key] = graph
        return graph


class _Counted:
    """A process-wide setting held while any engine call runs, the previous value back after
    the last one. Counted, so that calls overlapping in several threads cannot leave it on.
    `apply()` sets it and returns what `restore(saved)` puts back."""

    def __init__(self, apply: Callable[[], object], restore: Callable[[object], None]) -> None:
        self.apply, self.restore = apply, restore
        self.lock = threading.Lock()
        self.calls = 0
        self.saved = None

    @contextmanager
    def held(self):
        with self.lock:
            if self.calls == 0:
                self.saved = self.apply()
            self.calls += 1
        try:
            yield
        finally:
            with self.lock:
                self.calls -= 1
                if self.calls == 0:
                    self.restore(self.saved)


def _autotune_on() -> bool:
    saved, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, True
    return saved


def _autotune_restore(saved: bool) -> None:
    torch.backends.cudnn.benchmark = saved


def _tf32_parts() -> list:
    """cuDNN's per-operator precision settings (torch >= 2.9); [] in older torch."""
    parts = [getattr(torch.backends.cudnn, name, None) for name in ("conv", "rnn")]
    return parts if all(hasattr(part, "fp32_precision") for part in parts) else []


def _tf32_off():
    """TF32 off for cuDNN through the legacy flag, which keeps the legacy and the per-operator
    settings consistent (setting only the latter makes reading the former raise); through the
    per-operator setting where they were already mixed. Returns what _tf32_restore needs."""
    cudnn = torch.backends.cudnn
    precisions = [part.fp32_precision for part in _tf32_parts()]
    try:
        legacy = cudnn.allow_tf32
    except RuntimeError:  # mixed by someone else: the legacy flag cannot be read or used
        cudnn.conv.fp32_precision = "ieee"
        return precisions, None
    cudnn.allow_tf32 = False
    return precisions, legacy


def _tf32_restore(saved) -> None:
    precisions, legacy = saved
    if legacy is not None:
        torch.backends.cudnn.allow_tf32 = legacy
    for part, precision in zip(_tf32_parts(), precisions):
        part.fp32_precision = precision


_autotune = _Counted(_autotune_on, _autotune_restore)
_exact_fp32 = _Counted(_tf32_off, _tf32_restore)


@contextmanager
def _call_settings(device: torch.device, dtype: torch.dtype):
    """A CUDA call's settings: its device current, cuDNN autotuning, TF32 off for fp32."""
    if device.type != "cuda":
        yield
        return
    with ExitStack() as stack:
        stack.enter_context(torch.cuda.device(device))
        stack.enter_context(_autotune.held())
        if dtype == torch.float32:
            stack.enter_context(_exact_fp32.held())
        yield
