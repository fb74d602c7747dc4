"""Starting or joining Ray. A local instance keeps every port and the gloo rendezvous on 127.0.0.1."""

from __future__ import annotations

import importlib
import os
import threading
import urllib.request
import warnings
from contextlib import contextmanager
from typing import Iterator, Sequence

from boostray.errors import ConfigError

LOOPBACK = "127.0.0.1"
_owned = False  # whether Ray runs as a local instance that ray_session started in this process


#: set while ``ray.init`` starts a local instance, so that the processes it spawns inherit them, and in
#: the job's runtime environment, for the workers; taken out of this process's environment afterwards,
#: so that no later child (a ``ray start --address`` among them, which aborts under the first) inherits them
LOCAL_INSTANCE_ENVIRONMENT = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray's processes bind 127.0.0.1, not the network address
    "RAY_USAGE_STATS_ENABLED": "0",  # and report nothing
}
#: and, without the dashboard, none of the records only the dashboard reads:
#: - task events: the GCS keeps about 4 KB for every task and actor call reported (79 MB for 20,000
#:   calls), up to 100,000 of them, and Ray Train's health checks alone make 8 calls a second with two
#:   workers (trainer.py);
#: - metrics, for the dashboard's Grafana panels: Ray Data's stats actor grows with every update the
#:   executions and iterators send it, every 5 s each (+18 MB over a 10-minute streamed run, +3 over 1.5
#:   minutes; docs/performance.md).
#: With the dashboard, or with a variable set by the user, Ray's default holds.
NO_DASHBOARD_RECORDS = {"RAY_task_events_report_interval_ms": "0", "RAY_enable_metrics_collection": "0"}


#: Arrow's allocator in the processes boostray starts (the ``boostray`` command, and every process of a local
#: instance): the system's malloc rather than Arrow's default, mimalloc, which kept memory that Arrow no
#: longer used (after opening a streamed split's labels and metadata, 17 MB in its arena with none in use;
#: bench/bench_arrow_pool.py), and a streamed run's driver grew with the data set by it
#: (docs/performance.md). Read once, when pyarrow is imported; the user's value holds.
ARROW_POOL = {"ARROW_DEFAULT_MEMORY_POOL": "system"}


def local_instance_environment(dashboard: bool) -> dict[str, str]:
    base = {**LOCAL_INSTANCE_ENVIRONMENT, **ARROW_POOL}
    return base if dashboard else {**base, **NO_DASHBOARD_RECORDS}


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in os.environ for the block (a value the user set stays theirs), as before after it."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


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
                object_store_bytes: int = 1 << 30, dashboard: bool = True,
                preload: Sequence[str] = ()) -> Iterator[bool]:
    """Join ``address`` (or RAY_ADDRESS), or start a loopback-only local Ray; yields whether this
    call started Ray (and so shuts it down on exit). An already initialised Ray is reused as is.
    ``dashboard``: whether a local instance runs Ray's dashboard (and the state API it serves).
    ``preload``: modules to import on a helper thread while Ray starts, which is mostly waiting for
    Ray's processes to come up."""
    global _owned
    import ray

    _forget_loopback_variable()
    if ray.is_initialized():
        yield False
        return
    importing = _import_meanwhile(preload)
    try:
        _owned = _start(address, num_cpus, object_store_bytes, dashboard)
    finally:
        importing.join()
    # Ray's helpers in this process find this instance, not another's; and, as in the instance's own
    # processes, usage stats stay off: Ray Data reads the variable where an execution runs (the driver's
    # held-out read), and otherwise starts a usage-collection actor (a process of about 110 MB)
    own = {"RAY_ADDRESS": ray.get_runtime_context().gcs_address, "RAY_USAGE_STATS_ENABLED": "0"} if _owned else {}
    try:
        with _environment(own):
            yield True
    finally:
        _owned = False
        ray.shutdown()


def know_own_instance() -> None:
    """The setup hook of every worker process of a local Ray that boostray starts: RAY_ADDRESS names this
    instance. Ray's helpers that look an instance up rather than use the connected one (the state API that
    Ray Train's placement-group cleaner polls) otherwise stop at "multiple active Ray instances" when
    another local Ray runs on the machine (a model being served), and the placement groups of trials that
    Tune stops early are never freed."""
    import ray

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


