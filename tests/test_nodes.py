"""The node pack without ComfyUI: declarations follow ComfyUI's rules, functions give the
engine's (and the model's) result, models resolve, cache and save as documented."""

from __future__ import annotations

import re
import shutil
import time

import pytest
import torch
import torch.nn.functional as F

from ground_truth import checkpoint_path, image_paths, load_rgb
from engine_helpers import reference, reference_alpha
from rt4ksr_nodes import save_model
from rt4ksr_nodes.host import bridge as comfy_bridge
from rt4ksr_nodes.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
import rt4ksr_nodes.nodes.upscale as upscale_module
from rt4ksr_nodes.engine.memory import MARGIN
from rt4ksr_nodes.nodes.to_size import Plan, plan

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
    reloaded = NODE_CLASS_MAPPINGS["RT4KSRModelLoader"]().load("my_x3.safetensors", False)[0]
    assert reloaded.form == "fused" and reloaded.scale == 3
    for bad in ("../escape", "/tmp/abs.safetensors", "sub/../../x"):
        with pytest.raises(ValueError):
            node.fuse(train_models[2], bad)
    assert sorted(p.name for p in (models_dir / "rt4ksr").iterdir()) == ["my_x3.safetensors"]


def test_reparameterize_save_as_runs_twice(models_dir, train_models):
    """The same workflow again (ComfyUI's cache cleared, or a restart): the identical file is
    fine and the model passes through; another model under that name leaves the file alone
    with a warning, and the graph goes on."""
    node = NODE_CLASS_MAPPINGS["RT4KSRReparameterize"]
    saved = models_dir / "rt4ksr" / "my_x2.safetensors"
    node().fuse(train_models[2], "my_x2")
    before = saved.read_bytes()
    assert node.VALIDATE_INPUTS(save_as="my_x2") is True
    (again,) = node().fuse(train_models[2], "my_x2")
    assert saved.read_bytes() == before and again.scale == 2
    other = node().fuse(train_models[3], "my_x2.safetensors")
    assert other["result"][0].scale == 3
    assert "already holds another model and was left unchanged" in other["ui"]["text"][0]
    assert saved.read_bytes() == before


@pytest.mark.parametrize("name, message", [
    ("C:\\evil", r"use / between folders, never \\"),
    ("..\\win", r"use / between folders, never \\"),
    ("..", "'..' is not a file or folder name"),
    (".", "'.' is not a file or folder name"),
    ("...", "'...' is not a file or folder name"),
    ("dir/", "names a folder; give a file name, such as dir/my_model"),
    ("a//b", "'' is not a file or folder name"),
    ("   ", "begins or ends with spaces"),
    (" x", "begins or ends with spaces"),
    ("a:b", "not allowed in file names"),
    ("../escape", "'..' is not a file or folder name"),
    ("/abs", "'' is not a file or folder name"),
])
def test_reparameterize_refuses_bad_names_before_running(models_dir, name, message):
    verdict = NODE_CLASS_MAPPINGS["RT4KSRReparameterize"].VALIDATE_INPUTS(save_as=name)
    assert verdict is not True and re.search(message, verdict), verdict
    assert list((models_dir / "rt4ksr").iterdir()) == []


def test_reparameterize_refuses_a_foreign_file_in_the_way(models_dir, fused_models):
    node = NODE_CLASS_MAPPINGS["RT4KSRReparameterize"]
    (models_dir / "rt4ksr" / "notes.safetensors").write_bytes(b"not a model")
    shutil.copy(checkpoint_path(2), models_dir / "rt4ksr" / "x.pth.safetensors")
    for name in ("notes", "x.pth"):
        verdict = node.VALIDATE_INPUTS(save_as=name)
        assert "already exists and is not a model saved by Reparameterize RT4KSR" in verdict
    save_model(fused_models[2], models_dir / "rt4ksr" / "sub" / "ok.safetensors")
    assert node.VALIDATE_INPUTS(save_as="sub/ok") is True
    assert node.VALIDATE_INPUTS(save_as="") is True and node.VALIDATE_INPUTS(save_as=None) is True


