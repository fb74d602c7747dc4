"""Ray Data as the input of a ``--stream`` run on Ray: the training images are read and decoded by Ray
Data tasks on any node with CPUs to spare, and reach each Train worker through its dataset shard.

The driver holds only the training split's labels and, per group (a Parquet row group, or 256 image
files), an *item* naming its rows and its samples' indices (streaming.py); the ranks take the labels
from the split they hold. The training dataset (``items_dataset`` with a window) takes blocks of items
in a new random order every epoch (``randomize_block_order``) and reads ``window`` items per CPU
``map_batches`` task: decoded, augmented, and their samples shuffled together, as the in-process reader
mixes a window of groups. Ray Train splits the dataset over the ranks (``streaming_split``, equal
shares), and a rank iterates its shard with ``iter_torch_batches`` (prefetching, pinned memory on a
GPU). No local shuffle buffer: the mixing is done in the read task, where it costs a permutation; Ray
Data's buffer cost each rank time and memory that grew with every batch (docs/performance.md). Every row
keeps its ``index`` column, so the sample weight ``weights[index]`` applies as in memory.

A pass (a rank's correctness pass over its fixed share of the items, every sample once over the ranks;
SWA's pass over all of them; the driver's read of the held-out rows) reads a fixed list in order, once:
plain Ray tasks do that (``read_in_tasks``), the same reading function on any node's CPUs, a few tasks
ahead of the reader. Ray Data's streaming executor, run for a pass, keeps a scheduling thread in the
reading process, whose native memory grows with every pass it serves (bench/bench_pass_memory.py
compares the two).

A streamed run on Ray is not replayed bit for bit: which rank gets which group, and the augmentation,
are Ray Data's. The boosting state (weights, members) is checkpointed as in any run, so resuming after a
lost worker works the same way.
"""

from __future__ import annotations

import collections
import functools
import math
import warnings
from typing import Any, Iterator

import numpy as np
import torch

from boostray.core.data.batches import crop_and_flip
from boostray.core.data.datasets import release_unused_memory
from boostray.core.data.streaming import (
    StreamedSplit, fill_held_out, held_out_items, item_index, read_item, reader_source,
)

READ_TASK_CPUS = 1.0  # CPUs per Ray Data read task; a cluster needs at least this beside the workers
PREFETCH_BATCHES = 4


def ingest_cpus(workers: int, cpus_per_worker: float) -> float:
    """The CPUs a streamed run on Ray needs: the workers' and one read task's."""
    return workers * cpus_per_worker + READ_TASK_CPUS


# What streaming adds to a node's memory is the object store's pages that its blocks touch (they stay
# mapped), bounded by the blocks in flight, not by the data set (docs/performance.md). So a reader may have
# TASKS_AHEAD read tasks' output in flight (one being read, one ready; at least MIN_STORE_BYTES), and a task
# hands its output over in blocks of at most BLOCK_BYTES, of which a rank holds the one it reads and the
# next: smaller tasks would do the same at the cost of a task's fixed start, many more times an epoch.
TASKS_AHEAD = 2
MIN_STORE_BYTES = 8 << 20
BLOCK_BYTES = 1 << 20
PASS_TASK_BYTES = 4 << 20  # decoded bytes a task reads: several small groups per task, one large one


def group_bytes(*splits: StreamedSplit) -> int:
    """The decoded bytes of the largest group's samples in ``splits`` (of one source): what one item
    reads."""
    sizes = sum(split.chunk_sizes() for split in splits)
    return int(np.max(sizes, initial=1)) * int(np.prod(splits[0].image_shape))


