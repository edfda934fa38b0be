"""Editor graph -> API prompt against pairs produced by the real ComfyUI frontend.

tests/data/frontend/<case>.json is what the editor saves (`app.graph.serialize()`, the state
its workflow store writes on Save) and <case>.api.json is `(await app.graphToPrompt()).output`
(what Queue sends to /prompt and "Export (API)" writes), both taken from the same graph.
object_info.json is the part of the server's /object_info that covers the node types the
headless registry does not have.

How they were made (ComfyUI 0.3.64, frontend 1.27.10, headless Chromium driven by Playwright):
1. start ComfyUI with this pack linked into custom_nodes and workflows/inputs copied into input/;
2. open the editor, wait for `window.app.graph`, and for each case load an empty graph with
   `app.loadGraphData({nodes: [], links: [], ...})`;
3. build the case with the frontend's own API: `LiteGraph.createNode(type)`, `app.graph.add`,
   `node.connect(slot, target, target.inputs.findIndex(i => i.name === input))` (widget inputs
   are sockets in 1.27, so a PrimitiveNode connects to them directly), `widget.value = ...`,
   `node.mode = 2 / 4`, `new LiteGraph.LGraphGroup()` + `resizeTo`, Note and MarkdownNote nodes,
   `app.graph.convertToSubgraph(new Set([...nodes]))` for subgraphs;
4. call `app.graphToPrompt()` (it also applies PrimitiveNode values to their targets, as the
   editor does on every change), then `JSON.stringify(app.graph.serialize())`. Nothing is
   queued, so control_after_generate never changes a seed: the sent seed is the saved one.

Facts the pairs record: a bypassed node passes on the input chosen by the *target's* type
(bypass_any_target: a "*" target takes the input at the output's index, here the model);
bypassing follows an input even when it is unlinked (bypass_chain: the image is then dropped);
a muted node's links are dropped (mute_middle: ComfyUI 0.3.64 then runs the outputs that are
still valid and reports required_input_missing for the others); a muted or bypassed subgraph
instance still sends its inner nodes (subgraph_modes); keys are integer ids ascending, then
subgraph ids.
"""

from __future__ import annotations

import json

import pytest

from ground_truth import ROOT
from rt4ksr_nodes.runner import convert, object_info, registry

DATA = ROOT / "tests" / "data" / "frontend"
CASES = sorted(p.name[: -len(".api.json")] for p in DATA.glob("*.api.json"))

# Widgets a frontend extension adds for display only: sent, never saved, ignored by the server.
DISPLAY_ONLY = {"PreviewAny": "preview", "LoadVideo": "video-preview"}


@pytest.fixture(scope="module")
def classes():
    return {**object_info.load(DATA / "object_info.json"), **registry.node_classes()}


def sent(prompt: dict) -> dict:
    for node in prompt.values():
        node["inputs"].pop(DISPLAY_ONLY.get(node["class_type"]), None)
    return prompt


@pytest.mark.parametrize("case", CASES)
def test_converts_like_the_frontend(case, classes):
    editor = json.loads((DATA / f"{case}.json").read_text())
    expected = sent(json.loads((DATA / f"{case}.api.json").read_text()))
    prompt = convert.to_api(editor, classes)
    assert prompt == expected
    assert list(prompt) == list(expected)  # key order too
    assert [list(n["inputs"]) for n in prompt.values()] == [list(n["inputs"]) for n in expected.values()]


def test_the_cases_are_all_there():
    assert len(CASES) >= 15


def test_definitions_only_describe(classes):
    sampler = classes["KSampler"]
    assert not hasattr(sampler, "FUNCTION")  # described only: running it needs ComfyUI
    assert sampler.DISPLAY_NAME == "KSampler" and sampler.RETURN_TYPES == ("LATENT",)
    assert classes["ImageBlend"].DISPLAY_NAME == "ImageBlend"  # display_name null: the name
    blend_mode = classes["ImageBlend"].INPUT_TYPES()["required"]["blend_mode"]
    assert blend_mode[0] == ["normal", "multiply", "screen", "overlay", "soft_light", "difference"]
