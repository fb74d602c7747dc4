"""The public Python API, shaped like Ray Train's: ``BoostTrainer(model, datasets=..., boost_config=...,
scaling_config=..., run_config=...).fit()`` returns a ``BoostResult`` holding the ensemble.

``model`` is a class, a factory or an import path (or a built-in name); ``datasets`` maps ``train``,
``validation`` and ``test`` (both optional) to a ``ray.data.Dataset``, a pair of NumPy arrays ``(x, y)``
or a torch ``Dataset`` of ``(x, y)`` pairs. ``scaling_config`` and ``run_config`` are Ray Train's own
classes; with no ``scaling_config`` the run trains in this process without Ray. The ``boostray train``
command builds the same trainer from its options: one path from the command line and from Python.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from boostray.config import BoostConfig, TrainConfig
from boostray.core.data.datasets import IN_MEMORY, ImageDataset, assemble_dataset
from boostray.core.artifact.ensemble import Ensemble, load_ensemble
from boostray.core.data.images import ImageSplit
from boostray.core.models import OBJECT_PREFIX, import_path_of
from boostray.core.method.recipe import OptimizerFactory, PerSampleLoss, Recipe
from boostray.errors import ConfigError, DataError

SPLITS = ("train", "validation", "test")


@dataclass
class BoostResult:
    """A finished run. ``ensemble``: the shipped members, ready to predict; ``metrics``: what metrics.json
    holds; ``path``: the run directory; ``ray_result``: Ray Train's ``Result`` (None when the run trained
    in this process); ``config``: every option the run was trained with."""

    ensemble: Ensemble
    metrics: dict
    path: str
    ray_result: Any
    config: TrainConfig


class BoostTrainer:
    """Checkpoint boosting of one network, on Ray Train or in this process.

    ``optimizer``: parameters -> a torch optimizer (default: SGD with Nesterov momentum and the config's
    learning rate and weight decay); the method's learning-rate schedule scales its learning rate.
    ``loss``: (logits, targets) -> one loss per sample, so that the boosting weights apply (default:
    cross-entropy). ``feature_columns`` and ``label_column`` name a Ray Data dataset's columns (default
    ``image`` and ``label``); ``classes`` names the classes (default: their numbers). uint8 arrays shaped
    (N, C, H, W) or (N, H, W) are images (scaled by 1/255, augmented); any other numbers are features,
    trained as given (``standardize=True`` standardises each one). Like a Ray trainer, the constructor only
    stores and checks its arguments; the work happens in ``fit``.
    """

    def __init__(self, model: str | Callable[..., Any] = "small_cnn", *, datasets: Mapping[str, Any] | None = None,
                 boost_config: BoostConfig | None = None, scaling_config: Any = None, run_config: Any = None,
                 model_kwargs: dict[str, Any] | None = None, optimizer: OptimizerFactory | None = None,
                 loss: PerSampleLoss | None = None, feature_columns: Sequence[str] | None = None,
                 label_column: str = "label", classes: Sequence[str] | None = None, standardize: bool = False,
                 verbose: bool = False) -> None:
        if datasets is None or "train" not in datasets:
            raise ConfigError("datasets needs a 'train' entry: a ray.data.Dataset, (x, y) arrays or a torch Dataset")
        unknown = set(datasets) - set(SPLITS)
        if unknown:
            raise ConfigError(f"unknown split {sorted(unknown)[0]!r} in datasets; use {', '.join(SPLITS)}")
        boost_config = boost_config if boost_config is not None else BoostConfig()
        if not isinstance(boost_config, BoostConfig):
            raise ConfigError(f"boost_config must be a boostray.BoostConfig, got {type(boost_config).__name__}")
        name, model_object = _model_name(model)
        values = {**boost_config.model_dump(), "dataset": IN_MEMORY, "model": name, "model_kwargs": dict(model_kwargs or {}),
                  "standardize": standardize, "verbose": verbose, **_scaling_options(scaling_config),
                  **_run_options(run_config)}
        self.config = TrainConfig(**values)
        self.datasets: dict[str, Any] | None = dict(datasets)
        self.columns = (tuple(feature_columns) if feature_columns else ("image",), label_column)
        self.classes = list(classes) if classes is not None else None
        self.recipe = Recipe(model=model_object, optimizer=optimizer, loss=loss)
        self.callbacks = list(getattr(run_config, "callbacks", None) or [])

    @classmethod
    def from_config(cls, config: TrainConfig) -> "BoostTrainer":
        """The trainer of ``boostray train``: every option in ``config``, the data set named there."""
        trainer = cls.__new__(cls)  # the options are checked already: nothing for __init__ to translate
        trainer.config, trainer.datasets, trainer.columns, trainer.classes = config, None, None, None
        trainer.recipe, trainer.callbacks = Recipe(), []
        return trainer

    def fit(self) -> BoostResult:
        """Train, write the run directory and load the shipped ensemble from it."""
        from boostray.distributed.trainer import fit

        data = None
        if self.datasets is not None:
            data = build_dataset(self.datasets, self.columns, self.classes, self.config)
        outcome = fit(self.config, data, recipe=self.recipe, callbacks=self.callbacks or None)
        ensemble = load_ensemble(outcome.run_dir, model=self.recipe.model)
        return BoostResult(ensemble, outcome.metrics, outcome.run_dir, outcome.ray_result, outcome.config)


def _model_name(model: str | Callable[..., Any]) -> tuple[str, Callable[..., Any] | None]:
    """The name the manifest records and the object the workers call: a string is a built-in name or an
    import path; an importable class or factory is recorded by its import path; anything else (defined in
    ``__main__`` or a function) as an object, which its runs need again to load."""
    if isinstance(model, str):
        return model, None
    if not callable(model):
        raise ConfigError(f"model must be an nn.Module class, a factory or an import path, got {type(model).__name__}")
    path = import_path_of(model)
    return (path or OBJECT_PREFIX + getattr(model, "__qualname__", type(model).__name__)), model


def _scaling_options(scaling_config: Any) -> dict[str, Any]:
    """Ray Train's ScalingConfig as boostray's options; none: this process, without Ray."""
    if scaling_config is None:
        return {"workers": 0}
    resources = dict(getattr(scaling_config, "resources_per_worker", None) or {})
    return {"workers": int(scaling_config.num_workers), "gpu": bool(scaling_config.use_gpu),
            "cpus_per_worker": float(resources.get("CPU", 1.0))}


def _run_options(run_config: Any) -> dict[str, Any]:
    """Ray Train's RunConfig as boostray's options: the run's name, its storage (a folder or a URI) and
    the failures to recover from (its callbacks go to Ray Train as they are)."""
    if run_config is None:
        return {}
    out: dict[str, Any] = {}
    if getattr(run_config, "name", None):
        out["name"] = run_config.name
    if getattr(run_config, "storage_path", None):
        out["output"] = os.fspath(run_config.storage_path)
    failure = getattr(run_config, "failure_config", None)
    if failure is not None and failure.max_failures is not None:
        out["max_failures"] = int(failure.max_failures)
    return out


# ------------------------------------------------------------------------------------------- data


def build_dataset(datasets: Mapping[str, Any], columns: tuple, classes: list[str] | None,
                  config: TrainConfig) -> ImageDataset:
    """The splits handed in, as the checked in-memory data set a run trains on (missing validation and
    test splits held out of train, as for every data set)."""
    if config.image_size is not None:
        raise DataError("--image-size fits images read from files (imagefolder, parquet); data handed in from "
                        "Python trains as given")
    splits = {name: _as_split(datasets[name], name, columns) for name in SPLITS if datasets.get(name) is not None}
    kinds = {s.images.dtype == np.uint8 for s in splits.values()}
    shapes = {s.image_shape for s in splits.values()}
    if len(kinds) > 1 or len(shapes) > 1:
        raise DataError(f"the splits differ in dtype or shape: {sorted(map(str, shapes))}")
    k = int(max(s.labels.max() for s in splits.values())) + 1
    if classes is not None and len(classes) < k:
        raise DataError(f"labels go up to {k - 1}, and classes names {len(classes)}")
    names = classes or [str(c) for c in range(k)]
    return assemble_dataset("python", splits["train"], splits.get("validation"), splits.get("test"), names,
                            val_fraction=config.val_fraction, train_subset=config.train_subset,
                            imbalance_ratio=config.imbalance_ratio, standardize=config.standardize,
                            test_holdout_max=config.test_holdout_max, val_holdout_max=config.val_holdout_max)


def _as_split(value: Any, where: str, columns: tuple) -> ImageSplit:
    """One split from (x, y) arrays, a torch Dataset of (x, y) pairs or a Ray Data dataset."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        x, y = (np.asarray(v) for v in value)
    elif hasattr(value, "iter_batches") and hasattr(value, "schema"):
        x, y = _ray_dataset_arrays(value, where, *columns)
    elif hasattr(value, "__getitem__") and hasattr(value, "__len__"):
        x, y = _torch_dataset_arrays(value, where)
    else:
        raise DataError(f"datasets[{where!r}] must be a ray.data.Dataset, an (x, y) pair of arrays or a torch "
                        f"Dataset of (x, y) pairs, got {type(value).__name__}")
    return _checked_split(x, y, where)


