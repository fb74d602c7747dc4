"""The driver: validate, load the data once, run the Ray Train job, write the run directory.

The run directory is assembled under a hidden temporary name and renamed into place only when
complete, so a crash never leaves a directory that looks finished. Ray Train's own checkpoints live
under ``OUTPUT/.ray/NAME``: rerunning with the same ``--name`` resumes from them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from typing import Any

import numpy as np

from boostray.core import storage
from boostray.core.boost_state import BoostState
from boostray.core.boosting import vote
from boostray.core.combine import Choice, choose_combination, crossfit_proba, fit_combination, scores
from boostray.core.diagnostics import diagnostics
from boostray.config import TrainConfig
from boostray.core.data import ImageDataset, load_training_data
from boostray.core.ensemble import write_ensemble
from boostray.errors import ConfigError, DataError, RunFailedError
from boostray.core.methods import COMBINATIONS
from boostray.core.metrics import accuracy, ensemble_report, expected_calibration_error, nll, per_class_accuracy
from boostray.distributed.runtime import ray_session


MEMBERS_FOLDER = "members"  # beside Ray Train's checkpoints of a run: each member's state, written once


def default_run_name(config: TrainConfig) -> str:
    return f"{config.method}-{config.dataset}-{config.model}-{time.strftime('%Y%m%d-%H%M%S')}"


def resolve_paths(config: TrainConfig) -> tuple[str, str, str]:
    """(output folder, run directory, Ray Train storage folder): absolute paths, or URIs when --output
    is one (Ray Train's checkpoints and the members then go straight to that storage)."""
    output = config.output if storage.is_uri(config.output) else storage.local_path(config.output)
    return output, storage.join(output, config.name), storage.join(output, ".ray")


def torch_config_for_cluster():
    """A cluster that is only this machine on loopback rendezvouses through a file (no TCP port beyond
    loopback); a real multi-node cluster uses Ray's default TCP rendezvous."""
    import ray

    from boostray.distributed.loopback_backend import LoopbackTorchConfig

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if nodes and all(n["NodeManagerAddress"] in ("127.0.0.1", "localhost") for n in nodes):
        return LoopbackTorchConfig()
    return None


def check_streamable(data: ImageDataset, config: TrainConfig) -> None:
    """A streamed split deals whole groups to the ranks: it needs at least one per worker."""
    if data.streamed:
        from boostray.core.streaming import FILES_PER_GROUP

        groups = sum(1 for c in data.train.chunks() if len(c))
        if groups < max(1, config.workers):
            raise DataError(f"--stream deals whole groups (Parquet row groups, or {FILES_PER_GROUP} image files) to the "
                            f"workers: the training split has {groups}, fewer than --workers {config.workers}")


def in_process_device(config: TrainConfig) -> str:
    """Where ``--workers 0`` trains: this machine's GPU with ``--gpu``, else its CPU."""
    if not config.gpu:
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("--gpu with --workers 0 trains on this machine's GPU, and torch finds none "
                          "(torch.cuda.is_available() is False)")
    return "cuda"


def run_training(config: TrainConfig, data: ImageDataset | Any, callbacks: list | None = None, *,
                 hold_after_round: int | None = None) -> BoostState:
    """Run the train loop and return rank 0's final state: on Ray Train, or for workers=0 without Ray
    in this process (unless Tune ``callbacks`` need Ray Train's local mode). ``data`` may already be in
    the object store (a sweep puts it once for all trials). ``hold_after_round``: a testing hook, see
    train_loop.py."""
    config = config.resolved()
    if config.workers == 0 and not callbacks:
        from boostray.core.engine import train_in_process

        _, _, ray_storage = resolve_paths(config)  # checkpoints as a Ray Train run keeps them: the same --name resumes
        return train_in_process(config, data, device=in_process_device(config),
                                checkpoint_dir=os.path.join(ray_storage, config.name))

    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from boostray.distributed.owned_instance import OwnedInstanceTorchTrainer
    from boostray.distributed.runtime import owns_local_instance
    from boostray.distributed.train_loop import train_loop_per_worker
    from boostray.core.weights import LocalWeightStore
    from boostray.distributed.weight_store import RayWeightStore

    _, _, ray_storage = resolve_paths(config)
    # Ray Train's controller polls the workers every 2 s by default, and a worker's report (one per
    # round) waits for that poll: on the main job 3-4 s of a 6-8 s training loop, and 4-5 s after its
    # last round. A quarter second keeps the polls cheap. The controller reads it from this environment.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    local = config.workers == 0
    store = LocalWeightStore() if local or not ray.is_initialized() else RayWeightStore.create(config.name)
    if isinstance(data, ray.ObjectRef) or local or not ray.is_initialized():
        data_ref = data
    else:
        data_ref = ray.put(data)
    trainer_class = OwnedInstanceTorchTrainer if owns_local_instance() else TorchTrainer
    trainer = trainer_class(
        train_loop_per_worker,
        train_loop_config={"config": config.to_dict(), "data": data_ref, "store": store,
                           "members_dir": storage.join(ray_storage, config.name, MEMBERS_FOLDER),
                           "hold_after_round": hold_after_round},
        torch_config=None if local else torch_config_for_cluster(),
        scaling_config=ScalingConfig(
            num_workers=config.workers, use_gpu=config.gpu,
            resources_per_worker={"CPU": config.cpus_per_worker, **({"GPU": 1} if config.gpu else {})},
        ),
        run_config=RunConfig(
            name=config.name, storage_path=ray_storage,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )
    try:
        result = trainer.fit()
    except (ray.train.TrainingFailedError, ray.train.WorkerGroupError) as exc:
        message = describe_failure(exc, config, storage.join(ray_storage, config.name))
        if message is None:
            raise
        raise RunFailedError(message) from exc
    finally:
        store.close()
    return BoostState.from_saveable(result.return_value)


def describe_failure(exc: BaseException, config: TrainConfig, run_storage: str) -> str | None:
    """One line for a run that Ray Train gave up on after losing workers: which ranks, on which nodes,
    whether those nodes left the cluster, and how to resume (the same --name restarts from the last
    checkpoint). None for any other failure (a bug keeps its traceback)."""
    import ray

    text = str(exc)
    node_ids = list(dict.fromkeys(re.findall(r"node_id='([0-9a-f]+)'", text)))
    dead = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if not n.get("Alive")}
    lost = [f"node {n[:12]} ({dead[n]})" for n in node_ids if n in dead]
    if not lost and "health check failed" not in text and "ActorDiedError" not in text:
        return None
    ranks = ", ".join(str(r) for r in sorted(getattr(exc, "worker_failures", None) or {})) or "?"
    what = (f"rank {ranks} lost {' and '.join(lost)}, which left the cluster" if lost
            else f"rank {ranks} stopped answering (on node {', '.join(n[:12] for n in node_ids) or '?'}: lost or overloaded)")
    rounds = sorted(d for d in (os.listdir(run_storage) if os.path.isdir(run_storage) else [])
                    if re.fullmatch(r"round_\d{4}", d))
    where = (f"from its checkpoint of round {int(rounds[-1][6:])}/{config.members}" if rounds
             else "from its last checkpoint" if storage.is_uri(run_storage)
             else "from the start (no round was checkpointed)")
    return (f"training failed with --max-failures {config.max_failures}: {what}. Rerun with the same "
            f"--name {config.name} to resume {where}; --max-failures N lets Ray Train replace lost workers itself")


def combine_members(state: BoostState, data: ImageDataset, config: TrainConfig) -> Choice:
    """The deployed combination: the run's rule and temperature, fitted on the whole validation split
    (greedy: the final network alone unless the selection holds its accuracy cross-fitted)."""
    lambdas = np.array([m.lambda_ for m in state.members])
    return choose_combination(config.combine, np.stack(state.val_proba), data.val.labels, num_classes=data.num_classes,
                              lambdas=lambdas, crossfit_lambdas=crossfit_alphas(state, config), mode=config.vote,
                              calibrate=config.calibrate)


def crossfit_alphas(state: BoostState, config: TrainConfig) -> np.ndarray | None:
    """lambda_m for cross-fitting: the training ones when they came from the weighted training error,
    None (refit on each half) when they came from validation data."""
    if config.build_method().reweights and config.lambda_source == "train":
        return np.array([m.lambda_ for m in state.members])
    return None


def rule_figures(rule: str, state: BoostState, data: ImageDataset, config: TrainConfig) -> dict:
    """One combination rule over this run's members: cross-fitted validation and test figures."""
    val_p, test_p = np.stack(state.val_proba), np.stack(state.test_proba)
    lambdas = np.array([m.lambda_ for m in state.members])
    fitted = fit_combination(rule, val_p, data.val.labels, num_classes=data.num_classes, lambdas=lambdas,
                             mode=config.vote, calibrate=config.calibrate)
    oof = crossfit_proba(rule, val_p, data.val.labels, num_classes=data.num_classes,
                         lambdas=crossfit_alphas(state, config), mode=config.vote, calibrate=config.calibrate)
    return {"weights": fitted.weights.tolist(), "temperature": fitted.temperature,
            "val_crossfit": scores(oof, data.val.labels),
            "test": scores(fitted.predict_proba(test_p, config.vote), data.test.labels)}


def build_metrics(state: BoostState, data: ImageDataset, config: TrainConfig, choice: Choice) -> dict:
    """metrics.json: per member and ensemble figures (lambda, errors, accuracy, NLL, ECE, staged accuracy,
    disagreement, effective sample size), for the deployed combination (members of weight 0 left out),
    every other combination rule's figures over the same members, and the regime diagnostics."""
    k, combination = data.num_classes, choice.combination
    keep = combination.weights > 0
    splits = {}
    for name, split, proba in (("val", data.val, state.val_proba), ("test", data.test, state.test_proba)):
        member_p = np.stack(proba)[keep]
        report = ensemble_report(member_p, combination.weights[keep], split.labels, k, config.vote, combination.temperature)
        uncalibrated = vote(member_p, combination.weights[keep], config.vote)
        report["uncalibrated"] = {"nll": nll(uncalibrated, split.labels), "ece": expected_calibration_error(uncalibrated, split.labels)}
        report["per_class_accuracy"] = per_class_accuracy(uncalibrated, split.labels, k).tolist()
        single = state.last_val_proba if name == "val" else state.last_test_proba
        report["single_accuracy"] = accuracy(single, split.labels)  # the final network alone
        splits[name] = report
    rule = rule_figures(choice.rule, state, data, config)
    method = config.build_method()
    members = [{**m.to_json(), "weight": float(w)} for m, w in zip(state.members, combination.weights)]
    return {
        "method": config.method,
        "method_axes": method.describe(),
        "cost": method.total_epochs / method.epochs,  # training epochs over the budget E: deep full is M
        "dataset": config.dataset,
        "model": config.model,
        "samples": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "shipped": {"rule": choice.rule, "members": int((combination.weights > 0).sum()), "reason": choice.reason},
        "diagnostics": diagnostics(np.stack(state.val_proba), data.val.labels,
                                   accuracy(state.last_val_proba, data.val.labels), state.probe_val_accuracy),
        "members": members,
        "temperature": combination.temperature,
        "ess": state.ess,
        "rank_weight_digests": state.rank_digests,
        "val": splits["val"],
        "val_crossfit": rule["val_crossfit"],
        "test": splits["test"],
        "combinations": {r: rule_figures(r, state, data, config) for r in COMBINATIONS} if len(members) > 1 else {},
        "epochs": state.epoch_log,
        "train_seconds": state.train_seconds,
        "resumed_at_rounds": state.resumed_at_rounds,
        "rank_nodes": state.placements[-1] if state.placements else [],  # Ray node id of each rank, last worker group
        "rank_nodes_history": state.placements,  # one entry per worker group (a restart after a failure adds one)
        **({"stream": stream_figures(state, data, config)} if data.streamed else {}),
    }


def stream_figures(state: BoostState, data: ImageDataset, config: TrainConfig) -> dict:
    """How a --stream run read its training split: its groups (Parquet row groups or groups of files), the
    shuffle window, and the most groups rank 0 held at once."""
    sizes = [len(c) for c in data.train.chunks()]
    row_bytes = int(np.prod(data.input_shape))
    return {"groups": sum(1 for s in sizes if s), "window": config.stream_window,
            "largest_group_bytes": max(sizes) * row_bytes, "train_bytes": len(data.train) * row_bytes,
            "peak_groups_held": state.peak_chunks_held}


def write_sample_weights(path: str, state: BoostState, data: ImageDataset) -> None:
    """One row per training sample: its index, label and the weight it had in each round."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"index": np.arange(len(data.train)), "label": data.train.labels}
    for r, w in enumerate(state.weights_history):
        columns[f"round_{r + 1}"] = w
    columns["final"] = state.weights.astype(np.float32)
    pq.write_table(pa.table(columns), path)


def start_up_timing(stamps: dict[str, float], state: BoostState) -> dict[str, float]:
    """Where a run's wall time went, in seconds: loading the data, starting Ray (with Ray Train's import
    alongside), from fit() to the first epoch (Train controller, worker group, data to the workers, model
    set-up), the training loop (with its per-round evaluation and checkpoints), from the last round to
    fit() returning, stopping Ray."""
    began, ended = (state.loop_wall + [math.nan, math.nan])[:2]
    return {"load_data": stamps["data"] - stamps["start"], "ray_start": stamps["ray"] - stamps["data"],
            "to_first_epoch": began - stamps["ray"], "training_loop": ended - began,
            "after_last_round": stamps["fit"] - ended, "ray_stop": stamps["ray_down"] - stamps["fit"]}


def write_run_directory(run_dir: str, state: BoostState, data: ImageDataset, config: TrainConfig, wall_seconds: float,
                        timing: dict[str, float] | None = None) -> dict:
    config = config.resolved()
    remote = storage.is_uri(run_dir)  # assembled here, then copied up (metrics.json last)
    parent = tempfile.mkdtemp(prefix="boostray-run-") if remote else os.path.dirname(run_dir)
    tmp = os.path.join(parent, f".{os.path.basename(run_dir.partition('?')[0].rstrip('/'))}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        choice = combine_members(state, data, config)
        combination = choice.combination
        kept = [i for i, w in enumerate(combination.weights) if w > 0]
        c, h, w = data.input_shape
        write_ensemble(
            os.path.join(tmp, "ensemble"),
            member_states=[state.member_states[i] for i in kept],
            member_info=[
                {"weight": float(combination.weights[i]), "lambda": m.lambda_, "epoch": m.epoch, "round": m.round,
                 "error": None if np.isnan(m.error) else m.error}
                for i, m in ((i, state.members[i]) for i in kept)
            ],
            manifest={
                "name": config.name,
                "method": config.method,
                "method_axes": config.build_method().describe(),
                "model": {"name": config.model, "kwargs": {"num_classes": data.num_classes, "in_channels": c, "image_size": h}},
                "input_shape": [c, h, w],
                "normalization": {"scale": 255.0, "mean": data.mean, "std": data.std},
                "classes": data.classes,
                "vote": config.vote,
                "temperature": combination.temperature,
                "dataset": config.dataset,
            },
        )
        metrics = build_metrics(state, data, config, choice)
        metrics["wall_seconds"] = wall_seconds
        if timing is not None:
            metrics["timing_seconds"] = {**timing, "other": wall_seconds - sum(
                v for v in timing.values() if v == v)}
        with open(os.path.join(tmp, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2, default=float)
        config.save(os.path.join(tmp, "config.yaml"))
        write_sample_weights(os.path.join(tmp, "sample_weights.parquet"), state, data)
        if remote:
            storage.upload_run(tmp, run_dir)
        else:
            os.rename(tmp, run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if remote:
            shutil.rmtree(parent, ignore_errors=True)
    return metrics


def train(config: TrainConfig, *, hold_after_round: int | None = None, tracker=None,
          tracking_parent: str | None = None) -> tuple[str, dict]:
    """Validate, train and write the run directory; returns (run directory, metrics). With --mlflow the
    finished run is logged (to ``tracker`` under ``tracking_parent`` when a comparison passes them).
    ``hold_after_round``: a testing hook, see train_loop.py."""
    started, stamps = time.perf_counter(), {"start": time.time()}
    config = config.resolved()  # what the run is trained with, saved and compared (a copy)
    if config.name is None:
        config.name = default_run_name(config)
    output, run_dir, _ = resolve_paths(config)
    if storage.is_uri(output) and config.workers == 0:
        raise ConfigError("--workers 0 keeps its checkpoints on local disk: give a local --output, or --workers 1 or more for a storage URI")
    if storage.is_uri(output) and config.mlflow == "auto":
        raise ConfigError("a bare --mlflow keeps its store under --output, which must then be local: give --mlflow URI")
    # a local run directory appears whole (rename); one at a URI is complete once its marker is there
    if storage.exists(storage.join(run_dir, storage.COMPLETE_MARKER) if storage.is_uri(run_dir) else run_dir):
        raise ConfigError(f"run {config.name!r} already finished in {run_dir}; pick another --name")
    if config.workers == 0:
        in_process_device(config)  # --gpu without one fails here, before any file
    data = load_training_data(config)  # bad data fails here, before Ray or any file
    check_streamable(data, config)
    if not storage.is_uri(output):
        os.makedirs(output, exist_ok=True)
    stamps["data"] = time.time()
    # workers=0 trains in this process without Ray. With Ray, Ray Train's import runs while Ray's processes start
    preload = ("ray.train.torch", "boostray.distributed.owned_instance", "boostray.distributed.train_loop")
    with ray_session(config.address, dashboard=config.dashboard, preload=preload) if config.workers else contextlib.nullcontext():
        stamps["ray"] = time.time()
        state = run_training(config, data, hold_after_round=hold_after_round)
        stamps["fit"] = time.time()
    stamps["ray_down"] = time.time()
    metrics = write_run_directory(run_dir, state, data, config, time.perf_counter() - started,
                                  timing=start_up_timing(stamps, state))
    if config.mlflow:
        from boostray.apps.tracking import Tracker

        tracker = tracker or Tracker(config.mlflow, output)
        run_id = tracker.log_training_run(config.name, storage.local_copy(run_dir), metrics, config.to_dict(), tracking_parent)
        print(f"[boostray] logged to MLflow: {tracker.uri} run {run_id}", flush=True)
    return run_dir, metrics
