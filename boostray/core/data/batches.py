"""Training batches gathered by index from one in-memory uint8 tensor, augmented a whole batch at a time.

The training split already lives in memory as a uint8 array, so a batch is one indexing operation on a
tensor (on the training device), and random crop with zero padding plus horizontal flip are tensor ops
over the batch: no per-sample Python, no DataLoader. Where it augments, the split is padded once, so that
gathering a batch and cropping it are a single indexing operation. The sample order is DistributedSampler's (seeded
permutation per epoch, padded to a multiple of the world size, strided by rank), and the augmentation is
drawn from a generator seeded by (seed, epoch, rank), so a resumed run replays it bit for bit.

A split too large for memory trains from chunks (``ChunkedBatches``: Parquet row groups read one at a
time, streaming.py) in a chunked order: the chunks dealt to the ranks in a seeded order, the samples
shuffled within a window of a few chunks. The same split in memory with the same chunks gives the same
batches, which is how a streamed run is checked against the in-memory path.
"""

from __future__ import annotations

import math
import queue
import threading
import warnings
from typing import Callable, Iterator

import numpy as np
import torch


def epoch_indices(n: int, epoch: int, seed: int, rank: int, world: int,
                  draw: torch.Tensor | None = None) -> torch.Tensor:
    """This rank's sample indices for ``epoch``, exactly as DistributedSampler(shuffle=True) orders them.
    ``draw``: per-sample probabilities (the balanced sampler): an epoch of n draws with replacement instead
    of a permutation, the same global order on every rank, padded and strided as DistributedSampler does."""
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    order = torch.randperm(n, generator=g) if draw is None else torch.multinomial(draw, n, replacement=True, generator=g)
    total = math.ceil(n / world) * world
    if total > n:
        order = torch.cat([order, order.repeat(math.ceil((total - n) / n))[: total - n]])
    return order[rank:total:world]


def pad_images(images: torch.Tensor, padding: int) -> torch.Tensor:
    """``images`` (N, C, H, W) with ``padding`` zero pixels on every side, contiguous (no copy for 0)."""
    if not padding:
        return images.contiguous()
    return torch.nn.functional.pad(images, (padding, padding, padding, padding)).contiguous()


def crop_and_flip_padded(padded: torch.Tensor, rows: torch.Tensor, padding: int, hflip: bool,
                         generator: torch.Generator) -> torch.Tensor:
    """Random crops of the padded images ``padded[rows]`` (each the unpadded size, at an offset drawn
    per image), flipped horizontally with probability 1/2 where ``hflip``: the distribution of
    torchvision's RandomCrop(padding) + RandomHorizontalFlip, drawn for the whole batch at once.

    The gather and the crop are one indexing operation over a strided view that holds every crop
    offset of every image, so only three (batch-sized) index tensors are built, never one index per pixel.
    """
    b = rows.numel()
    n, c, hp, wp = padded.shape
    device = padded.device
    if padding:
        h, w, span = hp - 2 * padding, wp - 2 * padding, 2 * padding + 1
        dy = torch.randint(0, span, (b,), generator=generator, device=device)
        dx = torch.randint(0, span, (b,), generator=generator, device=device)
        s = padded.stride()
        offsets = padded.as_strided((n, span, span, c, h, w), (s[0], s[2], s[3], s[1], s[2], s[3]),
                                    padded.storage_offset())
        images = offsets[rows, dy, dx]
    else:
        images = padded[rows]
    if hflip:
        flip = torch.rand(b, generator=generator, device=device) < 0.5
        if device.type == "cpu":  # flip only the chosen half, in place (``images`` is a fresh copy)
            chosen = flip.nonzero().squeeze(1)
            images[chosen] = images[chosen].flip(-1)
        else:  # no host synchronisation on an accelerator
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return images


def crop_and_flip(images: torch.Tensor, padding: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """``crop_and_flip_padded`` of a batch that is not padded yet."""
    rows = torch.arange(images.shape[0], device=images.device)
    return crop_and_flip_padded(pad_images(images, padding), rows, padding, hflip, generator)


def _augment_generator(device: torch.device, seed: int, epoch: int, rank: int) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + epoch * 7919 + rank) % (2**63))
    return generator


