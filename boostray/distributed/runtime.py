"""Starting or joining Ray. A local instance keeps every port and the gloo rendezvous on 127.0.0.1."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

LOOPBACK = "127.0.0.1"


def loopback_environment() -> None:
    """Must run before Ray starts: without it Ray binds the machine's non-loopback address."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


def cluster_address(address: str | None) -> str | None:
    return address or os.environ.get("RAY_ADDRESS") or None


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None,
                object_store_bytes: int = 1 << 30) -> Iterator[bool]:
    """Join ``address`` (or RAY_ADDRESS), or start a loopback-only local Ray; yields whether this
    call started Ray (and so shuts it down on exit). An already initialised Ray is reused as is."""
    import ray

    if ray.is_initialized():
        yield False
        return
    target = cluster_address(address)
    if target:
        ray.init(address=target, log_to_driver=True)
    else:
        loopback_environment()
        ray.init(
            num_cpus=num_cpus,
            object_store_memory=object_store_bytes,
            include_dashboard=True,  # serves the state API (Ray Train's cleanup and `ray list` use it)
            dashboard_host=LOOPBACK,
            _node_ip_address=LOOPBACK,
            log_to_driver=True,
            runtime_env={"env_vars": {
                "GLOO_SOCKET_IFNAME": "lo",  # gloo's pair sockets on loopback
                # Ray Train gives a worker group 60 s to start; a loaded machine needs more
                "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600"),
            }},
        )
    try:
        yield True
    finally:
        ray.shutdown()
