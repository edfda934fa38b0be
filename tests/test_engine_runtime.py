"""upscale() at run time: out-of-memory recovery, automatic tiles, progress, cancel, caching."""

from __future__ import annotations

import copy

import numpy
import pytest
import torch
from engine_helpers import crop, reference
from torch import nn

import rt4ksr_nodes.engine.accel as accel
import rt4ksr_nodes.engine.inference as inference
import rt4ksr_nodes.engine.prepare as prepare
from rt4ksr_nodes import UpscaleCancelled, UpscaleOutOfMemory, upscale
from rt4ksr_nodes.engine.device import resolve_device
from rt4ksr_nodes.engine.network import EngineNetwork
from rt4ksr_nodes.engine.prepare import prepared


class Recording(nn.Module):
    """Wraps the engine's network; logs the height x width of every input it accepts and
    raises an out-of-memory error for inputs larger than `limit` pixels."""

    def __init__(self, net, log, limit, error) -> None:
        super().__init__()
        self.net, self.log, self.limit, self.error = net, log, limit, error

    def forward(self, x):
        height, width = x.shape[-2:]
        if self.limit is not None and height * width > self.limit:
            self.log(("oom", height, width))
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.log((height, width))
        return self.net(x)


def recorded(model, monkeypatch, log, limit=None, error=torch.cuda.OutOfMemoryError):
    """A private copy of `model` (so the engine prepares it afresh) whose engine network is
    wrapped in Recording."""
    monkeypatch.setattr(
        prepare, "EngineNetwork", lambda m: Recording(EngineNetwork(m), log, limit, error)
    )
    return copy.deepcopy(model)


@pytest.mark.parametrize(
    "error", [torch.cuda.OutOfMemoryError, lambda m: RuntimeError(f"DefaultCPUAllocator: {m}")]
)
def test_out_of_memory_halves_the_tile_and_keeps_finished_tiles(fused_models, error, monkeypatch):
    model = fused_models[2]
    releases = []  # the CUDA graphs (and their memory pool) go before the tile shrinks
    monkeypatch.setattr(accel.Accelerated, "release", lambda self: releases.append(self))
    image = torch.cat([crop("Set14", 0, 96, 300), crop("Set14", 3, 96, 300)])
    calls, updates = [], []
    # Windows of 128-px cores: 96 x 144, then 96 x 160 (fails: > 14000 px), then 96 x 60.
    wrapped = recorded(model, monkeypatch, calls.append, limit=14000, error=error)
    out = upscale(
        wrapped, image, tile_size=128, device="cpu", progress=lambda *a: updates.append(a)
    )
    assert (out - reference(model, image)).abs().max().item() <= 1e-5
    accepted = [call for call in calls if call[0] != "oom"]
    assert calls[:2] == [(96, 144), ("oom", 96, 160)]
    # First image: the finished 128-px tile is kept; the failed one and the rest are redone as
    # 64-px tiles (4 + 2). Second image: 64-px tiles from the start (2 x 5).
    assert len(accepted) == 1 + 6 + 10
    assert accepted.count((96, 144)) == 1
    assert updates[0] == (1, 6) and updates[-1] == (17, 17)
    assert [done for done, _ in updates] == list(range(1, 18))
    assert len(releases) == 1


def test_out_of_memory_below_the_minimum_tile_fails_clearly(fused_models, monkeypatch):
    wrapped = recorded(fused_models[2], monkeypatch, [].append, limit=100)
    with pytest.raises(UpscaleOutOfMemory, match="out of memory on cpu even with 32-px tiles"):
        upscale(wrapped, crop("Set5", 0, 80, 80), tile_size=64, device="cpu")


def test_other_runtime_errors_propagate(fused_models, monkeypatch):
    wrapped = recorded(
        fused_models[2], monkeypatch, [].append, limit=0,
        error=lambda message: RuntimeError("shape mismatch"),
    )
    with pytest.raises(RuntimeError, match="shape mismatch"):
        upscale(wrapped, crop("Set5", 0, 40, 40), device="cpu")


