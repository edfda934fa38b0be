"""Editor graph -> API prompt: the shared real pair, and each frontend rule on small graphs."""

import json

import pytest

from ground_truth import shared_path
from runner_helpers import editor_graph, editor_node
from rt4ksr_nodes.runner import convert, registry


class Sampler:
    """Test-only node shaped like KSampler: a seed INT gets a hidden control value."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**32}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 100}),
                "mode": (["a", "b"], {"control_after_generate": True}),
                "strength": ("FLOAT", {"default": 1.0, "forceInput": True}),
            },
            "optional": {"label": ("STRING", {"default": ""})},
        }


@pytest.fixture
def sampler():
    registry.register("TestSampler", Sampler, "Test Sampler")
    yield
    registry.unregister("TestSampler")


def load(node_id, links, name="a.png", mode=0):
    return editor_node(node_id, "LoadImage", [name, "image"], outputs=[("IMAGE", "IMAGE", links), ("MASK", "MASK")], mode=mode)


def scale(node_id, link, out_links, mode=0, widgets=("bicubic", 2)):
    return editor_node(node_id, "ImageScaleBy", widgets, inputs=[("image", "IMAGE", link)],
                       outputs=[("IMAGE", "IMAGE", out_links)], mode=mode)


def save(node_id, link, prefix="p"):
    return editor_node(node_id, "SaveImage", [prefix], inputs=[("images", "IMAGE", link)])


def test_shared_pair_converts_exactly():
    ui = json.loads(shared_path("workflows", "scale_ui_workflow.json").read_text())
    api = json.loads(shared_path("workflows", "scale_api_prompt.json").read_text())
    assert convert.to_api(ui) == api
    assert json.dumps(convert.to_api(ui)) == json.dumps(api)  # same key order too


def test_widget_layout_adds_control_and_upload_values(sampler):
    assert convert.widget_layout(Sampler) == ["seed", None, "steps", "mode", None, "label"]
    assert convert.widget_layout(registry.node_classes()["LoadImage"]) == ["image", None]


def test_seed_control_value_is_skipped(sampler):
    graph = editor_graph(
        [load(1, [1]), editor_node(2, "TestSampler", [42, "randomize", 7, "b", "fixed", "hi"],
                                   inputs=[("image", "IMAGE", 1)], outputs=[("IMAGE", "IMAGE", [2])]), save(3, 2)],
        [(1, 1, 0, 2, 0, "IMAGE"), (2, 2, 0, 3, 0, "IMAGE")],
    )
    node = convert.to_api(graph)["2"]
    assert node["inputs"] == {"seed": 42, "steps": 7, "mode": "b", "label": "hi", "image": ["1", 0]}
    assert node["_meta"]["title"] == "Test Sampler"


def test_widget_converted_to_socket_takes_the_link_in_place(sampler):
    primitive = editor_node(4, "PrimitiveNode", [1234, "fixed"], outputs=[("INT", "INT", [3])])
    sampler_node = editor_node(2, "TestSampler", [42, "randomize", 7, "a", "fixed", ""],
                               inputs=[("image", "IMAGE", 1), ("seed", "INT", 3, {"widget": {"name": "seed"}})],
                               outputs=[("IMAGE", "IMAGE", [2])])
    graph = editor_graph([load(1, [1]), sampler_node, save(3, 2), primitive],
                         [(1, 1, 0, 2, 0, "IMAGE"), (2, 2, 0, 3, 0, "IMAGE"), (3, 4, 0, 2, 1, "INT")])
    prompt = convert.to_api(graph)
    assert "4" not in prompt
    assert list(prompt["2"]["inputs"].items())[0] == ("seed", 1234)


def test_linked_widget_from_a_real_node_becomes_a_link(sampler):
    graph = editor_graph(
        [load(1, [1]), editor_node(5, "TestSampler", [1, "fixed", 3, "a", "fixed", ""],
                                   inputs=[("image", "IMAGE", 1), ("strength", "FLOAT", 4)],
                                   outputs=[("IMAGE", "IMAGE", [2])]),
         save(3, 2), editor_node(6, "FloatMaker", [0.5], outputs=[("FLOAT", "FLOAT", [4])])],
        [(1, 1, 0, 5, 0, "IMAGE"), (2, 5, 0, 3, 0, "IMAGE"), (4, 6, 0, 5, 1, "FLOAT")],
    )
    prompt = convert.to_api(graph)
    assert prompt["5"]["inputs"]["strength"] == ["6", 0]
    assert prompt["6"] == {"inputs": {}, "class_type": "FloatMaker", "_meta": {"title": "FloatMaker"}}


def test_reroute_passes_through_and_notes_are_dropped():
    reroute = editor_node(4, "Reroute", inputs=[("", "*", 1)], outputs=[("", "IMAGE", [3])])
    note = editor_node(5, "Note", ["remember"])
    graph = editor_graph([load(1, [1]), reroute, scale(2, 3, [2]), save(3, 2), note],
                         [(1, 1, 0, 4, 0, "IMAGE"), (3, 4, 0, 2, 0, "IMAGE"), (2, 2, 0, 3, 0, "IMAGE")])
    prompt = convert.to_api(graph)
    assert sorted(prompt) == ["1", "2", "3"]
    assert prompt["2"]["inputs"]["image"] == ["1", 0]


def test_bypassed_node_passes_its_matching_input_through():
    graph = editor_graph([load(1, [1]), scale(2, 1, [2], mode=4), save(3, 2)],
                         [(1, 1, 0, 2, 0, "IMAGE"), (2, 2, 0, 3, 0, "IMAGE")])
    prompt = convert.to_api(graph)
    assert "2" not in prompt and prompt["3"]["inputs"]["images"] == ["1", 0]


def test_muted_node_is_dropped_with_its_links():
    graph = editor_graph([load(1, [1]), scale(2, 1, [2], mode=2), save(3, 2)],
                         [(1, 1, 0, 2, 0, "IMAGE"), (2, 2, 0, 3, 0, "IMAGE")])
    prompt = convert.to_api(graph)
    assert "2" not in prompt and prompt["3"]["inputs"] == {"filename_prefix": "p"}


def test_custom_title_is_kept():
    graph = editor_graph([load(1, [1]), save(3, 1)], [(1, 1, 0, 3, 0, "IMAGE")])
    graph["nodes"][1]["title"] = "Keep this"
    assert convert.to_api(graph)["3"]["_meta"]["title"] == "Keep this"


def test_unknown_class_keeps_links_only():
    graph = editor_graph([load(1, [1]), editor_node(2, "KSampler", [1, "fixed"], inputs=[("latent", "LATENT", 1)])],
                         [(1, 1, 0, 2, 0, "IMAGE")])
    assert convert.to_api(graph)["2"]["inputs"] == {"latent": ["1", 0]}


def subgraph_workflow(instance_mode=0):
    """Outer: LoadImage(1) -> subgraph instance(2) -> SaveImage(3); inside: ImageScaleBy(7)."""
    definition = {
        "id": "sub-uuid", "name": "Scale twice",
        "inputs": [{"name": "image", "type": "IMAGE"}], "outputs": [{"name": "IMAGE", "type": "IMAGE"}],
        "nodes": [scale(7, 10, [11], widgets=("bilinear", 3))],
        "links": [
            {"id": 10, "origin_id": -10, "origin_slot": 0, "target_id": 7, "target_slot": 0, "type": "IMAGE"},
            {"id": 11, "origin_id": 7, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "IMAGE"},
        ],
    }
    instance = editor_node(2, "sub-uuid", inputs=[("image", "IMAGE", 1)], outputs=[("IMAGE", "IMAGE", [2])],
                           mode=instance_mode)
    graph = editor_graph([load(1, [1]), instance, save(3, 2)], [(1, 1, 0, 2, 0, "IMAGE"), (2, 2, 0, 3, 0, "IMAGE")])
    graph["definitions"] = {"subgraphs": [definition]}
    return graph


def test_subgraph_is_flattened():
    prompt = convert.to_api(subgraph_workflow())
    assert sorted(prompt) == ["1", "2:7", "3"]
    assert prompt["2:7"]["inputs"] == {"upscale_method": "bilinear", "scale_by": 3, "image": ["1", 0]}
    assert prompt["3"]["inputs"]["images"] == ["2:7", 0]


def test_bypassed_subgraph_passes_through():
    # frontend 1.27 still sends the inner nodes (tests/data/frontend/subgraph_modes); nothing needs them
    prompt = convert.to_api(subgraph_workflow(instance_mode=4))
    assert sorted(prompt) == ["1", "2:7", "3"] and prompt["3"]["inputs"]["images"] == ["1", 0]
