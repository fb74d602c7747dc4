"""What Ray Train can leave out on a Ray instance that this process started for itself and stops at exit.

Ray Train's controller starts helper actors meant for long-lived, shared clusters, each a Python
process that imports Ray Train and Ray Data while the worker group starts:

- the placement-group cleaner removes a run's placement groups if the controller dies while the
  cluster lives on; an instance owned by this process goes when the driver does, placement groups and
  all, and stopping the cleaner waits on a thread that sleeps for a second;
- the dataset manager hands out Ray Data shards, and boostray passes no dataset;
- the preemption watcher polls for cloud preemption notices, which one machine never gets
  (``runtime.ray_session`` turns it off with ``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0``).

Fault tolerance is untouched: the controller still restarts lost workers from the last checkpoint
(``--max-failures``), and a rerun with the same ``--name`` resumes.
"""

from __future__ import annotations

from typing import Any

from ray.train.torch import TorchTrainer

#: Ray Train's default callbacks that only serve a shared, long-lived cluster (by class name)
CLUSTER_ONLY_CALLBACKS = frozenset({"PlacementGroupCleanerCallback"})
#: dropped when the run passes Ray Train no dataset
DATASET_CALLBACKS = frozenset({"DatasetsCallback"})


def callbacks_for_owned_instance(callbacks: list[Any], has_datasets: bool) -> list[Any]:
    """Ray Train's default controller callbacks, less those an owned single-run instance has no use for."""
    dropped = CLUSTER_ONLY_CALLBACKS | (frozenset() if has_datasets else DATASET_CALLBACKS)
    return [c for c in callbacks if type(c).__name__ not in dropped]


class OwnedInstanceTorchTrainer(TorchTrainer):
    """TorchTrainer for a Ray instance this process started and stops: without the helpers above.
    Ray Train builds its controller's callbacks in the private ``_create_default_callbacks``; were it
    gone in some Ray version, this would train as the plain TorchTrainer does, helpers and all."""

    def _create_default_callbacks(self):
        return callbacks_for_owned_instance(super()._create_default_callbacks(), bool(self.datasets))
