"""Headless Load Upscale Model + Upscale Image (using Model): ComfyUI's tiling and blend, its
out-of-memory halving, RT4KSR files without spandrel, and the example workflow end to end.
(The server's own PNG, bit for bit: tests/test_comfyui_integration.py.)"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ground_truth import ROOT, checkpoint_path
from runner_helpers import folders  # noqa: F401 - fixture
from rt4ksr_nodes.host import bridge as comfy_bridge
from rt4ksr_nodes import nodes as pack
from rt4ksr_nodes.runner import convert, registry
from rt4ksr_nodes.runner.core_upscale import (
    ImageUpscaleWithModel, RT4KSRUpscaleModel, UpscaleModelLoader, tile_steps, tiled_scale,
)
from rt4ksr_nodes.runner.execute import Runner
from rt4ksr_nodes.runner.validate import validate

WORKFLOW = "rt4ksr_x2_core_upscale_nodes"


@pytest.fixture
def upscale_models(tmp_path, monkeypatch):
    models = tmp_path / "models"
    (models / "upscale_models").mkdir(parents=True)
    monkeypatch.setattr(comfy_bridge.headless, "models_dir", models)
    return models / "upscale_models"


def nearest(scale):
    return lambda x: F.interpolate(x, scale_factor=scale, mode="nearest")


@pytest.mark.parametrize("size, tile, scale", [((70, 45), 32, 3), ((64, 40), 40, 2), ((33, 100), 48, 2)])
def test_tiles_blend_back_to_the_whole(size, tile, scale):
    """A pixel-local function (nearest upscaling) tiled with overlap and feathered weights gives
    the untiled result: every output pixel is covered and the weights sum to one."""
    samples = torch.rand(2, 3, *size)
    steps = []
    result = tiled_scale(samples, nearest(scale), tile, 8, scale, lambda d, t: steps.append((d, t)))
    expected = nearest(scale)(samples)
    assert result.shape == expected.shape and result.device.type == "cpu"
    torch.testing.assert_close(result, expected, rtol=0, atol=2e-6)
    total = 2 * tile_steps(size[1], size[0], tile, 8)
    assert steps == [(i + 1, total) for i in range(total)] and total > 2


def test_small_images_are_one_tile_and_exact(fused_models):
    model = RT4KSRUpscaleModel(fused_models[2])
    image = torch.rand(1, 3, 30, 20)
    with torch.no_grad():
        expected = fused_models[2](image).clamp(0, 1)
    assert torch.equal(tiled_scale(image, model, 512, 32, 2), expected)


def test_odd_sizes_pad_by_reflection_like_spandrel(fused_models):
    """An odd side is padded by one reflected pixel (a 1-px side by replication), then cropped."""
    model = RT4KSRUpscaleModel(fused_models[2])
    for height, width in ((31, 20), (20, 17), (1, 9)):
        image = torch.rand(1, 3, height, width)
        padded = F.pad(image, (0, width % 2, 0, height % 2), "reflect" if min(height, width) > 1 else "replicate")
        if height == 1:
            padded = F.pad(F.pad(image, (0, 1, 0, 0), "reflect"), (0, 0, 0, 1), "replicate")
        with torch.no_grad():
            expected = fused_models[2](padded).clamp(0, 1)[..., : 2 * height, : 2 * width]
        assert torch.equal(model(image), expected)


def test_out_of_memory_halves_the_tile_down_to_128(monkeypatch, fused_models):
    seen = []

    class Flaky(RT4KSRUpscaleModel):
        def __call__(self, image):
            seen.append(max(image.shape[-2:]))
            if max(image.shape[-2:]) > self.limit:
                raise torch.OutOfMemoryError("test")
            return super().__call__(image)

    model = Flaky(fused_models[2])
    model.limit = 256
    image = torch.rand(1, 600, 300, 3)
    (result,) = ImageUpscaleWithModel().upscale(model, image)
    assert result.shape == (1, 1200, 600, 3)
    assert seen[0] == 512 and max(seen[1:]) == 256  # 512 failed, every 256 tile ran
    model.limit, seen[:] = 100, []
    with pytest.raises(torch.OutOfMemoryError):
        ImageUpscaleWithModel().upscale(model, image)
    assert seen == [512, 256, 128]  # never below 128


def test_rt4ksr_files_load_without_spandrel(upscale_models, fused_models):
    shutil.copy(checkpoint_path(3), upscale_models / "x3.pth")
    assert UpscaleModelLoader.INPUT_TYPES()["required"]["model_name"][0] == ["x3.pth"]
    assert UpscaleModelLoader.VALIDATE_INPUTS("x3.pth") is True
    (model,) = UpscaleModelLoader().load_model("x3.pth")
    assert model.scale == 3
    image = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        assert torch.equal(model(image), fused_models[3](image).clamp(0, 1))


@pytest.mark.skipif(pack.register_with_spandrel(), reason="spandrel is installed: every architecture it knows loads")
def test_other_architectures_need_the_spandrel_extra(upscale_models):
    torch.save({"params_ema": {"conv_first.weight": torch.zeros(64, 3, 3, 3)}}, upscale_models / "esrgan.pth")
    verdict = UpscaleModelLoader.VALIDATE_INPUTS("esrgan.pth")
    assert "esrgan.pth is not an RT4KSR model" in verdict and "pip install 'rt4ksr-nodes[spandrel]'" in verdict
    assert "not in the upscale models folders" in UpscaleModelLoader.VALIDATE_INPUTS("absent.pth")
    with pytest.raises(ValueError, match=r"rt4ksr-nodes\[spandrel\]"):
        UpscaleModelLoader().load_model("esrgan.pth")


def test_example_workflow_runs_headless(folders, upscale_models, fused_models):
    """The core-node example converts exactly, validates, and saves clamp(model(x)) quantised as
    SaveImage does (a 640x360 input: two tiles wide)."""
    ui = json.loads((ROOT / "workflows" / f"{WORKFLOW}.json").read_text())
    api = json.loads((ROOT / "workflows" / f"{WORKFLOW}.api.json").read_text())
    assert convert.to_api(ui) == api
    shutil.copy(checkpoint_path(2), upscale_models / "rt4ksr_x2.pth")
    shutil.copy(ROOT / "workflows" / "inputs" / "dusk_640x360.png", folders[0] / "dusk_1280x720.png")
    assert validate(api, registry.node_classes()) == []
    summary = Runner(api, registry.node_classes()).run()
    assert (summary.done, summary.failed) == (1, 0), summary.failures
    (written,) = folders[1].rglob("*.png")
    ours = np.asarray(Image.open(written)).astype(np.int16)
    source = np.asarray(Image.open(folders[0] / "dusk_1280x720.png").convert("RGB"), dtype=np.float32) / 255
    with torch.no_grad():
        whole = fused_models[2](torch.from_numpy(source).permute(2, 0, 1)[None]).clamp(0, 1)[0].permute(1, 2, 0)
    expected = np.clip(255.0 * whole.numpy(), 0, 255).astype(np.uint8).astype(np.int16)
    assert ours.shape == expected.shape == (720, 1280, 3)
    # tiles blend where they overlap: the untiled model differs there by rounding only
    difference = np.abs(ours - expected)
    assert difference.max() <= 2 and (difference == 0).mean() > 0.98