def chunk_deal(sizes: list[int], epoch: int, seed: int, world: int) -> list[list[int]]:
    """Each rank's chunks for ``epoch``: the non-empty chunks in a seeded permutation, dealt in turn."""
    nonempty = [j for j, size in enumerate(sizes) if size]
    if len(nonempty) < world:
        raise ValueError(f"the training data has {len(nonempty)} group(s) with samples, fewer than the "
                         f"{world} workers")
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    order = [nonempty[i] for i in torch.randperm(len(nonempty), generator=g).tolist()]
    return [order[r::world] for r in range(world)]


def chunked_epoch_order(chunks: list[np.ndarray], epoch: int, seed: int, rank: int, world: int,
                        window: int) -> np.ndarray:
    """This rank's sample indices for ``epoch`` in the chunked order: its chunks (chunk_deal) taken
    ``window`` at a time, the samples of each window in a seeded permutation; padded by repeating its
    own first samples to the largest rank's count, so that every rank runs the same number of steps."""
    sizes = [len(c) for c in chunks]
    dealt = chunk_deal(sizes, epoch, seed, world)
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch * 7919 + rank + 1) % (2**63))
    mine = dealt[rank]
    parts = []
    for start in range(0, len(mine), window):
        idx = np.concatenate([chunks[j] for j in mine[start:start + window]])
        parts.append(idx[torch.randperm(idx.size, generator=g).numpy()])
    order = np.concatenate(parts)
    total = max(sum(sizes[j] for j in d) for d in dealt)
    if total > order.size:
        order = np.concatenate([order, np.resize(order, total - order.size)])
    return order


