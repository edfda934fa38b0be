"""Segmented encoding and resume (video/segments.py, join.py, workdir.py) on clips the tests
build: the joined file against a single pass of the same job (frames, timestamps, copied
streams), seams at open-GOP boundaries, kill -9 then --resume, and what is refused.

Expected keyframes and timestamps come from demuxing / decoding the source independently."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction

import numpy as np
import pytest
from ground_truth import ROOT
from video_clips import av, decode, frame_times, packets, pictures, write_clip

from rt4ksr_nodes import UpscaleCancelled, upscale_video
from rt4ksr_nodes.cli.upscale import main
from rt4ksr_nodes.video import VideoError, workdir
from rt4ksr_nodes.video.segments import plan_segments

# Irregular gaps (variable frame rate), ms.
VFR = [0, 40, 80, 150, 170, 250, 290, 300, 380, 420, 500, 540, 620, 660, 700, 790, 830, 900, 950,
       1000, 1042, 1100, 1180, 1200, 1250, 1290, 1330, 1400, 1440, 1500, 1530, 1580]
OPEN_GOP = {"x264-params": "open-gop=1:keyint=8:min-keyint=8:scenecut=0:bframes=3:b-adapt=0"}


@pytest.fixture(autouse=True)
def released_weights(monkeypatch, checkpoints):
    monkeypatch.setenv("RT4KSR_WEIGHTS_DIR", str(checkpoints[2].parent))


def _keyframes(path) -> list[int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sorted(p.pts for p in container.demux(stream) if p.size and p.is_keyframe)


def _container(path) -> tuple:
    with av.open(str(path)) as container:
        return (dict(container.metadata), container.chapters(),
                [(s.type, s.codec_context.name if s.codec_context else None) for s in container.streams])


def _assert_same_video(segmented, single) -> None:
    frames_a, pts_a, base_a = decode(segmented)
    frames_b, pts_b, base_b = decode(single)
    assert (pts_a, base_a) == (pts_b, base_b)
    assert len(frames_a) == len(frames_b) and all(np.array_equal(a, b) for a, b in zip(frames_a, frames_b))


def test_segmented_equals_single_pass_lossless_vfr_with_audio_subtitles_chapters(tmp_path, fused_models):
    source = tmp_path / "talk.mkv"
    write_clip(source, pictures(len(VFR), 48, 64), pts=VFR, time_base=Fraction(1, 1000), options={"g": "6", "bf": "2"},
               audio=True, subtitles=True, chapters=True, metadata={"title": "A talk"})
    said = []
    segments = plan_segments(source, 0.3, said.append)
    cuts = [0]  # each at the first keyframe at least 0.3 s after the one before
    for key in _keyframes(source):
        if key - cuts[-1] >= 300:
            cuts.append(key)
    assert [s.start for s in segments] == cuts and len(cuts) >= 3 and not said
    assert [s.end for s in segments] == cuts[1:] + [None]
    assert [s.frames for s in segments] == [sum(start <= t < (end or 10**9) for t in VFR)
                                           for start, end in zip(cuts, cuts[1:] + [None])]
    single, segmented = tmp_path / "single.mkv", tmp_path / "segmented.mkv"
    upscale_video(fused_models[2], source, single, codec="ffv1")
    result = upscale_video(fused_models[2], source, segmented, codec="ffv1", segment=0.3, warn=said.append)
    assert result.frames == len(VFR) and said == []
    _assert_same_video(segmented, single)
    # Every frame at its source time and for its source duration, across the boundaries.
    assert frame_times(segmented) == frame_times(single) == frame_times(source)
    for kind in ("audio", "subtitles"):
        assert packets(segmented, kind) == packets(source, kind) and packets(source, kind)
    assert _container(segmented)[:2] == _container(single)[:2]
    assert _container(segmented)[0]["title"] == "A talk" and len(_container(segmented)[1]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["segmented.mkv", "single.mkv", "talk.mkv"]  # folder gone


def test_mp4_with_b_frames_from_an_open_gop_source_has_no_seam(tmp_path, fused_models):
    source = tmp_path / "open.mp4"
    write_clip(source, pictures(40, 48, 64), options=OPEN_GOP, audio=True, rotation=90)
    with av.open(str(source)) as container:  # leading pictures: shown before a keyframe, stored after it
        order = [(p.pts, p.is_keyframe) for p in container.demux(container.streams.video[0]) if p.size]
    key = next(pts for pts, is_key in order[1:] if is_key)
    assert any(pts < key for pts, _ in order[order.index((key, True)) + 1:])
    said = []
    assert len(plan_segments(source, 0.3, said.append)) == 5
    # Default H.264 (B-frames; lossy, so each segment's own encode is the reference).
    parts = {}

    def run(model, job, pending, *rest):
        workdir.run_locally(model, job, pending, *rest)
        parts.update({index: decode(job.segment_path(index)) for index in pending})

    single, segmented = tmp_path / "single.mp4", tmp_path / "segmented.mp4"
    upscale_video(fused_models[2], source, single)
    upscale_video(fused_models[2], source, segmented, segment=0.3, warn=said.append, run_segments=run)
    assert said == []  # the GOP decoded before each start conceals nothing that is shown
    frames, stamps, base = decode(segmented)
    # Joined by stream copy: exactly the segments' frames, in order, none lost or doubled.
    assert np.array_equal(np.stack(frames), np.concatenate([np.stack(parts[i][0]) for i in range(5)]))
    assert stamps == decode(single)[1] == decode(source)[1]
    # (a segment file alone may be off by < 1 ms: MP4 keeps its start in the movie's ms time scale)
    assert all(abs(a - b) * base <= Fraction(1, 1000) for a, b in
               zip(stamps, [t for i in range(5) for t in parts[i][1]], strict=True))
    # Each frame the single pass's picture, far closer to it than to its neighbours (the clip pans).
    ours, theirs = np.stack(frames).astype(int), np.stack(decode(single)[0]).astype(int)
    same = np.abs(ours - theirs).mean(axis=(1, 2, 3))
    shifted = np.minimum(np.abs(ours[1:] - theirs[:-1]).mean(axis=(1, 2, 3))[1:],
                         np.abs(ours[:-1] - theirs[1:]).mean(axis=(1, 2, 3))[:-1])
    assert same.max() < 4 and (same[1:-1] * 4 < shifted).all(), (same, shifted)
    assert [start for start, _ in frame_times(segmented)] == [start for start, _ in frame_times(source)]
    assert packets(segmented, "audio") == packets(source, "audio")
    with av.open(str(segmented)) as container:
        assert next(container.decode(video=0)).rotation == 90
        container.seek(0)
        order = [p.pts for p in container.demux(video=0) if p.size]
    assert order != sorted(order)  # B-frames: stored out of display order


def test_kill_9_then_resume_redoes_only_unfinished_segments(tmp_path, monkeypatch, fused_models):
    source = tmp_path / "film.mp4"
    write_clip(source, pictures(96, 96, 128, step=1), options={"g": "12", "preset": "ultrafast"}, audio=True)
    out = tmp_path / "out" / "film--2x.mp4"
    command = [sys.executable, "-m", "rt4ksr_nodes.upscale", "-i", str(source), "--scale", "2",
               "-o", str(out), "--segment", "0.5"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    folder = tmp_path / "out" / workdir.ROOT
    deadline = time.monotonic() + 120
    while not list(folder.glob("*/segment-*.mp4")):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read().decode()
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    [job] = folder.iterdir()
    finished = {p.name: p.stat().st_mtime_ns for p in job.glob("segment-*.mp4")}
    assert 1 <= len(finished) < 8 and not out.exists()
    # Without --resume the finished segments are not thrown away silently.
    assert main(["-i", str(source), "--scale", "2", "-o", str(out), "--segment", "0.5"]) == 1
    seen = {}
    real = workdir.run_locally

    def spy(model, job_, pending, *rest):
        seen.update(pending=pending, kept={name: (job / name).stat().st_mtime_ns for name in finished})
        real(model, job_, pending, *rest)

    monkeypatch.setattr(workdir, "run_locally", spy)
    assert main(["-i", str(source), "--scale", "2", "-o", str(out), "--segment", "0.5", "--resume"]) == 0
    assert seen["kept"] == finished  # not redone
    assert seen["pending"] == [i for i in range(8) if f"segment-{i:05d}.mp4" not in finished]
    assert not folder.exists()
    # The same file as a run never interrupted (x264 and the MP4 muxer are deterministic).
    monkeypatch.setattr(workdir, "run_locally", real)
    again = tmp_path / "again" / "film--2x.mp4"
    assert main(["-i", str(source), "--scale", "2", "-o", str(again), "--segment", "0.5"]) == 0
    assert out.read_bytes() == again.read_bytes()
    assert len(decode(out)[0]) == 96
    # An existing output: --resume skips it, as --skip-existing does.
    assert main(["-i", str(source), "--scale", "2", "-o", str(out), "--segment", "0.5", "--resume"]) == 0


def test_stopped_run_kept_refused_without_resume_damaged_segment_redone(tmp_path, monkeypatch, fused_models):
    source = tmp_path / "clip.mkv"
    write_clip(source, pictures(40, 32, 48), options={"x264-params": "keyint=8:min-keyint=8:scenecut=0"})
    out = tmp_path / "clip--2x.mkv"
    said, seen = [], []
    with pytest.raises(UpscaleCancelled):
        upscale_video(fused_models[2], source, out, codec="ffv1", segment=0.3, warn=said.append,
                      progress=lambda done, total: seen.append(done), cancel=lambda: len(seen) >= 20)
    [job] = (tmp_path / workdir.ROOT).iterdir()
    assert sorted(p.name for p in job.glob("segment-*")) == ["segment-00000.mkv", "segment-00001.mkv"]
    assert any(f"2 of 5 segments are kept in {job}" in m and "--resume" in m for m in said), said
    with pytest.raises(VideoError, match=rf"2 of 5 segments of an earlier run are in {job}: rerun with resume "
                                         rf"\(--resume\) to keep them, or delete {job} to start over"):
        upscale_video(fused_models[2], source, out, codec="ffv1", segment=0.3)
    # A second run of the same job while the first holds the folder: refused, naming it.
    with open(job / "lock", "wb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(VideoError, match=f"another run of the same job is writing segments in {job}"):
            upscale_video(fused_models[2], source, out, codec="ffv1", segment=0.3, resume=True)
    damaged = job / "segment-00001.mkv"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size * 2 // 3])
    kept = (job / "segment-00000.mkv").stat().st_mtime_ns
    pending = []

    real = workdir.run_locally

    def run(model, job_, indices, progress, cancel, warn):
        pending.extend(indices)
        assert (job / "segment-00000.mkv").stat().st_mtime_ns == kept
        real(model, job_, indices, progress, cancel, warn)

    monkeypatch.setattr(workdir, "run_locally", run)
    upscale_video(fused_models[2], source, out, codec="ffv1", segment=0.3, resume=True)
    assert pending == [1, 2, 3, 4]  # the truncated one is made again
    single = tmp_path / "single.mkv"
    upscale_video(fused_models[2], source, single, codec="ffv1")
    _assert_same_video(out, single)


def test_sources_that_cannot_be_cut_are_done_in_one_piece(tmp_path, fused_models):
    source = tmp_path / "one-gop.mp4"
    write_clip(source, pictures(20, 32, 48), options={"x264-params": "keyint=100:scenecut=0"})
    said = []
    assert plan_segments(source, 0.1, said.append) is None
    assert said == [f"{source}: cannot be cut into segments (it has a single keyframe); it is done in one pass"]
    out = tmp_path / "out.mp4"
    assert upscale_video(fused_models[2], source, out, segment=0.1, warn=said.append).frames == 20
    assert decode(out)[1] == decode(source)[1] and not (tmp_path / workdir.ROOT).exists()  # a plain pass
    avi = tmp_path / "out.avi"
    upscale_video(fused_models[2], source, avi, segment=0.1, warn=said.append)
    assert said[-1] == f"{avi}: .avi outputs are made in one pass, not in segments"


def test_only_frames_the_decoder_shows_are_planned(tmp_path, fused_models):
    whole = tmp_path / "whole.mp4"
    write_clip(whole, pictures(48, 32, 48), options={"x264-params": "keyint=12:min-keyint=12:scenecut=0:bframes=2"})
    source = tmp_path / "cut.mkv"  # a recording that starts inside a GOP: its first packets show nothing
    with av.open(str(whole)) as original, av.open(str(source), "w") as cut:
        stream = original.streams.video[0]
        copy = cut.add_stream_from_template(stream)
        for packet in [p for p in original.demux(stream) if p.size][5:]:
            packet.stream = copy
            cut.mux(packet)
    shown = decode(source)[1]
    assert 30 <= len(shown) < 43
    segments = plan_segments(source, 0.4, pytest.fail)
    assert len(segments) == 3 and sum(s.frames for s in segments) == len(shown) and segments[0].start == shown[0]
    out = tmp_path / "out.mkv"
    upscale_video(fused_models[2], source, out, codec="ffv1", segment=0.4, warn=lambda message: None)
    assert decode(out)[1] == shown
    # An MP4 edit list trimming the first frames (the keyframe among them): decoded, not shown.
    trimmed = tmp_path / "trimmed.mp4"
    write_clip(trimmed, pictures(30, 32, 48), pts=list(range(-3, 27)), options={"x264-params": "keyint=8:scenecut=0"})
    with av.open(str(trimmed)) as container:
        assert [p.is_discard for p in container.demux(video=0)][:1] == [True]
    shown = decode(trimmed)[1]
    assert len(shown) == 27 and sum(s.frames for s in plan_segments(trimmed, 0.3, pytest.fail)) == 27
    upscale_video(fused_models[2], trimmed, out, codec="ffv1", segment=0.3, overwrite=True)
    assert len(decode(out)[1]) == 27


def _from_second_keyframe(whole, out) -> None:
    """A stream copy of `whole` from its second keyframe on: a recording that starts at an
    open-GOP I-frame (its leading pictures reference a GOP that is not in the file)."""
    with av.open(str(whole)) as original, av.open(str(out), "w") as cut:
        stream = original.streams.video[0]
        copy = cut.add_stream_from_template(stream)
        stored = [p for p in original.demux(stream) if p.size]
        second = [i for i, p in enumerate(stored) if p.is_keyframe][1]
        for packet in stored[second:]:
            packet.stream = copy
            cut.mux(packet)


def test_a_recording_starting_with_leading_pictures_plans_only_what_is_shown(tmp_path, fused_models):
    whole, source = tmp_path / "whole.mkv", tmp_path / "rec.mkv"
    write_clip(whole, pictures(48, 32, 48), options=OPEN_GOP)
    _from_second_keyframe(whole, source)
    shown = decode(source)[1]
    with av.open(str(source)) as container:
        stored = sorted(p.pts for p in container.demux(video=0) if p.size)
    assert len(stored) > len(shown) and stored[0] < shown[0]  # stored after the I-frame, never shown
    segments = plan_segments(source, 0.3, pytest.fail)
    assert len(segments) >= 3 and segments[0].start == shown[0]
    assert [s.frames for s in segments] == [sum(s.start <= t < (s.end or 10**9) for t in shown) for s in segments]
    single, segmented = tmp_path / "single.mkv", tmp_path / "segmented.mkv"
    upscale_video(fused_models[2], source, single, codec="ffv1")
    assert upscale_video(fused_models[2], source, segmented, codec="ffv1", segment=0.3, warn=pytest.fail).frames == 40
    _assert_same_video(segmented, single)
    # The same in MPEG-TS (a broadcast capture), where seeking misses keyframes: one plain pass.
    whole_ts, ts = tmp_path / "whole.ts", tmp_path / "rec.ts"
    write_clip(whole_ts, pictures(48, 32, 48), options=OPEN_GOP)
    _from_second_keyframe(whole_ts, ts)
    out = tmp_path / "ts.mkv"
    assert upscale_video(fused_models[2], ts, out, codec="ffv1", segment=0.3, warn=lambda m: None).frames == 40
    assert len(decode(out)[1]) == len(decode(ts)[1]) == 40 and not (tmp_path / workdir.ROOT).exists()


def test_sources_whose_pts_are_not_presentation_times_or_that_seek_off_keyframes_are_not_cut(tmp_path, fused_models):
    avi = tmp_path / "b.avi"  # AVI keeps no pts: with B-frames FFmpeg guesses them in decode order
    write_clip(avi, pictures(40, 32, 48), options={"x264-params": "keyint=8:min-keyint=8:scenecut=0:bframes=2"})
    remuxed = tmp_path / "b.mkv"  # those guesses stored as pts in a container that keeps them
    with av.open(str(avi)) as original, av.open(str(remuxed), "w") as copy:
        stream = original.streams.video[0]
        target = copy.add_stream_from_template(stream)
        for packet in original.demux(stream):
            if packet.size:
                packet.stream = target
                copy.mux(packet)
    mpg = tmp_path / "m2.mpg"  # MPEG-PS: a seek lands past the keyframe it asked for
    write_clip(mpg, pictures(40, 32, 48), codec="mpeg2video", options={"g": "8", "bf": "2"})
    said = []
    assert [plan_segments(path, 0.3, said.append) for path in (avi, remuxed, mpg)] == [None] * 3
    assert said == [f"{path}: cannot be cut into segments ({why}); it is done in one pass" for path, why in [
        (avi, "AVI stores no presentation times"),
        (remuxed, "its packets' timestamps are not the order the frames are shown in"),
        (mpg, "FFmpeg cannot seek in it to a keyframe")]]
    for source in (avi, mpg):
        single, segmented = tmp_path / f"{source.suffix[1:]}-single.mkv", tmp_path / f"{source.suffix[1:]}-seg.mkv"
        upscale_video(fused_models[2], source, single, codec="ffv1")
        upscale_video(fused_models[2], source, segmented, codec="ffv1", segment=0.3, warn=lambda m: None)
        _assert_same_video(segmented, single)
        assert frame_times(segmented) == frame_times(single)


def test_the_join_refuses_segments_that_overlap(tmp_path):
    from types import SimpleNamespace

    from rt4ksr_nodes.video.join import _video_packets
    from rt4ksr_nodes.video.segments import Segment

    paths = [tmp_path / "segment-0.mkv", tmp_path / "segment-1.mkv"]
    for path in paths:  # 10 frames at 24 fps each, from pts 0 (ms): the first runs to 375 ms
        write_clip(path, pictures(10, 16, 16), codec="ffv1")
    job = SimpleNamespace(segments=(Segment(0, 0, 200, None, 10), Segment(1, 200, None, 0, 10)),
                          segment_path=lambda index: paths[index])
    with av.open(str(paths[0])) as template, av.open(str(tmp_path / "joined.mkv"), "w") as output:
        video = output.add_stream_from_template(template.streams.video[0])
        with pytest.raises(VideoError, match="segment-1.mkv: a frame at pts 200 is not after the previous "
                                             r"segment's last \(375\): the segments overlap"):
            list(_video_packets(job, video, Fraction(1, 1000)))


def test_segments_that_miss_their_plan_are_discarded_and_auto_falls_back_to_one_pass(tmp_path, monkeypatch,
                                                                                     fused_models):
    from rt4ksr_nodes.video import policy

    source, out = tmp_path / "clip.mkv", tmp_path / "out.mkv"
    write_clip(source, pictures(24, 32, 48), options={"g": "6"})
    real = workdir.plan_segments

    def wrong(path, seconds, note):  # as a planner misled by the file would be
        first, second, *rest = real(path, seconds, note)
        return (first, dataclasses.replace(second, frames=second.frames + 1), *rest)

    monkeypatch.setattr(workdir, "plan_segments", wrong)
    with pytest.raises(VideoError, match=r"segment 1 has 6 frames where the plan has 7; .* cannot be cut into "
                                         r"segments reliably: upscale it in one pass \(--segment 0\)"):
        upscale_video(fused_models[2], source, out, codec="ffv1", segment=0.25)
    assert not (tmp_path / workdir.ROOT).exists() and not out.exists()  # nothing a rerun would trip on
    # Segments chosen automatically ("auto", here): the clip is made in one pass instead.
    monkeypatch.setattr(policy, "AUTO_LONGER_THAN", 0.5)
    monkeypatch.setattr(policy, "AUTO_SEGMENT", 0.25)
    said = []
    assert upscale_video(fused_models[2], source, out, codec="ffv1", segment="auto", warn=said.append).frames == 24
    assert decode(out)[1] == decode(source)[1] and not (tmp_path / workdir.ROOT).exists()
    assert [m for m in said if "cannot be cut into segments reliably: it is done in one pass" in m], said


def test_a_folder_left_after_its_output_was_published_goes_and_the_lock_is_held_to_the_end(tmp_path, monkeypatch,
                                                                                          fused_models):
    source, out = tmp_path / "clip.mkv", tmp_path / "out.mkv"
    write_clip(source, pictures(12, 32, 48), options={"g": "6"})
    real, held = workdir._remove, []

    def killed(folder):  # the moment after the join published out: the lock is still held
        with open(folder / "lock", "rb") as other:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.append(folder)

    monkeypatch.setattr(workdir, "_remove", killed)
    upscale_video(fused_models[2], source, out, codec="ffv1", segment=0.25)
    monkeypatch.setattr(workdir, "_remove", real)
    [job] = (tmp_path / workdir.ROOT).iterdir()
    assert held == [job] and out.exists() and (job / "joined").exists()
    with open(job / "lock", "wb") as lock:  # a run holds it: kept
        fcntl.flock(lock, fcntl.LOCK_EX)
        workdir.remove_joined(tmp_path)
        assert job.is_dir()
    stat = out.stat()
    os.utime(out, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # not the file it published: kept
    workdir.remove_joined(tmp_path)
    assert job.is_dir()
    os.utime(out, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # The next segmented job writing into that folder removes it (else its segments, the same
    # job's, would be refused as an earlier run's).
    upscale_video(fused_models[2], source, tmp_path / "again.mkv", codec="ffv1", segment=0.25)
    assert not (tmp_path / workdir.ROOT).exists()


def test_the_cli_skipping_a_published_output_removes_what_a_kill_after_its_join_left(tmp_path, monkeypatch,
                                                                                     fused_models):
    source, out = tmp_path / "clip.mkv", tmp_path / "clip--2x.mkv"
    write_clip(source, pictures(12, 32, 48), options={"g": "6"})
    real = workdir._remove
    monkeypatch.setattr(workdir, "_remove", lambda folder: None)  # killed right after the join
    argv = ["-i", str(source), "--scale", "2", "-o", str(out), "--codec", "ffv1", "--segment", "0.25"]
    assert main(argv) == 0
    monkeypatch.setattr(workdir, "_remove", real)
    assert out.exists() and any((tmp_path / workdir.ROOT).iterdir())
    assert main([*argv, "--resume"]) == 0  # skipped: the output is there
    assert not (tmp_path / workdir.ROOT).exists()


def test_an_avi_output_is_not_sent_elsewhere_in_segments(tmp_path, fused_models):
    source = tmp_path / "clip.mkv"
    write_clip(source, pictures(12, 32, 48), options={"g": "6"})
    with pytest.raises(VideoError, match=r"\.avi outputs are made in one pass, so not in segments elsewhere"):
        upscale_video(fused_models[2], source, tmp_path / "out.avi", segment=0.25,
                      run_segments=lambda *args: pytest.fail("sent"))
    assert not (tmp_path / "out.avi").exists()


def test_resume_key_has_the_planner_version_and_the_resolved_precision_and_device(tmp_path, fused_models):
    import torch

    from rt4ksr_nodes.video.codecs import EncodeOptions, plan
    from rt4ksr_nodes.video.segments import PLAN_VERSION
    from rt4ksr_nodes.video.source import probe

    clip = tmp_path / "clip.mkv"
    write_clip(clip, pictures(4, 16, 16))
    source, model = probe(clip), fused_models[2]
    encoder_plan = plan(source, 2, EncodeOptions(codec="ffv1"), tmp_path / "out.mkv", "model")
    key = {(precision, here): workdir._key_inputs(model, source, encoder_plan, 1.0, "model", precision, "auto", here)
           for precision in ("auto", "fp32", "fp16") for here in (True, False)}
    gpu = torch.cuda.is_available()
    assert key["auto", True] == key["fp16" if gpu else "fp32", True] != key["fp32" if gpu else "fp16", True]
    assert key["auto", True]["device"] == ("cuda" if gpu else "cpu") and key["auto", True]["version"] == PLAN_VERSION
    # Run elsewhere (Ray) "auto" is each worker's: not the same job as one run here.
    assert key["auto", False] != key["auto", True] and key["auto", False]["precision"] == "auto"
