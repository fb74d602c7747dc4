"""A Ray Train torch backend whose rendezvous opens no TCP port: for a local, single-node Ray.

Ray's default torch backend rendezvous goes through torch's TCPStore, which rank 0 hosts on the
wildcard address (torch offers no bind-address option). On one machine a ``file://`` store does the
same job without any listening socket, so a local run keeps all of its traffic on loopback. Joining a
real cluster uses Ray's default backend unchanged.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from dataclasses import dataclass

import ray
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend


class FileRendezvousBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: "LoopbackTorchConfig") -> None:
        gpus = worker_group.get_resources_per_worker().get("GPU", 0)
        backend = backend_config.backend or ("nccl" if gpus > 0 else "gloo")
        # A fresh file per worker group: a group restarted after a failure rendezvouses anew.
        path = os.path.join(tempfile.gettempdir(), f"boostray-rendezvous-{uuid.uuid4().hex}")
        self._rendezvous_file = path
        worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([
            worker_group.execute_single_async(
                i, _setup_torch_process_group, backend=backend, world_rank=i, world_size=len(worker_group),
                init_method=f"file://{path}", timeout_s=backend_config.timeout_s,
            )
            for i in range(len(worker_group))
        ])


    def on_shutdown(self, worker_group, backend_config) -> None:
        try:
            super().on_shutdown(worker_group, backend_config)  # raises when a worker has crashed
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
