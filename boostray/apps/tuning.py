"""Ray Tune sweeps over the boosting and learning-rate hyperparameters, on validation data only.

A sweep YAML (see tune_configs/) is validated completely before any trial starts. Each trial is a Ray
Train run (Train V2 pattern: the Tune function builds a TorchTrainer with a per-trial name and forwards
its per-round metrics with TuneReportCallback), so every trial is data-parallel and fault tolerant, and
ASHA can stop weak trials after any round. At the end: a table of all trials (CSV + Markdown), the best
configuration as a YAML for ``boostray train --config``, and the best trial's run directory.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
import time
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from boostray.apps.tracking import Tracker
from boostray.config import (
    PLACEMENT_OPTIONS,
    TrainConfig,
    coerce_option,
    describe_error,
    load_yaml_mapping,
    parse_options,
)
from boostray.core.artifact import storage
from boostray.core.artifact.checkpoints import MEMBERS_FOLDER, load_boost_state, read_checkpoint
from boostray.core.data.datasets import load_training_data
from boostray.core.artifact.run_directory import write_run_directory
from boostray.distributed.trainer import held_in_object_store, run_training
from boostray.errors import ConfigError, require_extra

SEARCHABLE = {
    "lr": float, "weight_decay": float, "eta": float, "members": int, "error_source": str, "vote": str,
    "min_error": float, "batch_size": int, "epochs": int, "max_weight_ratio": float,
    "lambda_source": str, "ess_min": float, "mix_uniform": float,
    "method": str, "schedule": str, "placement": str, "first_member": float, "reweight": str, "combine": str,
    "restart_lr": float, "calibrate": bool,
}
METRICS = ("val_accuracy", "network_val_accuracy")  # what every trial reports after every round


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class RangeDomain(_Strict):
    """A continuous or integer range of one option: ``{type: loguniform, low: 0.001, high: 0.1}``."""

    type: Literal["loguniform", "uniform", "randint"]
    low: int | float
    high: int | float

    @model_validator(mode="after")
    def _check(self) -> "RangeDomain":
        if not self.low < self.high:
            raise ValueError(f"empty or inverted range [{self.low}, {self.high}]")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0, got {self.low}")
        if self.type == "randint" and not (isinstance(self.low, int) and isinstance(self.high, int)):
            raise ValueError("randint bounds must be integers")
        return self

    def reachable(self) -> list:
        return [self.low, self.high - 1 if self.type == "randint" else self.high]


class ValuesDomain(_Strict):
    """Listed values of one option: ``{type: choice, values: [eval, running]}`` (grid: every one)."""

    type: Literal["choice", "grid"]
    values: list[Any] = Field(min_length=1)

    def reachable(self) -> list:
        return self.values


Domain = Annotated[RangeDomain | ValuesDomain, Field(discriminator="type")]


class SearchOptions(_Strict):
    algorithm: Literal["random", "grid", "optuna"] = "random"
    seed: int | None = 0


class SchedulerOptions(_Strict):
    type: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1)  # epochs
    reduction_factor: int | float = Field(2, gt=1)


class TrialResources(_Strict):
    trial_cpu: int | float = Field(0.1, ge=0)  # the Tune function's own CPU, beside its Ray Train workers


class SweepConfig(_Strict):
    """A sweep YAML (see tune_configs/): fixed train options, the search space, searcher and scheduler."""

    name: str = Field(pattern=r"^[^/.][^/]*$")
    train: dict[str, Any]
    search_space: dict[str, Domain] = Field(min_length=1)
    output: str = Field(os.path.join("~", "boostray_runs"), min_length=1)
    search: SearchOptions = SearchOptions()
    scheduler: SchedulerOptions = SchedulerOptions()
    num_samples: int = Field(4, ge=1)
    max_concurrent_trials: int = Field(1, ge=1)
    metric: Literal[METRICS] = "val_accuracy"
    mode: Literal["max", "min"] = "max"
    time_budget_s: int | float | None = Field(None, gt=0)
    resources: TrialResources = TrialResources()

    def with_options(self, **changes: Any) -> "SweepConfig":
        """A checked copy with ``changes`` (the CLI's --name and --output)."""
        try:
            return SweepConfig(**{**self.model_dump(), **changes})
        except ValidationError as exc:
            raise ConfigError(describe_error(exc, path_style=True)) from None

    @property
    def sweep_dir(self) -> str:
        """SWEEP_DIR: a local folder, or a storage URI (the trials' checkpoints, Tune's state and the
        results then all live there)."""
        return storage.join(self.output if storage.is_uri(self.output) else storage.local_path(self.output), self.name)

    @field_validator("train", mode="before")
    @classmethod
    def _train_options(cls, train: Any) -> dict[str, Any]:
        if not isinstance(train, dict):
            raise ConfigError("train must be a mapping of boostray train options")
        return parse_options(train, unknown=lambda key: f"unknown key 'train.{key}'", where="train.{key}",
                             exclude=("name", *PLACEMENT_OPTIONS))

    @model_validator(mode="after")
    def _check_together(self) -> "SweepConfig":
        if storage.is_uri(self.output) and self.train.get("mlflow") == "auto":
            raise ConfigError("train.mlflow auto keeps its store in the sweep folder, which must then be local: give a tracking URI")
        if storage.is_uri(self.output) and self.train.get("workers", 1) == 0:
            raise ConfigError(f"output {self.output}: trials with train.workers 0 keep their checkpoints on local disk; use workers >= 1")
        for key in self.search_space:
            if key not in SEARCHABLE:
                raise ConfigError(f"search_space.{key}: {key!r} cannot be searched (searchable: {', '.join(sorted(SEARCHABLE))})")
        if self.search.algorithm == "optuna":
            require_extra("optuna", "optuna", "search.algorithm optuna")
            if any(d.type == "grid" for d in self.search_space.values()):
                raise ConfigError("search_space: grid values cannot be used with optuna")
        try:
            TrainConfig(**self.train)
        except ConfigError as exc:
            raise ConfigError(f"train: {exc}") from None
        # every reachable value must be valid: alone over the fixed options, then beside the others' first values
        first = {k: _as(k, d.reachable()[0]) for k, d in self.search_space.items()}
        for others in ({}, first):
            for key, domain in self.search_space.items():
                for value in domain.reachable():
                    try:
                        TrainConfig(**{**self.train, **others, key: coerce_option(key, _as(key, value))})
                    except ConfigError as exc:
                        raise ConfigError(f"search_space.{key}: value {value!r} is invalid: {exc}") from None
        return self


def _as(key: str, value: Any) -> Any:
    """A searched value in its option's type (a uniform draw of an int option is rounded by Tune's int cast)."""
    kind = SEARCHABLE[key]
    return kind(value) if kind in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool) else value


