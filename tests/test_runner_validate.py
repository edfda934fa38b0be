"""Validation reports every problem, each with node id, class type and input name."""

from runner_helpers import folders, scale_api, write_png  # noqa: F401 - fixture
from rt4ksr_nodes.runner import registry
from rt4ksr_nodes.runner.validate import runnable_outputs, validate


def kinds(problems):
    return sorted((p.node_id, p.kind, p.input_name) for p in problems)


def test_valid_prompt_has_no_problems(folders):
    write_png(folders[0] / "a.png")
    prompt = scale_api()
    prompt["2"]["inputs"]["scale_by"] = "2"
    assert validate(prompt, registry.node_classes()) == []
    assert prompt["2"]["inputs"]["scale_by"] == 2.0  # converted in place, as ComfyUI does


def test_every_problem_is_reported_at_once(folders):
    write_png(folders[0] / "a.png")
    prompt = scale_api()
    prompt["2"]["inputs"]["scale_by"] = 9.0
    prompt["2"]["inputs"]["upscale_method"] = "magic"
    del prompt["3"]["inputs"]["filename_prefix"]
    prompt["4"] = {"class_type": "KSampler", "inputs": {}}
    problems = validate(prompt, registry.node_classes())
    assert kinds(problems) == [
        ("2", "not_in_list", "upscale_method"),
        ("2", "out_of_range", "scale_by"),
        ("3", "missing_input", "filename_prefix"),
        ("4", "unknown_class", None),
    ]
    unknown = [p for p in problems if p.kind == "unknown_class"][0]
    assert "KSampler" in str(unknown) and "node pack" in str(unknown)
    assert str([p for p in problems if p.kind == "out_of_range"][0]).startswith("node 2 (ImageScaleBy), input 'scale_by'")


def test_links_to_missing_nodes_and_slots(folders):
    write_png(folders[0] / "a.png")
    prompt = scale_api()
    prompt["2"]["inputs"]["image"] = ["9", 0]
    prompt["3"]["inputs"]["images"] = ["2", 5]
    assert kinds(validate(prompt, registry.node_classes())) == [
        ("2", "bad_link", "image"), ("3", "bad_link", "images")]


def test_type_mismatch(folders):
    write_png(folders[0] / "a.png")
    prompt = scale_api()
    prompt["3"]["inputs"]["images"] = ["1", 1]  # MASK into IMAGE
    problems = validate(prompt, registry.node_classes())
    assert kinds(problems) == [("3", "type_mismatch", "images")]
    assert "MASK" in problems[0].message and "IMAGE" in problems[0].message


def test_invalid_value_and_rejected_file(folders):
    prompt = scale_api(image="missing.png")
    prompt["2"]["inputs"]["scale_by"] = "twice"
    assert kinds(validate(prompt, registry.node_classes())) == [
        ("1", "rejected_value", "image"), ("2", "invalid_value", "scale_by")]


def test_path_traversal_in_load_image_is_rejected(folders):
    write_png(folders[0].parent / "secret.png")
    problems = validate(scale_api(image="../secret.png"), registry.node_classes())
    assert kinds(problems) == [("1", "rejected_value", "image")] and "outside" in problems[0].message


def test_cycle(folders):
    prompt = {
        "1": {"class_type": "ImageScaleBy", "inputs": {"image": ["2", 0], "upscale_method": "area", "scale_by": 1}},
        "2": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": "area", "scale_by": 1}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
    }
    assert kinds(validate(prompt, registry.node_classes())) == [("1", "cycle", None), ("2", "cycle", None)]


def test_no_output_node(folders):
    write_png(folders[0] / "a.png")
    prompt = scale_api()
    del prompt["3"]
    assert kinds(validate(prompt, registry.node_classes())) == [("", "no_outputs", None)]


def test_nodes_no_output_needs_are_not_checked(folders):
    write_png(folders[0] / "a.png")
    prompt = scale_api()
    prompt["9"] = {"class_type": "ImageScaleBy", "inputs": {"upscale_method": "bad"}}
    assert validate(prompt, registry.node_classes()) == []


def test_runnable_outputs_follow_comfyuis_server(folders):
    write_png(folders[0] / "a.png")
    classes = registry.node_classes()
    prompt = scale_api()
    prompt["4"] = {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}}  # no prefix
    prompt["5"] = {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
    assert runnable_outputs(prompt, classes, validate(prompt, classes)) == ["3", "5"]
    prompt["2"]["inputs"]["scale_by"] = 99  # shared by 3 and 4
    assert runnable_outputs(prompt, classes, validate(prompt, classes)) == ["5"]
    prompt["6"] = {"class_type": "KSampler", "inputs": {}}  # unknown anywhere: nothing runs
    assert runnable_outputs(prompt, classes, validate(prompt, classes)) == []
