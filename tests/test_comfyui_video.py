"""Video in a real ComfyUI server: core Load Video -> Upscale Video (RT4KSR) -> core Save Video
(the example workflow) gives the headless runner's video, frame for frame; Create Video's
frames and Get Video Components work across the pack's lazy VIDEO; Cancel stops a clip.

Skipped unless COMFYUI_DIR names a ComfyUI checkout (COMFYUI_PYTHON: its Python, with PyAV).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request

import numpy as np
import pytest
import torch

from ground_truth import ROOT, checkpoint_path
from runner_helpers import folders  # noqa: F401 - fixture
from test_comfyui_integration import http, server, stalling_mirror  # noqa: F401 - fixtures
from test_video_nodes import DROPPED
from rt4ksr_nodes import load_model, upscale

pytestmark = pytest.mark.skipif(
    not os.environ.get("COMFYUI_DIR"), reason="set COMFYUI_DIR to a ComfyUI checkout to run the server test"
)
av = pytest.importorskip("av")
EXAMPLE = "rt4ksr_x2_720p_to_1440p"


def queue(url: str, prompt: dict, extra_pnginfo: dict | None = None) -> str:
    body = {"prompt": prompt, "client_id": "rt4ksr-video-test"}
    if extra_pnginfo:
        body["extra_data"] = {"extra_pnginfo": extra_pnginfo}
    return http(url + "/prompt", body)["prompt_id"]


def finished(url: str, prompt_id: str, base) -> dict:
    deadline = time.time() + 600
    while not (history := http(f"{url}/history/{prompt_id}")):
        assert time.time() < deadline, (base / "server.log").read_text()[-4000:]
        time.sleep(1)
    return history[prompt_id]


def contents(path) -> dict:
    """Frames (RGB, FFmpeg's conversion: the same for both files), their timestamps, the audio
    packets and the container's tags."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames, stamps = [], []
        for frame in container.decode(video):
            frames.append(frame.to_ndarray(format="rgb24"))
            stamps.append(frame.pts)
        container.seek(0)
        sound = container.streams.audio
        audio = [bytes(p) for p in container.demux(sound[0]) if p.size] if sound else []
        return {"frames": np.stack(frames), "stamps": stamps, "time_base": video.time_base,
                "audio": audio, "tags": dict(container.metadata)}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255**2 / error))


@pytest.mark.parametrize("codec", ["ffv1", "h264"])
def test_example_runs_in_the_server_as_headless(server, folders, monkeypatch, codec):
    """ffv1: lossless, the decoded frames identical (up to the float rounding of two torch
    versions); h264: the example as shipped, >= 45 dB apart. Both: frame count, timestamps,
    audio packets, and the prompt and workflow in the file's tags."""
    url, base = server
    prompt = json.loads((ROOT / "workflows" / f"{EXAMPLE}.api.json").read_text())
    prompt["3"]["inputs"]["codec"] = codec
    workflow = {"workflow": json.loads((ROOT / "workflows" / f"{EXAMPLE}.json").read_text())}
    entry = finished(url, queue(url, prompt, workflow), base)
    assert entry["status"]["status_str"] == "success", entry["status"]
    saved = entry["outputs"]["4"]["images"][0]
    assert saved["subfolder"] == "video" and saved["filename"].startswith("rt4ksr_x2_1440p_")
    served = contents(base / "output" / "video" / saved["filename"])

    from rt4ksr_nodes.runner import registry
    from rt4ksr_nodes.runner.execute import Runner

    monkeypatch.setenv("RT4KSR_WEIGHTS_FROM", str(checkpoint_path(2).parent))
    shutil.copy(ROOT / "workflows" / "inputs" / prompt["1"]["inputs"]["file"], folders[0])
    summary = Runner(prompt, registry.node_classes(), extra_pnginfo=workflow).run()
    assert (summary.done, summary.failed) == (1, 0), summary.failures
    ours = contents(folders[1] / "video" / "rt4ksr_x2_1440p_00001_.mp4")

    assert served["frames"].shape == ours["frames"].shape == (12, 1440, 2560, 3)
    assert (served["stamps"], served["time_base"]) == (ours["stamps"], ours["time_base"])
    assert served["audio"] == ours["audio"] and served["audio"]
    for tags in (served["tags"], ours["tags"]):
        assert "prompt" in tags, DROPPED
        saved_prompt = json.loads(tags["prompt"])
        for node in saved_prompt.values():
            node.pop("is_changed", None)  # the server's own note of each node's change signature
        assert saved_prompt == prompt
        assert json.loads(tags["workflow"]) == workflow["workflow"]
    if codec == "ffv1":
        difference = np.abs(served["frames"].astype(np.int16) - ours["frames"].astype(np.int16))
        assert difference.max() <= 1 and (difference == 0).mean() >= 0.999
    else:
        assert psnr(served["frames"], ours["frames"]) >= 45