def read_sweep_config(path: str) -> SweepConfig:
    """Parse and validate a sweep YAML; every error names its key."""
    raw = load_yaml_mapping(path, "sweep config")
    try:
        return SweepConfig(**raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_error(exc, path_style=True)}") from None


def _domain(spec: RangeDomain | ValuesDomain):
    from ray import tune

    if spec.type == "loguniform":
        return tune.loguniform(spec.low, spec.high)
    if spec.type == "uniform":
        return tune.uniform(spec.low, spec.high)
    if spec.type == "randint":
        return tune.randint(spec.low, spec.high)
    if spec.type == "choice":
        return tune.choice(spec.values)
    return tune.grid_search(spec.values)


def check_resources(config: SweepConfig) -> None:
    """Fail before any trial starts when the cluster cannot hold even one trial."""
    import ray

    probe = TrainConfig(**config.train)
    total = ray.cluster_resources()
    need_cpu = probe.workers * probe.cpus_per_worker + float(config.resources.trial_cpu)
    if need_cpu > total.get("CPU", 0):
        raise ConfigError(f"a trial needs {need_cpu:g} CPUs (workers x cpus_per_worker + trial_cpu); the cluster has {total.get('CPU', 0):g}")
    if probe.gpu and probe.workers > total.get("GPU", 0):
        raise ConfigError(f"a trial needs {probe.workers} GPUs; the cluster has {total.get('GPU', 0):g}")


def trial_fn(params: dict, data_box=None, fixed: dict | None = None, sweep_dir: str = "") -> None:
    """One trial: a full Ray Train run whose per-round metrics (and checkpoint paths) reach Tune through
    TuneReportCallback. ``data_box`` is [ObjectRef]: boxed so the data set is put once, not per trial.
    Nothing may follow the training: the scheduler stops a trial right after its last report."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = ray.tune.get_context().get_trial_id()
    config = TrainConfig(**{**fixed, **params, "name": trial_name(trial_id), "output": storage.join(sweep_dir, "trials")})
    run_training(config, data_box[0], callbacks=[TuneReportCallback()])  # Tune keeps what it reports


def trial_name(trial_id: str) -> str:
    return f"trial-{trial_id}"


def trial_storage(sweep_dir: str, trial_id: str) -> str:
    """Where a trial's Ray Train run keeps its checkpoints and members (its --output is SWEEP_DIR/trials)."""
    return storage.join(sweep_dir, "trials", ".ray", trial_name(trial_id))


