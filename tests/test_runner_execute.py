"""Execution: ComfyUI's list semantics, streamed folder batches with bounded memory, resume after
an interrupt, a corrupt file among good ones, and outputs kept inside the output folder."""

import json
import os
import re
import weakref

import numpy as np
import pytest
import torch
from PIL import Image

from runner_helpers import batch_api, folders, scale_api, write_png  # noqa: F401 - fixture
from rt4ksr_nodes.host import bridge
from rt4ksr_nodes.files.images import ImageReadError
from rt4ksr_nodes.nodes import batch
from rt4ksr_nodes.nodes.batch import RT4KSRLoadImageFolder
from rt4ksr_nodes.runner import registry
from rt4ksr_nodes.runner.execute import Runner
from rt4ksr_nodes.runner.validate import validate

calls = []


class Numbers:
    RETURN_TYPES = ("INT", "INT")
    OUTPUT_IS_LIST = (True, False)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"count": ("INT", {"default": 3})}}

    def run(self, count):
        calls.append(("Numbers", count))
        return (list(range(count)), 100)


class Add:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT",), "b": ("INT",)}}

    def run(self, a, b):
        calls.append(("Add", a, b))
        return (a + b,)


class Collect:
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    INPUT_IS_LIST = True
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"values": ("INT",)}}

    def run(self, values):
        calls.append(("Collect", values))
        return {"ui": {"values": values}}


class CollectImages:
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    INPUT_IS_LIST = True
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}

    def run(self, images):
        calls.append(("CollectImages", len(images)))
        return {"ui": {}}


