"""Experiment tracking with MLflow (the ``mlflow`` extra): each finished run becomes an MLflow run with its
resolved options as parameters, its per-epoch, per-round (member) and final figures as metrics, and its
ensemble folder, metrics.json and config.yaml as artifacts. ``compare`` nests its runs under one parent
run; ``tune`` logs one run per trial under the sweep's run.

The default store is MLflow's embedded one, a SQLite file under the output folder
(``sqlite:///OUTPUT/mlflow.db``, artifacts in ``OUTPUT/mlflow-artifacts``); any tracking URI works.
Runs are logged from the driver once they are written, through ``MlflowClient`` (no global active run,
so concurrent compare runs cannot mix up).
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any

from boostray.core.artifact import storage

EXPERIMENT = "boostray"
AUTO = "auto"  # --mlflow without a URI
_LOCK = threading.Lock()  # one writer at a time into an embedded SQLite store


def tracking_uri(value: str, output: str) -> str:
    """``auto`` -> the embedded SQLite store under ``output``; anything else is a tracking URI."""
    if value != AUTO:
        return value
    folder = os.path.abspath(os.path.expanduser(output))
    os.makedirs(folder, exist_ok=True)
    return f"sqlite:///{os.path.join(folder, 'mlflow.db')}"


class Tracker:
    """The boostray experiment in one MLflow store."""

    def __init__(self, value: str, output: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(value, output)
        self.client = MlflowClient(self.uri)
        with _LOCK:
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
            if experiment is None:
                artifacts = "file://" + os.path.join(os.path.abspath(os.path.expanduser(output)), "mlflow-artifacts")
                self.experiment_id = self.client.create_experiment(EXPERIMENT, artifact_location=artifacts)
            else:
                self.experiment_id = experiment.experiment_id

    def start_parent(self, name: str, params: dict[str, Any]) -> str:
        """A run that groups others (a comparison, a sweep); returns its id."""
        with _LOCK:
            run = self.client.create_run(self.experiment_id, run_name=name, tags={"boostray.kind": "group"})
            self._log(run.info.run_id, params=params)
        return run.info.run_id

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        with _LOCK:
            self.client.set_terminated(run_id, status)

    def log_training_run(self, name: str, run_dir: str, metrics: dict, config: dict, parent: str | None = None) -> str:
        """One finished boostray run (its run directory) as an MLflow run; returns its id."""
        tags = {"boostray.kind": "train", "method": str(config.get("method")), "dataset": str(config.get("dataset")),
                "model": str(config.get("model"))}
        if parent:
            tags["mlflow.parentRunId"] = parent
        series = []
        for entry in metrics.get("epochs", []):
            step = int(entry["epoch"])
            series += [("epoch_loss", entry["loss"], step), ("epoch_accuracy", entry["accuracy"], step), ("lr", entry["lr"], step)]
        for member in metrics.get("members", []):
            step = int(member["round"])
            series += [("member_val_accuracy", member["val_accuracy"], step), ("member_test_accuracy", member["test_accuracy"], step),
                       ("member_lambda", member["lambda"], step), ("member_weight", member["weight"], step)]
        for r, ess in enumerate(metrics.get("ess", []), 1):
            series.append(("ess", ess, r))
        final = {"val_accuracy": metrics["val"]["accuracy"], "val_crossfit_accuracy": metrics["val_crossfit"]["accuracy"],
                 "val_nll": metrics["val"]["nll"], "test_accuracy": metrics["test"]["accuracy"], "test_nll": metrics["test"]["nll"],
                 "test_ece": metrics["test"]["ece"], "test_balanced_accuracy": metrics["test"]["balanced_accuracy"],
                 "final_network_val_accuracy": metrics["val"]["single_accuracy"],
                 "final_network_test_accuracy": metrics["test"]["single_accuracy"], "temperature": metrics["temperature"],
                 "train_seconds": metrics["train_seconds"], "wall_seconds": metrics.get("wall_seconds", math.nan)}
        series += [(k, v, 0) for k, v in final.items()]
        with _LOCK:
            run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
            run_id = run.info.run_id
            self._log(run_id, params=config, series=series)
            self.client.log_artifacts(run_id, os.path.join(run_dir, "ensemble"), artifact_path="ensemble")
            for file in ("metrics.json", "config.yaml"):
                self.client.log_artifact(run_id, os.path.join(run_dir, file))
            self.client.set_terminated(run_id)
        return run_id

    def log_trial(self, name: str, params: dict, rows: list[dict], parent: str, status: str) -> str:
        """A Tune trial: its parameters and the metrics it reported each round (step = epoch)."""
        series = [(key, row[key], int(row.get("epoch") or row.get("round") or i)) for i, row in enumerate(rows, 1)
                  for key in ("val_accuracy", "network_val_accuracy", "ess", "train_seconds") if key in row]
        with _LOCK:
            run = self.client.create_run(self.experiment_id, run_name=name,
                                         tags={"boostray.kind": "trial", "mlflow.parentRunId": parent})
            self._log(run.info.run_id, params=params, series=series)
            self.client.set_terminated(run.info.run_id, status)
        return run.info.run_id

    def _log(self, run_id: str, params: dict | None = None, series: list | None = None) -> None:
        from mlflow.entities import Metric, Param

        metrics = [Metric(key, float(value), 0, step) for key, value, step in series or []
                   if value is not None and not (isinstance(value, float) and math.isnan(value))]
        params = [Param(str(k), str(v)[:6000]) for k, v in (params or {}).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params and 1000 metrics a batch
            self.client.log_batch(run_id, params=params[start:start + 100])
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[start:start + 1000])


def log_finished_run(config, run_dir: str, metrics: dict, tracker: "Tracker | None" = None,
                     parent: str | None = None) -> str:
    """Log a run that ``train`` finished (``config.name`` set) to ``config.mlflow``'s store, or to
    ``tracker`` under ``parent`` when a comparison groups its runs; prints where, returns the run id."""
    output = config.output if storage.is_uri(config.output) else storage.local_path(config.output)
    tracker = tracker or Tracker(config.mlflow, output)
    run_id = tracker.log_training_run(config.name, storage.local_copy(run_dir), metrics, config.resolved().to_dict(), parent)
    print(f"[boostray] logged to MLflow: {tracker.uri} run {run_id}", flush=True)
    return run_id
