"""The engine's fast paths against the fp32 reference: fused LayerNorm, CPU tiles, allocator
policy, compile switch, frame streams; the CUDA ones (graphs, compile, pinned pipeline, fp16)
skip without a GPU."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import warnings
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_helpers import as_image, crop, psnr, reference

import rt4ksr_nodes.engine.accel as accel
import rt4ksr_nodes.engine.cpu as cpu
from rt4ksr_nodes import upscale
from rt4ksr_nodes.engine import upscale_frames
from rt4ksr_nodes.engine.cpu import tune_allocator
from rt4ksr_nodes.engine.device import resolve_device
from rt4ksr_nodes.engine.inference import network_input
from rt4ksr_nodes.engine import network
from rt4ksr_nodes.engine.network import ChannelsLastLayerNorm, ConvGELU, write_blocks
from rt4ksr_nodes.engine.prepare import accelerated, prepared
from rt4ksr_nodes.engine.tiling import Box, split, window
from rt4ksr_nodes.model import load_model
from rt4ksr_nodes.model.arch import LayerNorm2d

REPO = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("scale", [2, 3])
def test_engine_network_matches_the_reference(fused_models, scale):
    """Head folded with the unshuffle, one-kernel LayerNorms, conv + GELU in one call, output
    channels reordered for the writer: together within 1e-5 of the plain model."""
    model = fused_models[scale]
    net = prepared(model, resolve_device("cpu"), torch.float32)
    kinds = {type(module) for module in net.modules()}
    assert {ChannelsLastLayerNorm, ConvGELU} <= kinds and LayerNorm2d not in kinds
    assert any(isinstance(module, LayerNorm2d) for module in model.modules())  # untouched
    image = crop("Set14", 1, 120, 96)
    x = image.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = as_image(net(x), scale)
    assert (out - reference(model, image)).abs().max().item() <= 1e-5


def test_train_time_model_runs_as_it_is(checkpoints):
    model = load_model(checkpoints[3], reparameterize=False)
    net = prepared(model, resolve_device("cpu"), torch.float32)
    assert not any(isinstance(module, ConvGELU) for module in net.modules())
    image = crop("Set5", 3, 40, 56)
    x = image.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = as_image(net(x), 3)
    assert (out - reference(model, image)).abs().max().item() <= 1e-5


@pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN (mkldnn)"
)
def test_conv_gelu_uses_onednn_and_both_paths_agree():
    assert network.onednn_conv_gelu()  # x86 and aarch64 CPU builds of torch have it
    generator = torch.Generator().manual_seed(1)
    conv = torch.nn.Conv2d(24, 24, 3, padding=1)
    x = torch.randn(1, 24, 30, 34, generator=generator).contiguous(
        memory_format=torch.channels_last)
    expected = torch.nn.functional.gelu(torch.nn.functional.conv2d(
        x.double(), conv.weight.double(), conv.bias.double(), padding=1))
    block = ConvGELU(conv)
    with torch.inference_mode():
        fused = block(x)
        block.onednn = False
        plain = block(x)
    assert fused.is_contiguous(memory_format=torch.channels_last)
    assert (fused.double() - expected).abs().max().item() <= 1e-5
    assert (plain.double() - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize("size", [(24, 36), (23, 36), (24, 31), (19, 29), (2, 5)])
def test_write_blocks_crops_and_clamps_like_pixel_shuffle(scale, size):
    """Whole blocks, a cut last row and/or column, a target smaller than one block row, and
    a strided target (the colour planes of an RGBA image)."""
    f = 2 * scale
    h, w = -(-size[0] // f), -(-size[1] // f)
    blocks = 1.5 * torch.randn(1, f * f * 3, h, w, generator=torch.Generator().manual_seed(f))
    expected = as_image(blocks, scale)[0, : size[0], : size[1]]
    rgba = torch.full((*size, 4), 7.0)
    rgb = torch.full((*size, 3), 7.0)
    for target in (rgb, rgba[..., :3]):
        write_blocks(blocks[0].permute(1, 2, 0).unflatten(-1, (f, f, 3)), target)
        assert torch.equal(target, expected)
    assert (rgba[..., 3] == 7).all()


def test_prepared_copy_and_runner_die_with_the_model(checkpoints):
    model = load_model(checkpoints[2])
    device = resolve_device("cpu")
    runner = accelerated(model, device, torch.float32)
    assert runner.net is prepared(model, device, torch.float32)  # one entry, made once
    x = torch.rand(1, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        runner(x)
    net_ref, runner_ref = weakref.ref(runner.net), weakref.ref(runner)
    del model, runner
    gc.collect()
    assert net_ref() is None and runner_ref() is None


def test_allocator_policy_applies_and_can_be_switched_off(monkeypatch):
    monkeypatch.setattr(cpu, "_tuned", None)
    monkeypatch.setenv(cpu.SWITCH, "0")
    assert tune_allocator() is False
    monkeypatch.setattr(cpu, "_tuned", None)
    monkeypatch.delenv(cpu.SWITCH)
    assert tune_allocator() is (cpu._libc() is not None)


_THREAD_FAULTS = """
import ctypes, threading
from rt4ksr_nodes.engine.cpu import tune_allocator
ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: faults counted in 4 KiB pages
tune_allocator()

