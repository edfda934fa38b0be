"""Shared pieces of the runner tests: headless folders, small images, graph builders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rt4ksr_nodes.host import bridge


@pytest.fixture
def folders(tmp_path):
    """Fresh input/output folders configured in comfy_bridge.headless, restored afterwards."""
    saved = (bridge.headless.input_dir, bridge.headless.output_dir, bridge.headless.models_dir,
             bridge.headless.video_segments)
    input_dir, output_dir = tmp_path / "input", tmp_path / "output"
    input_dir.mkdir()
    output_dir.mkdir()
    bridge.headless.input_dir, bridge.headless.output_dir = input_dir, output_dir
    bridge.headless.interrupt.clear()
    yield input_dir, output_dir
    (bridge.headless.input_dir, bridge.headless.output_dir, bridge.headless.models_dir,
     bridge.headless.video_segments) = saved
    bridge.headless.interrupt.clear()


def write_png(path: Path, size=(32, 32), seed=0, mode="RGB") -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = (np.random.RandomState(seed).rand(size[1], size[0], channels) * 255).astype(np.uint8)
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(path)
    return pixels


def editor_node(node_id, type_, widgets=None, inputs=(), outputs=(), mode=0, title=None):
    """An editor-format node; inputs/outputs as (name, type[, link]) and (name, type, [links])."""
    node = {
        "id": node_id, "type": type_, "mode": mode, "order": node_id,
        "inputs": [dict(name=i[0], type=i[1], link=i[2] if len(i) > 2 else None, **(i[3] if len(i) > 3 else {}))
                   for i in inputs],
        "outputs": [{"name": o[0], "type": o[1], "links": list(o[2]) if len(o) > 2 else []} for o in outputs],
        "widgets_values": list(widgets or []),
    }
    if title:
        node["title"] = title
    return node


def editor_graph(nodes, links):
    """links as (id, origin, origin_slot, target, target_slot, type)."""
    return {"nodes": nodes, "links": [list(link) for link in links], "groups": [], "version": 0.4}


def scale_api(image="a.png", prefix="out/x", scale=2, method="nearest-exact"):
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": method, "scale_by": scale}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def batch_api(folder="", template="{stem}--2x", fmt="png", scale=2, pattern="*", recursive=False):
    return {
        "1": {"class_type": "RT4KSRLoadImageFolder", "inputs": {"folder": folder, "pattern": pattern, "recursive": recursive}},
        "2": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact", "scale_by": scale}},
        "3": {"class_type": "RT4KSRSaveImageBatch", "inputs": {
            "images": ["2", 0], "path": ["1", 2], "name_template": template, "subfolder": "",
            "format": fmt, "bit_depth": "8", "quality": 95}},
    }
