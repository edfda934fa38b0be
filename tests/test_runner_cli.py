"""python -m rt4ksr_nodes.run: formats in, overrides, validation output, JSON events, exit codes."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from PIL import Image

from ground_truth import ROOT, shared_path
from runner_helpers import (  # noqa: F401 - fixture
    batch_api, editor_graph, editor_node, folders, scale_api, write_png)
from rt4ksr_nodes.host import bridge
from rt4ksr_nodes.runner import cli
from rt4ksr_nodes.runner.execute import Runner


@pytest.fixture(autouse=True)
def restore_globals(monkeypatch):
    monkeypatch.setattr(bridge.headless, "metadata", bridge.headless.metadata)
    monkeypatch.setattr(bridge.headless, "device", bridge.headless.device)  # --device sets it


def main(folders, *args):
    return cli.main([*map(str, args), "--input-dir", str(folders[0]), "--output-dir", str(folders[1])])


def events(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_shared_editor_workflow_runs_with_a_title_override(folders, capsys):
    write_png(folders[0] / "mine.png", (8, 6), mode="RGBA")
    code = main(folders, shared_path("workflows", "scale_ui_workflow.json"), "--json",
                "--set", "Load Image.image=mine.png", "--set", "2.scale_by=3")
    assert code == 0
    saved = folders[1] / "harness" / "scaled_00001_.png"
    image = Image.open(saved)
    assert image.size == (24, 18)
    # The embedded editor graph shows the --set values, so dragging the PNG in gives what ran.
    expected = json.loads(shared_path("workflows", "scale_ui_workflow.json").read_text())
    expected["nodes"][0]["widgets_values"][0] = "mine.png"
    expected["nodes"][1]["widgets_values"][1] = 3
    assert json.loads(image.text["workflow"]) == expected
    assert json.loads(image.text["prompt"])["1"]["inputs"]["image"] == "mine.png"
    assert [e["event"] for e in events(capsys)] == ["start", "item", "summary"]
    # The PNG is itself a workflow: running it again gives the next file.
    assert main(folders, saved) == 0
    assert (folders[1] / "harness" / "scaled_00002_.png").is_file()


def test_invalid_workflow_lists_every_problem_and_exits_2(folders, tmp_path, capsys):
    prompt = scale_api(image="nope.png")
    prompt["2"]["inputs"]["scale_by"] = 99
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(prompt))
    assert main(folders, path, "--json") == 2
    problems = events(capsys)
    assert [(p["node"], p["class_type"], p["input"], p["kind"]) for p in problems] == [
        ("1", "LoadImage", "image", "rejected_value"), ("2", "ImageScaleBy", "scale_by", "out_of_range")]
    assert main(folders, path) == 2
    err = capsys.readouterr().err
    assert "2 problems" in err and "node 2 (ImageScaleBy), input 'scale_by'" in err


def test_bad_folders_and_devices_are_usage_errors(folders, tmp_path, capsys):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(scale_api()))
    not_a_folder = tmp_path / "o.jpg"
    not_a_folder.write_bytes(b"x")
    assert cli.main([str(path), "--output-dir", str(not_a_folder)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(folders, path, "--device", "cuda") == 2
        assert "sees no CUDA GPU" in capsys.readouterr().err


def test_outputs_that_fail_validation_are_left_out_and_the_others_run(folders, tmp_path, capsys):
    """As ComfyUI's server: the broken branch's output is left out (exit 1), the other runs."""
    write_png(folders[0] / "a.png", (8, 6))
    prompt = scale_api()
    prompt["4"] = {"class_type": "ImageScaleBy",
                   "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact", "scale_by": 99}}
    prompt["5"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "out/y"}}
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(prompt))
    assert main(folders, path, "--json") == 1
    assert [(e["event"], e.get("node"), e.get("nodes")) for e in events(capsys)][:2] == [
        ("problem", "4", None), ("outputs_left_out", None, ["5"])]
    assert Image.open(folders[1] / "out" / "x_00001_.png").size == (16, 12)
    assert not list(folders[1].glob("out/y*"))
    assert main(folders, path, "--validate-only") == 2  # a check reports any problem
    prompt["2"]["inputs"]["scale_by"] = 99  # no valid output left: refused as a whole
    path.write_text(json.dumps(prompt))
    assert main(folders, path) == 2
    assert "The workflow is not valid (2 problems)" in capsys.readouterr().err


def test_a_muted_node_loses_only_the_outputs_after_it(folders, tmp_path, capsys):
    write_png(folders[0] / "a.png", (8, 6))
    graph = editor_graph(
        [editor_node(1, "LoadImage", ["a.png", "image"],
                     outputs=[("IMAGE", "IMAGE", [1, 3]), ("MASK", "MASK")]),
         editor_node(2, "ImageScaleBy", ["nearest-exact", 2], mode=2,
                     inputs=[("image", "IMAGE", 1)], outputs=[("IMAGE", "IMAGE", [2])]),
         editor_node(3, "SaveImage", ["muted/x"], inputs=[("images", "IMAGE", 2)]),
         editor_node(4, "SaveImage", ["plain/x"], inputs=[("images", "IMAGE", 3)])],
        [(1, 1, 0, 2, 0, "IMAGE"), (2, 2, 0, 3, 0, "IMAGE"), (3, 1, 0, 4, 0, "IMAGE")])
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(graph))
    assert main(folders, path) == 1
    err = capsys.readouterr().err
    assert "left out: 3 (SaveImage)" in err and "node 3 (SaveImage), input 'images'" in err
    assert Image.open(folders[1] / "plain" / "x_00001_.png").size == (8, 6)
    assert not (folders[1] / "muted").exists()


@pytest.mark.parametrize("workflow,override,message", [
    (scale_api, "9.image=a.png", "no node with id or title '9'"),
    (scale_api, "2.image=a.png", "input 'image' of node 2 (ImageScaleBy) is connected to node 1"),
    (scale_api, "1.colour=red", "has no input 'colour'"),
    (scale_api, "1image", "expected NODE.INPUT=VALUE"),
    (batch_api, "1.recursive=flase", "'flase' is not a boolean"),
    (batch_api, "3.quality=90.9", "'90.9' is not a whole number"),
    (batch_api, "3.quality=ninety", "'ninety' is not a whole number"),
])
def test_bad_overrides_are_usage_errors(folders, tmp_path, capsys, workflow, override, message):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(workflow()))
    assert main(folders, path, "--validate-only", "--set", override) == 2
    assert message in capsys.readouterr().err


def test_validate_only_runs_nothing(folders, tmp_path):
    write_png(folders[0] / "a.png")
    path = tmp_path / "wf.json"
    path.write_text(json.dumps({"prompt": scale_api()}))
    assert main(folders, path, "--validate-only") == 0
    assert not list(folders[1].iterdir())


def test_some_failed_exits_1_and_resume_exits_0(folders, tmp_path, capsys):
    write_png(folders[0] / "a.png")
    (folders[0] / "b.png").write_bytes(b"garbage")
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(batch_api()))
    assert main(folders, path, "--jobs", "3") == 1
    assert "failed: b.png" in capsys.readouterr().err
    (folders[0] / "b.png").unlink()
    write_png(folders[0] / "b.png")
    assert main(folders, path, "--resume", "--json") == 0
    summary = events(capsys)[-1]
    assert (summary["done"], summary["skipped"], summary["failed"]) == (1, 1, 0)


def test_usage_errors(folders, tmp_path, capsys):
    assert main(folders, tmp_path / "missing.json") == 2
    assert main(folders, shared_path("workflows", "scale_api_prompt.json"), "--jobs", "0") == 2
    assert main(folders, shared_path("workflows", "scale_api_prompt.json"), "--device", "warp9") == 2


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("in_node", [True, False])
def test_ctrl_c_sets_the_flag_then_stops_at_once(folders, signum, in_node):
    """SIGTERM (schedulers, containers) is handled as Ctrl-C. The second stops at once: a
    KeyboardInterrupt only while a node runs (anywhere else it could cut the bookkeeping short)."""
    runner = Runner({}, {})
    runner.in_node = in_node
    out = cli._Output(as_json=True)
    before = signal.getsignal(signal.SIGTERM)  # (a Ray cluster started in this process has its own)
    with cli._interrupt_handler(out, runner) as handler:
        os.kill(os.getpid(), signum)
        assert bridge.headless.interrupt.is_set() and not runner.hurry.is_set()
        if in_node:
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signum)
        else:
            os.kill(os.getpid(), signum)
        assert runner.hurry.is_set()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert handler.signal == signum
    assert signal.getsignal(signal.SIGTERM) == before


def test_module_entry_point_with_default_folders(tmp_path):
    """Defaults: ./input and ./output relative to the working directory."""
    write_png(tmp_path / "input" / "a.png")
    (tmp_path / "wf.json").write_text(json.dumps(scale_api()))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "rt4ksr_nodes.run", "wf.json"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "done 1, skipped 0, failed 0 of 1" in result.stderr
    assert (tmp_path / "output" / "out" / "x_00001_.png").is_file()


def test_object_info_lets_foreign_nodes_convert_and_validate_but_not_run(folders, capsys):
    frontend = ROOT / "tests" / "data" / "frontend"
    sampler, definitions = frontend / "ksampler_seed.json", frontend / "object_info.json"
    write_png(folders[0] / "emblem_rgba_256.png", (16, 16), mode="RGBA")
    assert main(folders, frontend / "bypass_second_input.json", "--json", "--validate-only",
                "--object-info", definitions) == 0
    assert events(capsys) == [{"event": "valid", "nodes": 7}]
    # described nodes are checked too: the server the definitions came from had no checkpoints
    assert main(folders, sampler, "--json", "--validate-only", "--object-info", definitions) == 2
    assert [(e["node"], e["kind"]) for e in events(capsys)] == [("1", "not_in_list")]
    assert main(folders, sampler, "--json", "--object-info", definitions) == 2
    unknown = {e["class_type"] for e in events(capsys) if e.get("kind") == "unknown_class"}
    assert unknown == {"CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode",
                       "PrimitiveInt"}
    assert main(folders, sampler, "--json", "--validate-only", "--object-info", sampler) == 2
    assert "not a ComfyUI /object_info document" in events(capsys)[0]["message"]


@pytest.mark.parametrize("document,message", [
    ({"nodes": [{"id": 7, "mode": 0}], "links": []}, "node 7 has no type"),
    ({"nodes": [{"id": 7, "type": "LoadImage"}], "links": [[1, 7]]}, "link [1, 7]"),
    ({"nodes": ["LoadImage"], "links": []}, "node 'LoadImage' is not an object"),
    ({"1": {"class_type": "LoadImage", "inputs": []}}, "node 1: inputs must be an object"),
    ({"1": {"class_type": 5, "inputs": {}}}, "node 1: class_type must be a string"),
])
def test_malformed_workflows_are_invalid_not_crashes(folders, tmp_path, capsys, document, message):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(document))
    assert main(folders, path, "--json") == 2
    assert message in events(capsys)[0]["message"]


def test_a_node_check_that_raises_is_a_problem(folders, tmp_path, capsys):
    prompt = scale_api()
    prompt["1"]["inputs"]["image"] = 123
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(prompt))
    assert main(folders, path, "--json") == 2
    problem = events(capsys)[0]
    assert (problem["node"], problem["input"], problem["kind"]) == ("1", "image", "rejected_value")
    assert "AttributeError" in problem["message"]


def test_set_nan_is_refused_by_validation(folders, tmp_path, capsys):
    write_png(folders[0] / "a.png")
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(scale_api()))
    assert main(folders, path, "--json", "--validate-only", "--set", "2.scale_by=nan") == 2
    assert [(p["input"], p["kind"]) for p in events(capsys)] == [("scale_by", "invalid_value")]


@pytest.mark.parametrize("text,kind,value", [
    ("on", "BOOLEAN", True), ("False", "BOOLEAN", False), ("90", "INT", 90), ("90.0", "INT", 90),
    ("-3", "INT", -3), ("0.5", "FLOAT", 0.5), ("2", [1, 2, 3], 2), ("16", ["8", "16"], "16"),
    ("1.5", [1.5, 2.5], 1.5), ("d", ["a", "b"], "d"), ("4", "STRING", "4"),
])
def test_set_values_take_the_inputs_type(text, kind, value):
    parsed = cli.parse_value(text, kind)
    assert parsed == value and type(parsed) is type(value)


def test_set_the_editor_graph_cannot_show_drops_it_from_the_metadata(folders, tmp_path):
    """A /prompt body whose editor graph lacks the node --set changes: rather than embed a
    graph that misstates what ran, the PNG then carries only the prompt."""
    write_png(folders[0] / "a.png")
    write_png(folders[0] / "b.png")
    editor = json.loads(shared_path("workflows", "scale_ui_workflow.json").read_text())
    body = {"prompt": scale_api(prefix="p"), "extra_data": {"extra_pnginfo": {"workflow": editor}}}
    body["prompt"]["2"]["inputs"]["image"] = ["9", 0]
    body["prompt"]["9"] = {"class_type": "LoadImage", "inputs": {"image": "b.png"}}
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(body))
    assert main(folders, path, "--set", "9.image=a.png") == 0
    text = Image.open(folders[1] / "p_00001_.png").text
    assert "workflow" not in text and json.loads(text["prompt"])["9"]["inputs"]["image"] == "a.png"


def test_a_run_starts_with_an_empty_preview_folder(folders, tmp_path):
    write_png(folders[0] / "a.png")
    stale = folders[1] / ".preview" / "old_temp_00001_.png"
    write_png(stale)
    prompt = scale_api()
    prompt["3"] = {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(prompt))
    assert main(folders, path) == 0
    assert not stale.exists() and len(list((folders[1] / ".preview").iterdir())) == 1
    assert [p for p in folders[1].iterdir()] == [folders[1] / ".preview"]
