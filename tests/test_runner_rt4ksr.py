"""End to end with the pack's RT4KSR nodes: example workflows convert exactly, and a folder
batch through Load RT4KSR Model -> Upscale Image (RT4KSR) gives the engine's pixels."""

import json

import numpy as np
import torch
import pytest
from PIL import Image

from ground_truth import ROOT, checkpoint_path, shared_path
from runner_helpers import folders  # noqa: F401 - fixture
from rt4ksr_nodes import load_model, upscale
from rt4ksr_nodes.nodes.batch import _as_comfy
from rt4ksr_nodes.files.images import read_image
from rt4ksr_nodes.runner import convert, registry
from rt4ksr_nodes.runner.execute import Runner
from rt4ksr_nodes.runner.validate import validate


@pytest.mark.parametrize("name", ["rt4ksr_x2_1080p_to_4k", "rt4ksr_x3_720p_to_4k"])
def test_example_workflows_convert_exactly(name):
    ui = json.loads((ROOT / "workflows" / f"{name}.json").read_text())
    api = json.loads((ROOT / "workflows" / f"{name}.api.json").read_text())
    assert convert.to_api(ui) == api


def test_folder_batch_through_rt4ksr_matches_the_engine(folders, monkeypatch):
    monkeypatch.setenv("RT4KSR_WEIGHTS_FROM", str(shared_path("weights")))
    sources = sorted(shared_path("images", "Set5").glob("*.png"))[:3]
    for source in sources:
        with Image.open(source) as img:
            img.convert("RGB").crop((0, 0, 40, 34)).save(folders[0] / source.name)
    prompt = {
        "1": {"class_type": "RT4KSRLoadImageFolder", "inputs": {"folder": "", "pattern": "*.png", "recursive": False}},
        "2": {"class_type": "RT4KSRModelLoader", "inputs": {"model_name": "rt4ksr_x2.pth", "reparameterize": True}},
        "3": {"class_type": "RT4KSRUpscale", "inputs": {"model": ["2", 0], "image": ["1", 0], "tile_size": 0,
                                                         "precision": "fp32", "mask": ["1", 1]}},
        "4": {"class_type": "RT4KSRSaveImageBatch", "inputs": {
            "images": ["3", 0], "mask": ["3", 1], "path": ["1", 2], "name_template": "{stem}_x2", "subfolder": "sr",
            "format": "png", "bit_depth": "16", "quality": 95}},
    }
    classes = registry.node_classes()
    assert validate(prompt, classes) == []
    summary = Runner(prompt, classes).run()
    assert (summary.done, summary.failed) == (3, 0), summary.failures
    model = load_model(checkpoint_path(2))
    for source in sources:
        image, _ = _as_comfy(read_image(folders[0] / source.name))
        expected = upscale(model, image, precision="fp32")[0].numpy()
        written = read_image(folders[1] / "sr" / f"{source.stem}_x2.png")
        assert written.bits == 16 and written.pixels.shape == (68, 80, 3)
        assert np.abs(written.pixels - np.clip(expected, 0, 1)).max() <= 0.5 / 65535 + 1e-6


def test_rgba_texture_example_runs_headless(folders, monkeypatch):
    """Load Image (RGB + MASK = 1 - alpha) -> RT4KSR with the mask -> Join Image with Alpha ->
    Save Image: the engine's RGBA upscale (alpha through the model), truncated to 8 bits."""
    monkeypatch.setenv("RT4KSR_WEIGHTS_FROM", str(shared_path("weights")))
    source = ROOT / "workflows" / "inputs" / "emblem_rgba_256.png"
    (folders[0] / source.name).write_bytes(source.read_bytes())
    prompt = json.loads((ROOT / "workflows" / "rt4ksr_x2_rgba_texture.api.json").read_text())
    classes = registry.node_classes()
    assert validate(prompt, classes) == []
    summary = Runner(prompt, classes).run()
    assert (summary.done, summary.failed) == (1, 0), summary.failures
    with Image.open(folders[1] / "rt4ksr" / "texture_x2_00001_.png") as saved:
        assert saved.mode == "RGBA"
        written = np.asarray(saved).astype(np.int16)
    with Image.open(source) as img:
        rgba = torch.from_numpy(np.asarray(img.convert("RGBA")).astype(np.float32) / 255.0)[None]
    expected = upscale(load_model(checkpoint_path(2)), rgba)[0].numpy()
    expected = np.clip(255.0 * expected, 0, 255).astype(np.uint8).astype(np.int16)  # SaveImage's rule
    assert written.shape == expected.shape == (512, 512, 4)
    difference = np.abs(written - expected)
    # alpha goes through 1 - (1 - a) twice (mask in, mask out): float rounding may cross a step
    assert difference.max() <= 1 and (difference == 0).mean() > 0.999
    assert (difference[..., :3] == 0).all()
