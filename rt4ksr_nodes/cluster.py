"""Ray, for the two things that scale out over it: the runner's folder batch
(runner/ray_backend.py) and a long video's segments (video/ray_segments.py).

Ray is an optional extra, imported only here and only when a Ray backend is asked for.
"""

from __future__ import annotations

import os
from pathlib import Path

INSTALL_HINT = ("--backend ray needs Ray: pip install 'rt4ksr-nodes[ray]' "
                "(or pip install 'ray[data]>=2.10' into this environment)")


class RayUnavailable(ImportError):
    pass


def require_ray(address: str | None = None):
    """The ray module, or RayUnavailable saying how to install it."""
    if not address:
        # A local run stays on the loopback address: otherwise Ray swaps "127.0.0.1" in cluster
        # addresses for this machine's outward one (the setting is read when Ray is imported).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
        import ray.data  # noqa: F401 - the extra, not only ray core
    except ImportError as error:
        raise RayUnavailable(INSTALL_HINT) from error
    return ray


class connected:
    """ray.init when this process is not connected yet (shut down again at the end): `address`
    as ray.init takes it, or None for a new private cluster on 127.0.0.1."""

    def __init__(self, ray, address: str | None):
        self.ray, self.address, self.started = ray, address, False

    def __enter__(self):
        if not self.ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            if self.address:
                self.ray.init(address=self.address, log_to_driver=False)
            else:  # a new private cluster on the loopback address, even when one is running here
                self.ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                              log_to_driver=False)
            self.started = True
        return self

    def __exit__(self, *exc):
        if self.started:
            self.ray.shutdown()


def slots(ray) -> tuple[int, dict]:
    """How many workers the cluster holds (one per GPU, else one per CPU) and the resources
    each asks for."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return gpus, {"num_gpus": 1}
    return max(1, int(resources.get("CPU", 1))), {"num_cpus": 1}


def die_once(hook: str | None, number: int) -> None:
    """Test-only (the backends' KILL_HOOK): exit this worker process at once, as a crash would,
    when `hook` ("N:MARKER") names `number`; once, MARKER being created first."""
    if not hook:
        return
    wanted, marker = hook.split(":", 1)
    if int(wanted) == number and not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)
