"""The pack inside a real ComfyUI server: /object_info lists the nodes, the x2 example workflow
runs, the saved PNG has the engine's pixels, and the headless runner saves the same pixels.

Skipped unless COMFYUI_DIR names a ComfyUI checkout (COMFYUI_PYTHON: the Python with its
requirements; default: this one).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ground_truth import ROOT, checkpoint_path
from runner_helpers import folders  # noqa: F401 - fixture

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(
    not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run the server test"
)
WORKFLOW = ROOT / "workflows" / "rt4ksr_x2_1080p_to_4k.api.json"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def run_prompt(url: str, base: Path, prompt: dict) -> tuple[dict, str]:
    """POST `prompt` to the server, wait (up to 5 minutes) for its history entry."""
    prompt_id = http(url + "/prompt", {"prompt": prompt, "client_id": "rt4ksr-test"})["prompt_id"]
    deadline = time.time() + 300
    while not (history := http(f"{url}/history/{prompt_id}")):
        assert time.time() < deadline, (base / "server.log").read_text()[-4000:]
        time.sleep(1)
    return history, prompt_id


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy")
    (base / "custom_nodes").mkdir()
    # a folder name unlike the inner package, as a clone from the registry would have
    (base / "custom_nodes" / "ComfyUI-RT4KSR").symlink_to(ROOT, target_is_directory=True)
    (base / "input").mkdir()
    for image in (ROOT / "workflows" / "inputs").iterdir():
        shutil.copy(image, base / "input")
    port = free_port()
    env = dict(os.environ)
    env.update(
        RT4KSR_WEIGHTS_DIR=str(base / "weights"),  # the released model arrives on first use...
        RT4KSR_WEIGHTS_FROM=str(checkpoint_path(2).parent),  # ...verified, from offline files
    )
    log = open(base / "server.log", "w")
    process = subprocess.Popen(
        [
            os.environ.get("COMFYUI_PYTHON", sys.executable), "main.py", "--cpu",
            "--listen", "127.0.0.1", "--port", str(port), "--base-directory", str(base),
            "--disable-auto-launch", "--database-url", "sqlite:///:memory:",
        ],
        cwd=COMFYUI_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            http(url + "/system_stats")
            break
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.fail("ComfyUI did not start:\n" + (base / "server.log").read_text()[-4000:])
            time.sleep(1)
    yield url, base
    process.terminate()
    process.wait(timeout=30)
    log.close()


def test_object_info_lists_the_nodes(server):
    url, base = server
    info = http(url + "/object_info")
    expected = {
        "RT4KSRModelLoader": "Load RT4KSR Model",
        "RT4KSRReparameterize": "Reparameterize RT4KSR",
        "RT4KSRUpscale": "Upscale Image (RT4KSR)",
        "RT4KSRUpscaleToSize": "Upscale Image to Size (RT4KSR)",
    }
    for name, display in expected.items():
        assert info[name]["display_name"] == display
        assert info[name]["category"] == "image/upscaling/RT4KSR"
    loader = info["RT4KSRModelLoader"]["input"]["required"]
    assert {"rt4ksr_x2.pth", "rt4ksr_x3.pth"} <= set(loader["model_name"][0])
    assert info["RT4KSRUpscale"]["output"] == ["IMAGE", "MASK"]
    assert list(info["RT4KSRUpscale"]["input"]["optional"]) == ["mask"]


def test_x2_example_matches_the_engine(server):
    url, base = server
    prompt = json.loads(WORKFLOW.read_text())
    history, prompt_id = run_prompt(url, base, prompt)
    entry = history[prompt_id]
    assert entry["status"]["status_str"] == "success", entry["status"]
    saved = entry["outputs"]["4"]["images"][0]
    path = base / "output" / saved["subfolder"] / saved["filename"]
    served = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)

    from rt4ksr_nodes import load_model, upscale

    source = np.asarray(Image.open(base / "input" / prompt["1"]["inputs"]["image"]).convert("RGB"))
    image = torch.from_numpy(source.astype(np.float32) / 255.0).unsqueeze(0)
    result = upscale(load_model(checkpoint_path(2)), image)[0].numpy()
    ours = np.clip(255.0 * result, 0, 255).astype(np.uint8).astype(np.int16)  # SaveImage's rule
    assert served.shape == ours.shape == (2160, 3840, 3)
    difference = np.abs(served - ours)
    assert difference.max() <= 1
    assert (difference == 0).mean() >= 0.999


@pytest.mark.parametrize("name", ["rt4ksr_x2_1080p_to_4k", "rt4ksr_x3_720p_to_4k", "rt4ksr_x2_rgba_texture"])
def test_headless_runner_saves_the_servers_pixels(server, folders, monkeypatch, name):
    """The same API prompt through the server and through the headless runner: the same PNG
    pixels (measured identical with ComfyUI 0.3.64 on torch 2.14.1 against torch 2.13)."""
    url, base = server
    prompt = json.loads((ROOT / "workflows" / f"{name}.api.json").read_text())
    history, prompt_id = run_prompt(url, base, prompt)
    (saved,) = [o["images"][0] for o in history[prompt_id]["outputs"].values()]
    served = np.asarray(Image.open(base / "output" / saved["subfolder"] / saved["filename"])).astype(np.int16)

    from rt4ksr_nodes.runner import registry
    from rt4ksr_nodes.runner.execute import Runner

    monkeypatch.setenv("RT4KSR_WEIGHTS_FROM", str(checkpoint_path(2).parent))
    for image in (ROOT / "workflows" / "inputs").iterdir():
        shutil.copy(image, folders[0])
    summary = Runner(prompt, registry.node_classes()).run()
    assert (summary.done, summary.failed) == (1, 0), summary.failures
    (written,) = folders[1].rglob("*.png")
    ours = np.asarray(Image.open(written)).astype(np.int16)
    assert ours.shape == served.shape
    difference = np.abs(ours - served)
    assert difference.max() <= 1 and (difference == 0).mean() >= 0.999


def test_folder_batch_runs_in_the_server_as_headless(server, folders, monkeypatch):
    """Load Image Folder gives ComfyUI a list: the nodes after it run once per image, and Save
    Image Batch writes the same files, with the same pixels, as the headless runner."""
    url, base = server
    prompt = json.loads((ROOT / "workflows" / "rt4ksr_x2_folder_batch.api.json").read_text())
    history, prompt_id = run_prompt(url, base, prompt)
    assert history[prompt_id]["status"]["status_str"] == "success", history[prompt_id]["status"]
    served = sorted((base / "output" / "batch_x2").glob("*.png"))
    assert [p.name for p in served] == [
        "dusk_1280x720--2x.png", "dusk_1920x1080--2x.png", "dusk_640x360--2x.png"
    ]

    from rt4ksr_nodes.runner import registry
    from rt4ksr_nodes.runner.execute import Runner

    monkeypatch.setenv("RT4KSR_WEIGHTS_FROM", str(checkpoint_path(2).parent))
    for image in (ROOT / "workflows" / "inputs").glob("dusk_*[0-9].png"):
        shutil.copy(image, folders[0])
    summary = Runner(prompt, registry.node_classes()).run()
    assert (summary.done, summary.failed) == (3, 0), summary.failures
    for path in served:
        ours = np.asarray(Image.open(folders[1] / "batch_x2" / path.name)).astype(np.int16)
        theirs = np.asarray(Image.open(path)).astype(np.int16)
        assert ours.shape == theirs.shape
        difference = np.abs(ours - theirs)
        assert difference.max() <= 1 and (difference == 0).mean() >= 0.999


def test_server_runs_the_packs_input_checks(server):
    """The pack's VALIDATE_INPUTS inside the real validator: a tile below 32 is refused with its
    reason; linked into the check (a primitive feeding tile_size) it does not break validation."""
    url, base = server
    prompt = json.loads(WORKFLOW.read_text())
    upscaler = next(i for i, node in prompt.items() if node["class_type"] == "RT4KSRUpscale")
    prompt[upscaler]["inputs"]["tile_size"] = 16
    with pytest.raises(urllib.error.HTTPError) as refused:
        http(url + "/prompt", {"prompt": prompt, "client_id": "rt4ksr-test"})
    errors = json.loads(refused.value.read())["node_errors"][upscaler]["errors"]
    assert any("tile_size must be 0 (automatic) or 32" in e["details"] for e in errors)
    prompt["90"] = {"class_type": "PrimitiveInt", "inputs": {"value": 64}}
    prompt[upscaler]["inputs"]["tile_size"] = ["90", 0]
    assert http(url + "/prompt", {"prompt": prompt, "client_id": "rt4ksr-test", "number": -1})["prompt_id"]


def test_server_runs_save_image_batch_format_checks(server):
    """Save Image Batch's format/depth check inside the real validator (the check takes over the
    combo checks of those inputs, so it must refuse what they would), and its new optional
    compression input, defaulting to ComfyUI's level 4."""
    url, base = server
    saver_inputs = http(url + "/object_info")["RT4KSRSaveImageBatch"]["input"]
    assert saver_inputs["optional"]["compression"][1]["default"] == 4
    prompt = json.loads((ROOT / "workflows" / "rt4ksr_x2_folder_batch.api.json").read_text())
    saver = next(i for i, node in prompt.items() if node["class_type"] == "RT4KSRSaveImageBatch")
    for change, reason in (({"bit_depth": "32"}, "bit_depth 32 (floats) is for exr only"),
                           ({"format": "gif"}, "format 'gif' is not one of")):
        refused_prompt = json.loads(json.dumps(prompt))
        refused_prompt[saver]["inputs"].update(change)
        with pytest.raises(urllib.error.HTTPError) as refused:
            http(url + "/prompt", {"prompt": refused_prompt, "client_id": "rt4ksr-test"})
        errors = json.loads(refused.value.read())["node_errors"][saver]["errors"]
        assert any(reason in e["details"] for e in errors), errors
