"""What Ray Train can leave out on a Ray instance that this process started for itself and stops at exit.

Ray Train's controller starts helper actors meant for long-lived, shared clusters. Each is a Python
process importing Ray Train, Ray Data, pyarrow and pandas (1.3-1.6 s of CPU each here), started
while the worker group starts:

- the placement-group cleaner removes a run's placement groups if the controller dies while the
  cluster lives on. An instance owned by this process goes when the driver does, placement groups and
  all; and stopping the cleaner costs up to 1 s after the last round (it joins a thread that sleeps
  ``check_interval_s``, fixed at 1.0 s).
- the dataset manager hands out Ray Data shards: created even when the run passes no dataset.
- the preemption watcher polls for cloud node preemption notices. One machine is not preempted under
  its own run: ``runtime.ray_session`` sets Ray's ``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0`` in the
  local job's environment.

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
