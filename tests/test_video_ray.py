"""A long video's segments over Ray (video/ray_segments.py) on the local multi-node cluster of
conftest.py: the local segmented run's file is the reference, byte for byte (the same plan
gives the same segments, and the join is a stream copy). A worker lost mid-segment and a node
removed mid-run lose and duplicate nothing."""

from __future__ import annotations

import threading

import pytest

from runner_helpers import folders  # noqa: F401 - fixture
from video_clips import av, pictures, write_clip  # noqa: F401 - av: skips without PyAV

from rt4ksr_nodes.video.pipeline import upscale_video

FRAMES, SEGMENT = 48, 0.5  # 24 fps, a keyframe every 6 frames: 4 segments of 12 frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("ray_video") / "clip.mp4"
    write_clip(path, pictures(FRAMES, 40, 56), options={"g": "6", "bf": "2"}, audio=True)
    return path


@pytest.fixture(scope="module")
def reference(clip, fused_models):
    out = clip.parent / "local.mkv"
    upscale_video(fused_models[2], clip, out, codec="ffv1", segment=SEGMENT, warn=lambda message: None)
    return out.read_bytes()


def _ray_run(model, clip, out, **options):
    from rt4ksr_nodes.video.ray_segments import run_on_ray

    seen = []
    result = upscale_video(model, clip, out, codec="ffv1", segment=SEGMENT, run_segments=run_on_ray(**options),
                           progress=lambda done, total: seen.append((done, total)), warn=lambda message: None)
    return result, seen


def test_segments_over_two_nodes_give_the_local_file(cluster, clip, reference, fused_models, tmp_path):
    out = tmp_path / "ray.mkv"
    result, seen = _ray_run(fused_models[2], clip, out)
    assert result.frames == FRAMES
    assert out.read_bytes() == reference
    assert seen and seen[-1] == (FRAMES, FRAMES)  # the workers' frames, summed on the driver
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert not (tmp_path / ".rt4ksr-segments").exists() or not any((tmp_path / ".rt4ksr-segments").iterdir())


def test_a_worker_killed_mid_segment_has_it_redone(cluster, clip, reference, fused_models, tmp_path, monkeypatch):
    from rt4ksr_nodes.video.ray_segments import KILL_HOOK

    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_HOOK, f"2:{marker}")
    out = tmp_path / "ray.mkv"
    result, _ = _ray_run(fused_models[2], clip, out)
    assert marker.exists(), "the worker encoding segment 2 died halfway through it"
    assert result.frames == FRAMES
    assert out.read_bytes() == reference


def test_a_lost_node_has_its_segment_done_elsewhere(cluster, clip, reference, fused_models, tmp_path):
    """Removes a worker node (raylet and worker) once frames are being made, so the other node
    finishes alone, then adds a node back."""
    from rt4ksr_nodes.video.ray_segments import run_on_ray

    removed = []

    def remove_a_node(done, total):
        if done and not removed:
            removed.append(next(iter(cluster.worker_nodes)))
            threading.Thread(target=cluster.remove_node, args=(removed[0],),
                             kwargs={"allow_graceful": False}).start()

    out = tmp_path / "ray.mkv"
    try:
        result = upscale_video(fused_models[2], clip, out, codec="ffv1", segment=SEGMENT,
                               run_segments=run_on_ray(), progress=remove_a_node, warn=lambda message: None)
    finally:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    assert removed
    assert result.frames == FRAMES
    assert out.read_bytes() == reference



def test_quick_cli_backend_ray(cluster, clip, reference, tmp_path, monkeypatch, checkpoints, capsys):
    from rt4ksr_nodes.cli.upscale import main

    monkeypatch.setenv("RT4KSR_WEIGHTS_DIR", str(checkpoints[2].parent))
    out = tmp_path / "cli.mkv"
    argv = ["-i", str(clip), "--scale", "2", "-o", str(out), "--codec", "ffv1", "--segment", str(SEGMENT)]
    assert main([*argv, "--backend", "ray"]) == 0
    assert out.read_bytes() == reference
    for wrong, said in ((["--segment", "0", "--backend", "ray"], "--segment 0 asks for one pass"),
                        (["--ray-workers", "2"], "need --backend ray")):
        with pytest.raises(SystemExit) as usage:
            main([*argv, *wrong])
        assert usage.value.code == 2 and said in capsys.readouterr().err


def test_runner_backend_ray_runs_a_video_workflow_in_segments(cluster, clip, folders, monkeypatch):
    """Load Video -> Upscale Video -> Save Video with --backend ray: the same file as the local
    runner's, metadata included."""
    import json

    from ground_truth import shared_path
    from test_runner_video import upscale_prompt

    from rt4ksr_nodes.runner import cli

    monkeypatch.setenv("RT4KSR_WEIGHTS_FROM", str(shared_path("weights")))
    (folders[0] / "clip.mp4").write_bytes(clip.read_bytes())
    workflow = folders[0].parent / "wf.json"
    workflow.write_text(json.dumps(upscale_prompt()))
    common = [str(workflow), "--input-dir", str(folders[0]), "--segment", str(SEGMENT), "--json"]
    assert cli.main([*common, "--output-dir", str(folders[1] / "local")]) == 0
    assert cli.main([*common, "--output-dir", str(folders[1] / "ray"), "--backend", "ray"]) == 0
    [local] = (folders[1] / "local" / "video").glob("*.mp4")
    [ray] = (folders[1] / "ray" / "video").glob("*.mp4")
    assert ray.read_bytes() == local.read_bytes()


def test_a_node_without_the_shared_folders_says_so(cluster, clip, tmp_path):
    from rt4ksr_nodes.video.errors import VideoError
    from rt4ksr_nodes.video.ray_segments import _check_shared
    from rt4ksr_nodes.video.segments import Segment, SegmentJob
    from rt4ksr_nodes.video.codecs import EncodeOptions

    job = SegmentJob(source=clip, workdir=tmp_path / "absent", segments=(Segment(0, 0, None, None, FRAMES),),
                     extension=".mkv", options=EncodeOptions(codec="ffv1"))
    with pytest.raises(VideoError, match=r"Ray node .* does not see the segments' folder .*absent.*shared file system"):
        _check_shared(job)


def test_folder_batch_workers_take_the_segment_settings_not_the_executor(monkeypatch):
    from rt4ksr_nodes.host import bridge
    from rt4ksr_nodes.runner.ray_backend import _settings

    monkeypatch.setattr(bridge.headless, "video_segments", {"segment": 3.0, "resume": True, "run_segments": print})
    assert _settings()["video_segments"] == {"segment": 3.0, "resume": True}