def test_lossless_output_is_the_engine_on_an_independent_decode(server):
    """The server's lossless file against the engine run here on the input decoded by PyAV
    with BT.709 (the clip's tags), each frame on its own."""
    url, base = server
    prompt = json.loads((ROOT / "workflows" / f"{EXAMPLE}.api.json").read_text())
    prompt["3"]["inputs"]["codec"] = "ffv1"
    prompt["4"]["inputs"]["filename_prefix"] = "video/independent"
    entry = finished(url, queue(url, prompt), base)
    assert entry["status"]["status_str"] == "success", entry["status"]
    served = contents(base / "output" / "video" / entry["outputs"]["4"]["images"][0]["filename"])["frames"]
    model = load_model(checkpoint_path(2))
    source = ROOT / "workflows" / "inputs" / prompt["1"]["inputs"]["file"]
    with av.open(str(source)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % 4:
                continue  # every fourth frame keeps the test short
            rgb = frame.reformat(format="rgb24", src_colorspace=av.video.reformatter.Colorspace.ITU709).to_ndarray()
            image = torch.from_numpy(rgb.astype(np.float32) / 255.0)[None]
            expected = (upscale(model, image)[0].clamp(0, 1) * 255).round().byte().numpy()
            assert psnr(served[index], expected) >= 40, index


def test_frames_in_and_frames_out_in_the_server(server):
    """Create Video (frames in memory, no file) into the pack's node, saved by core Save Video
    as mp4/h264, and Get Video Components asking the lazy VIDEO for its frames."""
    url, base = server
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "dusk_640x360.png"}},
        "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 24}},
        "3": {"class_type": "RT4KSRModelLoader", "inputs": {"model_name": "rt4ksr_x2.pth", "reparameterize": True}},
        "4": {"class_type": "RT4KSRUpscaleVideo", "inputs": {"model": ["3", 0], "video": ["2", 0], "tile_size": 0,
                                                              "precision": "auto", "codec": "ffv1", "crf": -1}},
        "5": {"class_type": "SaveVideo", "inputs": {"video": ["4", 0], "filename_prefix": "video/frames",
                                                     "format": "mp4", "codec": "h264"}},
        "6": {"class_type": "GetVideoComponents", "inputs": {"video": ["4", 0]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "components"}},
    }
    entry = finished(url, queue(url, prompt), base)
    assert entry["status"]["status_str"] == "success", entry["status"]
    video = contents(base / "output" / "video" / entry["outputs"]["5"]["images"][0]["filename"])
    assert video["frames"].shape == (1, 720, 1280, 3)
    with av.open(str(base / "output" / "video" / entry["outputs"]["5"]["images"][0]["filename"])) as container:
        assert container.streams.video[0].codec_context.name == "h264"  # Save Video's codec wins
    from PIL import Image

    still = np.asarray(Image.open(base / "output" / entry["outputs"]["7"]["images"][0]["filename"]))
    assert still.shape == (720, 1280, 3)
    assert psnr(still, video["frames"][0]) >= 35  # lossless frames vs the H.264 file


def test_cancel_stops_the_clip_and_leaves_no_file(server):
    """Cancel pressed while Save Video streams the clip (its temporary file exists): the prompt
    ends interrupted and neither the file nor its temporary file is left."""
    url, base = server
    prompt = json.loads((ROOT / "workflows" / "rt4ksr_x2_1080p_to_4k_video.api.json").read_text())
    prompt["4"]["inputs"]["filename_prefix"] = "video/cancelled"
    prompt_id = queue(url, prompt)
    folder = base / "output" / "video"
    deadline = time.time() + 300
    while not (folder.is_dir() and any(p.name.startswith(".cancelled") for p in folder.iterdir())):
        assert time.time() < deadline and not http(f"{url}/history/{prompt_id}"), "the clip was not being saved"
        time.sleep(0.05)
    urllib.request.urlopen(urllib.request.Request(url + "/interrupt", data=b"{}", method="POST"), timeout=30)
    entry = finished(url, prompt_id, base)
    assert any(kind == "execution_interrupted" for kind, _ in entry["status"]["messages"]), entry["status"]
    assert not [p for p in folder.iterdir() if p.name.startswith((".cancelled", "cancelled"))]


