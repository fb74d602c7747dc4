"""The driver: validate, load the data once, run the Ray Train job, write the run directory.

The run directory is assembled under a hidden temporary name and renamed into place only when
complete, so a crash never leaves a directory that looks finished. Ray Train's own checkpoints live
under ``OUTPUT/.ray/NAME``: rerunning with the same ``--name`` resumes from them.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from boostray.config import TrainConfig
from boostray.core.artifact import storage
from boostray.core.method.boost_state import BoostState
from boostray.core.artifact.checkpoints import MEMBERS_FOLDER
from boostray.core.data.datasets import (
    ImageDataset, deferred_held_out, load_training_data, read_deferred_held_out, release_unused_memory,
)
from boostray.core.method.engine import train_in_process
from boostray.core.models import build_model
from boostray.core.method.recipe import DEFAULT_RECIPE, Recipe
from boostray.core.artifact.run_directory import SAMPLE_WEIGHTS_FILE, write_run_directory
from boostray.core.method.weights import LocalWeightStore
from boostray.distributed.ingest import ingest_cpus
from boostray.distributed.runtime import owns_local_instance, ray_session, require_cpus, require_gpus
from boostray.distributed.shared_path import require_shared
from boostray.errors import ConfigError, RunFailedError


RAY_LOG = "ray.log"  # Ray's routine INFO records of the workers, beside Ray Train's checkpoints (console.py)


def default_run_name(config: TrainConfig) -> str:
    model = config.model.rpartition(":")[2] or config.model  # an import path's last part
    return f"{config.method}-{config.dataset}-{model}-{time.strftime('%Y%m%d-%H%M%S')}"


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


def in_process_device(config: TrainConfig) -> str:
    """Where ``--workers 0`` trains: this machine's GPU with ``--gpu``, else its CPU."""
    if not config.gpu:
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("--gpu with --workers 0 trains on this machine's GPU, and torch finds none "
                          "(torch.cuda.is_available() is False)")
    return "cuda"


def held_in_object_store(data: ImageDataset) -> tuple[ImageDataset, Any]:
    """(the data as Ray's object store holds it, its ObjectRef): put once, and read back as views of the
    store's copy, so that the driver holding it does not keep a second copy of its arrays (the training
    split's labels and row numbers, the held-out images) in its own memory."""
    import ray

    ref = ray.put(data)
    return ray.get(ref), ref