def items_per_pass_task(*splits: StreamedSplit) -> int:
    """How many items one task of a pass reads: as many groups as fit PASS_TASK_BYTES (at least one).
    A task per small group made a pass thousands of tasks at a million rows, and Ray's GCS and Ray
    Data's stats actor keep a record of every one."""
    return max(1, PASS_TASK_BYTES // group_bytes(*splits))


def train_window(split: StreamedSplit, window: int) -> int:
    """How many items one training read task reads and shuffles together: ``window`` (--stream-window),
    or more where groups are small, as many as a pass task reads. Fewer, larger tasks: each has a fixed
    start cost, and Ray's GCS and Ray Data's stats actor keep a record of every one."""
    return max(window, items_per_pass_task(split))


def ingest_options(split: StreamedSplit, world: int, window: int):
    """Ray Train's execution options for the training dataset (read ``train_window`` items a task), with
    how much of the object store its blocks in flight may take: TASKS_AHEAD tasks' groups per rank (at
    least MIN_STORE_BYTES). Unbounded, the read tasks run ahead of training by as much as the store
    allows, and the store's pages (which stay mapped once touched) grow with the data set, not with what
    training needs."""
    from ray.data import ExecutionResources
    from ray.train import DataConfig

    with warnings.catch_warnings():  # Ray Train's defaults set an option Ray Data has deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        options = DataConfig.default_ingest_options()
    options.resource_limits = ExecutionResources(
        object_store_memory=max(MIN_STORE_BYTES, TASKS_AHEAD * world * train_window(split, window) * group_bytes(split)))
    return options


def quiet_ray_data() -> None:
    """Ray Data's progress bars and per-dataset log lines stay out of boostray's output."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def read_items(items: list[dict], source: Any, augment: dict | None = None, shuffle: bool = False) -> dict[str, np.ndarray]:
    """Items -> their decoded images with their sample indices (and, for held-out items, the split each
    row belongs to), in one block: augmented where ``augment`` says how (random resized crops of the
    files' images with --image-size, else random crops with padding; flips), and the rows of all the
    items shuffled together where ``shuffle`` says so."""
    release_unused_memory()  # what the process's last task left in Arrow's pool and the heap
    rng = np.random.default_rng() if augment and augment.get("resized_crop") else None  # fresh in every task
    images = np.concatenate([read_item(source, item, rng) for item in items])
    out = {"image": images, "index": np.concatenate([item_index(source, item) for item in items]).astype(np.int64)}
    if "part" in items[0]:
        out["part"] = np.concatenate([item["part"] for item in items]).astype(np.int64)
    if augment:
        generator = torch.Generator()
        generator.seed()  # fresh randomness in every task
        out["image"] = crop_and_flip(torch.from_numpy(images), augment["padding"], augment["hflip"], generator).numpy()
    if shuffle:
        order = np.random.default_rng().permutation(len(out["index"]))
        out = {key: value[order] for key, value in out.items()}
    return out


def _read(batch: dict[str, np.ndarray], source: Any, augment: dict | None, shuffle: bool) -> dict[str, np.ndarray]:
    """``read_items`` for Ray Data's ``map_batches``, which hands the items over as columns."""
    return read_items([{key: value[i] for key, value in batch.items()} for i in range(len(batch["chunk"]))],
                      source, augment, shuffle)


@functools.cache
def _read_task():
    """``read_items`` as a Ray task: on any node's CPUs (spread as Ray Data spreads its read tasks, and
    outside the caller's placement group, which has no CPU to spare)."""
    import ray

    return ray.remote(read_items).options(num_cpus=READ_TASK_CPUS, scheduling_strategy="SPREAD")


def read_in_tasks(items: list[dict], source: Any, per_task: int) -> Iterator[dict[str, np.ndarray]]:
    """The items' decoded rows in order, a task's block at a time: ``per_task`` items per Ray task, with
    at most TASKS_AHEAD tasks' blocks in the object store (the one being read, the next being made),
    whatever the pass's length. The blocks are read-only views of the store."""
    import ray

    source_ref = ray.put(source)  # once, not with every task
    pending: collections.deque = collections.deque()
    for start in range(0, len(items), per_task):
        pending.append(_read_task().remote(items[start:start + per_task], source_ref))
        if len(pending) >= TASKS_AHEAD:
            yield ray.get(pending.popleft())
    while pending:
        yield ray.get(pending.popleft())


BLOCKS_PER_WINDOW = 4  # a training task combines this many blocks of items, drawn anew every epoch


def items_dataset(items: list[dict], source: Any, augment: dict | None = None, window: int = 0, per_task: int = 1):
    """A Ray Dataset of the items' images, read by tasks on any node's CPUs: ``per_task`` items per task,
    in order (a pass); or, with ``window``, ``window`` items per task, their samples shuffled together
    (training). For training the items are dealt into blocks of ``window / BLOCKS_PER_WINDOW`` in a fixed
    random order, and every execution (epoch) takes the blocks in a new random order: each task mixes
    groups from all over the data set, and a new set of them each epoch, with a quarter of the blocks
    that one per item would make (Ray Data's coordinator and stats actor keep a record of every block)."""
    import ray.data

    quiet_ray_data()
    per_block = max(1, window // BLOCKS_PER_WINDOW) if window else max(1, per_task)
    if window:
        items = [items[i] for i in np.random.default_rng(0).permutation(len(items))]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / per_block)))
    if window:
        dataset = dataset.randomize_block_order()
    dataset = dataset.map_batches(
        _read, batch_size=max(1, window or per_block), batch_format="numpy", num_cpus=READ_TASK_CPUS,
        fn_kwargs={"source": source, "augment": augment, "shuffle": bool(window)})
    dataset.context.target_max_block_size = BLOCK_BYTES  # a task's output, handed over in blocks of this size
    return dataset


