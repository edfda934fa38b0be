"""Video outputs as safe as image outputs: Save Video's counter claimed by creating the file,
Save Video Batch never replacing a file unless asked nor saving two clips under one name, the
video folder never reading back its own outputs, and a quiet IS_CHANGED."""

from __future__ import annotations

import logging
import os
import time

import pytest

from ground_truth import shared_path
from runner_helpers import folders  # noqa: F401 - fixture
from test_runner_video import folder_prompt, run
from video_clips import decode, pictures, write_clip
from rt4ksr_nodes.files import paths as fileio
from rt4ksr_nodes.nodes import video_batch
from rt4ksr_nodes.nodes.video_values import FileVideo
from rt4ksr_nodes.runner import core_video, registry

av = pytest.importorskip("av")


@pytest.fixture(autouse=True)
def released_weights(monkeypatch):
    monkeypatch.setenv("RT4KSR_WEIGHTS_FROM", str(shared_path("weights")))


def clip(path, frames=2, height=24, width=32, step=3):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_clip(path, pictures(frames, height, width, step=step))
    return FileVideo(path)


def visible(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


# -- Save Video: the counter is claimed by creating the file ---------------------------------------

def test_save_video_takes_the_next_free_counter_instead_of_replacing(folders, monkeypatch):
    """Another run took counter 1 after this one listed the folder: the next free name is
    used and the other run's file is untouched."""
    input_dir, output_dir = folders
    (output_dir / "v").mkdir()
    (output_dir / "v" / "x_00001_.mp4").write_bytes(b"another run's clip")
    listed = core_video.save_image_path
    monkeypatch.setattr(core_video, "save_image_path", lambda *a: (*listed(*a)[:2], 1, *listed(*a)[3:]))
    video = clip(input_dir / "c.mp4")
    result = core_video.SaveVideo().save(video, "v/x", "auto", "auto")
    assert [i["filename"] for i in result["ui"]["images"]] == ["x_00002_.mp4"]
    assert (output_dir / "v" / "x_00001_.mp4").read_bytes() == b"another run's clip"
    frames, *_ = decode(output_dir / "v" / "x_00002_.mp4")
    assert [f.shape for f in frames] == [(24, 32, 3)] * 2
    assert sorted(os.listdir(output_dir / "v")) == ["x_00001_.mp4", "x_00002_.mp4"]  # no temporary left


def test_a_killed_video_writers_temporary_file_is_recognised_as_stale(tmp_path):
    """The temporary file of a muxer-written clip keeps the extension (the muxer's choice)
    after TEMP_SUFFIX; it is still this pack's, so a later run removes it once stale."""
    stale = tmp_path / f".x_00001_.mp4.abcd1234{fileio.TEMP_SUFFIX}.mp4"
    other = tmp_path / f".notes{fileio.TEMP_SUFFIX}.mp4.bak"  # not a name the pack makes
    for path in (stale, other):
        path.write_bytes(b"partial")
        os.utime(path, (time.time() - 60,) * 2)
    assert fileio.remove_stale_temps(tmp_path) == [stale]
    assert other.exists()


# -- Save Video Batch: overwrite and collisions ------------------------------------------------------

def test_save_video_batch_never_replaces_a_file_unless_asked(folders):
    input_dir, output_dir = folders
    video = clip(input_dir / "a.mp4")
    (output_dir / "a--2x.mp4").write_bytes(b"precious")
    saver = video_batch.RT4KSRSaveVideoBatch()
    with pytest.raises(FileExistsError, match=r"a--2x\.mp4 already exists; set overwrite"):
        saver.save(video, "a.mp4", "{stem}--2x", "", "mp4")
    assert (output_dir / "a--2x.mp4").read_bytes() == b"precious"
    saver.save(video, "a.mp4", "{stem}--2x", "", "mp4", overwrite=True, prompt={})
    assert [f.shape for f in decode(output_dir / "a--2x.mp4")[0]] == [(24, 32, 3)] * 2
    assert visible(output_dir) == ["a--2x.mp4"]
    assert "overwrite" in video_batch.RT4KSRSaveVideoBatch.INPUT_TYPES()["optional"]


def test_save_video_batch_refuses_two_clips_under_one_name(folders):
    input_dir, output_dir = folders
    first, second = clip(input_dir / "a.mp4"), clip(input_dir / "a.mkv", step=9)
    saver, prompt = video_batch.RT4KSRSaveVideoBatch(), {}
    saver.save(first, "a.mp4", "{stem}--2x", "", "mp4", prompt=prompt)
    kept = (output_dir / "a--2x.mp4").read_bytes()
    with pytest.raises(ValueError, match=r"a\.mkv and a\.mp4 would both be saved as .*put \{ext\}"):
        saver.save(second, "a.mkv", "{stem}--2x", "", "mp4", overwrite=True, prompt=prompt)
    assert (output_dir / "a--2x.mp4").read_bytes() == kept


def counted(monkeypatch) -> list:
    """Calls of Upscale Video (RT4KSR) from now on."""
    calls, cls = [], registry.node_classes()["RT4KSRUpscaleVideo"]
    original = getattr(cls, cls.FUNCTION)
    monkeypatch.setattr(cls, cls.FUNCTION, lambda self, *a, **kw: (calls.append(1), original(self, *a, **kw))[1])
    return calls


def test_runner_finds_video_collisions_and_existing_outputs_before_computing(folders, monkeypatch):
    input_dir, output_dir = folders
    clip(input_dir / "clips" / "a.mp4")
    clip(input_dir / "clips" / "a.mkv", step=9)
    calls = counted(monkeypatch)
    summary = run(folder_prompt())
    assert summary.failed == 1 and "a.mp4 and a.mkv would both be saved as" in summary.failures[0][1]
    assert "before computing any clip" in summary.failures[0][1]
    assert calls == [] and visible(output_dir) == []
    # In ComfyUI the loader gives the whole list: the same check, before any clip is read.
    with pytest.raises(ValueError, match="before computing any clip"):
        video_batch.RT4KSRLoadVideoFolder().load("clips", "*", False, prompt=folder_prompt(), unique_id="1")

    (input_dir / "clips" / "a.mkv").unlink()
    (output_dir / "sr").mkdir()
    (output_dir / "sr" / "a--2x.mp4").write_bytes(b"precious")
    summary = run(folder_prompt())
    assert summary.failed == 1 and "a--2x.mp4 already exists; set overwrite" in summary.failures[0][1]
    assert calls == [] and (output_dir / "sr" / "a--2x.mp4").read_bytes() == b"precious"
    with pytest.raises(FileExistsError, match="set overwrite"):
        video_batch.RT4KSRLoadVideoFolder().load("clips", "*", False, prompt=folder_prompt(), unique_id="1")
    replacing = folder_prompt()
    replacing["4"]["inputs"]["overwrite"] = True
    assert run(replacing).done == 1 and len(calls) == 1
    assert [f.shape for f in decode(output_dir / "sr" / "a--2x.mp4")[0]] == [(48, 64, 3)] * 2


# -- the video folder never reads back its own outputs -----------------------------------------------

def test_video_folder_never_reads_back_its_own_outputs(folders):
    """The output folder inside the input folder, recursive: the second run lists the two
    sources only (their outputs are left out, and said so), and replaces nothing."""
    input_dir, _ = folders
    for name in ("a.mp4", "b.mp4"):
        clip(input_dir / "clips" / name)
    prompt = folder_prompt()
    prompt["1"]["inputs"]["recursive"] = True
    prompt["4"]["inputs"]["subfolder"] = "clips/sr"
    prompt["5"] = {"class_type": "SaveVideo", "inputs": {"video": ["3", 0], "filename_prefix": "clips/n/x",
                                                          "format": "auto", "codec": "auto"}}
    from rt4ksr_nodes.host import bridge

    bridge.headless.output_dir = input_dir  # outputs land inside the folder the batch reads
    first = run(prompt)
    assert (first.total, first.done, first.failed) == (2, 2, 0), first.failures
    written = visible(input_dir / "clips")
    assert written == ["a.mp4", "b.mp4", "n/x_00001_.mp4", "n/x_00002_.mp4", "sr/a--2x.mp4", "sr/b--2x.mp4"]
    events = []
    second = run(prompt, on_event=events.append)
    assert second.total == 2  # not 6: neither its batch outputs nor Save Video's files are read
    assert [item for item, _ in second.failures] == ["a.mp4", "b.mp4"]  # outputs exist, kept
    notes = [e["message"] for e in events if e["event"] == "warning"]
    assert any("left out 4 files that this workflow writes" in n for n in notes), notes
    items, notes = video_batch.RT4KSRLoadVideoFolder._items("clips", "*", True, prompt, "1")
    assert items == ["a.mp4", "b.mp4"] and "left out 4 files" in notes[0]


def test_video_folder_load_reports_what_it_skipped(folders):
    """Inside ComfyUI (no runner): a file that is not a video and the workflow's own outputs
    are shown on the node, not only logged."""
    input_dir, _ = folders
    clip(input_dir / "clips" / "a.mp4")
    (input_dir / "clips" / "broken.mp4").write_bytes(b"not a video")
    from rt4ksr_nodes.host import bridge

    bridge.headless.output_dir = input_dir
    clip(input_dir / "clips" / "sr" / "a--2x.mp4")  # a.mp4's output from an earlier run
    loader = video_batch.RT4KSRLoadVideoFolder()
    prompt = folder_prompt()
    prompt["4"]["inputs"].update(subfolder="clips/sr", overwrite=True)
    result = loader.load("clips", "*", True, prompt=prompt, unique_id="1")
    assert result["result"][2] == ["a.mp4"]
    text = " | ".join(result["ui"]["text"])
    assert "left out 1 file that this workflow writes (e.g. sr/a--2x.mp4)" in text
    assert "broken.mp4" in text and "not a video" in text


# -- IS_CHANGED is a quiet fingerprint ----------------------------------------------------------------

def test_video_folder_is_changed_is_quiet_and_follows_the_files(folders, caplog, tmp_path):
    input_dir, _ = folders
    clip(input_dir / "clips" / "a.mp4")
    outside = tmp_path / "elsewhere.mp4"
    outside.write_bytes(b"x")
    (input_dir / "clips" / "link.mp4").symlink_to(outside)  # left out, with a note when loading
    loader = video_batch.RT4KSRLoadVideoFolder
    with caplog.at_level(logging.WARNING):
        first = loader.IS_CHANGED("clips", "*", False)
        assert loader.IS_CHANGED("clips", "*", False) == first
    assert caplog.records == []
    with caplog.at_level(logging.WARNING):
        assert loader.stream_items("clips", "*", False) == ["a.mp4"]
    assert any("link.mp4" in r.getMessage() for r in caplog.records)  # said when loading
    clip(input_dir / "clips" / "a.mp4", frames=3)
    assert loader.IS_CHANGED("clips", "*", False) != first