def _checked_split(x: np.ndarray, y: np.ndarray, where: str) -> ImageSplit:
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise DataError(f"datasets[{where!r}]: {x.shape[0]} inputs and {y.shape[0]} labels (need equal, at least one)")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"datasets[{where!r}]: labels must be integers shaped (N,), got {y.dtype} {y.shape}")
    if not np.issubdtype(x.dtype, np.number) and x.dtype != np.bool_:
        raise DataError(f"datasets[{where!r}]: inputs must be numbers, got {x.dtype}")
    if x.dtype == np.uint8 and x.ndim in (3, 4):  # images: (N, H, W) grey or (N, C, H, W)
        return ImageSplit(np.ascontiguousarray(x if x.ndim == 4 else x[:, None]), y.astype(np.int64))
    features = np.ascontiguousarray(x, dtype=np.float32)
    if features.ndim == 1:
        features = features[:, None]
    if not np.isfinite(features).all():
        raise DataError(f"datasets[{where!r}]: inputs hold NaN or inf")
    return ImageSplit(features, y.astype(np.int64))


def _torch_dataset_arrays(dataset: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise DataError(f"datasets[{where!r}][{i}] must be an (x, y) pair")
        x, y = item
        xs.append(x.numpy() if hasattr(x, "numpy") else np.asarray(x))
        ys.append(int(y))
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def _ray_dataset_arrays(dataset: Any, where: str, feature_columns: tuple[str, ...], label_column: str) -> tuple[np.ndarray, np.ndarray]:
    """A Ray Data dataset's feature and label columns, gathered here (data that fits this process)."""
    names = list(dataset.schema().names)
    missing = [c for c in (*feature_columns, label_column) if c not in names]
    if missing:
        raise DataError(f"datasets[{where!r}] has no column {missing[0]!r} (columns: {names}); "
                        f"name others with feature_columns= and label_column=")
    parts: dict[str, list] = {c: [] for c in (*feature_columns, label_column)}
    for batch in dataset.select_columns(list(parts)).iter_batches(batch_format="numpy", batch_size=4096):
        for c in parts:
            column = batch[c]
            parts[c].append(np.stack(list(column)) if column.dtype == object else column)
    columns = [np.concatenate(parts[c]) for c in feature_columns]
    if len(columns) == 1:
        x = columns[0]
    else:
        x = np.concatenate([c.reshape(c.shape[0], -1).astype(np.float32) for c in columns], axis=1)
    return x, np.concatenate(parts[label_column])
