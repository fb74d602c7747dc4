"""Scoring a finished run directory's ensemble on a data split, in-process (no Ray)."""

from __future__ import annotations

import os

from boostray.config import TrainConfig, read_config_file
from boostray.core.artifact import storage
from boostray.core.data.datasets import load_training_data
from boostray.core.artifact.ensemble import load_ensemble
from boostray.core.method.metrics import ensemble_report
from boostray.errors import ArtifactError, DataError


def evaluate_run(run_dir: str, *, dataset: str | None = None, data_dir: str | None = None, split: str = "test") -> dict:
    run_dir = storage.local_copy(run_dir)  # a run at a storage URI: its local copy
    if not os.path.isdir(run_dir):
        raise ArtifactError(f"run directory {run_dir} does not exist")
    ensemble = load_ensemble(run_dir)  # the artifact first: a tampered member fails before any data loads
    manifest = ensemble.manifest
    config_path = os.path.join(run_dir, "config.yaml")
    config = TrainConfig(**read_config_file(config_path)) if os.path.isfile(config_path) else TrainConfig()
    if dataset is not None and dataset != config.dataset:
        config = TrainConfig(dataset=dataset, data_dir=data_dir)
    elif data_dir is not None:
        config.data_dir = data_dir
    data = load_training_data(config)
    if list(data.input_shape) != list(manifest["input_shape"]):
        raise DataError(f"{config.dataset} images are {data.input_shape}, the ensemble expects {tuple(manifest['input_shape'])}")
    if data.num_classes != len(manifest["classes"]):
        raise DataError(f"{config.dataset} has {data.num_classes} classes, the ensemble {len(manifest['classes'])}")
    part = {"test": data.test, "val": data.val, "train": data.train}[split]
    report = ensemble_report(ensemble.member_proba(part.images), ensemble.weights, part.labels, data.num_classes,
                             ensemble.vote_mode, ensemble.temperature)
    return {"dataset": config.dataset, "split": split, "samples": len(part), **report}
