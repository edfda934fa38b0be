"""Every workflow form the runner reads: API, /prompt body, editor graph, PNG text chunks."""

import json

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ground_truth import shared_path
from rt4ksr_nodes.runner import formats


def test_api_format(tmp_path):
    api = json.loads(shared_path("workflows", "scale_api_prompt.json").read_text())
    workflow = formats.load(shared_path("workflows", "scale_api_prompt.json"))
    assert workflow.prompt == api and workflow.editor is None and workflow.extra_pnginfo == {}


def test_editor_format_is_kept_for_embedding():
    ui = json.loads(shared_path("workflows", "scale_ui_workflow.json").read_text())
    workflow = formats.load(shared_path("workflows", "scale_ui_workflow.json"))
    assert workflow.prompt is None and workflow.editor == ui
    assert workflow.extra_pnginfo == {"workflow": ui}


def test_prompt_request_body_keeps_extra_pnginfo(tmp_path):
    api = json.loads(shared_path("workflows", "scale_api_prompt.json").read_text())
    ui = json.loads(shared_path("workflows", "scale_ui_workflow.json").read_text())
    body = {"client_id": "x", "prompt": api, "extra_data": {"extra_pnginfo": {"workflow": ui}}}
    path = tmp_path / "body.json"
    path.write_text(json.dumps(body))
    workflow = formats.load(path)
    assert workflow.prompt == api and workflow.extra_pnginfo == {"workflow": ui}


def test_png_prefers_prompt_and_keeps_workflow(tmp_path):
    api = json.loads(shared_path("workflows", "scale_api_prompt.json").read_text())
    ui = json.loads(shared_path("workflows", "scale_ui_workflow.json").read_text())
    info = PngInfo()
    info.add_text("prompt", json.dumps(api))
    info.add_text("workflow", json.dumps(ui))
    Image.new("RGB", (4, 4)).save(tmp_path / "saved.png", pnginfo=info)
    workflow = formats.load(tmp_path / "saved.png")
    assert workflow.prompt == api and workflow.editor == ui
    assert workflow.extra_pnginfo == {"workflow": ui}


def test_png_with_only_the_editor_workflow(tmp_path):
    ui = json.loads(shared_path("workflows", "scale_ui_workflow.json").read_text())
    info = PngInfo()
    info.add_text("workflow", json.dumps(ui))
    Image.new("RGB", (4, 4)).save(tmp_path / "saved.png", pnginfo=info)
    workflow = formats.load(tmp_path / "saved.png")
    assert workflow.prompt is None and workflow.editor == ui


@pytest.mark.parametrize("content", [b"not json", b"[1, 2]", b'{"a": 1}'])
def test_not_a_workflow(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(formats.WorkflowError, match="bad.json"):
        formats.load(path)


def test_png_without_workflow(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    with pytest.raises(formats.WorkflowError, match="holds no workflow"):
        formats.load(tmp_path / "plain.png")
