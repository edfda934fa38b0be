"""The folder batch and the runner under the cases an outside audit found (issues 13 and 19):
own outputs never read back, names reserved by exclusive creation, collisions and impossible
names found before any compute, SIGTERM and leftover temporary files, honest counts after a
second Ctrl-C, unwritable output folders, capped echoes, colour profiles kept."""

import fcntl
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from ground_truth import ROOT
from runner_helpers import batch_api, folders, scale_api, write_png  # noqa: F401 - fixture
from rt4ksr_nodes.host import bridge
from rt4ksr_nodes.files import paths as fileio
from rt4ksr_nodes.nodes import batch, video_batch
from rt4ksr_nodes.runner import cli, core_nodes, registry
from rt4ksr_nodes.runner.execute import Runner
from rt4ksr_nodes.runner.validate import validate


def main(input_dir, output_dir, *args):
    return cli.main([*map(str, args), "--input-dir", str(input_dir), "--output-dir", str(output_dir)])


def events(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def workflow(tmp_path, prompt) -> str:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(prompt))
    return str(path)


def images_in(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


# -- 13.2: the folder batch never reads its own outputs ------------------------------------------

@pytest.mark.parametrize("output", ["inside", "equal"])
@pytest.mark.parametrize("recursive", [False, True])
def test_batch_never_reads_back_its_own_outputs(tmp_path, capsys, output, recursive):
    input_dir = tmp_path / "input"
    for i in range(3):
        write_png(input_dir / f"f{i:03}.png", (8, 8), seed=i)
    output_dir = input_dir / "out" if output == "inside" else input_dir
    path = workflow(tmp_path, batch_api(pattern="*.png", recursive=recursive))
    originals = images_in(input_dir)
    for run, extra in enumerate([(), (), ("--resume",)]):
        code = main(input_dir, output_dir, path, "--json", *extra)
        summary = events(capsys)[-1]
        assert (summary["total"], summary["done"], summary["skipped"], summary["failed"]) == (
            (3, 3, 0, 0) if run == 0 else (3, 0, 3, 0) if extra else (3, 0, 0, 3)), summary
        assert code == (1 if run == 1 else 0)  # run 2: the outputs exist, and are not replaced
    written = sorted(set(images_in(input_dir)) - set(originals))
    prefix = "out/" if output == "inside" else ""
    assert written == [f"{prefix}f{i:03}--2x.png" for i in range(3)]


@pytest.mark.parametrize("prefix", ["x", "sub/x"])
def test_batch_never_reads_back_save_images_numbered_files(tmp_path, capsys, prefix):
    input_dir = tmp_path / "input"
    for i in range(2):
        write_png(input_dir / f"f{i}.png", (8, 8), seed=i)
    prompt = batch_api(recursive=True)
    prompt["3"] = {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}
    path = workflow(tmp_path, prompt)
    for _ in range(2):
        assert main(input_dir, input_dir, path, "--json") == 0
        assert events(capsys)[-1]["total"] == 2
    assert len(images_in(input_dir)) == 6


def test_an_item_saved_over_itself_is_refused_before_any_compute(tmp_path, capsys):
    input_dir = tmp_path / "input"
    write_png(input_dir / "a.png", (8, 8))
    before = (input_dir / "a.png").read_bytes()
    assert main(input_dir, input_dir, workflow(tmp_path, batch_api(template="{stem}", scale=1)), "--json") == 1
    assert "a.png would be saved over itself" in events(capsys)[-1]["failures"][0]["error"]
    assert (input_dir / "a.png").read_bytes() == before


# -- 13.3: names reserved by exclusive creation -------------------------------------------------

def test_save_image_takes_the_next_free_counter_instead_of_replacing(folders, monkeypatch):
    """Another run took counter 1 after this one listed the folder: the name is taken by
    creating the file, so the next free one is used and nothing is replaced."""
    _, output_dir = folders
    (output_dir / "x_00001_.png").write_bytes(b"another run's file")
    listed = core_nodes.save_image_path
    monkeypatch.setattr(core_nodes, "save_image_path", lambda *a: (*listed(*a)[:2], 1, *listed(*a)[3:]))
    result = core_nodes.SaveImage().save_images(torch.rand(2, 4, 4, 3), "x")
    assert [i["filename"] for i in result["ui"]["images"]] == ["x_00002_.png", "x_00003_.png"]
    assert (output_dir / "x_00001_.png").read_bytes() == b"another run's file"


def test_two_runners_into_one_folder_keep_every_image(tmp_path):
    input_dir, output_dir = tmp_path / "input", tmp_path / "output"
    for i in range(3):
        write_png(input_dir / f"f{i}.png", (8, 8), seed=i)
    prompt = batch_api()
    prompt["3"] = {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "farm/x"}}
    path = workflow(tmp_path, prompt)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "rt4ksr_nodes.run", path, "--input-dir", str(input_dir),
               "--output-dir", str(output_dir), "--json"]
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [r.communicate(timeout=120) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], results
    reported = sum(json.loads(out.splitlines()[-1])["done"] for out, _ in results)
    saved = images_in(output_dir / "farm")
    assert reported == 6 and len(saved) == 6  # none lost: each run got its own names
    expected = {np.asarray(Image.open(input_dir / f"f{i}.png").resize((16, 16), Image.NEAREST)).tobytes()
                for i in range(3)}
    assert {np.asarray(Image.open(output_dir / "farm" / n)).tobytes() for n in saved} == expected


