"""The engine's CUDA-only logic, exercised on the CPU with stand-ins: a canvas kept on another
device (meta), torch.cuda's stream and graph calls replaced by recorders, injected errors with
the texts CUDA libraries give. What only a GPU can show runs in scripts/gpu_check.sh."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from engine_helpers import crop, reference
from torch import nn

import rt4ksr_nodes.engine.accel as accel
import rt4ksr_nodes.engine.inference as inference
from rt4ksr_nodes import UpscaleCancelled, upscale
from rt4ksr_nodes.engine import upscale_frames
from rt4ksr_nodes.engine.device import is_out_of_memory, resolve_output_device
from rt4ksr_nodes.engine.prepare import prepared
from rt4ksr_nodes.engine.tiling import context_for

GPU = torch.device("cuda", 1)


class _Stream:
    def __init__(self, name: str) -> None:
        self.name = name

    def wait_stream(self, other) -> None:
        pass


class _FakeGraph:
    """Stands in for a CUDA graph: remembers its function, pool and stream, replays eagerly."""

    def __init__(self, function, example, pool, stream):
        self.function, self.pool, self.stream = function, pool, stream

    def __call__(self, x):
        return self.function(x)


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's device, stream and graph calls as recorders that run on the CPU. The
    capture itself (torch.cuda.graph) runs its body once; `state.capture_error` makes its exit
    raise, leaving the capture stream current as a failing capture_end does."""
    state = SimpleNamespace(current=_Stream("main"), streams=[], restored=[], devices=[],
                            captures=0, synchronized=0, capture_error=None)

    @contextmanager
    def device(index):
        state.devices.append(torch.device(index))
        yield

    @contextmanager
    def stream(side):
        saved, state.current = state.current, side
        try:
            yield
        finally:
            state.current = saved

    def new_stream(device=None):
        state.streams.append(_Stream(f"side {len(state.streams)}"))
        return state.streams[-1]

    def set_stream(value):
        state.restored.append(value)
        state.current = value

    class Capture:
        def __init__(self, graph, pool=None, stream=None, capture_error_mode="global"):
            assert capture_error_mode == "thread_local"
            self.stream = stream

        def __enter__(self):
            state.captures += 1
            self.saved, state.current = state.current, self.stream

        def __exit__(self, *exc):
            if state.capture_error is not None:
                raise state.capture_error  # the capture stream stays current
            state.current = self.saved

    def synchronize(device=None):
        state.synchronized += 1

    for name, value in {
        "device": device, "stream": stream, "Stream": new_stream, "set_stream": set_stream,
        "current_stream": lambda device=None: state.current, "graph": Capture,
        "CUDAGraph": lambda: SimpleNamespace(replay=lambda: None), "synchronize": synchronize,
        "graph_pool_handle": object,
    }.items():
        monkeypatch.setattr(torch.cuda, name, value)
    state.main = state.current
    return state


