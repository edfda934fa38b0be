"""The pack inside a real ComfyUI server: /object_info lists the nodes, the x2 example workflow
runs, the saved PNG has the engine's pixels, and the headless runner saves the same pixels.

Skipped unless COMFYUI_DIR names a ComfyUI checkout (COMFYUI_PYTHON: the Python with its
requirements; default: this one).
"""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
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
from rt4ksr_nodes.host import bridge

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
def stalling_mirror():
    """The server's only source of released models: a mirror that answers HEAD, then sends the
    first 64 KiB of any GET and stalls (url, requests received)."""
    from rt4ksr_nodes.files.weights import releases

    size, requests, release = releases()["rt4ksr_x2"].size, [], threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_HEAD(self):
            requests.append(("HEAD", self.path))
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()

        def do_GET(self):
            requests.append(("GET", self.path))
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            self.wfile.write(bytes(1 << 16))
            self.wfile.flush()
            release.wait(120)

    mirror = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    mirror.daemon_threads = True
    threading.Thread(target=mirror.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{mirror.server_address[1]}", requests
    release.set()
    mirror.shutdown()
    mirror.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, stalling_mirror):
    base = tmp_path_factory.mktemp("comfy")
    (base / "custom_nodes").mkdir()
    # a folder name unlike the inner package, as a clone from the registry would have
    (base / "custom_nodes" / "ComfyUI-RT4KSR").symlink_to(ROOT, target_is_directory=True)
    (base / "input").mkdir()
    for image in (ROOT / "workflows" / "inputs").iterdir():
        shutil.copy(image, base / "input")
    # The releases dropped where ComfyUI users put models, as on an air-gapped machine: no
    # offline source, and a mirror that stalls. They are used as they are.
    (base / "models" / "rt4ksr").mkdir(parents=True)
    shutil.copy(checkpoint_path(3), base / "models" / "rt4ksr" / "rt4ksr_x3.pth")
    (base / "models" / "upscale_models").mkdir()
    shutil.copy(checkpoint_path(2), base / "models" / "upscale_models" / "rt4ksr_x2.pth")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RT4KSR_WEIGHTS_FROM"}
    env.update(RT4KSR_WEIGHTS_DIR=str(base / "weights"), RT4KSR_WEIGHTS_MIRROR=stalling_mirror[0])
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
    # Not a number through the API: ComfyUI's own conversion error and ours, no exception.
    prompt[upscaler]["inputs"]["tile_size"] = "abc"
    with pytest.raises(urllib.error.HTTPError) as refused:
        http(url + "/prompt", {"prompt": prompt, "client_id": "rt4ksr-test"})
    answer = json.loads(refused.value.read())
    errors = answer["node_errors"][upscaler]["errors"]
    assert {e["type"] for e in errors} == {"invalid_input_type", "custom_validation_failed"}
    assert any("tile_size must be a whole number, got 'abc'" in e["details"] for e in errors)
    assert "exception" not in json.dumps(answer["error"]).lower()
    prompt["90"] = {"class_type": "PrimitiveInt", "inputs": {"value": 64}}
    prompt[upscaler]["inputs"]["tile_size"] = ["90", 0]
    assert http(url + "/prompt", {"prompt": prompt, "client_id": "rt4ksr-test", "number": -1})["prompt_id"]


def batch_prompt(folder: str, subfolder: str, **saver) -> dict:
    """The folder batch example on `folder` (inside the input folder) into `subfolder`."""
    prompt = json.loads((ROOT / "workflows" / "rt4ksr_x2_folder_batch.api.json").read_text())
    prompt["1"]["inputs"].update(folder=folder, pattern="*")
    prompt["4"]["inputs"].update(subfolder=subfolder, **saver)
    return prompt


def refused(url: str, prompt: dict) -> list[str]:
    """The server's validation errors for `prompt` (which it must refuse)."""
    with pytest.raises(urllib.error.HTTPError) as error:
        http(url + "/prompt", {"prompt": prompt, "client_id": "rt4ksr-test"})
    return [e["details"] for node in json.loads(error.value.read())["node_errors"].values() for e in node["errors"]]


def test_batch_names_and_bit_depths_are_checked_by_the_servers_validator(server):
    """Issue 19, items 5, 7 and 10: only the documented template fields (no format spec: no
    10 MB message), names that are plain file names, no silent 8-bit '16-bit' JPEG."""
    url, base = server
    write_tiny(base / "input" / "checks", "a.png")
    for saver, message in [
        ({"name_template": "{stem:>10000000}"}, "'{stem:>10000000}' is not allowed"),
        ({"name_template": "{stem.__class__}"}, "'{stem.__class__}' is not allowed"),
        ({"name_template": ""}, "the file name is empty"),
        ({"name_template": ".."}, "the file name is '..'"),
        ({"format": "jpeg", "bit_depth": "16"}, "jpeg stores 8 bits per channel"),
    ]:
        details = refused(url, batch_prompt("checks", "checks_out", **saver))
        assert any(message in d for d in details) and max(map(len, details)) < 1000, details
    (base / "input" / "checks" / "empty").mkdir()
    assert any("no image in 'checks/empty' matches '*'" in d for d in refused(url, batch_prompt("checks/empty", "x")))