def test_batch_saver_never_replaces_a_file_unless_asked(folders):
    _, output_dir = folders
    (output_dir / "a--2x.png").write_bytes(b"precious")
    saver = batch.RT4KSRSaveImageBatch()
    image = torch.rand(1, 4, 4, 3)
    with pytest.raises(FileExistsError, match=r"a--2x\.png already exists; set overwrite"):
        saver.save(image, "a.png", "{stem}--2x", "", "png", "8", 95)
    assert (output_dir / "a--2x.png").read_bytes() == b"precious"
    saver.save(image, "a.png", "{stem}--2x", "", "png", "8", 95, overwrite=True, prompt={})
    assert Image.open(output_dir / "a--2x.png").size == (4, 4)


def counted(monkeypatch) -> list:
    """Calls of the upscale node (the stand-in for the model) from now on."""
    calls, scale = [], core_nodes.ImageScaleBy.upscale
    monkeypatch.setattr(core_nodes.ImageScaleBy, "upscale", lambda self, **kw: (calls.append(1), scale(self, **kw))[1])
    return calls


def test_runner_fails_an_existing_output_before_computing_it(folders, monkeypatch):
    input_dir, output_dir = folders
    write_png(input_dir / "a.png", (8, 8))
    write_png(input_dir / "b.png", (8, 8))
    (output_dir / "a--2x.png").write_bytes(b"precious")
    calls = counted(monkeypatch)
    summary = Runner(batch_api(), registry.node_classes()).run()
    assert (summary.done, summary.failed, len(calls)) == (1, 1, 1)  # a.png was not computed
    assert "a--2x.png already exists" in summary.failures[0][1]
    assert (output_dir / "a--2x.png").read_bytes() == b"precious"


# -- 19.4: collisions found from the listing, before the model runs --------------------------------

def test_collisions_are_found_before_any_image_is_computed(folders, monkeypatch):
    input_dir, output_dir = folders
    write_png(input_dir / "a.png", (8, 8))
    Image.new("RGB", (8, 8)).save(input_dir / "a.webp")
    calls = counted(monkeypatch)
    summary = Runner(batch_api(), registry.node_classes()).run()
    with pytest.raises(ValueError, match=r"a\.webp and a\.png would both be saved as .*put \{ext\}"):
        batch.RT4KSRLoadImageFolder().load("", "*", False, prompt=batch_api(), unique_id="1")  # in ComfyUI
    assert summary.failed == 1 and "before computing any image" in summary.failures[0][1]
    assert calls == [] and images_in(output_dir) == []
    assert Runner(batch_api(template="{stem}.{ext}--2x"), registry.node_classes()).run().done == 2


# -- 19.5 / 19.7: name_template takes only the documented fields, and makes a file name ----------

