"""`python -m rt4ksr_nodes.bench ray`: the folder-batch workflow (x2 to PNG) with --backend ray
on a local Ray cluster of 1, then 2 worker nodes of one CPU each, each pinned to its own core
(ray.cluster_utils.Cluster, head without CPUs, every address 127.0.0.1), against the local
backend on the same frames.

Images/s is reported over the whole run (workers start and load the model inside it) and in
steady state: from the first item reported to the last.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..host import bridge
from .runner import folder_prompt, input_frames
from ..runner import registry
from ..runner.execute import Runner


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=48, help="frames in the folder (default 48)")
    parser.add_argument("--size", default="480x270", help="frame size WxH (default 480x270)")
    parser.add_argument("--nodes", default="1,2", help="worker node counts to measure (default 1,2)")


def _timed(runner_class, output: Path, **options) -> tuple[float, float, int]:
    """(whole-run images/s, steady images/s, done) for one run into `output`."""
    stamps = []
    bridge.headless.output_dir = output

    def on_event(event):
        if event["event"] == "item":
            stamps.append(time.perf_counter())

    start = time.perf_counter()
    summary = runner_class(folder_prompt(), registry.node_classes(), on_event=on_event, **options).run()
    wall = time.perf_counter() - start
    if summary.failed or summary.done == 0:
        raise RuntimeError(f"run failed: {summary.failures[:3]}")
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return summary.done / wall, steady, summary.done


def _on_cluster(nodes: int, root: Path) -> tuple[float, float, int]:
    from ..runner.ray_backend import RayRunner

    with local_cluster(nodes):
        return _timed(RayRunner, root / f"ray_{nodes}")


@contextmanager
def local_cluster(nodes: int) -> Iterator:
    """Ray, connected to a new local cluster: a head without CPUs and `nodes` worker nodes of
    one CPU each, each pinned to its own core, every address 127.0.0.1 (the benchmarks' cluster;
    shut down afterwards)."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "node_ip_address": "127.0.0.1", "num_cpus": 0, "include_dashboard": False})
    try:
        for index in range(nodes):
            _pin(cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1"), index)
        ray.init(address=cluster.address, _node_ip_address="127.0.0.1", log_to_driver=False)
        if {n["NodeManagerAddress"] for n in ray.nodes()} != {"127.0.0.1"}:
            raise RuntimeError("a Ray node is not on 127.0.0.1")
        yield ray
    finally:
        ray.shutdown()
        cluster.shutdown()


def _pin(node, index: int) -> None:
    """Make a worker node of one CPU really one CPU: its processes (raylet, and the workers it
    starts later, which inherit it) on core `index` alone. Without it a worker's threads (torch's,
    the writers', a video's decoder and encoder) spread over the whole machine and one "1-CPU"
    node takes it all."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else []
    if len(cores) <= index:
        return
    for processes in node.all_processes.values():
        for info in processes:
            os.sched_setaffinity(info.process.pid, {cores[index]})


def main(args: argparse.Namespace) -> None:
    from ..cluster import require_ray

    require_ray()  # keeps Ray on the loopback address; says how to install it when missing
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory(prefix="rt4ksr_bench_ray_") as temporary:
        root = Path(temporary)
        width, height = input_frames(root, args.images, args.size)
        saved = (bridge.headless.input_dir, bridge.headless.output_dir)
        bridge.headless.input_dir = root / "input"
        try:
            rows = [("local backend, this process", *_timed(Runner, root / "local"))]
            for nodes in (int(n) for n in args.nodes.split(",")):
                rows.append((f"ray, {nodes} worker node{'s' * (nodes > 1)} x 1 CPU", *_on_cluster(nodes, root)))
        finally:
            bridge.headless.input_dir, bridge.headless.output_dir = saved
    print(f"{args.images} synthetic {width}x{height} PNG frames, x2 to PNG, CPU, {os.cpu_count()} cores")
    print("| backend | images/s, whole run | images/s, steady | done |")
    print("|---|---:|---:|---:|")
    for label, whole, steady, done in rows:
        print(f"| {label} | {whole:.2f} | {steady:.2f} | {done} |")
