"""Where the sample weights live between rounds: Ray's object store, indexed by a small named actor.

The actor holds only the ObjectRef of the current weight vector, its version (the round it belongs
to) and the boosting history, so it stays tiny however large n is. Rank 0 puts each new vector into
the object store and publishes the ref; the other ranks read that version (zero-copy from shared
memory on the same node). The registry and its in-process twin (``LocalWeightStore``, for runs without
Ray) are Ray-free, in core/method/weights.py.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

from boostray.core.method.weights import WeightRegistry

NAMESPACE = "boostray"


def weight_store_name(run_name: str) -> str:
    """``weights:RUN:SUFFIX``: per run, and per driver, so a resumed run never races the actor of a
    driver that just died (it lingers until Ray reaps it)."""
    return f"weights:{run_name}:{uuid.uuid4().hex[:8]}"


class RayWeightStore:
    """Client side of the per-run ``WeightRegistry`` actor; picklable, so it travels to the workers."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    @classmethod
    def create(cls, run_name: str) -> "RayWeightStore":
        import ray

        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # On the driver's node: placed anywhere, it could die with a worker node that the run would
        # otherwise survive (a lost node would take the run's weight history with it).
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        actor_cls = ray.remote(num_cpus=0)(WeightRegistry)
        actor = actor_cls.options(
            name=weight_store_name(run_name), namespace=NAMESPACE, max_restarts=0, scheduling_strategy=here,
        ).remote()
        return cls(actor)

    def publish(self, version: int, weights: np.ndarray, history: list[dict]) -> None:
        import ray

        ref = ray.put(np.ascontiguousarray(weights, dtype=np.float64))
        ray.get(self.actor.publish.remote(version, [ref], history))
        self._ref = ref  # rank 0 owns the object: keep it alive while the store points at it

    def fetch(self, version: int) -> np.ndarray:
        """The published vector (a read-only view into shared memory: copy before writing)."""
        import ray

        box = ray.get(self.actor.get.remote(version))
        return ray.get(box[0])

    def history(self) -> list[dict]:
        import ray

        return ray.get(self.actor.get_history.remote())

    def close(self) -> None:
        import ray

        ray.kill(self.actor, no_restart=True)