def test_upscale_to_size_plans():
    # Exactly the factor: the source itself, one or three passes, nothing resampled.
    assert plan((1920, 1080), (3840, 2160), "crop", 2) == Plan(
        2, (0, 0, 1920, 1080), 1, None, (3840, 2160), (3840, 2160))
    assert plan((480, 270), (3840, 2160), "crop", 2).pass_inputs() == [
        (480, 270), (960, 540), (1920, 1080)]
    # crop: only the central 16:9 region is upscaled; before the second pass the image is
    # brought to the last pass's input size, so nothing exceeds the target.
    square = plan((1024, 1024), (3840, 2160), "crop", 2)
    assert square.region == (0, 224, 1024, 576) and square.pass_inputs() == [
        (1024, 576), (1920, 1080)]
    assert square.upscaled() == square.scaled == (3840, 2160)
    fit = plan((1024, 1024), (3840, 2160), "fit", 2)
    assert fit.pass_inputs() == [(1024, 1024), (1080, 1080)] and fit.scaled == (2160, 2160)
    # One pass overshoots: the model sees the source itself, its output is resampled down.
    portrait = plan((832, 1216), (4096, 2160), "fit", 3)
    assert portrait.pass_inputs() == [(832, 1216)] and portrait.scaled == (1478, 2160)
    # Larger than the target: no pass; the central region, rounded up to whole rows, resampled.
    assert plan((5000, 3000), (3840, 2160), "crop", 2) == Plan(
        2, (0, 93, 5000, 2813), 0, None, (3840, 2160), (3840, 2160))
    # The audit's case: 320x240 to 16384x16384 by x2 made a 40960x30720 intermediate.
    audit = plan((320, 240), (16384, 16384), "crop", 2)
    assert audit.region == (40, 0, 240, 240) and audit.passes == 7
    assert audit.pass_inputs()[-1] == (8192, 8192) and audit.upscaled() == (16384, 16384)
    assert max(w * h for w, h in audit.pass_inputs()) < 16384 * 16384 / 3


def _shrink(image, size):
    """B x H x W x C to (w, h), antialiased bicubic, clamped: as a user would resample."""
    pixels = image.permute(0, 3, 1, 2)
    out = F.interpolate(pixels, size=size[::-1], mode="bicubic", antialias=True)
    return out.clamp(0, 1).permute(0, 2, 3, 1)


def test_upscale_to_size_exact_targets(fused_models):
    node = NODE_CLASS_MAPPINGS["RT4KSRUpscaleToSize"]()
    image = image_of(crop=48)
    model = fused_models[2]
    # exactly the model's factor: no resample, the engine's pixels
    (same,) = node.upscale_to_size(model, image, "custom", 96, 96, "crop", 0, "fp32")
    assert (same - reference(model, image)).abs().max().item() <= 1e-5
    # crop 4:3: the central 48x36 rows, a pass, down to the last pass's 80x60, the last pass
    (crop,) = node.upscale_to_size(model, image, "custom", 160, 120, "crop", 0, "fp32")
    assert crop.shape == (1, 120, 160, 3)
    once = reference(model, image[:, 6:42])
    expected = reference(model, _shrink(once, (80, 60)))
    assert (crop - expected).abs().max().item() <= 1e-5
    # fit: the whole square, down to 60x60 between the passes, padded to 160 wide
    (fit,) = node.upscale_to_size(model, image, "custom", 160, 120, "fit", 0, "fp32")
    assert fit.shape == (1, 120, 160, 3)
    assert not fit[:, :, :20].any() and not fit[:, :, 140:].any()
    expected = reference(model, _shrink(reference(model, image), (60, 60)))
    assert (fit[:, :, 20:140] - expected).abs().max().item() <= 1e-5
    # one pass past the target: the source goes through the model, then down to the target
    (over,) = node.upscale_to_size(model, image, "custom", 72, 72, "crop", 0, "fp32")
    assert (over - _shrink(reference(model, image), (72, 72))).abs().max().item() <= 1e-5
    frame = torch.rand(1, 270, 480, 3)  # x8 in three passes, exactly UHD
    (uhd,) = node.upscale_to_size(model, frame, "3840x2160 (UHD 4K)", 0, 0, "crop", 0, "fp32")
    assert uhd.shape == (1, 2160, 3840, 3)


def test_upscale_to_size_shows_one_progress_bar(fused_models, monkeypatch):
    bars = []

    def factory():
        bars.append([])
        return lambda done, total: bars[-1].append((done, total))

    monkeypatch.setattr(comfy_bridge.headless, "progress_factory", factory)
    node = NODE_CLASS_MAPPINGS["RT4KSRUpscaleToSize"]()
    node.upscale_to_size(fused_models[2], image_of(crop=40), "custom", 320, 320, "crop", 32, "fp32")
    assert len(bars) == 1  # three passes, one bar
    values = [done for done, _ in bars[0]]
    assert {total for _, total in bars[0]} == {1000}
    assert values == sorted(values) and values[-1] == 1000
    # each pass has 4x the pixels of the one before: the first ends at 1/21 of the bar
    assert round(1000 / 21) in values and round(5000 / 21) in values


