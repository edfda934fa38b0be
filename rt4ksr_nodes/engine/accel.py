"""Running the prepared network on one window at a time, as fast as the device allows.

- CUDA graphs (CUDA only): a window shape seen GRAPH_AFTER times is captured once and replayed,
  which removes the ~30 kernel launches per frame from the CPU's critical path. A single image
  never pays for a capture; a stream of frames does after its second frame. The MAX_GRAPHS most
  recently used shapes keep their graphs: a tiled frame has up to 16 window shapes, four per
  axis (first, interior, the one before a last core thinner than the context, last; see
  tiling.window). All graphs of a network share one memory pool, so their scratch memory is
  that of the largest window, not the sum; sharing is safe because calls are serialised (lock)
  and each call's output is consumed before the next (see Accelerated; "consumed" means the
  consuming kernels are enqueued, which orders them before the next replay on the same CUDA
  stream: every caller in this package uses the thread's current stream). Out of memory, the
  Tiler calls release(): the graphs go, and with them the pool, before it shrinks its tiles
  (whose new shapes need new graphs anyway).
- torch.compile, chosen by RT4KSR_COMPILE (read when a model is first prepared):
  "auto" (default): on CUDA, a window shape seen COMPILE_AFTER times (a stream of frames) is
  compiled, so a one-off user never waits for the compiler; never on the CPU, where inductor
  measured slower than eager (416-px windows: 18.6 vs 14.9 ms) after a ~17 s compile.
  "always": compile at first sight (benchmarks, services that warm up). "never": eager only.
  Shapes are left to dynamo's automatic dynamism (dynamic=None): the first shape gets kernels
  specialised to it (a whole-frame stream has one shape); a second shape, one more compile with
  symbolic height and width that serves the shapes after it (measured on the CPU, 5 shapes: 3
  compiles, the third for windows past a size guard dynamo adds). dynamic=False would compile
  each of a tiled frame's 16 shapes, past dynamo's recompile limit (8), beyond which it runs
  eager with only a log message; dynamic=True would give up the specialised kernels of the
  common single shape.
  A compiler that fails (no C++ compiler, no Triton, unsupported GPU) is reported once and the
  network stays eager from then on.
cuDNN autotuning (cudnn.benchmark) is switched on while any of these calls runs.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import OrderedDict
from contextlib import contextmanager

import torch
from torch import nn

from .device import is_out_of_memory

GRAPH_AFTER = 3
COMPILE_AFTER = 8
MAX_GRAPHS = 16
COMPILE_ENV = "RT4KSR_COMPILE"
COMPILE_POLICIES = ("auto", "always", "never")


def compile_policy() -> str:
    policy = os.environ.get(COMPILE_ENV, "auto").strip().lower() or "auto"
    if policy not in COMPILE_POLICIES:
        raise ValueError(f"{COMPILE_ENV} must be one of {', '.join(COMPILE_POLICIES)}: {policy!r}")
    return policy


class _Graph:
    """One captured forward pass on static input and output buffers. Replay runs on the
    current stream of the current device: the caller makes the network's device current."""

    def __init__(self, function, example: torch.Tensor, pool) -> None:
        self.function = function
        self.input = torch.empty_like(example, memory_format=torch.channels_last)
        self.input.copy_(example)
        # Warm up on a side stream, as capture requires: lazy initialisations happen here.
        # The same stream captures: torch.cuda.graph's default capture stream is made once per
        # process, on whichever device was current then.
        current = torch.cuda.current_stream(example.device)
        side = torch.cuda.Stream(example.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            function(self.input)
        current.wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool, stream=side):
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
        if policy == "always":
            self.compile_after: int | None = 1
        elif policy == "auto" and device.type == "cuda":
            self.compile_after = COMPILE_AFTER
        else:
            self.compile_after = None
        self._compiled = None
        self._runs: dict[tuple, int] = {}
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()  # least recently used first
        self._no_graph: set[tuple] = set()  # shapes whose capture failed: they stay eager
        self._pool = None  # the graphs' shared memory pool, made at the first capture

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def release(self) -> None:
        """Drop every CUDA graph and their memory pool (after running out of memory)."""
        with self.lock:
            self._graphs.clear()
            self._no_graph.clear()
            self._pool = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with self.lock:
            key = (tuple(x.shape), x.dtype)
            runs = self._runs[key] = self._runs.get(key, 0) + 1
            function = self._function(runs)
            try:
                return self._run(key, runs, function, x)
            except Exception as error:
                if function is self.net or is_out_of_memory(error):
                    raise
                warnings.warn(
                    f"torch.compile failed, running eager from now on: {error}", stacklevel=2
                )
                self.compile_after, self._compiled = None, None
                self.release()
                return self._run(key, runs, self.net, x)

    def _function(self, runs: int):
        if self.compile_after is None or runs < self.compile_after:
            return self.net
        if self._compiled is None:
            mode = "max-autotune-no-cudagraphs" if self.device.type == "cuda" else None
            self._compiled = torch.compile(self.net, mode=mode, dynamic=None, fullgraph=True)
        return self._compiled

    def _run(self, key: tuple, runs: int, function, x: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return function(x)
        # Streams, capture and replay all act on the current device: make it this network's.
        with torch.cuda.device(self.device), _cudnn_autotune():
            if runs < GRAPH_AFTER or key in self._no_graph:
                return function(x)
            graph = self._graphs.get(key)
            if graph is None or graph.function is not function:
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
        try:
            graph = self._graphs[key] = _Graph(function, x, self._pool)
        except Exception as error:
            if is_out_of_memory(error):
                raise
            warnings.warn(f"CUDA graph capture failed, running without: {error}", stacklevel=4)
            self._no_graph.add(key)
            return None
        return graph


_autotune_lock = threading.Lock()
_autotune_calls = 0
_autotune_saved = False


@contextmanager
def _cudnn_autotune():
    """cudnn.benchmark on while any engine call runs, the previous setting back after the last
    one. Counted, so that calls overlapping in several threads cannot leave it switched on."""
    global _autotune_calls, _autotune_saved
    cudnn = torch.backends.cudnn
    with _autotune_lock:
        if _autotune_calls == 0:
            _autotune_saved, cudnn.benchmark = cudnn.benchmark, True
        _autotune_calls += 1
    try:
        yield
    finally:
        with _autotune_lock:
            _autotune_calls -= 1
            if _autotune_calls == 0:
                cudnn.benchmark = _autotune_saved
