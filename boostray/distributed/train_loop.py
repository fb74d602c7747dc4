"""The Ray Train edge of a boosting run: every rank runs ``train_loop_per_worker``, which builds the
Ray-free ``Engine`` (engine.py) on Ray Train's device and data-parallel wrapper, restores Ray Train's
latest checkpoint, and after each round reports the metrics with a checkpoint holding model, optimizer,
LR schedule and the whole boosting state. At the end rank 0 writes the sample weights to the file the
driver names (``sample_weights``) and returns the rest of the state.

Testing hook: ``hold_after_round: N`` in the loop config (set by a test through run_training, or by
the environment variable BOOSTRAY_TEST_HOLD_AFTER_ROUND for a job a test submits to a cluster) makes
every rank wait after reporting round N (up to 10 minutes) to be killed, so a fault-tolerance test can
kill a worker or a node at a known point of training instead of racing it.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import ray.train
import ray.train.torch
import torch

from boostray.core.artifact.run_directory import write_sample_weights
from boostray.core.method.boost_state import BoostState
from boostray.config import TrainConfig
from boostray.core.data.datasets import ImageDataset
from boostray.core.method.engine import Engine
from boostray.core.method.recipe import DEFAULT_RECIPE
from boostray.distributed.console import route_ray_records


def _resolve(obj: Any) -> Any:
    """Data and stores arrive as ObjectRefs from a cluster driver, as plain objects in local mode."""
    if isinstance(obj, ray.ObjectRef):
        return ray.get(obj)
    return obj


def rank_nodes(world: int) -> list[str]:
    """The Ray node id of every rank of this worker group, in rank order (metrics.json records it)."""
    node = ray.get_runtime_context().get_node_id()
    if world == 1 or not torch.distributed.is_initialized():
        return [node]
    nodes: list[str] = [""] * world
    torch.distributed.all_gather_object(nodes, node)
    return nodes


def ray_data_batches(ingest: dict | None, split: Any):
    """For a streamed run: a builder of this rank's batches from its Ray Data shard (ingest.py)."""
    if not ingest:
        return None
    from boostray.distributed.ingest import RayDataBatches

    def build(batching: dict) -> RayDataBatches:
        return RayDataBatches(ray.train.get_dataset_shard("train"), split, ingest["source"],
                              batch_size=batching["batch_size"], device=batching["device"], rank=batching["rank"],
                              world=batching["world"], per_task=ingest.get("per_task", 1))

    return build


def train_loop_per_worker(loop_config: dict) -> dict | None:
    config = TrainConfig(**loop_config["config"]).resolved()
    route_ray_records(loop_config.get("ray_log"), verbose=config.verbose)  # Ray Train has set up logging by now
    device = ray.train.torch.get_device()
    if device.type == "cpu":  # as many intra-op threads as CPUs reserved: Ray sets no OMP_NUM_THREADS here,
        torch.set_num_threads(max(1, int(config.cpus_per_worker)))  # and two workers x all cores oversubscribe
    data: ImageDataset = _resolve(loop_config["data"])
    ctx = ray.train.get_context()
    engine = Engine(config.spec(), data, store=loop_config["store"], rank=ctx.get_world_rank(), world=ctx.get_world_size(),
                    device=device, wrap_model=ray.train.torch.prepare_model, recipe=loop_config.get("recipe") or DEFAULT_RECIPE,
                    batches=ray_data_batches(loop_config.get("ingest"), data.train))
    checkpoint = ray.train.get_checkpoint()
    members_dir = loop_config.get("members_dir")  # members are saved once each, beside the checkpoints
    if checkpoint:
        with checkpoint.as_directory() as directory:
            state = engine.restore(directory, members_dir)
    else:
        state = engine.initial_state()
    state.placements.append(rank_nodes(engine.world))
    hold_after = loop_config.get("hold_after_round") or int(os.environ.get("BOOSTRAY_TEST_HOLD_AFTER_ROUND", 0)) or None

    def report(metrics: dict, state: BoostState) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            saved = None
            if engine.rank == 0:
                engine.save(tmp, state, members_dir)
                saved = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=saved, checkpoint_dir_name=f"round_{state.rounds_done:04d}")
        if hold_after == state.rounds_done:
            time.sleep(600)

    state = engine.run(state, report)
    if engine.rank != 0:
        return None
    sample_weights = loop_config.get("sample_weights")
    if sample_weights:  # written here, so that the state returned to the driver carries no per-sample arrays
        write_sample_weights(sample_weights, state, data)
    return state.to_portable(per_sample=not sample_weights)