def read_held_out_in_tasks(splits: list[StreamedSplit]) -> list:
    """Validation and test splits held out of a streamed training split, read by Ray tasks (the driver
    only gathers their images)."""
    blocks = read_in_tasks(held_out_items(splits), reader_source(splits[0].source), items_per_pass_task(*splits))
    return fill_held_out(splits, ((b["part"], b["index"], b["image"]) for b in blocks))


class RayDataBatches:
    """One rank's batches, with the interface of batches.py's classes: ``epoch(e)`` iterates this rank's
    shard of the training dataset; ``eval_chunks`` and ``all_chunks`` read items without augmentation
    (this rank's fixed share, or all of them) in Ray tasks, ``per_task`` items each (``read_in_tasks``).
    The items are built from the split the rank holds when a pass starts, so that no list of every item
    is shipped to the ranks or kept through the run."""

    peak_chunks = 0  # nothing held by the rank beyond Ray Data's prefetched batches

    def __init__(self, shard: Any, split: StreamedSplit, source: Any, *, batch_size: int,
                 device: torch.device, rank: int, world: int, per_task: int = 1) -> None:
        self.shard, self.split, self.source, self.per_task = shard, split, source, per_task
        self.n, self.batch_size, self.device, self.rank, self.world = len(split), batch_size, device, rank, world
        # Ray Data hands out read-only arrays from the object store; nothing writes to the tensors made of them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        # the items carry no labels: the split this rank holds has them (a view of it, on a CPU)
        self.labels = torch.as_tensor(np.asarray(split.labels), device=device)

    def __len__(self) -> int:
        return math.ceil((self.n // self.world) / self.batch_size)  # equal shares: n // world rows a rank

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        batches = self.shard.iter_torch_batches(
            batch_size=self.batch_size, prefetch_batches=PREFETCH_BATCHES, device=self.device, pin_memory=self.device.type == "cuda")
        for batch in batches:
            yield batch["image"], self.labels[batch["index"]].long(), batch["index"]
        release_unused_memory()  # what Arrow's pool and the heap kept of the epoch's blocks and batches

    def _iterate(self, items: list[dict], max_rows: int) -> Iterator[dict]:
        """The items' rows in pieces of at most ``max_rows``, a read task's block at a time, each block
        sliced here and the heap trimmed after it."""
        for block in read_in_tasks(items, self.source, self.per_task):
            for start in range(0, len(block["index"]), max_rows):
                yield {key: value[start:start + max_rows] for key, value in block.items()}
            del block
            release_unused_memory()  # what scoring the block left in the heap

    def eval_chunks(self, max_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for batch in self._iterate(self.split.items(self.rank, self.world), max_rows):
            yield batch["index"], batch["image"]

    def all_chunks(self, max_rows: int) -> Iterator[np.ndarray]:
        for batch in self._iterate(self.split.items(), max_rows):
            yield batch["image"]
