"""--backend ray on a real multi-node Ray cluster on this machine (a head without CPUs and two
worker nodes of one CPU each, all on 127.0.0.1): the local backend's files are the reference.

The cluster (conftest.py) starts once per test session; the tests skip when Ray is not installed (CI installs
the extra), except the one checking that --backend ray then says how to install it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from runner_helpers import folders  # noqa: F401 - fixture
from rt4ksr_nodes.host import bridge
from rt4ksr_nodes.bench.runner import folder_prompt
from rt4ksr_nodes.runner import cli, registry
from rt4ksr_nodes.runner.execute import Runner

IMAGES = 40


def prompt() -> dict:
    """The benchmark's folder workflow, in fp32 and into a subfolder."""
    workflow = folder_prompt()
    workflow["3"]["inputs"]["precision"] = "fp32"
    workflow["4"]["inputs"]["subfolder"] = "sr"
    return workflow


@pytest.fixture(scope="module")
def reference(tmp_path_factory, weights_from):
    """40 small frames and the local backend's outputs for them."""
    root = tmp_path_factory.mktemp("ray")
    frames = root / "input" / "frames"
    frames.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(IMAGES):
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(frames / f"f{index:02}.png")
    saved = (bridge.headless.input_dir, bridge.headless.output_dir)
    bridge.headless.input_dir, bridge.headless.output_dir = root / "input", root / "local"
    try:
        summary = Runner(prompt(), registry.node_classes()).run()
    finally:
        bridge.headless.input_dir, bridge.headless.output_dir = saved
    assert (summary.done, summary.failed) == (IMAGES, 0), summary.failures
    return root, _contents(root / "local")


@pytest.fixture(scope="module")
def weights_from():
    from ground_truth import shared_path

    previous = os.environ.get("RT4KSR_WEIGHTS_FROM")
    os.environ["RT4KSR_WEIGHTS_FROM"] = str(shared_path("weights"))
    yield
    if previous is None:
        del os.environ["RT4KSR_WEIGHTS_FROM"]
    else:
        os.environ["RT4KSR_WEIGHTS_FROM"] = previous


