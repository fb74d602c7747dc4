"""The sample-weight store's interface without Ray: the registry that the Ray actor wraps
(distributed/weight_store.py) and its in-process twin for runs without Ray.

A store holds the current weight vector under a version (the round it belongs to) and the boosting
history (e_m, lambda_m per member); rank 0 publishes, every rank fetches that version.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class WeightRegistry:
    """The actor's state: current version, a boxed ObjectRef (boxed so Ray does not resolve it), history."""

    def __init__(self) -> None:
        self.version = -1
        self.box: list[Any] = []
        self.history: list[dict] = []

    def publish(self, version: int, box: list[Any], history: list[dict]) -> int:
        self.version, self.box, self.history = version, box, list(history)
        return version

    def get(self, version: int) -> list[Any]:
        if version != self.version:
            raise RuntimeError(f"weights version {version} requested, store holds version {self.version}")
        return self.box

    def get_history(self) -> list[dict]:
        return list(self.history)


class LocalWeightStore:
    """The same interface without Ray (single process: Ray Train's local mode, tests, notebooks)."""

    def __init__(self) -> None:
        self.registry = WeightRegistry()

    def publish(self, version: int, weights: np.ndarray, history: list[dict]) -> None:
        w = np.array(weights, dtype=np.float64)
        w.setflags(write=False)  # same contract as the object store: readers get a read-only view
        self.registry.publish(version, [w], history)

    def fetch(self, version: int) -> np.ndarray:
        return self.registry.get(version)[0]

    def history(self) -> list[dict]:
        return self.registry.get_history()

    def close(self) -> None:
        pass
