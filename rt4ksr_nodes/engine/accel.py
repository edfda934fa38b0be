"""Running the prepared network on one window at a time, as fast as the device allows.

- CUDA graphs (CUDA only): a window shape seen GRAPH_AFTER times is captured once and replayed,
  which removes the ~30 kernel launches per frame from the CPU's critical path. A single image
  never pays for a capture; a stream of frames does after its second frame. At most MAX_GRAPHS
  shapes are kept (a tiled frame has up to four: interior, right, bottom, corner).
- torch.compile, chosen by RT4KSR_COMPILE (read when a model is first prepared):
  "auto" (default): on CUDA, a window shape seen COMPILE_AFTER times (a stream of frames) is
  compiled, so a one-off user never waits for the compiler; never on the CPU, where inductor
  measured slower than eager (416-px windows: 18.6 vs 14.9 ms) after a ~17 s compile.
  "always": compile at first sight (benchmarks, services that warm up). "never": eager only.
  A compiler that fails (no C++ compiler, no Triton, unsupported GPU) is reported once and the
  network stays eager from then on.
cuDNN autotuning (cudnn.benchmark) is switched on for these calls only.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
import weakref

import torch
from torch import nn

from .device import is_out_of_memory

GRAPH_AFTER = 3
COMPILE_AFTER = 8
MAX_GRAPHS = 4
COMPILE_ENV = "RT4KSR_COMPILE"
COMPILE_POLICIES = ("auto", "always", "never")

_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compile_policy() -> str:
    policy = os.environ.get(COMPILE_ENV, "auto").strip().lower() or "auto"
    if policy not in COMPILE_POLICIES:
        raise ValueError(f"{COMPILE_ENV} must be one of {', '.join(COMPILE_POLICIES)}: {policy!r}")
    return policy


def accelerated(net: nn.Module, device: torch.device) -> Accelerated:
    """The cached runner of a prepared network (one per prepared copy)."""
    runner = _cache.get(net)
    if runner is None:
        runner = _cache[net] = Accelerated(net, device, compile_policy())
    return runner


class _Graph:
    """One captured forward pass on static input and output buffers."""

    def __init__(self, function, example: torch.Tensor) -> None:
        self.function = function
        self.input = torch.empty_like(example, memory_format=torch.channels_last)
        self.input.copy_(example)
        # Warm up on a side stream, as capture requires: lazy initialisations happen here.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            function(self.input)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = function(self.input)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.input.copy_(x)
        self.graph.replay()
        return self.output


class Accelerated:
    """Calls `net` through the fastest available means. The returned tensor may be a graph's
    static output: valid until the next call, so consume (copy) it before calling again."""

    def __init__(self, net: nn.Module, device: torch.device, policy: str) -> None:
        self.net, self.device = net, device
        if policy == "always":
            self.compile_after: int | None = 1
        elif policy == "auto" and device.type == "cuda":
            self.compile_after = COMPILE_AFTER
        else:
            self.compile_after = None
        self._compiled = None
        self._runs: dict[tuple, int] = {}
        self._graphs: dict[tuple, _Graph | None] = {}  # None: capture failed, stay eager

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype)
        runs = self._runs[key] = self._runs.get(key, 0) + 1
        function = self._function(runs)
        try:
            return self._run(key, runs, function, x)
        except Exception as error:
            if function is self.net or is_out_of_memory(error):
                raise
            warnings.warn(f"torch.compile failed, running eager from now on: {error}", stacklevel=2)
            self.compile_after, self._compiled = None, None
            self._graphs.clear()
            return self._run(key, runs, self.net, x)

    def _function(self, runs: int):
        if self.compile_after is None or runs < self.compile_after:
            return self.net
        if self._compiled is None:
            mode = "max-autotune-no-cudagraphs" if self.device.type == "cuda" else None
            self._compiled = torch.compile(self.net, mode=mode, dynamic=False, fullgraph=True)
        return self._compiled

    def _run(self, key: tuple, runs: int, function, x: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return function(x)
        with _cudnn_autotune():
            if runs < GRAPH_AFTER:
                return function(x)
            graph = self._graphs.get(key)
            if graph is None and key in self._graphs:
                return function(x)
            if graph is None or graph.function is not function:
                self._graphs.pop(key, None)  # release a replaced graph's memory first
                if len(self._graphs) >= MAX_GRAPHS:
                    return function(x)
                graph = self._graphs[key] = self._capture(function, x)
                if graph is None:
                    return function(x)
            return graph(x)

    def _capture(self, function, x: torch.Tensor) -> _Graph | None:
        try:
            return _Graph(function, x)
        except Exception as error:
            if is_out_of_memory(error):
                raise
            warnings.warn(f"CUDA graph capture failed, running without: {error}", stacklevel=3)
            return None


@contextmanager
def _cudnn_autotune():
    cudnn = torch.backends.cudnn
    previous, cudnn.benchmark = cudnn.benchmark, True
    try:
        yield
    finally:
        cudnn.benchmark = previous
