"""Ray Tune sweeps over the boosting and learning-rate hyperparameters, on validation data only.

A sweep YAML (see tune_configs/) is validated completely before any trial starts. Each trial is a Ray
Train run (Train V2 pattern: the Tune function builds a TorchTrainer with a per-trial name and forwards
its per-round metrics with TuneReportCallback), so every trial is data-parallel and fault tolerant, and
ASHA can stop weak trials after any round. At the end: a table of all trials (CSV + Markdown), the best
configuration as a YAML for ``boostray train --config``, and the best trial's run directory.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

from boostray.config import FIELDS, TrainConfig, coerce_option, load_yaml_mapping
from boostray.errors import ConfigError

SEARCHABLE = {
    "lr": float, "weight_decay": float, "eta": float, "checkpoints": int, "error_source": str, "vote": str,
    "min_error": float, "batch_size": int, "epochs": int, "max_weight_ratio": float,
    "lambda_source": str, "ess_min": float, "mix_uniform": float,
    "method": str, "schedule": str, "placement": str, "first_member": float, "reweight": str, "combine": str,
    "restart_lr": float, "calibrate": bool,
}
DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice", "grid")
METRICS = ("val_accuracy", "network_val_accuracy")  # what every trial reports after every round
TOP_KEYS = {"name", "output", "train", "search_space", "search", "scheduler", "num_samples",
            "max_concurrent_trials", "metric", "mode", "time_budget_s", "resources"}


@dataclass
class SweepConfig:
    name: str
    train: dict[str, Any]
    search_space: dict[str, dict[str, Any]]
    output: str = os.path.join("~", "boostray_runs")
    search: dict[str, Any] = field(default_factory=lambda: {"algorithm": "random", "seed": 0})
    scheduler: dict[str, Any] = field(default_factory=lambda: {"type": "asha", "grace_period": 1, "reduction_factor": 2})
    num_samples: int = 4
    max_concurrent_trials: int = 1
    metric: str = "val_accuracy"
    mode: str = "max"
    time_budget_s: float | None = None
    resources: dict[str, float] = field(default_factory=lambda: {"trial_cpu": 0.1})

    @property
    def sweep_dir(self) -> str:
        return os.path.join(os.path.abspath(os.path.expanduser(self.output)), self.name)


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _check_domain(key: str, spec: Any) -> None:
    where = f"search_space.{key}"
    _require(key in SEARCHABLE, f"{where}: {key!r} cannot be searched (searchable: {', '.join(sorted(SEARCHABLE))})")
    _require(isinstance(spec, dict) and "type" in spec, f"{where} must be a mapping with a 'type'")
    kind = spec["type"]
    _require(kind in DISTRIBUTIONS, f"{where}.type must be one of {DISTRIBUTIONS}, got {kind!r}")
    if kind in ("loguniform", "uniform", "randint"):
        _require(set(spec) == {"type", "low", "high"}, f"{where}: {kind} takes exactly 'low' and 'high'")
        low, high = spec["low"], spec["high"]
        for bound, value in (("low", low), ("high", high)):
            _require(isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}.{bound} must be a number, got {value!r}")
        _require(low < high, f"{where}: empty or inverted range [{low}, {high}]")
        if kind == "loguniform":
            _require(low > 0, f"{where}: loguniform needs low > 0, got {low}")
        if kind == "randint":
            _require(isinstance(low, int) and isinstance(high, int), f"{where}: randint bounds must be integers")
        samples = [low, high - 1 if kind == "randint" else high]
    else:
        _require(set(spec) == {"type", "values"}, f"{where}: {kind} takes exactly 'values'")
        _require(isinstance(spec["values"], list) and spec["values"], f"{where}.values must be a non-empty list")
        samples = spec["values"]
    for value in samples:  # every reachable value must be a valid option value
        try:
            coerce_option(key, SEARCHABLE[key](value) if SEARCHABLE[key] is not str else value)
        except (ConfigError, ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: value {value!r} is not valid for {key}: {exc}") from None


def read_sweep_config(path: str) -> SweepConfig:
    """Parse and validate a sweep YAML; every error names its key."""
    raw = load_yaml_mapping(path, "sweep config")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {path} (keys: {', '.join(sorted(TOP_KEYS))})")
    for key in ("name", "train", "search_space"):
        _require(key in raw, f"{path} lacks {key!r}")
    _require(isinstance(raw["name"], str) and raw["name"] and "/" not in raw["name"], "name must be a plain folder name")
    _require(isinstance(raw["train"], dict), "train must be a mapping of boostray train options")
    train = {}
    for key, value in raw["train"].items():
        norm = str(key).replace("-", "_")
        _require(norm in FIELDS and norm not in ("name", "output", "address"), f"unknown key 'train.{key}'")
        try:
            train[norm] = coerce_option(norm, value)
        except ConfigError as exc:
            raise ConfigError(f"train.{key}: {exc}") from None
    _require(isinstance(raw["search_space"], dict) and raw["search_space"], "search_space must be a non-empty mapping")
    for key, spec in raw["search_space"].items():
        _check_domain(key, spec)
    config = SweepConfig(name=raw["name"], train=train, search_space=raw["search_space"])
    for key in ("output", "num_samples", "max_concurrent_trials", "metric", "mode", "time_budget_s"):
        if key in raw:
            setattr(config, key, raw[key])
    for key in ("search", "scheduler", "resources"):
        if key in raw:
            _require(isinstance(raw[key], dict), f"{key} must be a mapping")
            setattr(config, key, {**getattr(config, key), **raw[key]} if key != "search" else raw[key])
    _require(isinstance(config.num_samples, int) and config.num_samples >= 1, "num_samples must be an integer >= 1")
    _require(isinstance(config.max_concurrent_trials, int) and config.max_concurrent_trials >= 1,
             "max_concurrent_trials must be an integer >= 1")
    _require(config.metric in METRICS, f"metric {config.metric!r} is not reported by trials (reported: {', '.join(METRICS)})")
    _require(config.mode in ("max", "min"), f"mode must be max or min, got {config.mode!r}")
    _require(config.time_budget_s is None or (isinstance(config.time_budget_s, (int, float)) and config.time_budget_s > 0),
             "time_budget_s must be a positive number")
    algorithm = config.search.get("algorithm", "random")
    _require(algorithm in ("random", "grid", "optuna"), f"search.algorithm must be random, grid or optuna, got {algorithm!r}")
    _require(set(config.search) <= {"algorithm", "seed"}, f"unknown key in search: {sorted(set(config.search) - {'algorithm', 'seed'})}")
    if algorithm == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise ConfigError("search.algorithm optuna needs the optuna extra: pip install 'boostray[optuna]'") from None
    has_grid = any(s["type"] == "grid" for s in config.search_space.values())
    _require(not (has_grid and algorithm == "optuna"), "search_space: grid values cannot be used with optuna")
    kind = config.scheduler.get("type", "asha")
    _require(kind in ("asha", "fifo"), f"scheduler.type must be asha or fifo, got {kind!r}")
    _require(set(config.scheduler) <= {"type", "grace_period", "reduction_factor"}, f"unknown key in scheduler: {sorted(set(config.scheduler) - {'type', 'grace_period', 'reduction_factor'})}")
    _require(set(config.resources) <= {"trial_cpu"}, f"unknown key in resources: {sorted(set(config.resources) - {'trial_cpu'})}")
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)
    is_number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    grace, factor = config.scheduler.get("grace_period", 1), config.scheduler.get("reduction_factor", 2)
    _require(is_int(grace) and grace >= 1, f"scheduler.grace_period must be an integer >= 1 (epochs), got {grace!r}")
    _require(is_number(factor) and factor > 1, f"scheduler.reduction_factor must be a number > 1, got {factor!r}")
    seed = config.search.get("seed")
    _require(seed is None or is_int(seed), f"search.seed must be an integer, got {seed!r}")
    _require(isinstance(config.output, str) and config.output, f"output must be a folder path, got {config.output!r}")
    trial_cpu = config.resources.get("trial_cpu", 0.1)
    _require(is_number(trial_cpu) and trial_cpu >= 0, f"resources.trial_cpu must be a number >= 0, got {trial_cpu!r}")
    # the fixed options must validate with every searched key at each of its reachable values
    try:
        TrainConfig(**train).validate()
    except ConfigError as exc:
        raise ConfigError(f"train: {exc}") from None
    first = {k: (spec["values"][0] if "values" in spec else SEARCHABLE[k](spec["low"])) for k, spec in config.search_space.items()}
    for others in ({}, first):  # each key alone over the fixed options, then beside the others' first values
        for key, spec in config.search_space.items():
            reachable = spec["values"] if "values" in spec else [spec["low"], spec["high"] - 1 if spec["type"] == "randint" else spec["high"]]
            for value in reachable:
                try:
                    TrainConfig(**{**train, **others, key: SEARCHABLE[key](value) if SEARCHABLE[key] is not str else value}).validate()
                except ConfigError as exc:
                    raise ConfigError(f"search_space.{key}: value {value!r} is invalid: {exc}") from None
    return config


def _domain(spec: dict):
    from ray import tune

    kind = spec["type"]
    if kind == "loguniform":
        return tune.loguniform(spec["low"], spec["high"])
    if kind == "uniform":
        return tune.uniform(spec["low"], spec["high"])
    if kind == "randint":
        return tune.randint(spec["low"], spec["high"])
    if kind == "choice":
        return tune.choice(spec["values"])
    return tune.grid_search(spec["values"])


def check_resources(config: SweepConfig) -> None:
    """Fail before any trial starts when the cluster cannot hold even one trial."""
    import ray

    probe = TrainConfig(**config.train)
    total = ray.cluster_resources()
    need_cpu = probe.workers * probe.cpus_per_worker + float(config.resources.get("trial_cpu", 0.1))
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

    from boostray.trainer import run_training

    trial_id = ray.tune.get_context().get_trial_id()
    config = TrainConfig(**{**fixed, **params, "name": f"trial-{trial_id}", "output": os.path.join(sweep_dir, "trials")})
    config.validate()
    run_training(config, data_box[0], callbacks=[TuneReportCallback()])


def export_trial(checkpoint_path: str, config: TrainConfig, data, run_dir: str) -> dict:
    """A trial's run directory, built from its last checkpoint (which holds the whole boosting state)."""
    import torch

    from boostray.engine import CHECKPOINT_FILE, load_boost_state
    from boostray.trainer import MEMBERS_FOLDER, write_run_directory

    saved = torch.load(os.path.join(checkpoint_path, CHECKPOINT_FILE), map_location="cpu", weights_only=True)
    members_dir = os.path.join(os.path.dirname(os.path.normpath(checkpoint_path)), MEMBERS_FOLDER)
    state = load_boost_state(saved["boost"], members_dir)
    return write_run_directory(run_dir, state, data, config, state.train_seconds)