def write_tiny(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        Image.new("RGB", (8, 8), (index * 40, 90, 200)).save(folder / name)


def test_batch_collisions_and_existing_outputs_are_refused_before_the_model_runs(server):
    """Issue 19 item 4 and issue 13 item 3 in the server: `a.png` + `a.webp` with {stem}--2x,
    and a second run over outputs that exist, fail at the loader, before any image is
    computed; nothing is written, nothing replaced."""
    url, base = server
    write_tiny(base / "input" / "clash", "a.png", "a.webp")
    history, prompt_id = run_prompt(url, base, batch_prompt("clash", "clash_out"))
    status = history[prompt_id]["status"]
    assert status["status_str"] == "error"
    failure = next(m[1] for m in status["messages"] if m[0] == "execution_error")
    # The loader runs before the model (node 3), so the model never ran.
    assert failure["node_id"] == "1" and "would both be saved as" in failure["exception_message"]
    assert not (base / "output" / "clash_out").exists()

    write_tiny(base / "input" / "again", "b.png")
    history, prompt_id = run_prompt(url, base, batch_prompt("again", "again_out"))
    assert history[prompt_id]["status"]["status_str"] == "success"
    saved = base / "output" / "again_out" / "b--2x.png"
    before = saved.stat().st_mtime_ns
    again = batch_prompt("again", "again_out")
    again["1"]["inputs"]["pattern"] = "*.png"  # the loader runs again (not taken from ComfyUI's cache)
    history, prompt_id = run_prompt(url, base, again)
    failure = next(m[1] for m in history[prompt_id]["status"]["messages"] if m[0] == "execution_error")
    assert failure["node_id"] == "1" and "already exist" in failure["exception_message"]
    assert saved.stat().st_mtime_ns == before
    again["4"]["inputs"]["overwrite"] = True
    history, prompt_id = run_prompt(url, base, again)
    assert history[prompt_id]["status"]["status_str"] == "success" and saved.stat().st_mtime_ns != before


def test_folder_loader_says_what_it_skipped_on_the_node(server):
    """Issue 19 item 10: a corrupt file is skipped, and the node's UI output (kept in the
    history) says so; the run still succeeds with the others."""
    url, base = server
    write_tiny(base / "input" / "skips", "good.png")
    (base / "input" / "skips" / "broken.png").write_bytes(b"\x89PNG broken")
    history, prompt_id = run_prompt(url, base, batch_prompt("skips", "skips_out"))
    entry = history[prompt_id]
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert any("broken.png" in line for line in entry["outputs"]["1"]["text"])
    assert [i["filename"] for i in entry["outputs"]["4"]["images"]] == ["good--2x.png"]


def test_releases_in_models_folders_are_used_offline(server, stalling_mirror):
    """The releases copied into models/rt4ksr/ and models/upscale_models/ ran the examples with
    no offline source: the mirror was never asked, nothing was installed."""
    url, base = server
    for name in ("rt4ksr_x3_720p_to_4k", "rt4ksr_x2_1080p_to_4k"):
        prompt = json.loads((ROOT / "workflows" / f"{name}.api.json").read_text())
        history, prompt_id = run_prompt(url, base, prompt)
        assert history[prompt_id]["status"]["status_str"] == "success", history[prompt_id]["status"]
    assert stalling_mirror[1] == [] and not (base / "weights").exists()


def test_cancel_stops_a_stalled_download(server, stalling_mirror):
    """With no local copy the release is fetched from the mirror, which stalls after 64 KiB:
    Cancel ends the prompt as interrupted within seconds (not after the retries' timeouts),
    and nothing is left in the weights folder."""
    url, base = server
    local = base / "models" / "upscale_models" / "rt4ksr_x2.pth"
    held = base / "held_rt4ksr_x2.pth"
    local.rename(held)
    try:
        prompt = json.loads(WORKFLOW.read_text())
        prompt["4"]["inputs"]["filename_prefix"] = "cancelled/x2"
        prompt_id = http(url + "/prompt", {"prompt": prompt, "client_id": "rt4ksr-test"})["prompt_id"]
        deadline = time.time() + 60
        while ("GET", "/rt4ksr_x2.pth") not in stalling_mirror[1]:
            assert time.time() < deadline, (base / "server.log").read_text()[-4000:]
            time.sleep(0.2)
        time.sleep(1)
        cancelled = time.time()
        urllib.request.urlopen(urllib.request.Request(url + "/interrupt", data=b"{}"), timeout=30).close()
        while not (history := http(f"{url}/history/{prompt_id}")):
            assert time.time() < cancelled + 10, "the download did not stop on Cancel"
            time.sleep(0.2)
        messages = [m[0] for m in history[prompt_id]["status"]["messages"]]
        assert "execution_interrupted" in messages, history[prompt_id]["status"]
        assert [p.name for p in (base / "weights").iterdir()] == []
        assert stalling_mirror[1][0] == ("HEAD", "/rt4ksr_x2.pth")  # the validation's check
    finally:
        held.rename(local)


def test_reparameterize_save_as_runs_again_after_the_cache_is_cleared(server):
    """The same prompt after POST /free: the saved file holds the same model, so the node passes
    it through (it used to fail with FileExistsError); a bad name is refused at queue time."""
    url, base = server
    prompt = {
        "1": {"class_type": "RT4KSRModelLoader", "inputs": {"model_name": "rt4ksr_x2.pth", "reparameterize": False}},
        "2": {"class_type": "RT4KSRReparameterize", "inputs": {"model": ["1", 0], "save_as": "fused/x2_twice"}},
    }
    saved = base / "models" / "rt4ksr" / "fused" / "x2_twice.safetensors"
    for run in range(3):  # ComfyUI applies /free after the next prompt: the third one runs anew
        history, prompt_id = run_prompt(url, base, prompt)
        assert history[prompt_id]["status"]["status_str"] == "success", history[prompt_id]["status"]
        if run == 0:
            written = saved.read_bytes()
            urllib.request.urlopen(urllib.request.Request(
                url + "/free", data=json.dumps({"free_memory": True, "unload_models": True}).encode()), timeout=30).close()
    assert saved.read_bytes() == written
    assert "already holds this model" in (base / "server.log").read_text()
    prompt["2"]["inputs"]["save_as"] = "C:\\evil"
    with pytest.raises(urllib.error.HTTPError) as refused:
        http(url + "/prompt", {"prompt": prompt, "client_id": "rt4ksr-test"})
    errors = json.loads(refused.value.read())["node_errors"]["2"]["errors"]
    assert any("use / between folders" in e["details"] for e in errors), errors


def test_core_upscale_nodes_run_rt4ksr_as_headless(server, folders, monkeypatch):
    """ComfyUI's own Load Upscale Model + Upscale Image (using Model) on an RT4KSR file in
    models/upscale_models/ (spandrel, with the architecture this pack registers), and the
    headless runner's copies of those nodes: the same PNG pixels, bit for bit."""
    url, base = server
    info = http(url + "/object_info/UpscaleModelLoader")
    spec = info["UpscaleModelLoader"]["input"]["required"]["model_name"]
    assert "rt4ksr_x2.pth" in (spec[1]["options"] if spec[0] == "COMBO" else spec[0])
    prompt = json.loads((ROOT / "workflows" / "rt4ksr_x2_core_upscale_nodes.api.json").read_text())
    history, prompt_id = run_prompt(url, base, prompt)
    assert history[prompt_id]["status"]["status_str"] == "success", history[prompt_id]["status"]
    (saved,) = [o["images"][0] for o in history[prompt_id]["outputs"].values()]
    served = np.asarray(Image.open(base / "output" / saved["subfolder"] / saved["filename"]))

    from rt4ksr_nodes.runner import registry
    from rt4ksr_nodes.runner.execute import Runner

    models = folders[0].parent / "models"
    (models / "upscale_models").mkdir(parents=True)
    shutil.copy(checkpoint_path(2), models / "upscale_models" / "rt4ksr_x2.pth")
    monkeypatch.setattr(bridge.headless, "models_dir", models)
    for image in (ROOT / "workflows" / "inputs").iterdir():
        shutil.copy(image, folders[0])
    summary = Runner(prompt, registry.node_classes()).run()
    assert (summary.done, summary.failed) == (1, 0), summary.failures
    (written,) = folders[1].rglob("*.png")
    ours = np.asarray(Image.open(written))
    assert ours.shape == served.shape == (1440, 2560, 3)
    assert np.array_equal(ours, served)


def test_spandrel_registration_in_comfyuis_python():
    """The spandrel tests where spandrel imports (it needs torchvision): ComfyUI's Python."""
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    result = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_spandrel_arch.py"],
                            cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stdout[-4000:]
    # only the spandrel-absent test may skip there
    assert re.search(r"(\d+) passed, 1 skipped", result.stdout) and "spandrel is not importable" not in result.stdout


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
