"""A Ray Train torch backend whose rendezvous opens no TCP port: for a local, single-node Ray.

Ray's default torch backend rendezvouses through torch's TCPStore, which rank 0 hosts on the
wildcard address (torch offers no bind-address option). On one machine a ``file://`` store does the
same job without any listening socket, so a local run keeps all of its traffic on loopback. Joining a
real cluster uses Ray's default backend unchanged.

Built on Ray Train's backend interface (``ray.train.backend.Backend``, a developer API) and
``torch.distributed.init_process_group``; ``TorchConfig`` is subclassed only so that TorchTrainer
accepts it, for its public ``backend`` and ``timeout_s`` fields.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from dataclasses import dataclass
from datetime import timedelta

import ray.train
import torch
import torch.distributed as dist
from ray.train.backend import Backend
from ray.train.torch import TorchConfig


def join_process_group(backend: str, init_method: str, timeout_s: float) -> None:
    """On every worker: torchrun's environment variables, then the process group, rank from Ray Train."""
    context = ray.train.get_context()
    rank = context.get_world_rank()
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(context.get_world_size()),
                      LOCAL_RANK=str(context.get_local_rank()), LOCAL_WORLD_SIZE=str(context.get_local_world_size()),
                      NODE_RANK=str(context.get_node_rank()))
    if backend == "nccl":  # a timed-out collective fails the worker instead of hanging (Ray's default too)
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    dist.init_process_group(backend=backend, init_method=init_method, rank=rank,
                            world_size=context.get_world_size(), timeout=timedelta(seconds=timeout_s))


def leave_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class FileRendezvousBackend(Backend):
    share_cuda_visible_devices = True  # as Ray's torch backend: NCCL needs to see its peers' devices

    def on_start(self, worker_group, backend_config: "LoopbackTorchConfig") -> None:
        gpus = worker_group.get_resources_per_worker().get("GPU", 0)
        backend = backend_config.backend or ("nccl" if gpus > 0 else "gloo")
        # A fresh file per worker group: a group restarted after a failure rendezvouses anew.
        self._rendezvous_file = os.path.join(tempfile.gettempdir(), f"boostray-rendezvous-{uuid.uuid4().hex}")
        worker_group.execute(join_process_group, backend=backend, init_method=f"file://{self._rendezvous_file}",
                             timeout_s=backend_config.timeout_s)

    def on_shutdown(self, worker_group, backend_config) -> None:
        try:
            worker_group.execute(leave_process_group)  # raises when a worker has crashed
        finally:
            path = getattr(self, "_rendezvous_file", None)
            if path is not None:  # torch's FileStore leaves its file behind
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)


@dataclass
class LoopbackTorchConfig(TorchConfig):
    @property
    def backend_cls(self):
        return FileRendezvousBackend
