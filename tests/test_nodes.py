"""The node pack without ComfyUI: declarations follow ComfyUI's rules, functions give the
engine's (and the model's) result, models resolve, cache and save as documented."""

from __future__ import annotations

import shutil
import time

import pytest
import torch
import torch.nn.functional as F

from ground_truth import checkpoint_path, image_paths, load_rgb
from engine_helpers import reference, reference_alpha
from rt4ksr_nodes import comfy_bridge, save_model
from rt4ksr_nodes.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
import rt4ksr_nodes.nodes.upscale as upscale_module
from rt4ksr_nodes.nodes.upscale import plan

SOCKET_TYPES = {"IMAGE", "MASK", "RT4KSR_MODEL", "STRING", "VIDEO"}  # STRING: a forceInput socket


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    """A ComfyUI-style models folder for the headless bridge."""
    monkeypatch.setattr(comfy_bridge.headless, "models_dir", tmp_path / "models")
    for kind in ("rt4ksr", "upscale_models"):
        (tmp_path / "models" / kind).mkdir(parents=True)
    return tmp_path / "models"


def image_of(name="butterfly", crop=64):
    path = next(p for p in image_paths("Set5") if p.stem == name)
    return load_rgb(path, crop=crop).permute(0, 2, 3, 1).contiguous()  # B x H x W x C


@pytest.mark.parametrize("class_name", sorted(NODE_CLASS_MAPPINGS))
def test_declarations_follow_comfyui_rules(class_name):
    cls = NODE_CLASS_MAPPINGS[class_name]
    assert NODE_DISPLAY_NAME_MAPPINGS[class_name]
    assert cls.CATEGORY == "image/upscaling/RT4KSR"
    assert cls.DESCRIPTION
    assert callable(getattr(cls, cls.FUNCTION))
    outputs = len(cls.RETURN_TYPES)
    assert len(cls.RETURN_NAMES) == outputs and len(cls.OUTPUT_TOOLTIPS) == outputs
    assert all(isinstance(t, str) for t in cls.RETURN_TYPES)
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"}
    # Hidden inputs are plain type names that ComfyUI fills in, never widgets or sockets.
    assert set(spec.pop("hidden", {}).values()) <= {"PROMPT", "EXTRA_PNGINFO", "UNIQUE_ID"}
    for section in spec.values():
        for name, (kind, options) in section.items():
            assert options.get("tooltip"), f"{class_name}.{name} has no tooltip"
            if isinstance(kind, list):
                assert kind and all(isinstance(c, str) for c in kind)
                assert options.get("default", kind[0]) in kind
            elif kind in ("INT", "FLOAT"):
                assert options["min"] <= options["default"] <= options["max"]
            elif kind == "BOOLEAN":
                assert isinstance(options["default"], bool)
            elif kind == "STRING" and not options.get("forceInput"):
                assert isinstance(options["default"], str)
            else:
                assert kind in SOCKET_TYPES, f"{class_name}.{name}: unknown type {kind}"


def test_the_contract_names():
    assert NODE_DISPLAY_NAME_MAPPINGS == {
        "RT4KSRModelLoader": "Load RT4KSR Model",
        "RT4KSRReparameterize": "Reparameterize RT4KSR",
        "RT4KSRUpscale": "Upscale Image (RT4KSR)",
        "RT4KSRUpscaleToSize": "Upscale Image to Size (RT4KSR)",
        "RT4KSRLoadImageFolder": "Load Image Folder (RT4KSR)",
        "RT4KSRSaveImageBatch": "Save Image Batch (RT4KSR)",
        "RT4KSRUpscaleVideo": "Upscale Video (RT4KSR)",
        "RT4KSRLoadVideoFolder": "Load Video Folder (RT4KSR)",
        "RT4KSRSaveVideoBatch": "Save Video Batch (RT4KSR)",
    }
    upscale_inputs = NODE_CLASS_MAPPINGS["RT4KSRUpscale"].INPUT_TYPES()
    assert list(upscale_inputs["required"]) == ["model", "image", "tile_size", "precision"]
    assert list(upscale_inputs["optional"]) == ["mask"]
    assert NODE_CLASS_MAPPINGS["RT4KSRUpscale"].RETURN_TYPES == ("IMAGE", "MASK")
    loader = NODE_CLASS_MAPPINGS["RT4KSRModelLoader"].INPUT_TYPES()["required"]
    assert list(loader) == ["model_name", "reparameterize"] and loader["reparameterize"][1]["default"] is True
    assert NODE_CLASS_MAPPINGS["RT4KSRModelLoader"].RETURN_TYPES == ("RT4KSR_MODEL",)


