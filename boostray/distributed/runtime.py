"""Starting or joining Ray. A local instance keeps every port and the gloo rendezvous on 127.0.0.1."""

from __future__ import annotations

import os
import urllib.request
from contextlib import contextmanager
from typing import Iterator

LOOPBACK = "127.0.0.1"


def loopback_environment() -> None:
    """Must run before Ray starts: without it Ray binds the machine's non-loopback address."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


DIRECT_INGRESS_PORTS = 64  # replica HTTP ports Serve may hand out per node under direct ingress


def direct_ingress_environment(first_port: int) -> range:
    """Must run before Ray starts: Serve's direct ingress (a Ray feature flag read by the controller and
    every replica when they import Serve), where each ingress replica runs its own HTTP server on a port
    from the returned range, so a request skips the proxy and its two Ray calls (the request, and the
    replica's call back to the proxy for the body). The proxy keeps answering on its own port. A replica
    drains for 1 s when it stops, not Serve's 30 s for external load balancers; both can be overridden."""
    ports = range(first_port, first_port + DIRECT_INGRESS_PORTS)
    os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
    os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] = str(ports.start)
    os.environ["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] = str(ports.stop)  # exclusive bound
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
    return ports


def replica_ports(ports: range) -> list[int]:
    """The ports of ``ports`` where a replica answers /healthz (Serve starts a replica's server before the
    deployment reports ready, so serve.run has returned once they listen)."""
    found = []
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/healthz", timeout=2):
                found.append(port)
        except OSError:  # nothing listens there (connection refused): ports are handed out from the start
            if found:
                break
    return found


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