def run_sweep(config: SweepConfig, *, resume: bool = False) -> dict:
    """Run (or resume) the sweep; returns the summary written to SWEEP_DIR/summary.json."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from boostray.trainer import load_training_data

    started = time.perf_counter()
    sweep_dir = config.sweep_dir
    if os.path.exists(os.path.join(sweep_dir, "summary.json")) and not resume:
        raise ConfigError(f"sweep {config.name!r} already finished in {sweep_dir}; pick another name")
    check_resources(config)
    data = load_training_data(TrainConfig(**config.train))
    data_ref = ray.put(data)
    os.makedirs(os.path.join(sweep_dir, "trials"), exist_ok=True)
    probe = TrainConfig(**config.train)
    max_epochs = max([probe.epochs] + [int(v) for v in _values(config.search_space.get("epochs"))])
    trainable = tune.with_resources(
        tune.with_parameters(trial_fn, data_box=[data_ref], fixed=config.train, sweep_dir=sweep_dir),
        {"CPU": float(config.resources.get("trial_cpu", 0.1))},
    )
    experiment_path = os.path.join(sweep_dir, "tune", config.name)
    if resume and tune.Tuner.can_restore(experiment_path):
        tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_errored=True)
    else:
        if config.scheduler.get("type", "asha") == "asha":
            scheduler = ASHAScheduler(  # on epochs: trials that search checkpoints are compared at equal training
                time_attr="epoch", max_t=max_epochs,
                grace_period=int(config.scheduler.get("grace_period", 1)),
                reduction_factor=float(config.scheduler.get("reduction_factor", 2)),
            )
        else:
            scheduler = FIFOScheduler()
        if config.search.get("algorithm") == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            search_alg = OptunaSearch(seed=config.search.get("seed"))
        else:  # random and grid: the searcher's own random state, not the global one
            from ray.tune.search import BasicVariantGenerator

            search_alg = BasicVariantGenerator(random_state=config.search.get("seed"))
        tuner = tune.Tuner(
            trainable,
            param_space={k: _domain(v) for k, v in config.search_space.items()},
            tune_config=tune.TuneConfig(
                metric=config.metric, mode=config.mode, num_samples=config.num_samples, scheduler=scheduler,
                search_alg=search_alg, max_concurrent_trials=config.max_concurrent_trials,
                time_budget_s=config.time_budget_s,
            ),
            run_config=tune.RunConfig(name=config.name, storage_path=os.path.join(sweep_dir, "tune"), verbose=1),
        )
    results = tuner.fit()
    return summarize(config, results, data, time.perf_counter() - started)


def _values(spec: dict | None) -> list:
    if spec is None:
        return []
    if "values" in spec:
        return spec["values"]
    return [spec["high"]]


def summarize(config: SweepConfig, results, data, wall_seconds: float) -> dict:
    """Trials table (CSV + Markdown), best config YAML, the best trial's run directory, its test accuracy."""
    sweep_dir = config.sweep_dir
    rows = []
    for result in results:
        df = result.metrics_dataframe
        params = {k: result.config.get(k) for k in config.search_space}
        rounds = int(df["round"].max()) if df is not None and "round" in df else 0
        checkpoints = int(params.get("checkpoints") or config.train.get("checkpoints", TrainConfig().checkpoints))
        best = float(df[config.metric].max() if config.mode == "max" else df[config.metric].min()) if df is not None and config.metric in df else math.nan
        trial_id = "_".join(os.path.basename(result.path).split("_")[2:4]) if result.path else "?"
        last = df.iloc[-1] if df is not None and len(df) else None
        rows.append({
            "trial": trial_id, **params, f"best_{config.metric}": best, "rounds_completed": rounds,
            "rounds": checkpoints, "stopped_early": rounds < checkpoints and result.error is None,
            "error": None if result.error is None else str(result.error).splitlines()[0][:120],
            "checkpoint": last.get("checkpoint_path") if last is not None else None,
        })
    key = f"best_{config.metric}"
    finished = [r for r in rows if r["checkpoint"] and r["rounds_completed"] == r["rounds"] and r["error"] is None
                and not math.isnan(r[key])]
    if not finished:
        raise ConfigError("no trial finished all its rounds; raise time_budget_s or num_samples")
    best = max(finished, key=lambda r: r[key]) if config.mode == "max" else min(finished, key=lambda r: r[key])
    columns = list(rows[0])
    with open(os.path.join(sweep_dir, "trials.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(sweep_dir, "trials.md"), "w") as f:
        shown = [c for c in columns if c not in ("checkpoint", "error")]
        f.write("| " + " | ".join(shown) + " |\n|" + "---|" * len(shown) + "\n")
        for r in sorted(rows, key=lambda r: -r[key] if not math.isnan(r[key]) else math.inf):
            f.write("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in shown) + " |\n")
    best_config = TrainConfig(**{**config.train, **{k: best[k] for k in config.search_space}})
    best_config.save(os.path.join(sweep_dir, "best_config.yaml"))
    best_config.name = f"best-{best['trial']}"
    best_dir = os.path.join(sweep_dir, "best")
    if os.path.exists(best_dir):
        shutil.rmtree(best_dir)
    metrics = export_trial(best["checkpoint"], best_config, data, best_dir)
    summary = {
        "sweep": config.name, "trials": len(rows), "stopped_early": sum(r["stopped_early"] for r in rows),
        "errored": sum(r["error"] is not None for r in rows), "best_trial": best["trial"],
        "best_params": {k: best[k] for k in config.search_space}, f"best_{config.metric}": best[key],
        "best_test_accuracy": metrics["test"]["accuracy"], "wall_seconds": wall_seconds, "best_run_dir": best_dir,
    }
    with open(os.path.join(sweep_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