def fits_on_device(nbytes: int, device: torch.device) -> bool:
    """Whether a training split of ``nbytes`` (padded) should live on ``device``: always on a CPU; on a GPU
    when it takes at most half of the memory free there, leaving the rest to the model and activations."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= free // 2


class TrainBatches:
    """One rank's training batches: (uint8 images, labels, sample indices), all on ``device``.

    A split that does not fit the device (``fits_on_device``) stays in host memory, where it already is
    (the object store's pages, shared by the ranks of a node: no copy per GPU); each batch is gathered
    into pinned memory and copied to the device without blocking, then cropped there. Same batches,
    same augmentation draws, bit for bit.

    Both batch classes offer the same interface: ``epoch(e)`` for training, ``eval_chunks(rows)`` for this
    rank's share of the split in (indices, images) pieces (the correctness pass), ``all_chunks(rows)`` for
    every image (SWA's batch-norm recount), and ``peak_chunks`` (0 here: nothing is read from disk)."""

    peak_chunks = 0

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int, device: torch.device,
                 seed: int, rank: int = 0, world: int = 1, augment: bool = True, crop_padding: int = 0,
                 hflip: bool = False, draw: np.ndarray | None = None, on_device: bool | None = None) -> None:
        source = images
        self.draw = None if draw is None else torch.as_tensor(draw, dtype=torch.float64)
        padded = images.nbytes * ((images.shape[-1] + 2 * crop_padding) ** 2 / images.shape[-1] ** 2
                                  if augment and images.ndim == 4 else 1)
        #: whether the split lives on the device (else in host memory, copied a batch at a time)
        self.on_device = fits_on_device(int(padded), device) if on_device is None else on_device
        where = device if self.on_device else torch.device("cpu")
        with warnings.catch_warnings():  # arrays from the object store are read-only; nothing writes them
            warnings.simplefilter("ignore", UserWarning)
            images = torch.from_numpy(np.ascontiguousarray(images)).to(where)
            self.labels = torch.from_numpy(np.ascontiguousarray(labels)).to(device)
        self.n, self.batch_size, self.device = int(labels.shape[0]), batch_size, device
        self.seed, self.rank, self.world = seed, rank, world
        self.augment, self.crop_padding, self.hflip = augment, crop_padding, hflip
        self.source = source  # the unpadded host array, for the evaluation passes
        # Augmented batches are cut out of a copy padded once, here, not padded batch by batch (on the device).
        self.images = pad_images(images, crop_padding) if augment and self.on_device else images
        self.pin = not self.on_device and torch.cuda.is_available()

    def __len__(self) -> int:
        return math.ceil(math.ceil(self.n / self.world) / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        index = epoch_indices(self.n, epoch, self.seed, self.rank, self.world, self.draw).to(self.device)
        generator = _augment_generator(self.device, self.seed, epoch, self.rank)
        for start in range(0, index.numel(), self.batch_size):
            idx = index[start:start + self.batch_size]
            if not self.on_device:
                x = self.host_batch(idx)
                if self.augment:  # crop_and_flip pads the batch and draws exactly as from the padded split
                    x = crop_and_flip(x, self.crop_padding, self.hflip, generator)
            elif self.augment:
                x = crop_and_flip_padded(self.images, idx, self.crop_padding, self.hflip, generator)
            else:
                x = self.images[idx]
            yield x, self.labels[idx], idx

    def host_batch(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` of the host-resident split, gathered into pinned memory (on a CUDA machine) and
        copied to the device without blocking (PyTorch's pinned allocator keeps the buffer until the copy is done)."""
        rows = idx.cpu()
        staging = torch.empty((rows.numel(), *self.images.shape[1:]), dtype=self.images.dtype, pin_memory=self.pin)
        torch.index_select(self.images, 0, rows, out=staging)
        return staging.to(self.device, non_blocking=self.pin)

    def eval_chunks(self, max_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """This rank's contiguous share of the samples as (indices, uint8 images), ``max_rows`` at a time."""
        index = np.array_split(np.arange(self.n), self.world)[self.rank]
        for start in range(0, index.size, max_rows):
            part = index[start:start + max_rows]
            yield part, self.source[part]

    def all_chunks(self, max_rows: int) -> Iterator[np.ndarray]:
        """Every sample's images, ``max_rows`` at a time."""
        for start in range(0, self.n, max_rows):
            yield self.source[start:start + max_rows]


class ChunkedBatches:
    """One rank's training batches from a split read a chunk at a time (``split.chunks()`` and
    ``split.read_chunk(j)``: a StreamedSplit, or an ImageSplit with chunks), in the chunked order.
    A background thread reads the next chunk while the current ones train; a chunk is dropped as soon
    as the next batch does not need it, so a rank holds about ``window`` chunks, never the split."""

    def __init__(self, split, *, batch_size: int, device: torch.device, seed: int, rank: int = 0,
                 world: int = 1, augment: bool = True, crop_padding: int = 0, hflip: bool = False,
                 window: int = 4) -> None:
        self.split, self.chunks = split, split.chunks()
        self.labels_all = torch.from_numpy(np.array(split.labels, dtype=np.int64))  # a copy: object-store arrays are read-only
        self.chunk_of = np.empty(len(split), dtype=np.int64)  # each sample's chunk and place in it
        self.place = np.empty(len(split), dtype=np.int64)
        for j, idx in enumerate(self.chunks):
            self.chunk_of[idx] = j
            self.place[idx] = np.arange(idx.size)
        self.n, self.batch_size, self.device = len(split), batch_size, device
        self.seed, self.rank, self.world, self.window = seed, rank, world, window
        self.augment, self.crop_padding, self.hflip = augment, crop_padding, hflip
        chunk_deal([len(c) for c in self.chunks], 0, seed, world)  # too few chunks for the ranks fails here
        self.peak_chunks = 0  # most chunks held at once (read ahead included), over every epoch so far

    def __len__(self) -> int:
        sizes = [len(c) for c in self.chunks]
        total = max(sum(sizes[j] for j in d) for d in chunk_deal(sizes, 0, self.seed, self.world))
        return math.ceil(total / self.batch_size)

    def rank_chunks(self) -> list[int]:
        """A fixed share of the chunks for this rank's evaluation passes (every chunk once over the ranks)."""
        nonempty = [j for j, c in enumerate(self.chunks) if len(c)]
        return nonempty[self.rank::self.world]

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = chunked_epoch_order(self.chunks, epoch, self.seed, self.rank, self.world, self.window)
        batches = [order[s:s + self.batch_size] for s in range(0, order.size, self.batch_size)]
        needs = [set(np.unique(self.chunk_of[b]).tolist()) for b in batches]
        loads, held = [], set()  # the chunk reads this epoch makes, in order (a dropped chunk may come back)
        for t, need in enumerate(needs):
            loads += sorted(need - held)
            nxt = needs[t + 1] if t + 1 < len(needs) else set()
            held = need & nxt
        generator = _augment_generator(self.device, self.seed, epoch, self.rank)
        cache: dict[int, np.ndarray] = {}
        with ChunkReader(self.split.read_chunk, loads) as reader:
            for t, b in enumerate(batches):
                for j in sorted(needs[t] - cache.keys()):
                    cache[j] = reader.next(j)
                self.peak_chunks = max(self.peak_chunks, len(cache) + reader.ahead)
                images = np.empty((b.size, *cache[next(iter(cache))].shape[1:]), dtype=np.uint8)
                owner = self.chunk_of[b]
                for j in needs[t]:
                    where = owner == j
                    images[where] = cache[j][self.place[b[where]]]
                nxt = needs[t + 1] if t + 1 < len(needs) else set()
                for j in [j for j in cache if j not in nxt]:
                    del cache[j]
                x = torch.from_numpy(images).to(self.device)
                if self.augment:
                    x = crop_and_flip(x, self.crop_padding, self.hflip, generator)
                idx = torch.from_numpy(b).to(self.device)
                yield x, self.labels_all[b].to(self.device), idx

    def eval_chunks(self, max_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """This rank's share of the samples as (indices, uint8 images) in pieces of at most ``max_rows``,
        read ahead like training (the correctness pass)."""
        mine = self.rank_chunks()
        with ChunkReader(self.split.read_chunk, mine) as reader:
            for j in mine:
                images = reader.next(j)
                self.peak_chunks = max(self.peak_chunks, 1 + reader.ahead)
                for s in range(0, images.shape[0], max_rows):
                    yield self.chunks[j][s:s + max_rows], images[s:s + max_rows]

    def all_chunks(self, max_rows: int) -> Iterator[np.ndarray]:
        """Every sample's images, chunk by chunk, in pieces of at most ``max_rows`` (SWA's BN update)."""
        everything = [j for j, c in enumerate(self.chunks) if len(c)]
        with ChunkReader(self.split.read_chunk, everything) as reader:
            for j in everything:
                images = reader.next(j)
                for s in range(0, images.shape[0], max_rows):
                    yield images[s:s + max_rows]


class ChunkReader:
    """Reads ``loads`` (chunk ids, in order) on a background thread, one ahead of the consumer."""

    def __init__(self, read: Callable[[int], np.ndarray], loads: list[int], ahead: int = 1) -> None:
        self.read, self.loads = read, list(loads)
        self.queue: queue.Queue = queue.Queue(maxsize=ahead)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="boostray-chunk-reader", daemon=True)

    @property
    def ahead(self) -> int:
        return self.queue.qsize()

    def _run(self) -> None:
        for j in self.loads:
            if self.stop.is_set():
                return
            try:
                item = (j, self.read(j), None)
            except BaseException as exc:  # handed to the consumer, raised there
                item = (j, None, exc)
            while not self.stop.is_set():
                try:
                    self.queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return

    def next(self, expected: int) -> np.ndarray:
        j, images, exc = self.queue.get()
        if exc is not None:
            raise exc
        assert j == expected, f"chunk reader out of step: read {j}, expected {expected}"
        return images

    def __enter__(self) -> "ChunkReader":
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        self.thread.join()