def faults():  # minor page faults of the calling thread
    with open(f"/proc/thread-self/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[7])

def frames(counts):
    for _ in range(5):  # a 4K frame's float32 planes, allocated, filled and freed
        before = faults()
        frame = bytearray(3840 * 2160 * 3 * 4)
        counts.append(faults() - before)
        del frame

counts = []
worker = threading.Thread(target=frames, args=(counts,))
worker.start()
worker.join()
print(max(counts[2:]))
"""


@pytest.mark.skipif(not os.path.exists("/proc/thread-self/stat") or cpu._libc() is None,
                    reason="counts page faults from Linux's /proc, with glibc's malloc")
@pytest.mark.parametrize("policy", ["1", "0"])
def test_a_threads_frame_buffers_are_reused_not_faulted_in_again(policy):
    """The policy's point for writer and reader threads: outside the main thread glibc gives
    each thread an arena whose heaps hold at most 64 MiB, so every 100 MB buffer was a fresh
    mapping, faulted in page by page (24k faults). In a fresh process (a thread keeps the arena
    it got first), with the policy the thread's frames reuse the pages of earlier ones (from the
    third on: where the heap cannot grow in place, glibc maps a second region once)."""
    result = subprocess.run([sys.executable, "-c", _THREAD_FAULTS], capture_output=True, text=True,
                            env={**os.environ, cpu.SWITCH: policy}, cwd=REPO, check=True)
    later = int(result.stdout)
    pages = 3840 * 2160 * 3 * 4 // 4096
    assert later < pages // 20 if policy == "1" else later > pages // 2


def test_a_tiled_frame_has_up_to_sixteen_window_shapes():
    # Per axis: first, interior, the one before a last core thinner than the context, last.
    cores = split(Box(0, 0, 98, 98), 32)
    shapes = {(w.window.height, w.window.width) for w in (window(c, 98, 98, 16) for c in cores)}
    assert len(shapes) == 16 == accel.MAX_GRAPHS


def test_cudnn_autotune_restores_the_setting_after_overlapping_calls(monkeypatch):
    cudnn = torch.backends.cudnn
    monkeypatch.setattr(cudnn, "benchmark", False)
    first, second = accel._autotune.held(), accel._autotune.held()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # exits out of order, as threads may
    assert cudnn.benchmark is True
    second.__exit__(None, None, None)
    assert cudnn.benchmark is False


def test_failing_compiler_falls_back_to_eager(fused_models, monkeypatch):
    def broken(*args, **kwargs):
        def fail(x):
            raise RuntimeError("no working C++ compiler")

        return fail

    monkeypatch.setattr(torch, "compile", broken)
    model = fused_models[2]
    runner = accel.Accelerated(prepared(model, resolve_device("cpu"), torch.float32),
                               torch.device("cpu"), "always")
    image = crop("Set5", 0, 40, 40)
    x = image.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), pytest.warns(UserWarning, match="torch.compile failed"):
        out = runner(x)
    assert runner.compile_policy == "never" and not runner.compiled
    expected = reference(model, image)
    assert (as_image(out, 2) - expected).abs().max().item() <= 1e-5


def test_compiled_network_matches_on_cpu(fused_models):
    """Inductor on the CPU (needs the C++ compiler; ~30 s cold): same result as the reference
    for window shapes of a tiled frame, which the automatic dynamic shapes compile together."""
    model = fused_models[3]
    runner = accel.Accelerated(prepared(model, resolve_device("cpu"), torch.float32),
                               torch.device("cpu"), "always")
    for height, width in [(48, 64), (64, 48), (50, 80)]:
        image = crop("Set5", 2, height, width)
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # a fallback to eager would warn
            out = runner(_engine_input(image, torch.device("cpu"), torch.float32))
        assert runner.compiled
        expected = reference(model, image)
        assert (as_image(out, 3) - expected).abs().max() <= 1e-5


def _engine_input(image: torch.Tensor, device, dtype) -> torch.Tensor:
    """The network's input as the engine makes it (network_input, under inference mode when
    the caller is): built any other way, dynamo would compile once more for the engine."""
    return network_input(image.permute(0, 3, 1, 2), device, dtype)


def _quantised(model, frame: np.ndarray) -> torch.Tensor:
    expected = reference(model, torch.from_numpy(frame).float().div(255).unsqueeze(0))[0]
    return (expected * 255).round().to(torch.uint8)


def _frames(sizes) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def _assert_stream_matches(model, frames, device, precision, max_levels):
    outputs = list(upscale_frames(model, frames, device=device, precision=precision))
    assert len(outputs) == len(frames)
    for frame, out in zip(frames, outputs):
        expected = _quantised(model, frame)
        assert out.dtype == torch.uint8 and out.device.type == "cpu"
        assert out.shape == expected.shape
        assert (out.int() - expected.int()).abs().max().item() <= max_levels
    return outputs


@pytest.mark.parametrize("scale", [2, 3])
def test_frame_stream_equals_the_quantised_reference(fused_models, scale):
    # Sizes change mid-stream (odd ones too); fp32 rounding differences may flip a level.
    frames = _frames([(40, 56), (40, 56), (33, 47), (40, 56)])
    outputs = _assert_stream_matches(fused_models[scale], frames, "cpu", "fp32", 1)
    expected = _quantised(fused_models[scale], frames[0])
    assert (outputs[0] != expected).float().mean().item() < 1e-3


def test_frame_stream_leaves_inference_mode_to_the_consumer(fused_models):
    frames = _frames([(24, 32)] * 3)
    for out in upscale_frames(fused_models[2], frames, device="cpu", precision="fp32"):
        assert not torch.is_inference_mode_enabled()
        assert not out.is_inference()
        out[0, 0] = 0  # an ordinary tensor: the consumer may update it in place


def test_frame_stream_checks_its_input(fused_models):
    with pytest.raises(ValueError, match="uint8"):
        list(upscale_frames(fused_models[2], [np.zeros((8, 8, 3), np.float32)], device="cpu"))


@needs_cuda
def test_cuda_canvas_kept_on_the_host_when_the_device_is_short(fused_models, monkeypatch):
    """Little free GPU memory: small tiles, and the canvas (fp16, not the direct path) on the
    host, so every tile is written from the GPU into host memory."""
    import rt4ksr_nodes.engine.inference as inference

    monkeypatch.setattr(inference, "free_memory", lambda device: 4_000_000)
    model = fused_models[3]
    image = crop("Set14", 2, 200, 240)
    updates = []
    out = upscale(model, image, device="cuda", progress=lambda *a: updates.append(a))
    assert updates[-1][1] > 1  # tiled
    assert psnr(out, reference(model, image)) >= 50
    # RGBA, alpha through the model: the alpha pass works where the canvas is (the host).
    rgba = torch.cat([image, image[..., :1]], dim=-1)
    out = upscale(model, rgba, device="cuda")
    assert out.shape[-1] == 4 and psnr(out[..., :3], reference(model, image)) >= 50


@needs_cuda
def test_cuda_fp32_is_fp32(fused_models):
    """TF32 (cuDNN's default for fp32 convolutions on Ampere and later) is off for fp32: the
    result stays within fp32 rounding of the CPU reference (TF32 is ~1e-3 off at x3)."""
    model = fused_models[3]
    image = crop("Set14", 2, 96, 128)
    out = upscale(model, image, device="cuda", precision="fp32")
    assert (out - reference(model, image)).abs().max().item() <= 1e-4


def _cuda_inputs(device, *indices):
    return [
        crop("Set14", index, 128, 160).permute(0, 3, 1, 2).to(device, torch.float16)
        .contiguous(memory_format=torch.channels_last)
        for index in indices
    ]


def _assert_replays_follow_their_inputs(net, inputs, calls):
    """Inputs in turn: each output equals eager on its own input (a graph ignoring its input
    would repeat the other's; fp16 kernels may differ in the last bit)."""
    with accel._call_settings(net.device, inputs[0].dtype):
        eager = [net.net(x).clone() for x in inputs]
    assert (eager[0] - eager[1]).abs().max().item() > 0.1
    outputs = []
    for turn in range(calls):
        out = net(inputs[turn % 2])
        torch.testing.assert_close(out, eager[turn % 2], rtol=0, atol=2e-3)
        outputs.append(out)
    return outputs


@needs_cuda
def test_cuda_graphs_replay_each_input(fused_models):
    device = resolve_device("cuda")
    net = accel.Accelerated(prepared(fused_models[2], device, torch.float16), device, "never")
    with torch.inference_mode(), net.stream():
        inputs = _cuda_inputs(device, 2, 3)
        outputs = _assert_replays_follow_their_inputs(net, inputs, 2 * accel.GRAPH_AFTER + 4)
        assert len(net._graphs) == 1
    assert not net._graphs  # gone with the stream
    # The documented aliasing: after capture every call returns the graph's one output
    # buffer, which the next call overwrites; callers copy it first (the Tiler does).
    replayed = outputs[2 * accel.GRAPH_AFTER :]
    assert len({out.data_ptr() for out in replayed}) == 1


@needs_cuda
def test_cuda_graphs_capture_on_the_networks_device(fused_models):
    """The network on the last GPU while device 0 is current (on one GPU: the same device)."""
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    net = accel.Accelerated(prepared(fused_models[2], device, torch.float16), device, "never")
    with torch.inference_mode(), torch.cuda.device(0), net.stream():
        inputs = _cuda_inputs(device, 2, 3)
        _assert_replays_follow_their_inputs(net, inputs, 2 * accel.GRAPH_AFTER + 4)
        assert len(net._graphs) == 1


@needs_cuda
@pytest.mark.parametrize("precision, max_levels", [("fp32", 1), ("fp16", 2)])
def test_cuda_pinned_pipeline_matches(fused_models, precision, max_levels):
    frames = _frames([(96, 128)] * (accel.GRAPH_AFTER + 3) + [(75, 61), (96, 128)])
    _assert_stream_matches(fused_models[2], frames, "cuda", precision, max_levels)


@needs_cuda
def test_cuda_compiled_network_matches(fused_models):
    model = fused_models[3]
    device = resolve_device("cuda")
    runner = accel.Accelerated(prepared(model, device, torch.float16), device, "always")
    image = crop("Set5", 2, 96, 128)
    with torch.inference_mode(), runner.stream():
        x = _engine_input(image, device, torch.float16)
        outputs = [runner(x).clone() for _ in range(accel.GRAPH_AFTER + 1)]
    if not runner.compiled:
        pytest.skip("torch.compile unavailable here (fell back to eager)")
    for out in outputs:
        assert psnr(as_image(out.cpu(), 3), reference(model, image)) >= 50


@needs_cuda
def test_cuda_stream_compiles_in_the_background(fused_models):
    """RT4KSR_COMPILE=auto on a real GPU: a stream of frames goes on eager while the compiler
    works (graphs meanwhile), then switches to the compiled kernels; every frame right."""
    model = fused_models[2]
    device = resolve_device("cuda")
    runner = accelerated(model, device, torch.float16)
    if runner.compile_policy != "auto":
        pytest.skip(f"{accel.COMPILE_ENV} is not auto here")
    frames = _frames([(96, 128)] * (accel.COMPILE_AFTER + 2))
    with runner.stream():
        _assert_stream_matches(model, frames, "cuda", "fp16", 2)
        runner.wait_for_compiler()
        _assert_stream_matches(model, frames[:3], "cuda", "fp16", 2)
    assert runner.compiled or runner.compile_policy == "never"  # never: a compiler failure