def _contents(folder) -> dict[str, bytes]:
    """Every file under `folder` (hidden temporary files included) by relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run_ray(root, output, **options):
    from rt4ksr_nodes.runner.ray_backend import RayRunner

    events = []
    bridge.headless.input_dir, bridge.headless.output_dir = root / "input", output
    bridge.headless.interrupt.clear()
    try:
        summary = RayRunner(prompt(), registry.node_classes(), on_event=events.append, **options).run()
    finally:
        bridge.headless.interrupt.clear()
    return summary, [e for e in events if e["event"] == "item"]


def test_files_identical_to_local_and_work_on_both_nodes(cluster, reference, tmp_path):
    root, expected = reference
    summary, items = _run_ray(root, tmp_path / "out")
    assert (summary.done, summary.failed, summary.total) == (IMAGES, 0, IMAGES), summary.failures
    assert _contents(tmp_path / "out") == expected  # names, pixels and PNG metadata
    assert sorted(e["item"] for e in items) == [f"f{i:02}.png" for i in range(IMAGES)]
    assert len({e["node"] for e in items}) == 2, "both worker nodes take items"
    assert all(e["outputs"] == [str(tmp_path / "out" / "sr" / e["item"].replace(".png", "--2x.png"))] for e in items)


def test_a_killed_worker_loses_and_duplicates_nothing(cluster, reference, tmp_path, monkeypatch):
    root, expected = reference
    marker = tmp_path / "killed"
    monkeypatch.setenv("RT4KSR_TEST_KILL_WORKER", f"3:{marker}")  # dies after writing its 3rd item
    summary, items = _run_ray(root, tmp_path / "out")
    assert marker.exists(), "a worker process was killed"
    assert (summary.done, summary.failed) == (IMAGES, 0), summary.failures
    assert len(items) == IMAGES and len({e["item"] for e in items}) == IMAGES  # each reported once
    # The dead attempt's output was kept, not written again (an item whose reply died with the
    # worker may be run again and found written too); no temporary file is left over.
    assert sum(bool(e.get("recovered")) for e in items) >= 1
    assert _contents(tmp_path / "out") == expected


def test_resume_after_an_interrupted_run_redoes_nothing(cluster, reference, tmp_path):
    root, expected = reference
    output = tmp_path / "out"

    def stop_after_ten(event):
        if event["event"] == "item" and len(list(output.rglob("*.png"))) >= 10:
            bridge.headless.interrupt.set()

    from rt4ksr_nodes.runner.ray_backend import RayRunner

    bridge.headless.input_dir, bridge.headless.output_dir = root / "input", output
    bridge.headless.interrupt.clear()
    first = RayRunner(prompt(), registry.node_classes(), on_event=stop_after_ten).run()
    bridge.headless.interrupt.clear()
    assert first.interrupted and first.done < IMAGES
    finished = {p: p.stat().st_mtime_ns for p in output.rglob("*.png")}
    time.sleep(1)
    assert len(list(output.rglob("*.png"))) == len(finished), "the interrupted run went on writing"
    assert len(finished) == first.done, "every file written was reported, and only those"
    summary, items = _run_ray(root, output, resume=True)
    assert not summary.interrupted and summary.failed == 0
    assert summary.skipped == len(finished) and summary.done == IMAGES - len(finished)
    assert {p: p.stat().st_mtime_ns for p in finished} == finished, "a finished file was rewritten"
    written = {k: v for k, v in _contents(output).items() if not k.split("/")[-1].startswith(".")}
    assert written == expected


def test_cli_reports_a_broken_file_and_finishes_the_rest(cluster, folders, tmp_path, capsys, weights_from):
    input_dir, output_dir = folders
    (input_dir / "frames").mkdir()
    for index in range(3):
        Image.fromarray(np.full((16, 16, 3), 40 * index, np.uint8)).save(input_dir / "frames" / f"ok{index}.png")
    (input_dir / "frames" / "broken.png").write_bytes(b"not a png")
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(prompt()))
    code = cli.main([str(workflow), "--backend", "ray", "--json", "--input-dir", str(input_dir),
                     "--output-dir", str(output_dir)])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == cli.FAILED
    assert [e["event"] for e in events][0] == "start" and events[-1]["event"] == "summary"
    failed = [e for e in events if e["event"] == "item" and e["status"] == "failed"]
    assert len(failed) == 1 and "broken.png" in failed[0]["error"]
    assert events[-1]["done"] == 3 and events[-1]["failed"] == 1
    assert sorted(p.name for p in (output_dir / "sr").iterdir()) == [f"ok{i}--2x.png" for i in range(3)]


def test_cli_invalid_workflow_schedules_nothing(cluster, folders, tmp_path, capsys):
    input_dir, output_dir = folders
    broken = prompt()
    broken["3"]["inputs"]["precision"] = "fp128"
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(broken))
    code = cli.main([str(workflow), "--backend", "ray", "--json", "--input-dir", str(input_dir),
                     "--output-dir", str(output_dir)])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == cli.INVALID and {e["event"] for e in events} == {"problem"}
    assert list(output_dir.iterdir()) == []


def test_without_ray_the_backend_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if not installed
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(prompt()))
    assert cli.main([str(workflow), "--backend", "ray", "--json"]) == cli.INVALID
    message = json.loads(capsys.readouterr().out)["message"]
    assert "pip install 'rt4ksr-nodes[ray]'" in message


def test_ray_options_need_the_ray_backend(tmp_path, capsys):
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(prompt()))
    assert cli.main([str(workflow), "--ray-address", "auto", "--json"]) == cli.INVALID
    assert "--backend ray" in json.loads(capsys.readouterr().out)["message"]


def test_a_lost_node_has_its_items_done_elsewhere(cluster, reference, tmp_path):
    """Last in the module: kills the node (raylet and worker) that reported the first item, so
    the other node finishes alone, then adds a node back. A worker killed mid-write may leave
    its hidden temporary file; never a partial file under an output name."""
    root, expected = reference
    nodes = list(cluster.worker_nodes)
    lost = []

    def kill_a_node(event):
        if event["event"] == "item" and not lost and event["status"] == "done":
            victim = next(n for n in nodes if n.node_id == event["node"])
            lost.append(victim.node_id)
            threading.Thread(target=cluster.remove_node, args=(victim,), kwargs={"allow_graceful": False}).start()

    from rt4ksr_nodes.runner.ray_backend import RayRunner

    bridge.headless.input_dir, bridge.headless.output_dir = root / "input", tmp_path / "out"
    events = []
    try:
        summary = RayRunner(prompt(), registry.node_classes(), workers=2,
                            on_event=lambda e: (events.append(e), kill_a_node(e))).run()
    finally:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    items = [e for e in events if e["event"] == "item"]
    assert lost and (summary.done, summary.failed) == (IMAGES, 0), summary.failures
    assert len({e["item"] for e in items}) == len(items) == IMAGES
    assert len({e["node"] for e in items} - set(lost)) >= 1, "items went on elsewhere"
    written = {k: v for k, v in _contents(tmp_path / "out").items() if not k.split("/")[-1].startswith(".")}
    assert written == expected


def test_folder_of_clips_spreads_over_the_workers(cluster, weights_from, tmp_path):
    """Video folder batch on the workers: a broken clip fails alone, and the files decode to
    the local backend's frames and timestamps (how items spread over the nodes is the image
    test's; two clips may well both land on the first worker ready)."""
    from rt4ksr_nodes.runner.ray_backend import RayRunner
    from test_runner_video import clips, folder_prompt
    from video_clips import decode

    clips(tmp_path / "input")
    saved = (bridge.headless.input_dir, bridge.headless.output_dir)
    bridge.headless.input_dir = tmp_path / "input"
    try:
        bridge.headless.output_dir = tmp_path / "local"
        local = Runner(folder_prompt(), registry.node_classes()).run()
        bridge.headless.output_dir = tmp_path / "ray"
        events = []
        spread = RayRunner(folder_prompt(), registry.node_classes(), on_event=events.append).run()
    finally:
        bridge.headless.input_dir, bridge.headless.output_dir = saved
    for summary in (local, spread):
        assert (summary.done, summary.failed) == (2, 1) and summary.failures[0][0] == "broken.mp4"
    assert sorted(e["item"] for e in events if e["event"] == "item" and e["status"] == "done") == ["one.mp4", "two.mkv"]
    for name in ("one--2x.mp4", "two--2x.mp4"):
        ours, theirs = decode(tmp_path / "local" / "sr" / name), decode(tmp_path / "ray" / "sr" / name)
        assert ours[1] == theirs[1] and all(np.array_equal(a, b) for a, b in zip(ours[0], theirs[0]))
