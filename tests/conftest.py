"""Shared fixtures: the released models, loaded once per test session; a local multi-node Ray
cluster, started once for the modules that use it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ground_truth import SCALES, checkpoint_path

# Before Ray is imported: keep every Ray address on the loopback (see rt4ksr_nodes.cluster).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def checkpoints() -> dict[int, Path]:
    return {scale: checkpoint_path(scale) for scale in SCALES}


@pytest.fixture(scope="session")
def train_models(checkpoints):
    from rt4ksr_nodes import load_model

    return {scale: load_model(path, reparameterize=False) for scale, path in checkpoints.items()}


@pytest.fixture(scope="session")
def fused_models(checkpoints):
    from rt4ksr_nodes import load_model

    return {scale: load_model(path) for scale, path in checkpoints.items()}


@pytest.fixture(scope="session")
def cluster():
    """A head without CPUs and two worker nodes of one CPU each, all on 127.0.0.1; skipped
    when Ray is not installed (CI installs the extra)."""
    pytest.importorskip("ray.data", reason="Ray is not installed (pip install 'rt4ksr-nodes[ray]')")
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    assert not ray_constants.ENABLE_RAY_CLUSTER, "Ray was imported before the loopback setting"
    assert not ray.is_initialized()
    cluster = Cluster(initialize_head=True, head_node_args={
        "node_ip_address": "127.0.0.1", "num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    try:
        ray.init(address=cluster.address, _node_ip_address="127.0.0.1")
        nodes = [n for n in ray.nodes() if n["Alive"]]
        assert len(nodes) == 3
        assert {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}, "Ray must stay on the loopback"
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
