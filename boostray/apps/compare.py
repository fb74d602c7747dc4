"""Same-budget comparison: several methods x seeds on one data set, model and budget, and a report.

Runs are concurrent Ray Train runs on one Ray instance (as many at once as the cluster's CPUs or GPUs
hold); each writes an ordinary run directory. The report folder gets a table (Markdown + CSV, mean
+- std over seeds), PNG plots and ``report.html``, which embeds both so a person opens one file.
A method may carry option overrides: ``cbnn:eta=0.1+error_source=running``.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import yaml

from boostray.apps.report import MethodSpec, RunResult, write_report
from boostray.apps.tracking import Tracker, log_finished_run
from boostray.config import FIELDS, PLACEMENT_OPTIONS, TrainConfig, coerce_option, saved_options
from boostray.distributed.trainer import train
from boostray.errors import ConfigError


def parse_methods(text: str) -> list[MethodSpec]:
    specs = []
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        name, _, rest = item.partition(":")
        overrides = {}
        for pair in [p for p in rest.split("+") if p]:
            key, eq, value = pair.partition("=")
            key = key.strip().replace("-", "_")
            if not eq or key not in FIELDS or key in ("method", "seed", "name", *PLACEMENT_OPTIONS):
                raise ConfigError(f"--methods: bad override {pair!r} in {item!r} (use method:key=value+key=value)")
            try:
                overrides[key] = coerce_option(key, yaml.safe_load(value))
            except ConfigError as exc:
                raise ConfigError(f"--methods: {item!r}: {exc}") from None
        specs.append(MethodSpec(item, name, overrides))
    if not specs:
        raise ConfigError("--methods is empty")
    if len({s.label for s in specs}) != len(specs):
        raise ConfigError("--methods lists a method twice")
    return specs


@dataclass(frozen=True)
class PlannedRun:
    spec: MethodSpec
    epochs: int
    seed: int
    config: TrainConfig


def run_configs(base: TrainConfig, specs: list[MethodSpec], seeds: int, out_dir: str,
                budgets: list[int] | None = None) -> list[PlannedRun]:
    """Every (budget, method, seed) run's config, validated; a finished run trained with other options
    is an error."""
    runs = []
    for epochs in budgets or [base.epochs]:
        for spec in specs:
            for seed in range(seeds):
                safe = spec.label.replace(":", "-").replace("=", "").replace("+", "-")
                config = base.replace(**spec.overrides, method=spec.method, seed=base.seed + seed, epochs=epochs,
                                      name=f"{safe}-e{epochs}-seed{base.seed + seed}", output=os.path.join(out_dir, "runs"))
                check_finished_run_matches(config)
                runs.append(PlannedRun(spec, epochs, seed, config))
    return runs


def check_finished_run_matches(config: TrainConfig) -> None:
    """A finished run is reused only if it was trained with the same options: the defaults may have
    changed since, and a stale run must not pass for the current one."""

    run_dir = os.path.join(config.output, config.name)
    saved_path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(os.path.join(run_dir, "metrics.json")) or not os.path.isfile(saved_path):
        return
    with open(saved_path) as f:
        saved = saved_options(yaml.safe_load(f) or {})
    wanted = {k: v for k, v in config.resolved().to_dict().items() if k != "name"}
    changed = sorted(k for k in wanted if k not in (*PLACEMENT_OPTIONS, "mlflow") and saved.get(k, wanted[k]) != wanted[k])
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {wanted[k]!r}" for k in changed)
        raise ConfigError(f"finished run {run_dir} was trained with other options ({detail}); use another --report folder")


def concurrency(base: TrainConfig) -> int:
    import ray

    resources = ray.cluster_resources()
    if base.gpu:
        return max(1, int(resources.get("GPU", 0) // max(base.workers, 1)))
    per_run = max(base.workers, 1) * base.cpus_per_worker
    return max(1, int(resources.get("CPU", 1) // per_run))


def run_comparison(base: TrainConfig, specs: list[MethodSpec], seeds: int, out_dir: str,
                   budgets: list[int] | None = None) -> dict:
    """Train every (budget, method, seed) run (skipping ones already finished) and write the report."""
    runs = run_configs(base, specs, seeds, out_dir, budgets)
    os.makedirs(os.path.join(out_dir, "runs"), exist_ok=True)
    started = time.perf_counter()
    width = concurrency(base) if base.workers else 1
    tracker = parent = None
    if base.mlflow:  # one parent run groups the comparison's runs, in the report folder's store
        tracker = Tracker(base.mlflow, out_dir)
        parent = tracker.start_parent(f"compare {os.path.basename(out_dir)}", {
            "methods": ",".join(s.label for s in specs), "seeds": seeds,
            "budgets": ",".join(map(str, budgets or [base.epochs])), "dataset": base.dataset, "model": base.model})

    def one(run: PlannedRun) -> RunResult:
        config = run.config
        run_dir = os.path.join(config.output, config.name)
        if os.path.isfile(os.path.join(run_dir, "metrics.json")):  # finished earlier: a rerun resumes
            with open(os.path.join(run_dir, "metrics.json")) as f:
                return RunResult(run.spec, run.epochs, run.seed, run_dir, json.load(f))
        print(f"[compare] start {config.name}", flush=True)
        run_dir, metrics = train(config)
        if tracker:
            log_finished_run(config, run_dir, metrics, tracker, parent)
        print(f"[compare] done  {config.name}: validation accuracy {metrics['val_crossfit']['accuracy']:.4f} "
              f"(cross-fitted), final network {metrics['val']['single_accuracy']:.4f}", flush=True)
        return RunResult(run.spec, run.epochs, run.seed, run_dir, metrics)

    try:
        with ThreadPoolExecutor(max_workers=width) as pool:
            results = list(pool.map(one, runs))
    except BaseException:
        if tracker:
            tracker.end(parent, "FAILED")
        raise
    summary = write_report(out_dir, base, specs, results, time.perf_counter() - started)
    if tracker:
        tracker.client.log_artifact(parent, os.path.join(out_dir, "report.html"))
        tracker.end(parent)
    return summary
