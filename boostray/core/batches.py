"""Training batches gathered by index from one in-memory uint8 tensor, augmented a whole batch at a time.

The training split already lives in memory as a uint8 array, so a batch is one indexing operation on a
tensor (on the training device), and random crop with zero padding plus horizontal flip are tensor ops
over the batch: no per-sample Python, no DataLoader. The sample order is DistributedSampler's (seeded
permutation per epoch, padded to a multiple of the world size, strided by rank), and the augmentation is
drawn from a generator seeded by (seed, epoch, rank), so a resumed run replays it bit for bit.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterator

import numpy as np
import torch


def epoch_indices(n: int, epoch: int, seed: int, rank: int, world: int) -> torch.Tensor:
    """This rank's sample indices for ``epoch``, exactly as DistributedSampler(shuffle=True) orders them."""
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    order = torch.randperm(n, generator=g)
    total = math.ceil(n / world) * world
    if total > n:
        order = torch.cat([order, order.repeat(math.ceil((total - n) / n))[: total - n]])
    return order[rank:total:world]


def crop_and_flip(images: torch.Tensor, padding: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop of each (C, H, W) image out of its zero-padded version, and a horizontal flip with
    probability 1/2 where ``hflip``; the same distribution as torchvision's RandomCrop(padding) +
    RandomHorizontalFlip, drawn per image for the whole batch at once."""
    b, c, h, w = images.shape
    device = images.device
    if padding:
        padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=device)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=device)
        rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]
        batch = torch.arange(b, device=device)[:, None, None, None]
        chan = torch.arange(c, device=device)[None, :, None, None]
        images = padded[batch, chan, rows, cols]
    if hflip:
        flip = torch.rand(b, generator=generator, device=device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return images


class TrainBatches:
    """One rank's training batches: (uint8 images, labels, sample indices), all on ``device``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int, device: torch.device,
                 seed: int, rank: int = 0, world: int = 1, augment: bool = True, crop_padding: int = 0,
                 hflip: bool = False) -> None:
        with warnings.catch_warnings():  # arrays from the object store are read-only; nothing writes them
            warnings.simplefilter("ignore", UserWarning)
            self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device)
            self.labels = torch.from_numpy(np.ascontiguousarray(labels)).to(device)
        self.n, self.batch_size, self.device = int(labels.shape[0]), batch_size, device
        self.seed, self.rank, self.world = seed, rank, world
        self.augment, self.crop_padding, self.hflip = augment, crop_padding, hflip

    def __len__(self) -> int:
        return math.ceil(math.ceil(self.n / self.world) / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        index = epoch_indices(self.n, epoch, self.seed, self.rank, self.world).to(self.device)
        generator = torch.Generator(device=self.device)
        generator.manual_seed((self.seed * 1_000_003 + epoch * 7919 + self.rank) % (2**63))
        for start in range(0, index.numel(), self.batch_size):
            idx = index[start:start + self.batch_size]
            x = self.images[idx]
            if self.augment:
                x = crop_and_flip(x, self.crop_padding, self.hflip, generator)
            yield x, self.labels[idx], idx
