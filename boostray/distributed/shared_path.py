"""Whether a local folder is one that every node which may run a Train worker can see.

Ray Train's rank 0 writes the checkpoints, and boostray's members, under ``--output``. On a cluster
whose nodes do not share that folder, Ray Train fails at the first checkpoint, after a whole round of
compute. The check runs before any training: the driver writes a marker with a random token into the
folder, and a zero-CPU task pinned to each candidate node reads it back. Nodes on one host share it.
"""

from __future__ import annotations

import contextlib
import os
import uuid

from boostray.errors import ConfigError

CHECK_TIMEOUT_S = 120.0  # a node busy with other work still runs a zero-CPU task within this


def _read_marker(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def worker_nodes(cpus_per_worker: float, gpu: bool) -> list[dict]:
    """The alive nodes with room for a Train worker (its CPUs, and a GPU with ``gpu``): any of them may
    hold rank 0."""
    import ray

    def fits(resources: dict) -> bool:
        return resources.get("CPU", 0) >= cpus_per_worker and (not gpu or resources.get("GPU", 0) >= 1)

    return [n for n in ray.nodes() if n.get("Alive") and fits(n.get("Resources", {}))]


def unreachable_nodes(folder: str, nodes: list[dict]) -> list[dict]:
    """The ``nodes`` on which ``folder`` is not the folder this process sees."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    marker = os.path.join(folder, f".boostray-shared-{token}")
    with open(marker, "w") as f:
        f.write(token)
    try:
        read = ray.remote(num_cpus=0, max_retries=0)(_read_marker)
        refs = [read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(marker)
                for n in nodes]
        answers = ray.get(refs, timeout=CHECK_TIMEOUT_S)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(marker)
    return [n for n, answer in zip(nodes, answers) if answer != token]


def require_shared(folder: str, what: str, *, cpus_per_worker: float, gpu: bool) -> None:
    """Stop with one line when a node that may run a Train worker does not see ``folder``."""
    missing = unreachable_nodes(folder, worker_nodes(cpus_per_worker, gpu))
    if missing:
        where = ", ".join(f"{n['NodeManagerAddress']} (node {n['NodeID'][:12]})" for n in missing)
        raise ConfigError(f"{what} {folder} is not shared with every node that may run a training worker: {where} "
                          "cannot see it; give a folder every node mounts, or a storage URI (s3://, gs://)")