def peak_rss(base) -> int:
    """The server process's peak resident memory so far (Linux: VmHWM), in bytes."""
    from pathlib import Path

    for entry in Path("/proc").iterdir():
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
            if b"main.py" in arguments and str(base).encode() in arguments:
                status = (entry / "status").read_text()
                return 1024 * int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
        except (OSError, ValueError):
            continue
    pytest.skip("cannot find the server's process (needs Linux /proc)")


def test_server_memory_stays_flat_for_a_clip_ten_times_longer(server):
    """40 then 400 frames of 160x90 upscaled in the server: the peak memory does not grow with
    the clip (holding the 400 upscaled frames as floats would take 276 MB). The short clip is
    longer than the encoder's look-ahead, so its buffers are full in both runs."""
    from video_clips import write_clip

    url, base = server
    texture = (np.random.RandomState(0).rand(90, 160, 3) * 255).astype(np.uint8)
    peaks = []
    for count in (40, 400):
        write_clip(base / "input" / f"flat_{count}.mp4", [np.roll(texture, 2 * i, axis=1) for i in range(count)],
                   audio=True)
        prompt = json.loads((ROOT / "workflows" / f"{EXAMPLE}.api.json").read_text())
        prompt["1"]["inputs"]["file"] = f"flat_{count}.mp4"
        prompt["4"]["inputs"]["filename_prefix"] = f"video/flat_{count}"
        entry = finished(url, queue(url, prompt), base)
        assert entry["status"]["status_str"] == "success", entry["status"]
        with av.open(str(base / "output" / "video" / entry["outputs"]["4"]["images"][0]["filename"])) as container:
            assert container.streams.video[0].frames == count
        peaks.append(peak_rss(base))
    assert peaks[1] <= peaks[0] + 64 * 2**20, [p / 2**20 for p in peaks]


def test_object_info_lists_the_video_nodes(server):
    url, _ = server
    info = http(url + "/object_info")
    names = {"RT4KSRUpscaleVideo": "Upscale Video (RT4KSR)", "RT4KSRLoadVideoFolder": "Load Video Folder (RT4KSR)",
             "RT4KSRSaveVideoBatch": "Save Video Batch (RT4KSR)"}
    for name, display in names.items():
        assert info[name]["display_name"] == display
    assert info["RT4KSRUpscaleVideo"]["output"] == ["VIDEO"]
    assert info["RT4KSRUpscaleVideo"]["input"]["required"]["video"][0] == "VIDEO"
    assert info["SaveVideo"]["input"]["required"]["video"][0] == "VIDEO"  # what it feeds


def test_folder_of_clips_in_the_server(server):
    """Load Video Folder gives ComfyUI a list: Upscale Video and Save Video Batch run once per
    clip; a file that is not a video is skipped (logged), the others are saved."""
    from video_clips import pictures, write_clip

    url, base = server
    folder = base / "input" / "tiny_clips"
    folder.mkdir()
    write_clip(folder / "a.mp4", pictures(3, 32, 40), audio=True)
    write_clip(folder / "b.mkv", pictures(2, 32, 40))
    (folder / "c.mp4").write_bytes(b"not a video")
    prompt = json.loads((ROOT / "workflows" / "rt4ksr_x2_video_folder_batch.api.json").read_text())
    prompt["1"]["inputs"].update(folder="tiny_clips", pattern="*")
    prompt["4"]["inputs"]["subfolder"] = "tiny_x2"
    entry = finished(url, queue(url, prompt), base)
    assert entry["status"]["status_str"] == "success", entry["status"]
    written = sorted(p.name for p in (base / "output" / "tiny_x2").iterdir())
    assert written == ["a--2x.mp4", "b--2x.mp4"]
    with av.open(str(base / "output" / "tiny_x2" / "a--2x.mp4")) as container:
        assert (container.streams.video[0].width, container.streams.video[0].frames) == (80, 3)
        assert container.streams.audio