def export_trial(checkpoint: str, config: TrainConfig, data, run_dir: str) -> dict:
    """A trial's run directory, built from its last checkpoint (which holds the whole boosting state), read
    through the storage layer: ``checkpoint`` and ``run_dir`` may be storage URIs."""
    saved = read_checkpoint(checkpoint)
    state = load_boost_state(saved["boost"], storage.join(storage.parent(checkpoint), MEMBERS_FOLDER))
    if not storage.is_uri(run_dir):
        return write_run_directory(run_dir, state, data, config.spec(), name=config.name, options=config.saved(),
                                   extra_metrics={"wall_seconds": state.train_seconds})
    with tempfile.TemporaryDirectory(prefix="boostray-best-") as local:
        metrics = write_run_directory(os.path.join(local, "run"), state, data, config.spec(), name=config.name,
                                      options=config.saved(), extra_metrics={"wall_seconds": state.train_seconds})
        storage.upload_run(os.path.join(local, "run"), run_dir)
    return metrics


def run_sweep(config: SweepConfig, *, resume: bool = False) -> dict:
    """Run (or resume) the sweep; returns the summary written to SWEEP_DIR/summary.json."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    started = time.perf_counter()
    sweep_dir = config.sweep_dir
    if storage.exists(storage.join(sweep_dir, "summary.json")) and not resume:
        raise ConfigError(f"sweep {config.name!r} already finished in {sweep_dir}; pick another name")
    check_resources(config)
    data = load_training_data(TrainConfig(**config.train))
    data, data_ref = held_in_object_store(data)  # put once for every trial; kept here for the export
    if not storage.is_uri(sweep_dir):
        os.makedirs(os.path.join(sweep_dir, "trials"), exist_ok=True)
    probe = TrainConfig(**config.train)
    epochs = config.search_space.get("epochs")
    max_epochs = max([probe.epochs] + ([int(v) for v in epochs.reachable()] if epochs else []))
    trainable = tune.with_resources(
        tune.with_parameters(trial_fn, data_box=[data_ref], fixed=config.train, sweep_dir=sweep_dir),
        {"CPU": float(config.resources.trial_cpu)},
    )
    experiment_path = storage.join(sweep_dir, "tune", config.name)
    if resume and tune.Tuner.can_restore(experiment_path):
        tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_errored=True)
    else:
        if config.scheduler.type == "asha":
            scheduler = ASHAScheduler(  # on epochs: trials that search checkpoints are compared at equal training
                time_attr="epoch", max_t=max_epochs,
                grace_period=config.scheduler.grace_period,
                reduction_factor=float(config.scheduler.reduction_factor),
            )
        else:
            scheduler = FIFOScheduler()
        if config.search.algorithm == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            search_alg, limit = OptunaSearch(seed=config.search.seed), config.max_concurrent_trials
        else:  # random and grid: the searcher's own random state, not the global one. Tune ignores
            # max_concurrent_trials for a generator passed in, so the limit goes to the generator itself.
            from ray.tune.search import BasicVariantGenerator

            search_alg = BasicVariantGenerator(random_state=config.search.seed, max_concurrent=config.max_concurrent_trials)
            limit = None
        tuner = tune.Tuner(
            trainable,
            param_space={k: _domain(v) for k, v in config.search_space.items()},
            tune_config=tune.TuneConfig(
                metric=config.metric, mode=config.mode, num_samples=config.num_samples, scheduler=scheduler,
                search_alg=search_alg, max_concurrent_trials=limit,
                time_budget_s=config.time_budget_s,
            ),
            run_config=tune.RunConfig(name=config.name, storage_path=storage.join(sweep_dir, "tune"), verbose=1),
        )
    results = tuner.fit()
    return summarize(config, results, data, time.perf_counter() - started)


def summarize(config: SweepConfig, results, data, wall_seconds: float) -> dict:
    """Trials table (CSV + Markdown), best config YAML, the best trial's run directory, its test accuracy."""
    sweep_dir = config.sweep_dir
    rows = []
    for result in results:
        df = result.metrics_dataframe
        params = {k: result.config.get(k) for k in config.search_space}
        rounds = int(df["round"].max()) if df is not None and "round" in df else 0
        planned = int(params.get("members") or config.train.get("members", TrainConfig().members))
        best = float(df[config.metric].max() if config.mode == "max" else df[config.metric].min()) if df is not None and config.metric in df else math.nan
        trial_id = str((result.metrics or {}).get("trial_id") or "?")  # Tune's own id, in every result it reports
        last = df.iloc[-1] if df is not None and len(df) else None
        rows.append({
            "trial": trial_id, **params, f"best_{config.metric}": best, "rounds_completed": rounds,
            "rounds": planned, "stopped_early": rounds < planned and result.error is None,
            "error": None if result.error is None else str(result.error).splitlines()[0][:120],
            "checkpoint": (storage.join(trial_storage(sweep_dir, trial_id), os.path.basename(last["checkpoint_path"]))
                           if last is not None and last.get("checkpoint_path") else None),
        })
    key = f"best_{config.metric}"
    finished = [r for r in rows if r["checkpoint"] and r["rounds_completed"] == r["rounds"] and r["error"] is None
                and not math.isnan(r[key])]
    if not finished:
        raise ConfigError("no trial finished all its rounds; raise time_budget_s or num_samples")
    best = max(finished, key=lambda r: r[key]) if config.mode == "max" else min(finished, key=lambda r: r[key])
    write_tables(sweep_dir, rows, key)
    best_config = TrainConfig(**{**config.train, **{k: best[k] for k in config.search_space}})
    storage.write_bytes(storage.join(sweep_dir, "best_config.yaml"), yaml.safe_dump(best_config.saved(), sort_keys=False).encode())
    best_config.name = f"best-{best['trial']}"
    best_dir = storage.join(sweep_dir, "best")
    if not storage.is_uri(best_dir) and os.path.exists(best_dir):  # a resumed sweep's; at a URI it is overwritten
        shutil.rmtree(best_dir)
    metrics = export_trial(best["checkpoint"], best_config, data, best_dir)
    summary = {
        "sweep": config.name, "trials": len(rows), "stopped_early": sum(r["stopped_early"] for r in rows),
        "errored": sum(r["error"] is not None for r in rows), "best_trial": best["trial"],
        "best_params": {k: best[k] for k in config.search_space}, f"best_{config.metric}": best[key],
        "best_test_accuracy": metrics["test"]["accuracy"], "wall_seconds": wall_seconds, "best_run_dir": best_dir,
    }
    storage.write_bytes(storage.join(sweep_dir, "summary.json"), json.dumps(summary, indent=2).encode())
    if config.train.get("mlflow"):
        log_sweep(config, results, rows, best_dir, metrics, best_config)
    return summary