class Probe(nn.Module):
    """A network that logs its calls and doubles its input."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[str] = []

    def forward(self, x):
        self.log.append("eager")
        return x * 2


def _calls(runner, size: int, count: int) -> list[torch.Tensor]:
    return [runner(torch.full((1, 3, size, size), float(size))) for _ in range(count)]


def test_graphs_only_in_streams_one_capture_stream_and_pool(fake_cuda, monkeypatch):
    """Outside a stream (a ComfyUI node) no shape is ever captured, however often it recurs.
    In a stream: the network's device is current for every call, graphs are evicted least
    recently used first, all share one pool and one capture stream, and they go (after a
    synchronisation) when the stream ends."""
    monkeypatch.setattr(accel, "_Graph", _FakeGraph)
    runner = accel.Accelerated(Probe(), GPU, "never")
    _calls(runner, 8, 4 * accel.GRAPH_AFTER)
    assert not runner._graphs and not fake_cuda.streams
    sizes = range(2, 2 + 2 * accel.MAX_GRAPHS + 2, 2)  # one shape more than MAX_GRAPHS
    with runner.stream():
        for size in sizes:
            for out in _calls(runner, size, accel.GRAPH_AFTER):
                assert out[0, 0, 0, 0].item() == 2 * size
            _calls(runner, sizes[0], 1)  # the first shape stays the most recently used
        cached = [key[0][-1] for key in runner._graphs]
        assert len(cached) == accel.MAX_GRAPHS
        assert sizes[0] in cached and sizes[1] not in cached  # the least recently used went
        graphs = list(runner._graphs.values())
        assert len({id(graph.pool) for graph in graphs}) == 1
        assert len(fake_cuda.streams) == 1 and {graph.stream for graph in graphs} == {
            fake_cuda.streams[0]}
    assert set(fake_cuda.devices) == {GPU}
    assert not runner._graphs and runner._pool is None and fake_cuda.synchronized == 1
    # The run counts went with the stream: a new stream starts counting again.
    with runner.stream():
        _calls(runner, 8, accel.GRAPH_AFTER - 1)
        assert not runner._graphs


@pytest.mark.parametrize("error", [
    RuntimeError("CUDA error: operation failed due to a previous error during capture"),
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"),
])
def test_a_failed_capture_restores_the_stream(fake_cuda, error):
    """capture_end raising leaves the capture stream current: the caller's comes back. Other
    than for memory (which the Tiler handles by shrinking), graphs are then off for the
    network and the call runs eager."""
    fake_cuda.capture_error = error
    net = Probe()
    runner = accel.Accelerated(net, GPU, "never")
    with runner.stream():
        _calls(runner, 8, accel.GRAPH_AFTER - 1)
        if isinstance(error, torch.cuda.OutOfMemoryError):
            with pytest.raises(torch.cuda.OutOfMemoryError):
                _calls(runner, 8, 1)
            assert runner.graphs_enabled
        else:
            with pytest.warns(UserWarning, match="capture failed; running without graphs"):
                (out,) = _calls(runner, 8, 1)
            assert out[0, 0, 0, 0].item() == 16
            assert not runner.graphs_enabled and not runner._graphs
            _calls(runner, 8, 3)
            _calls(runner, 12, accel.GRAPH_AFTER + 1)
            assert fake_cuda.captures == 1  # never tried again
        assert fake_cuda.current is fake_cuda.main
        assert fake_cuda.restored == [fake_cuda.main]


class _SlowCompiler:
    """torch.compile's stand-in: records the mode; the compiled function's first call for a
    shape blocks until `finish` is set (a compile of tens of seconds), then it logs and doubles."""

    def __init__(self, net: Probe) -> None:
        self.net, self.modes, self.threads = net, [], []
        self.finish, self.started = threading.Event(), threading.Event()
        self.seen: set = set()

    def __call__(self, module, mode=None, dynamic=None, fullgraph=False):
        self.modes.append(mode)

        def compiled(x):
            if x.shape not in self.seen:
                self.threads.append(threading.current_thread().name)
                self.started.set()
                assert self.finish.wait(10)
                self.seen.add(x.shape)
            assert x.is_contiguous(memory_format=torch.channels_last)
            self.net.log.append("compiled")
            return x * 2

        return compiled


def test_automatic_compile_only_in_streams_in_the_background(fake_cuda, monkeypatch):
    monkeypatch.setattr(accel, "_Graph", _FakeGraph)
    net = Probe()
    compiler = _SlowCompiler(net)
    monkeypatch.setattr(torch, "compile", compiler)
    runner = accel.Accelerated(net, GPU, "auto")
    # A node's calls: no compile, however many times the shape recurs (prompt after prompt).
    _calls(runner, 8, 3 * accel.COMPILE_AFTER)
    assert compiler.modes == [] and net.log == ["eager"] * 3 * accel.COMPILE_AFTER
    with runner.stream():
        net.log.clear()
        _calls(runner, 8, accel.COMPILE_AFTER)
        assert compiler.started.wait(10)  # started on its own thread, mode "default"
        assert compiler.modes == ["default"] and compiler.threads == ["rt4ksr-compile"]
        # The stream carries on, eager, while the compiler works: no stall.
        for out in _calls(runner, 8, 5):
            assert out[0, 0, 0, 0].item() == 16
        assert "compiled" not in net.log and runner._compiler is not None
        compiler.finish.set()
        runner.wait_for_compiler()
        net.log.clear()
        _calls(runner, 8, 2)
        assert net.log == ["compiled", "compiled"] and runner.compiled
    # After the stream: the compiled shape keeps its kernels, a new shape starts no compile.
    net.log.clear()
    _calls(runner, 8, 1)
    _calls(runner, 10, 3 * accel.COMPILE_AFTER)
    assert net.log == ["compiled"] + ["eager"] * 3 * accel.COMPILE_AFTER
    assert compiler.modes == ["default"] and runner._compiler is None


def test_opt_in_compiles_at_first_sight(fake_cuda, monkeypatch):
    net = Probe()
    compiler = _SlowCompiler(net)
    compiler.finish.set()
    monkeypatch.setattr(torch, "compile", compiler)
    runner = accel.Accelerated(net, GPU, "always")
    _calls(runner, 8, 1)
    assert compiler.modes == ["max-autotune-no-cudagraphs"]
    assert compiler.threads == [threading.current_thread().name] and net.log == ["compiled"]


def test_a_failing_background_compile_is_reported_and_eager_stays(fake_cuda, monkeypatch):
    def broken(module, **options):
        def fail(x):
            raise RuntimeError("triton: no working C compiler")

        return fail

    monkeypatch.setattr(torch, "compile", broken)
    net = Probe()
    runner = accel.Accelerated(net, GPU, "auto")
    with runner.stream():
        _calls(runner, 8, accel.COMPILE_AFTER)
        runner.wait_for_compiler()
        with pytest.warns(UserWarning, match="torch.compile failed.*no working C compiler"):
            (out,) = _calls(runner, 8, 1)
        assert out[0, 0, 0, 0].item() == 16
        assert runner.compile_policy == "never" and not runner.compiled
        _calls(runner, 8, 2 * accel.COMPILE_AFTER)
        assert runner._compiler is None


def test_compile_policy_per_device(monkeypatch):
    monkeypatch.setenv(accel.COMPILE_ENV, "sometimes")
    with pytest.raises(ValueError, match="auto, always, never"):
        accel.compile_policy()
    net = nn.Identity()
    assert accel.Accelerated(net, torch.device("cpu"), "auto").compile_policy == "never"
    assert accel.Accelerated(net, torch.device("cpu"), "always").compile_policy == "always"
    assert accel.Accelerated(net, GPU, "auto").compile_policy == "auto"
    assert accel.Accelerated(net, GPU, "never").compile_policy == "never"


def test_fp32_means_fp32_on_cuda(fake_cuda):
    """cuDNN's TF32 is off while an fp32 network runs (and back afterwards); fp16 networks
    leave it alone. Both setting APIs stay readable."""
    cudnn = torch.backends.cudnn
    seen = []

    class Flags(nn.Module):
        def forward(self, x):
            seen.append((cudnn.allow_tf32, cudnn.benchmark))
            return x

    before = (cudnn.allow_tf32, cudnn.benchmark)
    for dtype in (torch.float32, torch.float16):
        accel.Accelerated(Flags(), GPU, "never")(torch.zeros(1, 3, 4, 4, dtype=dtype))
    assert seen == [(False, True), (before[0], True)]
    assert (cudnn.allow_tf32, cudnn.benchmark) == before
    if accel._tf32_parts():
        assert cudnn.conv.fp32_precision == "tf32"


@pytest.mark.parametrize("message", [
    "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    "GET was unable to find an engine to execute this computation",
    "CUDA out of memory. Tried to allocate 2.00 GiB",
])
def test_cuda_library_allocation_failures_count_as_out_of_memory(message):
    assert is_out_of_memory(RuntimeError(message), GPU)
    on_cpu = is_out_of_memory(RuntimeError(message), torch.device("cpu"))
    assert on_cpu == ("out of memory" in message)  # cuDNN's words mean nothing on the CPU
    assert not is_out_of_memory(RuntimeError("shape mismatch"), GPU)


class _FailingWindows:
    """An Accelerated stand-in on the CPU that fails like cuDNN under memory pressure for
    windows larger than `limit` pixels."""

    def __init__(self, net, limit: int, message: str) -> None:
        self.net, self.limit, self.message = net, limit, message
        self.lock = threading.RLock()
        self.windows, self.releases = [], 0

    def release(self):
        self.releases += 1

    def __call__(self, x):
        self.windows.append(tuple(x.shape[-2:]))
        if x.shape[-2] * x.shape[-1] > self.limit:
            raise RuntimeError(self.message)
        return self.net(x)


def test_tiler_shrinks_on_cudnn_allocation_failures(fused_models, monkeypatch):
    """On a CUDA device the Tiler takes cuDNN's "CUDNN_STATUS_ALLOC_FAILED" for what it is and
    halves its tiles; the result is unchanged."""
    model = fused_models[2]
    monkeypatch.setattr(inference, "free_memory", lambda device: 1 << 40)
    net = _FailingWindows(prepared(model, torch.device("cpu"), torch.float32), 90 * 90,
                          "cuDNN error: CUDNN_STATUS_ALLOC_FAILED")
    image = crop("Set14", 0, 96, 96)
    tiler = inference.Tiler(net, model, context_for(model), (96, 96), torch.float32, GPU,
                            torch.device("cpu"), 0, 0, 1, None, None)
    target = torch.empty(192, 192, 3)
    with torch.inference_mode():
        tiler.run(image.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last),
                  target=target)
    assert net.windows[0] == (96, 96) and net.releases == 1 and tiler.tile == 48
    assert (target - reference(model, image)[0]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("channels, alpha", [(4, "model"), (2, "model"), (4, "bicubic"), (3, "model")])
def test_alpha_with_the_canvas_kept_off_the_compute_device(fused_models, monkeypatch, channels, alpha):
    """Little free memory sends the canvas to the output device (here meta, standing in for
    the host beside a GPU): the alpha pass must work where the canvas is."""
    monkeypatch.setattr(inference, "free_memory", lambda device: 150_000)
    image = torch.rand(1, 40, 48, channels, generator=torch.Generator().manual_seed(channels))
    image[..., -1] = torch.where(image[..., -1] > 0.5, 1.0, image[..., -1])  # flat and not
    out = upscale(fused_models[2], image, device="cpu", output_device="meta", alpha=alpha,
                  tile_size=32)
    assert out.device.type == "meta" and out.shape == (1, 80, 96, channels)


def test_output_device_is_resolved_against_the_compute_device():
    cpu = torch.device("cpu")
    assert resolve_output_device("cuda", GPU) == GPU  # not the current device
    assert resolve_output_device(torch.device("cuda"), GPU) == GPU
    assert resolve_output_device("cuda:0", GPU) == torch.device("cuda", 0)
    assert resolve_output_device(None, GPU) == cpu
    assert resolve_output_device("cpu", GPU) == cpu
    assert resolve_output_device("meta", cpu) == torch.device("meta")


def test_same_device_output_is_recognised(fused_models, monkeypatch):
    """"cpu" as output device with the CPU computing is the same device: the result is
    counted in its memory plan (smaller tiles when memory is short)."""
    from rt4ksr_nodes.engine.memory import MARGIN

    model = fused_models[2]
    image = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    # Enough for a whole frame unless the results are held on the device too.
    free = sum(inference.memory_needed(model, image, device="cpu", output_device=where) - MARGIN
               for where in ("meta", "cpu")) // 2
    monkeypatch.setattr(inference, "free_memory", lambda device: free)
    tiles = []
    for output_device in ("meta", "cpu", torch.device("cpu")):
        updates = []
        upscale(model, image, device="cpu", output_device=output_device,
                progress=lambda *a: updates.append(a))
        tiles.append(updates[-1][1])
    assert tiles[0] == 2 and tiles[1] == tiles[2] > 2  # one tile per image only on meta


def test_frame_stream_can_be_cancelled(fused_models):
    frames = [np.zeros((64, 64, 3), np.uint8)] * 3
    seen = []
    stream = upscale_frames(fused_models[2], frames, device="cpu", tile_size=32,
                            cancel=lambda: len(seen) >= 1)
    seen.append(next(stream))
    with pytest.raises(UpscaleCancelled):
        next(stream)


def test_memory_needed_matches_the_plan(fused_models, monkeypatch):
    """The free memory memory_needed() names is what the Tiler needs to take the frame whole
    with its canvas on the device (the margin aside), and not much more."""
    from rt4ksr_nodes.engine.memory import MARGIN

    model = fused_models[2]
    image = torch.zeros(1, 100, 150, 3)
    cpu = torch.device("cpu")
    for dtype in (torch.float32, torch.float16):
        needed = inference.memory_needed(model, image, precision=dtype, device="cpu",
                                         output_device="meta")
        for free, whole in ((needed - MARGIN, True), (0.85 * (needed - MARGIN), False)):
            monkeypatch.setattr(inference, "free_memory", lambda device, free=free: int(free))
            tiler = inference.make_tiler(model, (100, 150), dtype, cpu,
                                         output_device=torch.device("meta"))
            on_device = tiler.canvas_spec["device"] == cpu
            assert (tiler.tile >= 150 and on_device) is whole