def _forget_loopback_variable() -> None:
    """Ray has read the variable boostray set before importing it (boostray/__init__.py): out of the
    environment with it, so that child processes do not inherit it."""
    import boostray

    if boostray.loopback_set_here:
        os.environ.pop(boostray.LOOPBACK_VARIABLE, None)
        boostray.loopback_set_here = False


def _import_meanwhile(modules: Sequence[str]) -> threading.Thread:
    def run() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - shows again, with its traceback, where the module is used
                return

    thread = threading.Thread(target=run, name="boostray-preload", daemon=True)
    thread.start()
    return thread


def _start(address: str | None, num_cpus: int | None, object_store_bytes: int, dashboard: bool) -> bool:
    """ray.init; returns whether it started a local instance (rather than joining a cluster)."""
    import ray

    target = cluster_address(address)
    if target:
        ray.init(address=target, log_to_driver=True)
        return False
    with _environment(local_instance_environment(dashboard)):
        _init_local(num_cpus, object_store_bytes, dashboard)
    address = ray.util.get_node_ip_address()
    if address != LOOPBACK:  # Ray was imported before boostray, without the variable
        warnings.warn(f"the local Ray listens on {address}, not only on {LOOPBACK}: import boostray before ray, or "
                      f"set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Python starts", RuntimeWarning, stacklevel=4)
    return True


#: Ray Data's logging on a local instance: errors on the console, the rest in the session's ray-data.log
RAY_DATA_LOGGING = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ray_data_logging.yaml")


def _init_local(num_cpus: int | None, object_store_bytes: int, dashboard: bool) -> None:
    import ray

    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", RAY_DATA_LOGGING)  # read when ray.data is imported

    ray.init(
        num_cpus=num_cpus,
        object_store_memory=object_store_bytes,
        include_dashboard=dashboard,
        dashboard_host=LOOPBACK,
        log_to_driver=True,
        runtime_env={"worker_process_setup_hook": f"{__name__}.know_own_instance", "env_vars": {
            # Ray's workers ask for their node's address too; the user's value of each wins, as in _environment
            **{key: os.environ[key] for key in local_instance_environment(dashboard)},
            "RAY_DATA_LOGGING_CONFIG": os.environ["RAY_DATA_LOGGING_CONFIG"],
            # Ray Train's dataset manager sets an option Ray Data has deprecated, and says so on every run
            "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore::DeprecationWarning:"
                                             "ray.data._internal.execution.interfaces.execution_options"),
            "GLOO_SOCKET_IFNAME": "lo",  # gloo's pair sockets on loopback
            "NCCL_SOCKET_IFNAME": "lo",  # and NCCL's bootstrap sockets, on a GPU machine
            # Ray Train gives a worker group 60 s to start; a loaded machine needs more
            "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600"),
            # no cloud node under a local run is preempted: one helper actor fewer (owned_instance.py)
            "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0"),
        }},
    )


def require_gpus(needed: float, what: str) -> None:
    """Stop with one line when the Ray cluster holds fewer GPUs than ``needed``: Ray would otherwise wait
    for ever to place a GPU worker, replica or actor that can never start. The cluster's resources as
    they are now: an autoscaling cluster that adds GPU nodes on demand must have one up first."""
    import ray

    have = float(ray.cluster_resources().get("GPU", 0))
    if needed > have:
        raise ConfigError(f"{what} asks for {needed:g} GPU(s) and the Ray cluster has {have:g}")


def require_cpus(needed: float, what: str) -> None:
    """Stop with one line when the Ray cluster holds fewer CPUs than ``needed`` altogether: a worker group
    that can never be placed would otherwise wait for Ray Train's start timeout (or for ever)."""
    import ray

    have = float(ray.cluster_resources().get("CPU", 0))
    if needed > have:
        raise ConfigError(f"{what} asks for {needed:g} CPU(s) and the Ray cluster has {have:g}: fewer workers, "
                          f"or a smaller --cpus-per-worker")


def owns_local_instance() -> bool:
    """Whether Ray is a local instance that this process started and stops (not a cluster it joined):
    Ray Train can then leave out its helpers for shared clusters (owned_instance.py)."""
    import ray

    return _owned and ray.is_initialized()