def write_tables(sweep_dir: str, rows: list[dict], key: str) -> None:
    """trials.csv (every column) and trials.md (ranked by ``key``, without the paths and errors)."""
    columns = list(rows[0])
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    storage.write_bytes(storage.join(sweep_dir, "trials.csv"), text.getvalue().encode())
    shown = [c for c in columns if c not in ("checkpoint", "error")]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for r in sorted(rows, key=lambda r: -r[key] if not math.isnan(r[key]) else math.inf):
        lines.append("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in shown) + " |")
    storage.write_bytes(storage.join(sweep_dir, "trials.md"), ("\n".join(lines) + "\n").encode())


def log_sweep(config: SweepConfig, results, rows: list[dict], best_dir: str, metrics: dict, best_config: TrainConfig) -> None:
    """MLflow: one run for the sweep, one nested run per trial (its parameters and per-round metrics),
    and the best trial's run directory as a training run."""
    tracker = Tracker(config.train["mlflow"], config.sweep_dir)
    parent = tracker.start_parent(f"sweep {config.name}", {"search_space": json.dumps(
        {k: v.model_dump() for k, v in config.search_space.items()}), "metric": config.metric, **config.train})
    for result, row in zip(results, rows):
        df = result.metrics_dataframe
        reported = df.to_dict("records") if df is not None else []
        status = "FAILED" if row["error"] else "KILLED" if row["stopped_early"] else "FINISHED"
        tracker.log_trial(f"trial {row['trial']}", {k: row[k] for k in config.search_space}, reported, parent, status)
    tracker.log_training_run(best_config.name, best_dir, metrics, best_config.to_dict(), parent)
    tracker.end(parent)