def test_upscale_node_gives_the_models_output(fused_models):
    image = image_of()
    node = NODE_CLASS_MAPPINGS["RT4KSRUpscale"]()
    for scale, model in fused_models.items():
        result, mask = node.upscale(model, image, 0, "auto")
        with torch.no_grad():
            expected = model(image.permute(0, 3, 1, 2)).clamp(0, 1).permute(0, 2, 3, 1)
        assert result.shape == (1, 64 * scale, 64 * scale, 3)
        assert (result - expected).abs().max().item() <= 1e-5
        assert mask.shape == (1, 64 * scale, 64 * scale) and not mask.any()
        tiled, _ = node.upscale(model, image, 32, "fp32")
        assert (tiled - expected).abs().max().item() <= 1e-5


def test_upscale_node_mask_goes_through_the_model_as_alpha(fused_models):
    model = fused_models[2]
    image = image_of(crop=40)
    mask = torch.zeros(1, 40, 40)
    mask[:, 10:30, 5:25] = 1.0  # ComfyUI's MASK is 1 - alpha
    result, out_mask = NODE_CLASS_MAPPINGS["RT4KSRUpscale"]().upscale(model, image, 0, "fp32", mask)
    assert (result - reference(model, image)).abs().max().item() <= 1e-5
    expected_alpha = reference_alpha(model, (1 - mask).unsqueeze(-1))
    assert (out_mask - (1 - expected_alpha)).abs().max().item() <= 1e-5
    # far inside the masked square the upscaled mask stays 1, far outside 0
    assert out_mask[0, 30:50, 20:40].min() > 0.95 and out_mask[0, :10, :].max() < 0.05


def test_upscale_node_mask_placeholder_and_mismatch(fused_models, monkeypatch):
    node = NODE_CLASS_MAPPINGS["RT4KSRUpscale"]()
    image = image_of(crop=32)
    result, mask = node.upscale(fused_models[3], image, 0, "fp32", torch.zeros(1, 64, 64))
    assert mask.shape == (1, 96, 96) and not mask.any()
    # An all-zero mask of the image's size (an opaque RGBA image) is opaque too: no alpha pass.
    calls = []
    monkeypatch.setattr(upscale_module, "upscale", lambda *a, **k: calls.append(a[1].shape[-1]) or
                        torch.zeros(1, 96, 96, a[1].shape[-1]))
    node.upscale(fused_models[3], image, 0, "fp32", torch.zeros(1, 32, 32))
    assert calls == [3]
    monkeypatch.undo()
    with pytest.raises(ValueError, match="mask is 64x64 but image is 32x32"):
        node.upscale(fused_models[3], image, 0, "fp32", torch.ones(1, 64, 64))


