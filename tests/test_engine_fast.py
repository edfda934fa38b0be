"""The engine's fast paths against the fp32 reference: fused LayerNorm, CPU tiles, allocator
policy, compile switch, frame streams; the CUDA ones (graphs, compile, pinned pipeline, fp16)
skip without a GPU."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from engine_helpers import crop, psnr, reference

import rt4ksr_nodes.engine.accel as accel
from rt4ksr_nodes import upscale
from rt4ksr_nodes.engine import upscale_frames
from rt4ksr_nodes.engine.cpu import tune_allocator
from rt4ksr_nodes.engine.device import resolve_device
from rt4ksr_nodes.engine.inference import make_tiler
from rt4ksr_nodes.engine.prepare import ChannelsLastLayerNorm, prepared
from rt4ksr_nodes.model.arch import LayerNorm2d

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("scale", [2, 3])
def test_prepared_copy_uses_single_kernel_layernorms_and_matches(fused_models, scale):
    model = fused_models[scale]
    net = prepared(model, resolve_device("cpu"), torch.float32)
    kinds = {type(module) for module in net.modules()}
    assert ChannelsLastLayerNorm in kinds and LayerNorm2d not in kinds
    assert any(isinstance(module, LayerNorm2d) for module in model.modules())  # untouched
    image = crop("Set14", 1, 120, 96)
    x = image.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = net(x).clamp(0, 1).permute(0, 2, 3, 1)
    assert (out - reference(model, image)).abs().max().item() <= 1e-5


def test_allocator_policy_applies_and_can_be_switched_off(monkeypatch):
    import rt4ksr_nodes.engine.cpu as cpu

    monkeypatch.setattr(cpu, "_tuned", None)
    monkeypatch.setenv(cpu.SWITCH, "0")
    assert tune_allocator() is False
    monkeypatch.setattr(cpu, "_tuned", None)
    monkeypatch.delenv(cpu.SWITCH)
    assert tune_allocator() is (cpu._libc() is not None)


def test_compile_policy_switch(monkeypatch):
    monkeypatch.setenv(accel.COMPILE_ENV, "sometimes")
    with pytest.raises(ValueError, match="auto, always, never"):
        accel.compile_policy()
    net = torch.nn.Identity()
    assert accel.Accelerated(net, torch.device("cpu"), "auto").compile_after is None
    assert accel.Accelerated(net, torch.device("cpu"), "always").compile_after == 1
    assert accel.Accelerated(net, torch.device("cuda"), "auto").compile_after == accel.COMPILE_AFTER
    assert accel.Accelerated(net, torch.device("cuda"), "never").compile_after is None


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
    assert runner.compile_after is None and not runner.compiled
    expected = reference(model, image)
    assert (out.clamp(0, 1).permute(0, 2, 3, 1) - expected).abs().max().item() <= 1e-5


def test_compiled_network_matches_on_cpu(fused_models):
    """Inductor on the CPU (needs the C++ compiler; ~20 s cold): same result as the reference."""
    model = fused_models[3]
    runner = accel.Accelerated(prepared(model, resolve_device("cpu"), torch.float32),
                               torch.device("cpu"), "always")
    image = crop("Set5", 2, 48, 64)
    x = image.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a fallback to eager would warn
        out = runner(x)
    assert runner.compiled
    assert (out.clamp(0, 1).permute(0, 2, 3, 1) - reference(model, image)).abs().max() <= 1e-5


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


def test_frame_stream_checks_its_input(fused_models):
    with pytest.raises(ValueError, match="uint8"):
        list(upscale_frames(fused_models[2], [np.zeros((8, 8, 3), np.float32)], device="cpu"))


@needs_cuda
@pytest.mark.parametrize("scale", [2, 3])
def test_cuda_fp16_default_is_close_to_fp32(fused_models, scale):
    model = fused_models[scale]
    image = crop("Set14", 2, 256, 320)
    out = upscale(model, image, device="cuda")  # auto: fp16, channels_last
    assert psnr(out, reference(model, image)) >= 50


@needs_cuda
def test_cuda_graphs_replay_the_same_result(fused_models, monkeypatch):
    monkeypatch.setenv(accel.COMPILE_ENV, "never")
    model = fused_models[2]
    image = crop("Set14", 2, 128, 160)
    device = resolve_device("cuda")
    net = accel.Accelerated(prepared(model, device, torch.float16), device, "never")
    x = image.permute(0, 3, 1, 2).to(device, torch.float16).contiguous(
        memory_format=torch.channels_last)
    with torch.inference_mode():
        eager = net.net(x).clone()
        outputs = [net(x).clone() for _ in range(accel.GRAPH_AFTER + 2)]
    assert len(net._graphs) == 1 and net._graphs[next(iter(net._graphs))] is not None
    for out in outputs:
        assert torch.equal(out, eager)


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
    x = image.permute(0, 3, 1, 2).to(device, torch.float16).contiguous(
        memory_format=torch.channels_last)
    with torch.inference_mode():
        outputs = [runner(x).clone() for _ in range(accel.GRAPH_AFTER + 1)]
    if not runner.compiled:
        pytest.skip("torch.compile unavailable here (fell back to eager)")
    for out in outputs:
        out = out.float().clamp(0, 1).permute(0, 2, 3, 1).cpu()
        assert psnr(out, reference(model, image)) >= 50