def run_training(config: TrainConfig, data: ImageDataset | Any, callbacks: list | None = None, *,
                 hold_after_round: int | None = None, recipe: Recipe = DEFAULT_RECIPE,
                 stored: Any = None) -> tuple[BoostState, Any]:
    """Run the train loop; returns rank 0's final state and Ray Train's Result (None without Ray): on Ray
    Train, or for workers=0 without Ray in this process (unless Tune ``callbacks`` need Ray Train's local
    mode). ``data`` may already be in the object store (a sweep puts it once for all trials). ``recipe``:
    the user's model object, optimizer and loss, shipped to every worker. ``stored``: ``data``'s ObjectRef
    where the caller has put it already (``held_in_object_store``). ``hold_after_round``: a testing hook,
    see train_loop.py."""
    config = config.resolved()
    if config.workers == 0 and not callbacks:
        _, _, ray_storage = resolve_paths(config)  # checkpoints as a Ray Train run keeps them: the same --name resumes
        return train_in_process(config.spec(), data, device=in_process_device(config), recipe=recipe,
                                checkpoint_dir=os.path.join(ray_storage, config.name)), None

    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from boostray.distributed.console import train_log_level
    from boostray.distributed.owned_instance import OwnedInstanceTorchTrainer
    from boostray.distributed.train_loop import train_loop_per_worker
    from boostray.distributed.weight_store import RayWeightStore

    _, _, ray_storage = resolve_paths(config)
    # Ray Train's controller polls the workers every 2 s by default, and a worker's report (one per
    # round) waits for that poll: on the main job 3-4 s of a 6-8 s training loop, and 4-5 s after its
    # last round. A quarter second keeps the polls cheap on a Ray this process owns; a shared cluster keeps
    # Ray's default. The controller reads it from this environment.
    if owns_local_instance():
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    local = config.workers == 0
    store = LocalWeightStore() if local or not ray.is_initialized() else RayWeightStore.create(config.name)
    if stored is not None:
        data_ref = stored
    elif isinstance(data, ray.ObjectRef) or local or not ray.is_initialized():
        data_ref = data
    else:
        data_ref = ray.put(data)
    datasets, ingest = streamed_input(config, data) if not local else ({}, None)
    release_unused_memory()  # what putting the data and the items' blocks left in Arrow's pool and the heap
    data_config = None
    if datasets:
        from boostray.distributed.ingest import ingest_options

        data_config = DataConfig(datasets_to_split=list(datasets),
                                 execution_options=ingest_options(data.train, config.workers, config.stream_window))
    trainer_class = OwnedInstanceTorchTrainer if owns_local_instance() else TorchTrainer
    trainer = trainer_class(
        train_loop_per_worker,
        train_loop_config={"config": config.to_dict(), "data": data_ref, "store": store,
                           "members_dir": storage.join(ray_storage, config.name, MEMBERS_FOLDER), "recipe": recipe,
                           "ray_log": None if storage.is_uri(ray_storage) else os.path.join(ray_storage, config.name, RAY_LOG),
                           "hold_after_round": hold_after_round, "ingest": ingest,
                           "sample_weights": sample_weights_file(ray_storage, config.name)},
        torch_config=None if local else torch_config_for_cluster(),
        datasets=datasets or None,
        dataset_config=data_config,
        scaling_config=ScalingConfig(
            num_workers=config.workers, use_gpu=config.gpu,
            resources_per_worker={"CPU": config.cpus_per_worker, **({"GPU": 1} if config.gpu else {})},
        ),
        run_config=RunConfig(
            name=config.name, storage_path=ray_storage,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
            logging_config=LoggingConfig(log_level=train_log_level(config.verbose)),
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
    return BoostState.from_saveable(result.return_value), result


def sample_weights_file(ray_storage: str, name: str) -> str:
    """Where rank 0 of a run on Ray writes the sample weights (beside Ray Train's checkpoints), for the
    driver to copy into the run directory: the result it returns carries no per-sample arrays."""
    return storage.join(ray_storage, name, SAMPLE_WEIGHTS_FILE)


def streamed_input(config: TrainConfig, data: ImageDataset | Any) -> tuple[dict, dict | None]:
    """A streamed training split on Ray: Ray Train's ``datasets`` (the images, read and augmented by Ray
    Data tasks) and what each rank needs for its own passes besides the split it holds (the reader and
    the passes' object-store budget); nothing for data in memory."""
    import ray

    if isinstance(data, ray.ObjectRef) or not data.streamed:
        return {}, None
    from boostray.distributed.ingest import items_dataset, items_per_pass_task, train_window
    from boostray.core.data.streaming import reader_source

    # with --image-size the read tasks take random resized crops from the files' images (and flip them);
    # otherwise random crops with padding, as in memory
    augment = ({"padding": 0 if config.image_size else data.crop_padding, "hflip": data.hflip,
                "resized_crop": config.image_size is not None}
               if config.augment and data.augmentable else None)
    source = reader_source(data.train.source)
    window = train_window(data.train, config.stream_window)
    return ({"train": items_dataset(data.train.items(), source, augment, window)},
            {"source": source, "per_task": items_per_pass_task(data.train)})


def lost_actors(exc: BaseException) -> dict[int, Any]:
    """Rank -> the RayActorError behind that rank's failure, for the ranks whose worker died or stopped
    answering (Ray Train's ``WorkerGroupError.worker_failures``; a failed health check keeps the actor
    error as its ``health_check_failure``). A rank that raised in the training code is not among them."""
    import ray

    lost = {}
    for rank, failure in (getattr(exc, "worker_failures", None) or {}).items():
        seen = [failure, getattr(failure, "health_check_failure", None), failure.__cause__]
        found = next((e for e in seen if isinstance(e, ray.exceptions.RayActorError)), None)
        if found is not None:
            lost[rank] = found
    return lost


def actor_node(actor_error: Any) -> str | None:
    """The node a dead actor ran on, from Ray's state API (None where the API cannot say)."""
    from ray.util.state import get_actor

    try:
        state = get_actor(actor_error.actor_id) if actor_error.actor_id else None
    except Exception:  # noqa: BLE001 - the state API needs the dashboard, which a local Ray may not run
        return None
    return getattr(state, "node_id", None)


def describe_failure(exc: BaseException, config: TrainConfig, run_storage: str) -> str | None:
    """One line for a run that Ray Train gave up on after losing workers: which ranks, on which nodes,
    whether those nodes left the cluster, and how to resume (the same --name restarts from the last
    checkpoint). None for any other failure (a bug keeps its traceback)."""
    import ray

    lost = lost_actors(exc)
    if not lost:
        return None
    nodes = list(dict.fromkeys(n for n in map(actor_node, lost.values()) if n))
    dead = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if not n.get("Alive")}
    departed = [f"node {n[:12]} ({dead[n]})" for n in nodes if n in dead]
    ranks = ", ".join(str(r) for r in sorted(lost))
    what = (f"rank {ranks} lost {' and '.join(departed)}, which left the cluster" if departed
            else f"rank {ranks} stopped answering (on node {', '.join(n[:12] for n in nodes) or '?'}: lost or overloaded)")
    rounds = sorted(d for d in (os.listdir(run_storage) if os.path.isdir(run_storage) else [])
                    if re.fullmatch(r"round_\d{4}", d))
    where = (f"from its checkpoint of round {int(rounds[-1][6:])}/{config.members}" if rounds
             else "from its last checkpoint" if storage.is_uri(run_storage)
             else "from the start (no round was checkpointed)")
    return (f"training failed with --max-failures {config.max_failures}: {what}. Rerun with the same "
            f"--name {config.name} to resume {where}; --max-failures N lets Ray Train replace lost workers itself")


def start_up_timing(stamps: dict[str, float], state: BoostState) -> dict[str, float]:
    """Where a run's wall time went, in seconds: loading the data, starting Ray (with Ray Train's import
    alongside), from fit() to the first epoch (Train controller, worker group, data to the workers, model
    set-up), the training loop (with its per-round evaluation and checkpoints), from the last round to
    fit() returning, stopping Ray."""
    began, ended = (state.loop_wall + [math.nan, math.nan])[:2]
    return {"load_data": stamps["data"] - stamps["start"], "ray_start": stamps["ray"] - stamps["data"],
            "to_first_epoch": began - stamps["ray"], "training_loop": ended - began,
            "after_last_round": stamps["fit"] - ended, "ray_stop": stamps["ray_down"] - stamps["fit"]}


@dataclass
class TrainOutcome:
    """A finished run: where its run directory is, its metrics, the resolved config it was trained with,
    and Ray Train's Result (None when it trained in this process)."""

    run_dir: str
    metrics: dict
    config: TrainConfig
    ray_result: Any = None


def check_model_builds(config: TrainConfig, data: ImageDataset, recipe: Recipe) -> None:
    """Build the network once here, so that a factory that fails for this data stops the run with one line
    before Ray starts or any file is written, not in every worker."""
    build_model(config.model, num_classes=data.num_classes, input_shape=data.input_shape, kwargs=config.model_kwargs,
                factory=recipe.model)


def train(config: TrainConfig, *, hold_after_round: int | None = None) -> tuple[str, dict]:
    """``fit`` of a config that names its data: (run directory, metrics)."""
    outcome = fit(config, hold_after_round=hold_after_round)
    return outcome.run_dir, outcome.metrics


def fit(config: TrainConfig, data: ImageDataset | None = None, *, recipe: Recipe = DEFAULT_RECIPE,
        callbacks: list | None = None, hold_after_round: int | None = None) -> TrainOutcome:
    """Validate, train and write the run directory. ``data``: a data set built in Python (else the
    config's data set is loaded); ``recipe``: the user's model object, optimizer and loss; ``callbacks``:
    Ray Train callbacks (Tune's report). ``hold_after_round``: a testing hook, see train_loop.py."""
    started, stamps = time.perf_counter(), {"start": time.time()}
    if config.name is None:
        config = config.model_copy(update={"name": default_run_name(config)})
    config = config.resolved()  # what the run is trained with, saved and compared (a copy)
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
    if data is None:  # bad data fails here, before Ray or any file (held-out images a cluster reads later)
        data = load_training_data(config, defer_held_out=config.workers > 0)
    check_model_builds(config, data, recipe)
    if not storage.is_uri(output):
        os.makedirs(output, exist_ok=True)
    stamps["data"] = time.time()
    # workers=0 trains in this process without Ray. With Ray, Ray Train's import runs while Ray's processes start
    preload = ("ray.train.torch", "boostray.distributed.owned_instance", "boostray.distributed.train_loop")
    streamed = data.streamed and config.workers > 0
    # Ray Data's read tasks need a CPU beside the workers': a local instance counts at least that many
    cpus = max(os.cpu_count() or 1, math.ceil(ingest_cpus(config.workers, config.cpus_per_worker))) if streamed else None
    with ray_session(config.address, num_cpus=cpus, dashboard=config.dashboard, preload=preload) if config.workers else contextlib.nullcontext():
        stamps["ray"] = time.time()
        if config.gpu and config.workers:
            require_gpus(config.workers, f"--gpu with --workers {config.workers}")
        if config.workers and not callbacks:  # a Tune trial shares the cluster with its siblings: Tune places it
            require_cpus(ingest_cpus(config.workers, config.cpus_per_worker) if streamed else config.workers * config.cpus_per_worker,
                         f"--workers {config.workers} x --cpus-per-worker {config.cpus_per_worker:g}"
                         + (" and a Ray Data read task (--stream)" if streamed else ""))
        if deferred_held_out(data):  # validation and test rows of a streamed split: read by Ray tasks
            from boostray.distributed.ingest import read_held_out_in_tasks

            data = read_deferred_held_out(data, read_held_out_in_tasks)
        if config.workers and not storage.is_uri(output) and not owns_local_instance():
            require_shared(output, "--output", cpus_per_worker=config.cpus_per_worker, gpu=config.gpu)
        stored = None
        if config.workers:  # from here on this process holds the object store's copy of the data, not its own
            data, stored = held_in_object_store(data)
            release_unused_memory()
        state, ray_result = run_training(config, data, callbacks, hold_after_round=hold_after_round, recipe=recipe,
                                         stored=stored)
        stamps["fit"] = time.time()
    # rank 0 of a run on Ray wrote the sample weights beside the checkpoints; in this process they are in the state
    sample_weights = sample_weights_file(resolve_paths(config)[2], config.name) if ray_result is not None else None
    stamps["ray_down"] = time.time()
    wall = time.perf_counter() - started
    timing = start_up_timing(stamps, state)
    timing["other"] = wall - sum(v for v in timing.values() if v == v)
    metrics = write_run_directory(run_dir, state, data, config.spec(), name=config.name, options=config.saved(),
                                  extra_metrics={"wall_seconds": wall, "timing_seconds": timing,
                                                 **({"stream_reader": "ray-data" if streamed else "files"}
                                                    if data.streamed else {})},
                                  sample_weights=sample_weights)
    return TrainOutcome(run_dir, metrics, config, ray_result)

