"""The headless runner with video: core Load Video / Save Video / Create Video / Get Video
Components as the server has them, Upscale Video (RT4KSR) streaming into Save Video, and folders
of clips (stable names, --resume, a broken clip failing alone; --backend ray: test_runner_ray.py)."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from ground_truth import ROOT, shared_path
from runner_helpers import folders, write_png  # noqa: F401 - fixture
from test_runner_frontend_pairs import sent
from test_video_nodes import DROPPED
from video_clips import decode, frame_times, packets, pictures, write_clip
from rt4ksr_nodes.runner import convert, registry
from rt4ksr_nodes.runner.execute import Runner
from rt4ksr_nodes.runner.validate import validate

av = pytest.importorskip("av")
EXAMPLES = ["rt4ksr_x2_720p_to_1440p", "rt4ksr_x2_1080p_to_4k_video", "rt4ksr_x2_video_folder_batch"]


@pytest.fixture(autouse=True)
def released_weights(monkeypatch):
    monkeypatch.setenv("RT4KSR_WEIGHTS_FROM", str(shared_path("weights")))


def upscale_prompt(file="clip.mp4", codec="ffv1", prefix="video/ComfyUI"):
    return {
        "1": {"class_type": "LoadVideo", "inputs": {"file": file}},
        "2": {"class_type": "RT4KSRModelLoader", "inputs": {"model_name": "rt4ksr_x2.pth", "reparameterize": True}},
        "3": {"class_type": "RT4KSRUpscaleVideo", "inputs": {"model": ["2", 0], "video": ["1", 0], "tile_size": 0,
                                                              "precision": "fp32", "codec": codec, "crf": -1}},
        "4": {"class_type": "SaveVideo", "inputs": {"video": ["3", 0], "filename_prefix": prefix, "format": "auto",
                                                     "codec": "auto"}},
    }


def folder_prompt(template="{stem}--2x"):
    prompt = upscale_prompt()
    prompt["1"] = {"class_type": "RT4KSRLoadVideoFolder",
                   "inputs": {"folder": "clips", "pattern": "*", "recursive": False}}
    prompt["4"] = {"class_type": "RT4KSRSaveVideoBatch", "inputs": {
        "video": ["3", 0], "path": ["1", 2], "name_template": template, "subfolder": "sr", "container": "mp4"}}
    return prompt


def run(prompt, **options):
    classes = registry.node_classes()
    assert validate(prompt, classes) == []
    return Runner(prompt, classes, **options).run()


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_workflows_convert_exactly(name):
    """Made in the real editor (ComfyUI 0.3.64, frontend 1.27.10, as tests/data/frontend's
    pairs): the .json as saved, the .api.json as exported after loading it. Load Video's upload
    button is a saved, unsent widget value, as Load Image's; its preview is sent, never saved,
    and ignored by the server."""
    ui = json.loads((ROOT / "workflows" / f"{name}.json").read_text())
    api = sent(json.loads((ROOT / "workflows" / f"{name}.api.json").read_text()))
    assert convert.to_api(ui) == api


def test_load_upscale_save_streams_with_the_servers_names_and_metadata(folders):
    write_clip(folders[0] / "clip.mp4", pictures(4, 32, 40), audio=True)
    prompt, workflow = upscale_prompt(), {"nodes": [], "links": [], "version": 0.4}
    for _ in range(2):
        summary = run(prompt, extra_pnginfo={"workflow": workflow})
        assert (summary.done, summary.failed) == (1, 0), summary.failures
    first, second = folders[1] / "video" / "ComfyUI_00001_.mp4", folders[1] / "video" / "ComfyUI_00002_.mp4"
    assert summary.outputs == [str(second)]
    assert sorted(p.name for p in (folders[1] / "video").iterdir()) == [first.name, second.name]
    assert decode(first)[0][0].shape == (64, 80, 3)
    assert [t for t, _ in frame_times(first)] == [t for t, _ in frame_times(folders[0] / "clip.mp4")]
    assert [p for p, _ in packets(first, "audio")] == [p for p, _ in packets(folders[0] / "clip.mp4", "audio")]
    with av.open(str(first)) as container:
        assert "prompt" in container.metadata, DROPPED
        assert json.loads(container.metadata["prompt"])["3"]["class_type"] == "RT4KSRUpscaleVideo"
        assert json.loads(container.metadata["workflow"]) == workflow


def test_no_metadata_leaves_the_prompt_out(folders, monkeypatch):
    from rt4ksr_nodes.host import bridge

    monkeypatch.setattr(bridge.headless, "metadata", False)
    write_clip(folders[0] / "clip.mp4", pictures(2, 32, 40))
    assert run(upscale_prompt()).done == 1
    with av.open(str(folders[1] / "video" / "ComfyUI_00001_.mp4")) as container:
        assert "prompt" not in container.metadata


def test_validation_knows_video_files_and_links(folders):
    write_clip(folders[0] / "clip.mp4", pictures(2, 32, 40))
    classes = registry.node_classes()
    assert registry.node_classes()["LoadVideo"].INPUT_TYPES()["required"]["file"][0] == ["clip.mp4"]
    missing = upscale_prompt(file="gone.mp4")
    (problem,) = validate(missing, classes)
    assert (problem.node_id, problem.kind) == ("1", "rejected_value")
    assert "Invalid video file: gone.mp4" in problem.message
    wrong = upscale_prompt()
    wrong["4"]["inputs"]["video"] = ["2", 0]  # a model into Save Video
    (problem,) = validate(wrong, classes)
    assert problem.kind == "type_mismatch" and "gives RT4KSR_MODEL but this input takes VIDEO" in problem.message
    outside = upscale_prompt(prefix="../escape/x")
    assert [p.kind for p in validate(outside, classes)] == ["rejected_value"]


def test_create_video_save_and_components_as_the_server(folders):
    """Create Video from an IMAGE batch: Save Video writes H.264 at the rounded frame rate,
    Get Video Components gives the frames back (as Load Video would decode them)."""
    pixels = write_png(folders[0] / "a.png", size=(40, 32), seed=3)
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
        "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 24.0}},
        "3": {"class_type": "SaveVideo", "inputs": {"video": ["2", 0], "filename_prefix": "video/made",
                                                     "format": "mp4", "codec": "h264"}},
        "4": {"class_type": "GetVideoComponents", "inputs": {"video": ["2", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "back"}},
    }
    assert run(prompt).done == 1
    with av.open(str(folders[1] / "video" / "made_00001_.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.average_rate, stream.frames) == ("h264", 24, 1)
    back = np.asarray(Image.open(folders[1] / "back_00001_.png"))
    assert np.abs(back.astype(int) - pixels.astype(int)).max() <= 1  # straight from memory


def test_save_video_of_a_loaded_clip_copies_its_streams(folders):
    source = folders[0] / "clip.mp4"
    write_clip(source, pictures(3, 32, 40), audio=True, metadata={"title": "kept"})
    prompt = {
        "1": {"class_type": "LoadVideo", "inputs": {"file": "clip.mp4"}},
        "2": {"class_type": "SaveVideo", "inputs": {"video": ["1", 0], "filename_prefix": "copy",
                                                     "format": "auto", "codec": "auto"}},
    }
    assert run(prompt).done == 1
    copy = folders[1] / "copy_00001_.mp4"
    for kind in ("video", "audio"):
        assert packets(copy, kind) == packets(source, kind)
    with av.open(str(copy)) as container:
        assert container.metadata["title"] == "kept"


def clips(folder):
    """clips/: one.mp4 (with audio), two.mkv, broken.mp4 (not a video), notes.txt (not listed)."""
    (folder / "clips").mkdir(parents=True)
    write_clip(folder / "clips" / "one.mp4", pictures(3, 32, 40), audio=True)
    write_clip(folder / "clips" / "two.mkv", pictures(2, 24, 40, step=5))
    (folder / "clips" / "broken.mp4").write_bytes(b"not a video")
    (folder / "clips" / "notes.txt").write_text("not listed")


def test_folder_of_clips_resume_and_a_broken_clip(folders):
    clips(folders[0])
    events = []
    summary = run(folder_prompt(), on_event=events.append)
    assert (summary.total, summary.done, summary.failed) == (3, 2, 1)
    (item, error), = summary.failures
    assert item == "broken.mp4" and "not a video FFmpeg can open" in error
    written = sorted(p.name for p in (folders[1] / "sr").iterdir())
    assert written == ["one--2x.mp4", "two--2x.mp4"]
    assert decode(folders[1] / "sr" / "two--2x.mp4")[0][0].shape == (48, 80, 3)
    before = {p: p.stat().st_mtime_ns for p in (folders[1] / "sr").iterdir()}
    again = run(folder_prompt(), resume=True)
    assert (again.skipped, again.done, again.failed) == (2, 0, 1)
    assert {p: p.stat().st_mtime_ns for p in (folders[1] / "sr").iterdir()} == before


def test_components_frame_rate_is_rounded_as_comfyui(folders):
    write_png(folders[0] / "a.png", size=(16, 16))
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
        "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 29.97}},
        "3": {"class_type": "SaveVideo", "inputs": {"video": ["2", 0], "filename_prefix": "r",
                                                     "format": "auto", "codec": "auto"}},
    }
    assert run(prompt).done == 1
    with av.open(str(folders[1] / "r_00001_.mp4")) as container:
        assert container.streams.video[0].average_rate == Fraction(2997, 100)


def test_a_clip_in_segments_stopped_then_resumed_redoes_only_the_rest(folders, monkeypatch, capsys):
    """The runner's --segment and --resume reach Upscale Video: stopped after its first segment
    (exit 130), the rerun with --resume encodes only the other three, and the clip is whole."""
    from rt4ksr_nodes.host import bridge
    from rt4ksr_nodes.runner import cli
    from rt4ksr_nodes.video import workdir

    write_clip(folders[0] / "clip.mp4", pictures(48, 32, 40), options={"g": "6"})
    workflow = folders[0].parent / "wf.json"
    workflow.write_text(json.dumps(upscale_prompt()))
    argv = [str(workflow), "--input-dir", str(folders[0]), "--output-dir", str(folders[1]), "--segment", "0.5",
            "--json"]
    real, pending = workdir.run_locally, []

    def stop_after_one(model, job, indices, progress, cancel, warn):
        real(model, job, indices[:1], progress, cancel, warn)
        bridge.headless.interrupt.set()  # what Ctrl-C does
        real(model, job, indices[1:], progress, cancel, warn)

    monkeypatch.setattr(workdir, "run_locally", stop_after_one)
    assert cli.main(argv) == 130
    assert not list((folders[1] / "video").glob("*.mp4"))
    bridge.headless.interrupt.clear()
    assert cli.main(argv) == 1  # the finished segment is not thrown away without --resume
    assert "--resume" in capsys.readouterr().out

    def record(model, job, indices, *rest):
        pending.extend(indices)
        real(model, job, indices, *rest)

    monkeypatch.setattr(workdir, "run_locally", record)
    assert cli.main([*argv, "--resume"]) == 0
    assert pending == [1, 2, 3]
    [out] = (folders[1] / "video").glob("*.mp4")
    assert [t for t, _ in frame_times(out)] == [t for t, _ in frame_times(folders[0] / "clip.mp4")]
    assert not (folders[1] / "video" / workdir.ROOT).exists()