def test_loader_lists_released_local_and_upscale_models(models_dir, fused_models):
    save_model(fused_models[2], models_dir / "rt4ksr" / "mine" / "fused_x2.safetensors")
    shutil.copy(checkpoint_path(3), models_dir / "upscale_models" / "copy_x3.pth")
    torch.save({"params_ema": {"conv_first.weight": torch.zeros(4, 3, 3, 3)}}, models_dir / "upscale_models" / "esrgan.pth")
    (models_dir / "upscale_models" / "notes.txt").write_text("x")
    choices = NODE_CLASS_MAPPINGS["RT4KSRModelLoader"].INPUT_TYPES()["required"]["model_name"][0]
    assert choices == ["rt4ksr_x2.pth", "rt4ksr_x3.pth", "mine/fused_x2.safetensors", "upscale_models/copy_x3.pth"]
    loader = NODE_CLASS_MAPPINGS["RT4KSRModelLoader"]()
    (local,) = loader.load("mine/fused_x2.safetensors", True)
    (shared,) = loader.load("upscale_models/copy_x3.pth", False)
    assert local.scale == 2 and local.form == "fused"
    assert shared.scale == 3 and shared.form == "train"
    for bad in ("../secret.pth", "/etc/passwd", "upscale_models/../../x.pth"):
        with pytest.raises(ValueError, match="plain name"):
            loader.load(bad, True)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        loader.load("absent.pth", True)


def test_loader_reuses_a_model_until_its_file_changes(models_dir):
    path = models_dir / "rt4ksr" / "x2.pth"
    shutil.copy(checkpoint_path(2), path)
    loader = NODE_CLASS_MAPPINGS["RT4KSRModelLoader"]
    first = loader().load("x2.pth", True)[0]
    signature = loader.IS_CHANGED("x2.pth", True)
    assert loader().load("x2.pth", True)[0] is first
    assert loader().load("x2.pth", False)[0] is not first
    time.sleep(0.01)
    shutil.copy(checkpoint_path(3), path)
    assert loader.IS_CHANGED("x2.pth", True) != signature
    reloaded = loader().load("x2.pth", True)[0]
    assert reloaded is not first and reloaded.scale == 3