def test_upscale_to_size_refuses_what_cannot_fit_before_any_work(fused_models, monkeypatch):
    import rt4ksr_nodes.nodes.to_size as to_size

    runs = []
    monkeypatch.setattr(upscale_module, "upscale", lambda *a, **k: runs.append(a))
    monkeypatch.setattr(to_size, "available_ram", lambda: 200_000_000)
    node = NODE_CLASS_MAPPINGS["RT4KSRUpscaleToSize"]()
    image = image_of(crop=40)
    # 40 x 40 to 4096 x 4096: 7 passes, images of up to ~200 MB each, more than 0.8 x 200 MB
    with pytest.raises(ValueError, match=r"40x40 to 4096x4096 needs about 0\.[0-9] GB .* 0\.2 GB of RAM"):
        node.upscale_to_size(fused_models[2], image, "custom", 4096, 4096, "crop", 0, "fp32")
    assert runs == []
    # what fits in that memory runs
    monkeypatch.undo()
    monkeypatch.setattr(to_size, "available_ram", lambda: 200_000_000)
    (out,) = node.upscale_to_size(fused_models[2], image, "custom", 640, 640, "crop", 0, "fp32")
    assert out.shape == (1, 640, 640, 3)


def test_upscale_to_size_keeps_images_on_the_device_only_when_they_fit(monkeypatch):
    import rt4ksr_nodes.nodes.to_size as to_size

    gpu = torch.device("cuda", 0)
    asked = []
    monkeypatch.setattr(comfy_bridge, "free_memory", lambda size, device: asked.append(size))
    monkeypatch.setattr(to_size, "available_ram", lambda: 64 << 30)
    steps = plan((1024, 1024), (3840, 2160), "crop", 2)
    # the largest moment: the last pass's 1920x1080 input, its 3840x2160 output and its
    # fp16 canvas: 24.9 + 99.5 + 49.8 MB (independently: pixels x 3 channels x bytes)
    need = 1920 * 1080 * 3 * 4 + 3840 * 2160 * 3 * 4 + 3840 * 2160 * 3 * 2
    assert to_size.peak_bytes(steps, 1, 2) == need
    monkeypatch.setattr(to_size, "free_memory", lambda device: int(need / 0.8) + 1)
    assert to_size.placement(steps, 1, torch.float16, gpu) == gpu
    assert asked and asked[0] >= need  # ComfyUI was asked to free it
    monkeypatch.setattr(to_size, "free_memory", lambda device: need)
    assert to_size.placement(steps, 1, torch.float16, gpu) == torch.device("cpu")


def test_tile_size_of_the_wrong_type_is_refused_as_such():
    for cls in ("RT4KSRUpscale", "RT4KSRUpscaleToSize"):
        check = NODE_CLASS_MAPPINGS[cls].VALIDATE_INPUTS
        assert check(tile_size="abc") == "tile_size must be a whole number, got 'abc'"
        assert check(tile_size=12.5).startswith("tile_size must be a whole number")
        assert check(tile_size=64) is True and check(tile_size=None) is True


def test_upscale_asks_comfyui_to_free_what_the_run_holds(fused_models, monkeypatch):
    """The amount asked for is enough for the run not to tile (its canvas on the device), and
    not far above it."""
    import rt4ksr_nodes.engine.inference as inference

    asked = []
    monkeypatch.setattr(comfy_bridge, "free_memory", lambda size, device: asked.append(size))
    image = image_of(crop=64)
    updates = []
    monkeypatch.setattr(comfy_bridge.headless, "progress_factory",
                        lambda: lambda *a: updates.append(a))
    upscale_node = NODE_CLASS_MAPPINGS["RT4KSRUpscale"]()
    upscale_node.upscale(fused_models[2], image, 0, "fp32")
    assert len(asked) == 1
    for share, tiles in ((1.0, 1), (0.5, 4)):
        updates.clear()
        monkeypatch.setattr(inference, "free_memory",
                            lambda device, free=asked[0] - MARGIN: int(share * free))
        (out, _) = upscale_node.upscale(fused_models[2], image, 0, "fp32")
        assert updates[-1][1] >= tiles if share < 1 else updates[-1][1] == tiles
    assert (out - reference(fused_models[2], image)).abs().max().item() <= 1e-5


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