class Watch:
    """IMAGE pass-through recording how many loaded images are alive, and interrupting on cue."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    alive: list = []
    peak = 0
    seen = 0
    stop_at = None

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    def run(self, image):
        Watch.seen += 1
        Watch.peak = max(Watch.peak, sum(ref() is not None for ref in Watch.alive))
        if Watch.seen == Watch.stop_at:
            bridge.headless.interrupt.set()
        return (image,)


class WatchedFolder(RT4KSRLoadImageFolder):
    @classmethod
    def stream_load(cls, item, folder, pattern, recursive, **hidden):
        outputs = super().stream_load(item, folder, pattern, recursive, **hidden)
        Watch.alive.append(weakref.ref(outputs[0][0]))
        return outputs


@pytest.fixture
def test_nodes():
    nodes = {"Numbers": Numbers, "Add": Add, "Collect": Collect, "Watch": Watch, "WatchedFolder": WatchedFolder,
             "CollectImages": CollectImages}
    for name, cls in nodes.items():
        registry.register(name, cls)
    calls.clear()
    Watch.alive, Watch.peak, Watch.seen, Watch.stop_at = [], 0, 0, None
    yield
    for name in nodes:
        registry.unregister(name)


def run(prompt, **options):
    classes = registry.node_classes()
    assert validate(prompt, classes) == []
    return Runner(prompt, classes, **options).run()


def test_list_semantics_broadcast_and_collect(test_nodes):
    events = []
    prompt = {
        "1": {"class_type": "Numbers", "inputs": {"count": 3}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["1", 1]}},
        "3": {"class_type": "Collect", "inputs": {"values": ["2", 0]}},
        "4": {"class_type": "Add", "inputs": {"a": ["1", 1], "b": ["1", 1]}},  # feeds no output: never runs
    }
    summary = run(prompt, on_event=events.append)
    # Add is called per element, the single value 100 repeated; Collect gets the whole list once.
    assert calls == [("Numbers", 3), ("Add", 0, 100), ("Add", 1, 100), ("Add", 2, 100), ("Collect", [100, 101, 102])]
    assert summary.done == 1 and [e["event"] for e in events] == ["start", "item", "summary"]


def test_single_image_workflow(folders):
    write_png(folders[0] / "a.png", (10, 6))
    summary = run(scale_api(), extra_pnginfo={"workflow": {"nodes": []}})
    out = folders[1] / "out" / "x_00001_.png"
    assert summary.done == 1 and summary.outputs == [str(out)]
    assert Image.open(out).size == (20, 12) and "workflow" in Image.open(out).text


def test_failing_node_fails_the_run_with_node_and_file(folders):
    (folders[0] / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    summary = run(scale_api())
    assert summary.failed == 1
    assert "node 1 (LoadImage)" in summary.failures[0][1] and "a.png" in summary.failures[0][1]


def test_folder_batch_streams_with_bounded_memory(folders, test_nodes):
    for i in range(200):
        write_png(folders[0] / "many" / f"{i:03}.png", seed=i)
    prompt = batch_api(folder="many")
    prompt["1"]["class_type"] = "WatchedFolder"
    prompt["4"] = {"class_type": "Watch", "inputs": {"image": ["2", 0]}}
    prompt["3"]["inputs"]["images"] = ["4", 0]
    summary = run(prompt, jobs=2, prefetch=2)
    assert (summary.total, summary.done, summary.failed) == (200, 200, 0)
    assert Watch.peak <= 8, f"{Watch.peak} decoded images alive at once"
    # Paths are relative to the loaded folder, so the outputs land at the top of the output.
    assert sorted(p.name for p in folders[1].iterdir()) == [f"{i:03}--2x.png" for i in range(200)]
    assert np.asarray(Image.open(folders[1] / "000--2x.png")).shape == (64, 64, 3)


def test_batch_keeps_relative_paths_and_formats(folders):
    write_png(folders[0] / "set" / "a.png")
    write_png(folders[0] / "set" / "sub" / "b.png", mode="RGBA")
    (folders[0] / "set" / "sub" / "notes.txt").write_text("x")
    prompt = batch_api(folder="set", recursive=True, fmt="webp", template="{stem}_{width}", scale=1)
    prompt["3"]["inputs"]["mask"] = ["1", 1]  # alpha comes back from the mask
    summary = run(prompt)
    assert summary.done == 2
    assert sorted(p.relative_to(folders[1]).as_posix() for p in folders[1].rglob("*.*")) == [
        "a_32.webp", "sub/b_32.webp"]
    assert Image.open(folders[1] / "a_32.webp").mode == "RGB"
    assert Image.open(folders[1] / "sub" / "b_32.webp").mode == "RGBA"


def test_batch_jpeg_drops_alpha_and_uses_the_quality(folders):
    write_png(folders[0] / "a.png", (48, 40), mode="RGBA")
    prompt = batch_api(fmt="jpeg", template="{stem}", scale=1)
    prompt["3"]["inputs"]["mask"] = ["1", 1]
    sizes = []
    for quality in (20, 95):
        prompt["3"]["inputs"]["quality"] = quality
        (folders[1] / "a.jpg").unlink(missing_ok=True)
        assert run(prompt).done == 1
        with Image.open(folders[1] / "a.jpg") as written:
            assert written.mode == "RGB"
        sizes.append((folders[1] / "a.jpg").stat().st_size)
    assert sizes[0] < sizes[1]


def test_corrupt_image_fails_alone(folders):
    for name in ("a", "b", "d"):
        write_png(folders[0] / f"{name}.png")
    (folders[0] / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    events = []
    summary = run(batch_api(), on_event=events.append)
    assert (summary.done, summary.failed) == (3, 1)
    item, error = summary.failures[0]
    assert item == "c.png" and "c.png" in error and "cannot read image" in error
    assert sorted(p.name for p in folders[1].iterdir()) == ["a--2x.png", "b--2x.png", "d--2x.png"]
    assert [e["item"] for e in events if e["event"] == "item"] == ["a.png", "b.png", "c.png", "d.png"]


def test_interrupted_run_resumes_without_redoing(folders, test_nodes):
    for i in range(12):
        write_png(folders[0] / f"{i:02}.png", seed=i)
    prompt = batch_api()
    prompt["4"] = {"class_type": "Watch", "inputs": {"image": ["2", 0]}}
    prompt["3"]["inputs"]["images"] = ["4", 0]
    Watch.stop_at = 5
    first = run(prompt)
    assert first.interrupted and first.done == 4 and first.failed == 0  # the 5th item was dropped
    done = {p.name: p.stat().st_mtime_ns for p in folders[1].iterdir()}
    assert sorted(done) == [f"{i:02}--2x.png" for i in range(4)]  # nothing half-written
    bridge.headless.interrupt.clear()
    Watch.seen, Watch.stop_at = 0, None
    second = run(prompt, resume=True)
    assert (second.skipped, second.done, second.failed, second.interrupted) == (4, 8, 0, False)
    assert Watch.seen == 8  # skipped items were not even computed
    assert all(folders[1].joinpath(n).stat().st_mtime_ns == t for n, t in done.items())
    assert len(list(folders[1].iterdir())) == 12


@pytest.mark.parametrize("field,value", [("name_template", "../../{stem}"), ("subfolder", ".."),
                                         ("name_template", "/tmp/{stem}")])
def test_batch_outputs_stay_inside_output(folders, field, value):
    """Refused by validation, before any model runs, and by the saver itself."""
    write_png(folders[0] / "a.png")
    prompt = batch_api()
    prompt["3"]["inputs"][field] = value
    problems = validate(prompt, registry.node_classes())
    assert [(p.node_id, p.kind) for p in problems] == [("3", "rejected_value")]
    refused = "not allowed|cannot contain /"
    assert re.search(refused, problems[0].message)
    arguments = {**prompt["3"]["inputs"], "path": "a.png"}
    with pytest.raises(ValueError, match=refused):
        batch.RT4KSRSaveImageBatch().save(torch.rand(1, 8, 8, 3), **{k: v for k, v in arguments.items() if k != "images"})
    assert not any(folders[1].parent.glob("*.png")) and not list(folders[1].iterdir())


def test_batch_name_template_with_an_unknown_field_is_invalid(folders):
    write_png(folders[0] / "a.png")
    prompt = batch_api(template="{name}--2x")
    assert [p.message for p in validate(prompt, registry.node_classes())] == [
        "name_template '{name}--2x': '{name}' is not allowed; use only {stem}, {ext}, {width} and {height}, as they are"]


def test_batch_loader_refuses_folder_outside_input(folders):
    prompt, classes = batch_api(folder="../"), registry.node_classes()
    problems = validate(prompt, classes)
    assert [(p.node_id, p.kind) for p in problems] == [("1", "rejected_value")]
    assert "outside" in problems[0].message
    summary = Runner(prompt, classes).run()  # not validated: refused when it runs, too
    assert summary.failed == 1 and "outside" in summary.failures[0][1]


def test_folder_loader_in_comfyui_skips_a_corrupt_file(folders):
    input_dir, _ = folders
    first = write_png(input_dir / "set" / "a.png", seed=1)
    (input_dir / "set" / "b.png").write_bytes(b"\x89PNG broken")
    write_png(input_dir / "set" / "c.png", seed=2)
    result = batch.RT4KSRLoadImageFolder().load("set", "*.png", False)
    images, masks, paths = result["result"]
    assert paths == ["a.png", "c.png"]
    # Said on the node (ComfyUI shows it and keeps it in the history), not only in the log.
    assert len(result["ui"]["text"]) == 1 and "b.png" in result["ui"]["text"][0]
    assert np.array_equal(np.rint(images[0][0].numpy() * 255).astype(np.uint8), first)
    (input_dir / "bad").mkdir()
    (input_dir / "bad" / "x.png").write_bytes(b"junk")
    with pytest.raises(ImageReadError, match=r"no image could be read: .*x\.png"):
        batch.RT4KSRLoadImageFolder().load("bad", "*.png", False)


def test_batch_saver_refuses_what_would_lose_data(folders):
    _, output_dir = folders
    saver = batch.RT4KSRSaveImageBatch()
    image = torch.rand(1, 8, 8, 3)
    with pytest.raises(ValueError, match=r"a\.png: mask is 4x4 but the image is 8x8"):
        saver.save(image, "a.png", "{stem}", "", "png", "8", 95, mask=torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match=r"name_template '\{name\}'.*use only \{stem\}"):
        saver.save(image, "a.png", "{name}", "", "png", "8", 95)
    saver.save(image, "a.png", "same", "", "png", "8", 95)
    with pytest.raises(ValueError, match=r"b\.png and a\.png would both be saved as .*same\.png: .*no \{stem\}"):
        saver.save(image, "b.png", "same", "", "png", "8", 95)
    assert sorted(p.name for p in output_dir.iterdir()) == ["same.png"]
    result = saver.save(image, ".thumbs/c.png", "{stem}", "", "png", "8", 95)
    assert result["ui"]["images"][0]["subfolder"] == ".thumbs"


def test_batch_saver_duplicate_guard_spans_one_prompt(folders):
    """ComfyUI keeps node instances between prompts: queueing the same workflow again must write
    again; within one prompt (the hidden `prompt` input is the same object) a collision is refused
    with its real cause."""
    saver = batch.RT4KSRSaveImageBatch()
    image = torch.rand(1, 8, 8, 3)
    for queued in ({"3": {}}, {"3": {}}):  # two executions of the same workflow
        saver.save(image, "a.png", "{stem}", "", "png", "8", 95, overwrite=True, prompt=queued)
    assert (folders[1] / "a.png").is_file()
    first = {"3": {}}
    saver.save(image, "a.png", "{stem}", "", "png", "8", 95, overwrite=True, prompt=first)
    with pytest.raises(ValueError, match=r"a\.jpg and a\.png would both be saved as .*a\.png.*put \{ext\} in"):
        saver.save(image, "a.jpg", "{stem}", "", "png", "8", 95, prompt=first)
    saver.save(image, "sub/a.png", "{stem}", "", "png", "8", 95, prompt=first)  # another folder: no clash
    with pytest.raises(ValueError, match=r"b\.png and a\.png would both .*name_template 'same' has no \{stem\}"):
        saver.save(image, "a.png", "same", "", "png", "8", 95, prompt=first)
        saver.save(image, "b.png", "same", "", "png", "8", 95, prompt=first)


def test_folder_loader_is_changed_follows_the_matching_files(folders):
    """ComfyUI reruns the loader only when IS_CHANGED changes: adding, replacing or touching a
    matching file must change it; a file the pattern excludes must not."""
    loader = batch.RT4KSRLoadImageFolder
    write_png(folders[0] / "set" / "a.png", seed=1)
    before = loader.IS_CHANGED("set", "*.png", False)
    assert loader.IS_CHANGED("set", "*.png", False) == before
    (folders[0] / "set" / "notes.jpg").write_bytes(b"x")
    assert loader.IS_CHANGED("set", "*.png", False) == before
    write_png(folders[0] / "set" / "b.png", seed=2)
    added = loader.IS_CHANGED("set", "*.png", False)
    assert added != before
    write_png(folders[0] / "set" / "b.png", size=(16, 16), seed=3)  # replaced
    replaced = loader.IS_CHANGED("set", "*.png", False)
    assert replaced != added
    stat = (folders[0] / "set" / "a.png").stat()
    os.utime(folders[0] / "set" / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert loader.IS_CHANGED("set", "*.png", False) != replaced


def test_folder_loader_without_a_match_says_so(folders):
    write_png(folders[0] / "set" / "a.png")
    with pytest.raises(FileNotFoundError, match=r"no image in 'set' matches '\*\.tif'"):
        batch.RT4KSRLoadImageFolder().load("set", "*.tif", False)
    summary = Runner(batch_api(folder="set", pattern="*.tif"), registry.node_classes()).run()  # not validated
    assert summary.failed == 1 and "matches '*.tif'" in summary.failures[0][1]
    problems = validate(batch_api(folder="set", pattern="*.tif"), registry.node_classes())  # --validate-only
    assert [(p.node_id, p.kind) for p in problems] == [("1", "rejected_value")]
    assert "matches '*.tif'" in problems[0].message


def test_folder_loader_pattern_with_a_slash_matches_the_relative_path(folders):
    for name in ("a.png", "sub/b.png", "sub/deeper/c.png", "other/d.png"):
        write_png(folders[0] / name)
    assert batch.RT4KSRLoadImageFolder.stream_items("", "sub/*.png", True) == ["sub/b.png", "sub/deeper/c.png"]
    assert batch.RT4KSRLoadImageFolder.stream_items("", "*/b.png", True) == ["sub/b.png"]
    assert batch.RT4KSRLoadImageFolder.stream_items("", "b.png", True) == ["sub/b.png"]


def test_folder_loader_skips_symlinks_out_of_the_input_folder(folders, tmp_path, caplog):
    write_png(tmp_path / "secret" / "s.png")
    write_png(folders[0] / "set" / "a.png")
    os.symlink(tmp_path / "secret" / "s.png", folders[0] / "set" / "link.png")
    os.symlink(folders[0] / "set" / "a.png", folders[0] / "set" / "alias.png")  # stays inside: kept
    assert batch.RT4KSRLoadImageFolder.stream_items("set", "*", False) == ["a.png", "alias.png"]
    assert "link.png" in caplog.text and "outside" in caplog.text
    result = batch.RT4KSRLoadImageFolder().load("set", "*", False)  # in ComfyUI: said on the node
    assert result["result"][2] == ["a.png", "alias.png"]
    assert len(result["ui"]["text"]) == 1 and "link.png" in result["ui"]["text"][0]


@pytest.mark.parametrize("bits", ["8", "16"])
def test_batch_png_carries_prompt_and_workflow(folders, bits):
    write_png(folders[0] / "a.png")
    prompt, workflow = batch_api(), {"nodes": [], "links": []}
    prompt["3"]["inputs"]["bit_depth"] = bits
    assert run(prompt, extra_pnginfo={"workflow": workflow}).done == 1
    with Image.open(folders[1] / "a--2x.png") as saved:
        saved.load()
        assert json.loads(saved.text["prompt"]) == prompt and json.loads(saved.text["workflow"]) == workflow
    bridge.headless.metadata = False  # the runner's --no-metadata
    prompt["3"]["inputs"]["overwrite"] = True
    try:
        assert run(prompt, extra_pnginfo={"workflow": workflow}).done == 1
    finally:
        bridge.headless.metadata = True
    with Image.open(folders[1] / "a--2x.png") as saved:
        saved.load()
        assert not saved.text


def test_whole_list_run_warns_and_counts_unreadable_files(folders, test_nodes):
    for name in ("a", "c"):
        write_png(folders[0] / f"{name}.png")
    (folders[0] / "b.png").write_bytes(b"\x89PNG broken")
    prompt = {"1": batch_api()["1"], "2": {"class_type": "CollectImages", "inputs": {"images": ["1", 0]}}}
    events = []
    summary = run(prompt, resume=True, on_event=events.append)
    assert calls == [("CollectImages", 2)]
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert len(warnings) == 1 and "node 2 (CollectImages) takes the whole list" in warnings[0]
    assert "--resume does not apply" in warnings[0]
    assert (summary.total, summary.done, summary.failed) == (2, 1, 1)
    assert summary.failures[0][0] == "b.png" and "b.png" in summary.failures[0][1]


def test_two_folder_sources_warn(folders):
    write_png(folders[0] / "a.png")
    prompt = batch_api()
    prompt["4"] = {"class_type": "RT4KSRLoadImageFolder", "inputs": {"folder": "", "pattern": "*", "recursive": False}}
    prompt["3"]["inputs"]["path"] = ["4", 2]
    events = []
    assert run(prompt, on_event=events.append).done == 1
    assert [e["message"] for e in events if e["event"] == "warning"] == [
        "not streaming: 2 folder sources (nodes 1, 4), so every image is loaded into memory at once"]


def test_streamed_run_reports_outputs_of_nodes_that_run_once(folders):
    write_png(folders[0] / "a.png")
    prompt = batch_api()
    prompt["5"] = {"class_type": "LoadImage", "inputs": {"image": "a.png"}}
    prompt["6"] = {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "once"}}
    events = []
    summary = run(prompt, on_event=events.append)
    once, item = str(folders[1] / "once_00001_.png"), str(folders[1] / "a--2x.png")
    assert sorted(summary.outputs) == [item, once]
    assert events[0] == {"event": "start", "total": 1, "outputs": [once]}


class Counted:
    """IMAGE pass-through counting instances and INPUT_TYPES calls; returns nothing when asked."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    made = specs = 0
    short = False

    def __init__(self):
        Counted.made += 1

    @classmethod
    def INPUT_TYPES(cls):
        Counted.specs += 1
        return {"required": {"image": ("IMAGE",)}}

    def run(self, image):
        return () if Counted.short else (image,)


