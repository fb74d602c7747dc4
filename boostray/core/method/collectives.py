"""Combining per-sample results of the ranks into one full-length vector with torch.distributed.

Each rank scatters its values into a zero vector of length n at its sample indices and the ranks
all-reduce it. Values are coded so that 0 means "no rank saw this sample": a gap is an error, and the
duplicated indices that DistributedSampler pads with are harmless under MAX.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
import torch.distributed as dist

WRONG, RIGHT = 1, 2  # correctness codes; 0 = unseen

#: bytes this process has all-reduced, by what: the error pass's share is recorded per round (metrics.json)
REDUCED_BYTES = {"correctness": 0, "rows": 0}


def _all_reduce(tensor: torch.Tensor, op, what: str) -> None:
    if is_distributed():
        dist.all_reduce(tensor, op=op)
        REDUCED_BYTES[what] += tensor.numel() * tensor.element_size()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def comm_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo (and a single process) use CPU tensors."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard_indices(n: int, rank: int, world: int) -> np.ndarray:
    """Contiguous, disjoint, unpadded shard of 0..n-1 for evaluation passes."""
    return np.array_split(np.arange(n), world)[rank]


def correctness_codes(index: np.ndarray, correct: np.ndarray, codes: np.ndarray) -> None:
    """Write a piece of a rank's correctness into ``codes`` (length n, zeros where unseen), so that a
    pass keeps one byte a sample instead of lists of index and correctness arrays."""
    codes[index] = np.where(correct, RIGHT, WRONG)


def combine_codes(codes: np.ndarray) -> np.ndarray:
    """Full-length boolean correctness from every rank's ``codes`` (correctness_codes)."""
    device = comm_device()
    reduced = torch.from_numpy(codes).to(device)
    _all_reduce(reduced, dist.ReduceOp.MAX, "correctness")
    out = reduced.cpu().numpy()
    missing = int((out == 0).sum())
    if missing:
        raise RuntimeError(f"{missing} training samples got no correctness from any rank")
    return out == RIGHT


def combine_correctness(index: torch.Tensor, correct: torch.Tensor, n: int) -> np.ndarray:
    """Full-length boolean correctness from every rank's (index, correct) pairs."""
    codes = np.zeros(n, dtype=np.uint8)
    correctness_codes(index.cpu().long().numpy(), correct.cpu().bool().numpy(), codes)
    return combine_codes(codes)


def combine_rows(index: np.ndarray, rows: torch.Tensor, n: int) -> torch.Tensor:
    """Full (n, ...) tensor from disjoint shards of rows (an evaluation pass's probabilities)."""
    device = comm_device()
    full = torch.zeros((n, *rows.shape[1:]), dtype=rows.dtype, device=device)
    full[torch.as_tensor(index, dtype=torch.long, device=device)] = rows.to(device)
    _all_reduce(full, dist.ReduceOp.SUM, "rows")  # shards are disjoint: the sum is exact
    return full.cpu()


def all_sum(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=comm_device())
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def weights_digest(weights: np.ndarray) -> list[float]:
    """CRC-32 of the vector's bytes and its sum (both exact in float64): a one-bit difference shows."""
    w = np.ascontiguousarray(weights, dtype=np.float64)
    return [float(zlib.crc32(memoryview(w).cast("B"))), float(w.sum())]


def gather_digests(digest: list[float]) -> list[list[float]]:
    """Every rank's digest, in rank order (a single process: just its own)."""
    t = torch.tensor(digest, dtype=torch.float64, device=comm_device())
    if not is_distributed():
        return [t.cpu().tolist()]
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [o.cpu().tolist() for o in out]