@pytest.mark.parametrize("template,message", [
    ("{stem:>10000000}", "'{stem:>10000000}' is not allowed"),
    ("{stem.__class__}", "'{stem.__class__}' is not allowed"),
    ("{stem!r}", "'{stem!r}' is not allowed"),
    ("{width.real}", "is not allowed"),
    ("{stem.foo}", "is not allowed"),
    ("{stem[0]}", "is not allowed"),
    ("{}", "is not allowed"),
    ("{stem", "expected '}'"),
    ("", "the file name is empty"),
    ("..", "the file name is '..'"),
    ("   ", "the file name is '   '"),
    ("a/{stem}", "cannot contain /"),
    ("x" * 300, "at most 255"),
])
def test_name_template_allows_only_the_documented_fields(folders, template, message):
    write_png(folders[0] / "a.png", (8, 8))
    problems = validate(batch_api(template=template), registry.node_classes())
    assert [(p.node_id, p.kind) for p in problems] == [("3", "rejected_value")]
    assert message in problems[0].message and len(problems[0].message) < 500


@pytest.mark.parametrize("template,message", [
    ("{stem:>10000000}", "'{stem:>10000000}' is not allowed"),
    ("{stem.__class__}", "'{stem.__class__}' is not allowed"),
    ("{stem!r}", "'{stem!r}' is not allowed"),
    ("..", "the file name is '..'"),
    ("a/{stem}", "cannot contain /"),
])
def test_video_batch_names_follow_the_image_batch_rules(folders, template, message):
    problem = video_batch.RT4KSRSaveVideoBatch.VALIDATE_INPUTS(name_template=template, subfolder="")
    assert problem is not True and message in problem and len(problem) < 500


def test_video_batch_linked_path_stays_in_the_subfolder(folders):
    saver = video_batch.RT4KSRSaveVideoBatch
    with pytest.raises(ValueError, match="leads outside"):
        saver.target("sub/../../x.mp4", "{stem}", "shelf", "mp4")
    assert saver.target("sub/../y.mp4", "{stem}", "shelf", "mp4") == (folders[1] / "shelf" / "y.mp4").resolve()


def test_a_long_source_name_is_refused_before_compute(folders):
    write_png(folders[0] / ("n" * 250 + ".png"), (8, 8))
    summary = Runner(batch_api(), registry.node_classes()).run()
    assert summary.failed == 1 and "at most 255" in summary.failures[0][1] and len(summary.failures[0][1]) < 800
    assert images_in(folders[1]) == []


def test_linked_path_stays_in_the_subfolder(folders):
    saver = batch.RT4KSRSaveImageBatch()
    with pytest.raises(ValueError, match="leads outside"):
        saver.save(torch.rand(1, 4, 4, 3), "sub/../../x.png", "{stem}", "shelf", "png", "8", 95)
    saver.save(torch.rand(1, 4, 4, 3), "sub/../y.png", "{stem}", "shelf", "png", "8", 95)  # still inside
    assert images_in(folders[1]) == ["shelf/y.png"]


# -- 13.10 / 19.10: --validate-only finds what would fail later ------------------------------------

def test_validate_only_catches_what_used_to_fail_at_run_time(folders, tmp_path, capsys):
    input_dir, output_dir = folders
    write_png(input_dir / "a.png", (8, 8))
    null_image = scale_api()
    null_image["1"]["inputs"]["image"] = None
    long_prefix = scale_api(prefix="p" * 300)
    wide_jpeg = batch_api(fmt="jpeg")
    wide_jpeg["3"]["inputs"]["bit_depth"] = "16"
    cases = [(null_image, "1", "the value is null"), (batch_api(pattern="*.tif"), "1", "no image in '' matches"),
             (long_prefix, "3", "at most 255"), (wide_jpeg, "3", "jpeg stores 8 bits per channel")]
    for prompt, node, message in cases:
        assert main(input_dir, output_dir, workflow(tmp_path, prompt), "--validate-only", "--json") == 2
        problems = [e for e in events(capsys) if e["event"] == "problem"]
        assert [p["node"] for p in problems] == [node] and message in problems[0]["message"], problems
    assert images_in(output_dir) == []


# -- 13.9: patterns in any letter case; unsupported formats named ----------------------------------