def test_released_model_resolves_through_verified_weights(models_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(checkpoint_path(2), cache / "rt4ksr_x3.pth")  # the wrong file under the name
    monkeypatch.setenv("RT4KSR_WEIGHTS_DIR", str(cache))
    monkeypatch.setenv("RT4KSR_WEIGHTS_FROM", str(checkpoint_path(2).parent))
    loader = NODE_CLASS_MAPPINGS["RT4KSRModelLoader"]
    # IS_CHANGED runs at every prompt: it neither fetches nor touches the files
    assert loader.IS_CHANGED("rt4ksr_x3.pth", True) == "rt4ksr_x3.pth"
    assert (cache / "rt4ksr_x3.pth").read_bytes() == checkpoint_path(2).read_bytes()
    (model,) = loader().load("rt4ksr_x3.pth", True)
    assert model.scale == 3
    assert (cache / "rt4ksr_x3.pth").read_bytes() == checkpoint_path(3).read_bytes()
    assert loader.IS_CHANGED("rt4ksr_x3.pth", True) != "rt4ksr_x3.pth"


def test_reparameterize_node(models_dir, train_models, fused_models):
    node = NODE_CLASS_MAPPINGS["RT4KSRReparameterize"]()
    (fused,) = node.fuse(train_models[2], "")
    assert fused.form == "fused" and train_models[2].form == "train"
    x = image_of(crop=32).permute(0, 3, 1, 2)
    with torch.no_grad():
        assert (fused(x) - train_models[2](x)).abs().max().item() <= 1e-5
    assert node.fuse(fused_models[3], "")[0] is fused_models[3]

    node.fuse(train_models[3], "my_x3")
    saved = models_dir / "rt4ksr" / "my_x3.safetensors"
    assert saved.is_file()
    before = saved.read_bytes()
    with pytest.raises(FileExistsError):
        node.fuse(train_models[2], "my_x3.safetensors")
    assert saved.read_bytes() == before
    for bad in ("../escape", "/tmp/abs.safetensors", "sub/../../x"):
        with pytest.raises(ValueError):
            node.fuse(train_models[2], bad)
    assert sorted(p.name for p in (models_dir / "rt4ksr").iterdir()) == ["my_x3.safetensors"]
    reloaded = NODE_CLASS_MAPPINGS["RT4KSRModelLoader"]().load("my_x3.safetensors", False)[0]
    assert reloaded.form == "fused" and reloaded.scale == 3


def test_upscale_to_size_plans():
    assert plan((1920, 1080), (3840, 2160), "crop", 2) == (1, (3840, 2160))
    assert plan((1280, 720), (3840, 2160), "crop", 3) == (1, (3840, 2160))
    assert plan((1024, 1024), (3840, 2160), "crop", 2) == (2, (3840, 3840))
    assert plan((1024, 1024), (3840, 2160), "fit", 2) == (2, (2160, 2160))
    assert plan((832, 1216), (4096, 2160), "fit", 3) == (1, (1478, 2160))
    assert plan((5000, 3000), (3840, 2160), "crop", 2) == (0, (3840, 2304))


def test_upscale_to_size_exact_targets(fused_models):
    node = NODE_CLASS_MAPPINGS["RT4KSRUpscaleToSize"]()
    image = image_of(crop=48)
    model = fused_models[2]
    # exactly the model's factor: no resample, the engine's pixels
    (same,) = node.upscale_to_size(model, image, "custom", 96, 96, "crop", 0, "fp32")
    assert (same - reference(model, image)).abs().max().item() <= 1e-5
    # two passes, then an antialiased downscale to the exact target
    (crop,) = node.upscale_to_size(model, image, "custom", 160, 120, "crop", 0, "fp32")
    assert crop.shape == (1, 120, 160, 3)
    twice = reference(model, reference(model, image)).permute(0, 3, 1, 2)
    expected = F.interpolate(twice, size=(160, 160), mode="bicubic", antialias=True).clamp(0, 1)
    assert torch.allclose(crop, expected[..., 20:140, :].permute(0, 2, 3, 1), atol=1e-5)
    (fit,) = node.upscale_to_size(model, image, "custom", 160, 120, "fit", 0, "fp32")
    assert fit.shape == (1, 120, 160, 3)
    assert not fit[:, :, :20].any() and not fit[:, :, 140:].any() and fit[:, :, 20:140].min() >= 0
    expected = F.interpolate(twice, size=(120, 120), mode="bicubic", antialias=True).clamp(0, 1)
    assert torch.allclose(fit[:, :, 20:140], expected.permute(0, 2, 3, 1), atol=1e-5)
    frame = torch.rand(1, 270, 480, 3)  # x8 in three passes, exactly UHD
    (uhd,) = node.upscale_to_size(model, frame, "3840x2160 (UHD 4K)", 0, 0, "crop", 0, "fp32")
    assert uhd.shape == (1, 2160, 3840, 3)


def test_nodes_work_under_inference_mode_as_in_comfyui(models_dir):
    # ComfyUI executes every node under torch.inference_mode(): the loaded model then holds
    # inference tensors, which behave differently (no version counters, no in-place outside).
    shutil.copy(checkpoint_path(2), models_dir / "rt4ksr" / "x2.pth")
    image = image_of(crop=32)
    with torch.inference_mode():
        (model,) = NODE_CLASS_MAPPINGS["RT4KSRModelLoader"]().load("x2.pth", False)
        (fused,) = NODE_CLASS_MAPPINGS["RT4KSRReparameterize"]().fuse(model, "")
        result, _ = NODE_CLASS_MAPPINGS["RT4KSRUpscale"]().upscale(fused, image, 0, "auto")
        (sized,) = NODE_CLASS_MAPPINGS["RT4KSRUpscaleToSize"]().upscale_to_size(
            fused, image, "custom", 64, 64, "crop", 0, "auto")
    expected = reference(model, image)
    assert (result - expected).abs().max().item() <= 1e-5
    assert (sized - expected).abs().max().item() <= 1e-5
