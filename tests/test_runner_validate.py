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


def test_checks_a_run_would_fail_are_made_before_anything_runs(folders):
    """Values that could only fail later are refused by validation: a tile below the engine's
    minimum, a Save Image prefix or an image folder leading out of their folders, a folder that
    does not exist."""
    write_png(folders[0] / "a.png")
    classes = registry.node_classes()
    prompt = scale_api(prefix="../../escape/x")
    prompt["4"] = {"class_type": "RT4KSRModelLoader", "inputs": {"model_name": "rt4ksr_x2.pth", "reparameterize": True}}
    prompt["5"] = {"class_type": "RT4KSRUpscale", "inputs": {"model": ["4", 0], "image": ["1", 0], "tile_size": 16,
                                                             "precision": "auto"}}
    prompt["6"] = {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}}
    prompt["7"] = {"class_type": "RT4KSRLoadImageFolder", "inputs": {"folder": "nowhere", "pattern": "*", "recursive": False}}
    prompt["8"] = {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}}
    problems = validate(prompt, classes)
    assert kinds(problems) == [("3", "rejected_value", "filename_prefix"), ("5", "rejected_value", "tile_size"),
                               ("7", "rejected_value", "folder, pattern, recursive")]
    messages = {p.node_id: p.message for p in problems}
    assert "outside" in messages["3"] and "got 16" in messages["5"] and "'nowhere' does not exist" in messages["7"]
    prompt["5"]["inputs"]["tile_size"] = 32
    (folders[0] / "nowhere").mkdir()
    assert "no image in 'nowhere' matches '*'" in {p.node_id: p.message for p in validate(prompt, classes)}["7"]
    write_png(folders[0] / "nowhere" / "b.png")
    prompt["3"]["inputs"]["filename_prefix"] = "inside/x"
    assert validate(prompt, classes) == []


def test_near_misses_are_named(folders):
    write_png(folders[0] / "a.png")
    classes = registry.node_classes()
    prompt = scale_api()
    prompt["2"]["inputs"]["scale_bye"] = prompt["2"]["inputs"].pop("scale_by")
    prompt["4"] = {"class_type": "RT4KSRUpscal", "inputs": {}}
    problems = {p.node_id: p for p in validate(prompt, classes)}
    assert "an input 'scale_bye' it does not take" in problems["2"].message
    assert "did you mean 'RT4KSRUpscale'?" in problems["4"].message
    prompt = scale_api(image="missing.png")
    (problem,) = validate(prompt, classes)
    assert str(folders[0].resolve()) in problem.message