def test_patterns_ignore_letter_case_and_name_unsupported_formats(folders):
    input_dir, _ = folders
    write_png(input_dir / "A.PNG", (8, 8))
    write_png(input_dir / "b.png", (8, 8))
    Image.new("RGB", (4, 4)).save(input_dir / "c.gif")
    assert batch.RT4KSRLoadImageFolder.stream_items("", "*.png", False) == ["A.PNG", "b.png"]
    assert batch.RT4KSRLoadImageFolder.stream_items("", "a.*", False) == ["A.PNG"]
    with pytest.raises(FileNotFoundError, match=r"1 file matches \(e\.g\. 'c\.gif'\) but this loader reads only PNG"):
        batch.RT4KSRLoadImageFolder.stream_items("", "*.gif", False)


# -- 13.4: SIGTERM, and the temporary files a killed run leaves -----------------------------------

def test_stale_temporary_files_are_removed_and_live_ones_kept(tmp_path):
    stale = tmp_path / "sub" / f".a--2x.png.abcd1234{fileio.TEMP_SUFFIX}"
    live = tmp_path / f".b--2x.png.efgh5678{fileio.TEMP_SUFFIX}"
    foreign = tmp_path / ".notes.part"
    for path in (stale, live, foreign):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
        os.utime(path, (time.time() - 60, time.time() - 60))
    with open(live, "rb") as writer:
        fcntl.flock(writer, fcntl.LOCK_EX)  # a writer at work
        assert fileio.remove_stale_temps(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and foreign.exists()


def test_a_run_removes_stale_temporary_files_and_never_reads_them(tmp_path, capsys):
    input_dir = tmp_path / "input"
    write_png(input_dir / "a.png", (8, 8))
    stale = input_dir / f".a--2x.png.abcd1234{fileio.TEMP_SUFFIX}"
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    stale.write_bytes(buffer.getvalue())  # even a complete image: never an input
    os.utime(stale, (time.time() - 60, time.time() - 60))
    assert main(input_dir, input_dir, workflow(tmp_path, batch_api()), "--json") == 0
    out = events(capsys)
    assert out[0] == {"event": "cleaned", "temporary_files": 1} and out[-1]["total"] == 1
    assert not stale.exists() and images_in(input_dir) == ["a--2x.png", "a.png"]


STOPPABLE = """
import sys, time
from pathlib import Path
from rt4ksr_nodes.host import bridge
from rt4ksr_nodes.nodes import batch, video_batch
from rt4ksr_nodes.runner import cli, registry

BUSY, COMPUTE, WRITE, CHECKS = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "checks"


class Wait:
    '''Busy for COMPUTE seconds; stops early when interrupted, as the engine does, if CHECKS.'''
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    def run(self, image):
        BUSY.touch()
        for _ in range(int(COMPUTE * 100)):
            if CHECKS and bridge.interrupted():
                raise RuntimeError("cancelled")
            time.sleep(0.01)
        return (image,)

slow_write = batch.write_image
def write_image(*args, **kwargs):  # slow encoders: a backlog of writes builds up
    time.sleep(WRITE)
    return slow_write(*args, **kwargs)
batch.write_image = write_image

registry.register("Wait", Wait)
sys.argv[1:] = sys.argv[5:]
cli.run()
"""


def _start(tmp_path, items: int, compute: float, write: float, *args, checks=True):
    input_dir, output_dir = tmp_path / "input", tmp_path / "output"
    for i in range(items):
        write_png(input_dir / f"f{i:02}.png", (8, 8), seed=i)
    prompt = batch_api()
    prompt["4"] = {"class_type": "Wait", "inputs": {"image": ["2", 0]}}
    prompt["3"]["inputs"]["images"] = ["4", 0]
    (tmp_path / "stoppable.py").write_text(STOPPABLE)
    busy = tmp_path / "busy"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "stoppable.py", str(busy), str(compute), str(write), "checks" if checks else "stuck",
         workflow(tmp_path, prompt), "--json",
         "--input-dir", str(input_dir), "--output-dir", str(output_dir), *args],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        if busy.exists() or process.poll() is not None:
            break
        time.sleep(0.05)
    assert busy.exists(), process.communicate(timeout=5)
    return process, output_dir