@pytest.fixture
def counted():
    registry.register("Counted", Counted)
    Counted.made = Counted.specs = 0
    Counted.short = False
    yield
    registry.unregister("Counted")


def test_a_node_is_made_once_and_described_once_per_run(folders, counted):
    for i in range(3):
        write_png(folders[0] / f"{i}.png", seed=i)
    prompt = batch_api()
    prompt["4"] = {"class_type": "Counted", "inputs": {"image": ["2", 0]}}
    prompt["3"]["inputs"]["images"] = ["4", 0]
    classes = registry.node_classes()
    assert validate(prompt, classes) == []
    Counted.specs = 0
    assert Runner(prompt, classes).run().done == 3
    assert (Counted.made, Counted.specs) == (1, 1)


def test_a_node_returning_too_few_values_fails_naming_it(folders, counted):
    write_png(folders[0] / "a.png")
    prompt = scale_api()
    prompt["4"] = {"class_type": "Counted", "inputs": {"image": ["2", 0]}}
    prompt["3"]["inputs"]["images"] = ["4", 0]
    Counted.short = True
    summary = run(prompt)
    assert summary.failed == 1
    assert "node 4 (Counted)" in summary.failures[0][1] and "1 output" in summary.failures[0][1]


def test_a_dead_reader_thread_fails_the_run_instead_of_hanging(folders, monkeypatch):
    write_png(folders[0] / "a.png")
    monkeypatch.setattr(Runner, "_prefetch", lambda self, *args: None)  # dies without a word
    summary = run(batch_api())
    assert summary.failed == 1 and "reader" in summary.failures[0][1]