def test_automatic_tile_follows_free_memory(fused_models, monkeypatch):
    model = fused_models[3]
    image = crop("Set5", 2, 120, 160)
    updates = []
    out = upscale(model, image, device="cpu", progress=lambda *a: updates.append(a))
    assert updates == [(1, 1)]  # plenty of RAM: whole frame
    # ~0.5 MB of "free" memory: only small tiles fit, and the result must not change.
    monkeypatch.setattr(inference, "free_memory", lambda device: 6_000_000)
    updates.clear()
    tiled = upscale(model, image, device="cpu", progress=lambda *a: updates.append(a))
    assert updates[-1][1] > 1
    assert (tiled - out).abs().max().item() <= 1e-5
    assert (tiled - reference(model, image)).abs().max().item() <= 1e-5


def test_progress_counts_every_tile_of_the_batch_and_alpha_passes(fused_models):
    image = torch.rand(2, 64, 96, 4, generator=torch.Generator().manual_seed(0))
    updates = []
    upscale(
        fused_models[2], image, tile_size=32, device="cpu", progress=lambda *a: updates.append(a)
    )
    # 2 x 3 tiles per pass, a colour and an alpha pass per image, 2 images.
    assert updates == [(done, 24) for done in range(1, 25)]


def test_cancel_stops_between_tiles(fused_models, monkeypatch):
    calls = []
    wrapped = recorded(fused_models[2], monkeypatch, calls.append)
    progress = []
    with pytest.raises(UpscaleCancelled):
        upscale(
            wrapped,
            crop("Set5", 0, 96, 96),
            tile_size=32,
            device="cpu",
            progress=lambda *a: progress.append(a),
            cancel=lambda: len(progress) >= 2,
        )
    assert len(calls) == 2


def test_prepared_copy_is_cached_and_the_users_model_untouched(fused_models):
    model = fused_models[2]
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    device = resolve_device("cpu")
    first = prepared(model, device, torch.float16)
    assert prepared(model, device, torch.float16) is first
    assert prepared(model, device, torch.float32) is not first
    assert first.head.weight.dtype == torch.float16
    assert first.head.weight.is_contiguous(memory_format=torch.channels_last)
    upscale(model, torch.rand(1, 8, 8, 3), precision="fp16", device="cpu")
    for name, tensor in model.state_dict().items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, before[name])
    assert model.head[0].weight.is_contiguous()


def test_cache_follows_in_place_weight_changes(fused_models):
    model = copy.deepcopy(fused_models[2])
    device = resolve_device("cpu")
    first = prepared(model, device, torch.float32)
    state = {key: value * 0.5 for key, value in model.state_dict().items()}
    model.load_state_dict(state)
    second = prepared(model, device, torch.float32)
    assert second is not first
    assert torch.equal(second.body[0][1].weight, model.body[0].conv1.rep_conv.weight)


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") in (torch.device("cpu"), torch.device("mps"))
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:1")


def test_automatic_tile_when_memory_is_short():
    # More already committed than is free: the estimate must not break, the smallest tile is
    # tried and out-of-memory handling has the last word.
    from rt4ksr_nodes.engine.memory import auto_tile
    from rt4ksr_nodes.engine.tiling import MIN_TILE

    assert auto_tile(1080, 1920, 16, per_pixel=132.0, budget=-5e6) == MIN_TILE
    assert auto_tile(1080, 1920, 16, per_pixel=132.0, budget=0) == MIN_TILE


def test_tile_size_must_be_a_whole_number(fused_models):
    image = torch.rand(1, 8, 8, 3)
    for wrong in ("abc", 64.0, True):
        with pytest.raises(TypeError, match="tile_size must be a whole number"):
            upscale(fused_models[2], image, tile_size=wrong, device="cpu")
    assert upscale(fused_models[2], image, tile_size=numpy.int64(32), device="cpu").shape[1] == 16