def _stop(process, *steps) -> tuple[list[dict], str, float]:
    """Send each (pause before it, signal) in turn; returns the JSON events, stderr and the
    seconds from the last signal to the exit."""
    try:
        for pause, signum in steps:
            time.sleep(pause)
            sent = time.perf_counter()
            process.send_signal(signum)
        out, err = process.communicate(timeout=60)
        return [json.loads(line) for line in out.splitlines()], err, time.perf_counter() - sent
    finally:
        process.kill()


def test_sigterm_stops_like_ctrl_c_with_exit_143(tmp_path):
    process, output_dir = _start(tmp_path, 3, 60, 0)
    final, err, _ = _stop(process, (0, signal.SIGTERM))
    assert process.returncode == 143, err
    assert "Traceback" not in err
    assert final[-2]["event"] == "summary" and final[-2]["interrupted"] is True
    assert final[-1]["event"] == "interrupted"
    assert list(output_dir.rglob(f"*{fileio.TEMP_SUFFIX}")) == []


def test_a_second_ctrl_c_stops_a_node_that_does_not_stop_by_itself(tmp_path):
    process, _ = _start(tmp_path, 3, 60, 0, checks=False)
    final, err, _ = _stop(process, (0, signal.SIGINT), (0.5, signal.SIGINT))
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert [e["event"] for e in final[-4:-2]] == ["stopping", "stopping_now"]
    assert final[-2]["event"] == "summary" and final[-2]["interrupted"] is True and final[-2]["done"] == 0
    assert final[-1]["event"] == "interrupted" and "--resume" in final[-1]["message"]


def test_a_second_ctrl_c_reports_exactly_the_files_on_disk(tmp_path):
    """Quick compute, slow writes, two writer threads: when the second Ctrl-C comes, writes are
    queued and running. The queued ones are dropped, the running ones finish, and the summary
    and the item events count exactly the outputs on disk."""
    process, output_dir = _start(tmp_path, 12, 0, 0.4, "--jobs", "2")
    lines, err, stopping = _stop(process, (0.6, signal.SIGINT), (0.1, signal.SIGINT))
    assert process.returncode == 130, err
    summary = next(e for e in lines if e["event"] == "summary")
    reported = [f for e in lines if e["event"] == "item" for f in e["outputs"]]
    on_disk = images_in(output_dir)
    assert sorted(os.path.relpath(f, output_dir) for f in reported) == on_disk
    assert summary["done"] == len([e for e in lines if e["event"] == "item" and e["status"] == "done"])
    assert summary["done"] + summary["failed"] >= len(on_disk) > 0 and len(on_disk) < 12
    assert stopping < 2  # the writes in progress take 0.4 s; a stopped run skips the interpreter's teardown
    assert list(output_dir.rglob(f"*{fileio.TEMP_SUFFIX}")) == []


# -- 13.8: an output folder that cannot hold the results -------------------------------------------

def test_an_output_folder_that_cannot_be_made_is_a_usage_error(folders, tmp_path, capsys):
    input_dir, _ = folders
    write_png(input_dir / "a.png", (8, 8))
    (tmp_path / "blocker").write_text("a file")
    path = workflow(tmp_path, scale_api())
    assert main(input_dir, tmp_path / "blocker" / "out", path, "--json") == 2
    assert events(capsys) == [{"event": "error", "message":
                               f"--output-dir: cannot write into {tmp_path / 'blocker' / 'out'}: "
                               f"{tmp_path / 'blocker'} is a file, not a folder"}]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_fails_before_any_work(folders, tmp_path, capsys):
    input_dir, output_dir = folders
    write_png(input_dir / "a.png", (8, 8))
    output_dir.chmod(0o555)
    try:
        assert main(input_dir, output_dir, workflow(tmp_path, batch_api()), "--json") == 2
    finally:
        output_dir.chmod(0o755)
    assert [e["event"] for e in events(capsys)] == ["error"]


# -- 13.15: a huge --set value is not echoed back in full ------------------------------------------

def test_a_huge_set_value_is_not_echoed_in_full(folders, tmp_path, capsys):
    input_dir, output_dir = folders
    write_png(input_dir / "a.png", (8, 8))
    path = workflow(tmp_path, scale_api())
    huge = "v" * 120_000
    batch_path = str(tmp_path / "batch.json")
    Path(batch_path).write_text(json.dumps(batch_api()))
    for workflow_path, override in [
        (path, f"1.image={huge}"), (path, f"2.scale_by={huge}"), (path, f"3.filename_prefix={huge}"),
        (path, f"nope={huge}"), (batch_path, f"1.folder={'v/' * 60_000}"), (batch_path, f"3.subfolder={huge}"),
        (batch_path, f"1.pattern={huge}"), (batch_path, f"3.name_template={huge}"),
    ]:
        assert main(input_dir, output_dir, workflow_path, "--json", "--set", override) == 2
        out = capsys.readouterr().out
        assert 0 < len(out) < 3000 and "characters left out" in out, out[:300]


# -- 13.16: colour profiles kept ------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "tiff"])
def test_batch_keeps_the_source_colour_profile(folders, fmt):
    input_dir, output_dir = folders
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.new("RGB", (8, 8), (200, 30, 90)).save(input_dir / "a.png", icc_profile=profile)
    write_png(input_dir / "b.png", (8, 8))  # none: none written
    assert Runner(batch_api(fmt=fmt), registry.node_classes()).run().done == 2
    suffix = batch.FORMATS[fmt]
    assert Image.open(output_dir / f"a--2x{suffix}").info.get("icc_profile") == profile
    assert not Image.open(output_dir / f"b--2x{suffix}").info.get("icc_profile")


# -- 13.17: ComfyUI's 16-bit grayscale quirk kept, and said -------------------------------------------

def test_load_image_warns_on_16_bit_grayscale_and_keeps_parity(folders):
    input_dir, output_dir = folders
    ramp = np.tile(np.linspace(0, 65535, 16).astype(np.uint16), (8, 1))
    Image.fromarray(ramp).save(input_dir / "g16.png")
    assert Image.open(input_dir / "g16.png").mode.startswith("I")
    seen = []
    summary = Runner(scale_api(image="g16.png", scale=1), registry.node_classes(), on_event=seen.append).run()
    assert summary.done == 1
    warnings = [e["message"] for e in seen if e["event"] == "warning"]
    assert len(warnings) == 1 and "g16.png is 16-bit grayscale" in warnings[0]
    saved = np.asarray(Image.open(output_dir / "out" / "x_00001_.png"))
    # ComfyUI's reading (Pillow's 16-to-8-bit conversion clips): every value above 255 of 65535 is white.
    expected = np.minimum(ramp, 255).astype(np.uint8)
    assert np.array_equal(saved[..., 0], expected) and saved.mean() > 200
    assert np.abs(batch.read_image(input_dir / "g16.png").pixels[..., 0] * 65535 - ramp).max() < 1  # ours: right


# -- 19.10: Cancel while saving: every file written is reported ---------------------------------------

def test_cancel_while_saving_reports_every_file_written(folders, monkeypatch):
    """ComfyUI calls the saver once with the whole list; Cancel stops it between images and
    the UI result (ComfyUI's history) lists exactly the files on disk."""
    saver = batch.RT4KSRSaveImageBatch()
    save = saver.save

    def save_then_cancel(**one):
        result = save(**one)
        bridge.headless.interrupt.set()  # Cancel pressed while the first image was saved
        return result

    monkeypatch.setattr(saver, "save", save_then_cancel)
    images = [torch.rand(1, 4, 4, 3) for _ in range(3)]
    result = saver.save_list(images=images, path=["a.png", "b.png", "c.png"], name_template=["{stem}"],
                             subfolder=[""], format=["png"], bit_depth=["8"], quality=[95], prompt=[{}])
    assert [i["filename"] for i in result["ui"]["images"]] == images_in(folders[1]) == ["a.png"]
    assert "Cancelled" in result["ui"]["text"][0]
    bridge.headless.interrupt.clear()
    result = batch.RT4KSRSaveImageBatch().save_list(images=images, path=["a.png", "b.png", "c.png"], name_template=["{stem}"],
                             subfolder=["more"], format=["png"], bit_depth=["8"], quality=[95], prompt=[{}])
    assert len(result["ui"]["images"]) == 3 and "text" not in result["ui"]
