"""--stream: a Parquet training split read a row group at a time equals the same split in memory."""

import dataclasses
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from boostray.cli import main
from boostray.config import TrainConfig
from boostray.core.data.batches import chunked_epoch_order
from boostray.core.data.datasets import ImageSplit, load_dataset
from boostray.core.data.streaming import StreamedSplit, item_index, item_rows, read_item
from boostray.core.method.engine import train_in_process
from helpers import crash_after_round, png_bytes, synthetic_images


def write_grouped(folder, n: int = 600, rows_per_group: int = 40, as_png: bool = False, **kw) -> str:
    """A train.parquet of ``n`` synthetic images in row groups of ``rows_per_group`` (no test file:
    test and validation are held out of it, as for a Hugging Face set without them)."""
    os.makedirs(folder, exist_ok=True)
    images, labels = synthetic_images(n, **kw)
    if as_png:
        col = pa.array([{"bytes": png_bytes(im.squeeze(-1) if im.shape[-1] == 1 else im), "path": None} for im in images])
    else:
        col = pa.array([im.transpose(2, 0, 1).reshape(-1) for im in images], type=pa.list_(pa.uint8()))
    pq.write_table(pa.table({"image": col, "label": pa.array(labels, pa.int64())}),
                   os.path.join(folder, "train.parquet"), row_group_size=rows_per_group)
    return str(folder)


def equal_states(a, b) -> None:
    np.testing.assert_array_equal(a.weights, b.weights)
    assert [m.to_json() for m in a.members] == [m.to_json() for m in b.members]
    for x, y in zip(a.member_states, b.member_states):
        for key in x:
            assert torch.equal(x[key], y[key]), key
    for x, y in zip(a.val_proba + a.test_proba, b.val_proba + b.test_proba):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("as_png", [False, True])
def test_a_streamed_split_loads_as_the_in_memory_one(tmp_path, as_png):
    folder = write_grouped(tmp_path / "data", as_png=as_png, channels=3 if as_png else 1)
    memory, streamed = load_dataset("parquet", folder), load_dataset("parquet", folder, stream=True)
    assert streamed.streamed and not memory.streamed
    assert (streamed.mean, streamed.std, streamed.input_shape) == (memory.mean, memory.std, memory.input_shape)
    np.testing.assert_array_equal(streamed.train.labels, memory.train.labels)
    np.testing.assert_array_equal(streamed.train.take(np.arange(len(memory.train))), memory.train.images)
    for part in ("val", "test"):
        np.testing.assert_array_equal(getattr(streamed, part).images, getattr(memory, part).images)
        np.testing.assert_array_equal(getattr(streamed, part).labels, getattr(memory, part).labels)
    chunks = streamed.train.chunks()
    assert len(chunks) == 15 and sum(len(c) for c in chunks) == len(memory.train)
    some = np.array([5, 300, 2, 77])
    np.testing.assert_array_equal(streamed.train.take(some), memory.train.images[some])


def test_the_chunked_order_deals_row_groups_covers_every_sample_and_replays():
    chunks = np.array_split(np.arange(1000), 23)
    group_of = np.repeat(np.arange(23), [len(c) for c in chunks])
    for world in (1, 3):
        orders = [chunked_epoch_order(chunks, 0, 7, r, world, window=2) for r in range(world)]
        assert len({o.size for o in orders}) == 1  # same number of steps on every rank
        assert set(np.concatenate(orders).tolist()) == set(range(1000))
        assert len({tuple(group_of[o[:80]]) for o in orders}) == world  # ranks read different row groups
        for o in orders:
            assert len(set(group_of[o[:2 * min(map(len, chunks))]].tolist())) == 2  # a window is 2 row groups
        again = chunked_epoch_order(chunks, 0, 7, 0, world, window=2)
        np.testing.assert_array_equal(again, orders[0])
        assert not np.array_equal(chunked_epoch_order(chunks, 1, 7, 0, world, window=2), orders[0])


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    folder = write_grouped(tmp_path_factory.mktemp("grouped") / "data", n=700)
    streamed = load_dataset("parquet", folder, stream=True)
    return folder, streamed, dataclasses.replace(streamed, train=streamed.train.materialize())


@pytest.mark.parametrize("method,options", [("cbnn-paper", {}), ("cbnn", {"error_source": "running"}), ("swa", {})])
def test_a_streamed_run_equals_the_same_split_in_memory_and_holds_a_window_of_row_groups(grouped, method, options):
    folder, streamed, twin = grouped
    assert isinstance(twin.train, ImageSplit) and not twin.streamed
    config = TrainConfig(dataset="parquet", data_dir=folder, stream=True, stream_window=2, epochs=4, members=2,
                         method=method, seed=5, **options)
    a, b = train_in_process(config.spec(), streamed), train_in_process(config.spec(), twin)
    equal_states(a, b)
    assert len(a.members) == (1 if method == "swa" else 2)
    groups = sum(1 for c in streamed.train.chunks() if len(c))
    # a batch that straddles two windows needs both; the last one may also need the first row groups,
    # whose samples pad the epoch to the common length; and one row group is read ahead
    assert 2 <= a.peak_chunks_held <= 3 * 2 + 1 < groups


def test_a_streamed_run_resumes_bit_identically(grouped, tmp_path):
    folder, streamed, _ = grouped
    config = TrainConfig(dataset="parquet", data_dir=folder, stream=True, epochs=4, members=2, seed=2)
    reference = train_in_process(config.spec(), streamed)
    crash_after_round(config, streamed, str(tmp_path), 1)
    resumed = train_in_process(config.spec(), streamed, checkpoint_dir=str(tmp_path))
    assert resumed.resumed_at_rounds == [1]
    equal_states(resumed, reference)


def write_image_folder(folder, n: int = 450) -> str:
    """train/<class>/NNNN.png for three classes (8x8, every 7th RGB and the rest grey, as real folders mix
    them) and a test/ tree."""
    images, labels = synthetic_images(n + 60, size=8, channels=1, seed=3)
    for i, (im, y) in enumerate(zip(images, labels)):
        part = "train" if i < n else "test"
        os.makedirs(os.path.join(folder, part, f"c{y}"), exist_ok=True)
        pixels = im.squeeze(-1)
        if i % 7 == 0 and part == "train":  # the first file among them: the folder is RGB
            pixels = np.repeat(im, 3, axis=-1)
        with open(os.path.join(folder, part, f"c{y}", f"{i:04d}.png"), "wb") as f:
            f.write(png_bytes(pixels))
    return str(folder)


def test_an_image_folder_streams_in_mixed_groups_and_trains_as_in_memory(tmp_path, monkeypatch):
    import boostray.core.data.streaming as streaming

    folder = write_image_folder(tmp_path / "folder")
    monkeypatch.setattr(streaming, "FILES_PER_GROUP", 60)
    memory, streamed = load_dataset("imagefolder", folder), load_dataset("imagefolder", folder, stream=True)
    assert streamed.streamed and streamed.input_shape == memory.input_shape == (3, 8, 8)
    assert (streamed.mean, streamed.std) == (memory.mean, memory.std)
    np.testing.assert_array_equal(streamed.train.labels, memory.train.labels)
    np.testing.assert_array_equal(streamed.train.take(np.arange(len(memory.train))), memory.train.images)
    np.testing.assert_array_equal(streamed.val.images, memory.val.images)
    chunks = [c for c in streamed.train.chunks() if len(c)]
    assert len(chunks) == 8  # 450 files in groups of 60, the held-out ones removed
    # the folder is sorted by class; its groups are drawn from a permutation, so each holds every class
    assert all(len(set(streamed.train.labels[c].tolist())) == 3 for c in chunks)
    config = TrainConfig(dataset="imagefolder", data_dir=folder, stream=True, stream_window=2, epochs=2,
                         members=2, seed=1, augment=True)
    twin = dataclasses.replace(streamed, train=streamed.train.materialize())
    equal_states(train_in_process(config.spec(), streamed), train_in_process(config.spec(), twin))


def test_a_ranks_items_are_its_share_of_every_item(grouped, tmp_path, monkeypatch):
    """What a rank builds for its correctness pass from the split it holds (``items(rank, world)``) is
    every world-th item of the whole list, for Parquet row groups and for groups of image files: over
    the ranks, each sample once, with its row and file."""
    import boostray.core.data.streaming as streaming

    monkeypatch.setattr(streaming, "FILES_PER_GROUP", 60)
    folder = load_dataset("imagefolder", write_image_folder(tmp_path / "folder"), stream=True)
    for split in (grouped[1].train, folder.train):
        every = split.items()
        assert len(every) > 3
        for rank in range(3):
            share = split.items(rank, 3)
            assert [item["chunk"] for item in share] == [item["chunk"] for item in every[rank::3]]
            for mine, theirs in zip(share, every[rank::3]):
                assert mine.keys() == theirs.keys()
                for key in mine:
                    np.testing.assert_array_equal(mine[key], theirs[key])
        indices = np.concatenate([item_index(split.source, item) for item in every])
        assert sorted(indices.tolist()) == list(range(len(split)))
        images = np.concatenate([read_item(split.source, item) for item in every])
        np.testing.assert_array_equal(images, split.take(indices))


def test_a_parquet_item_names_its_rows_in_a_bit_a_row(grouped):
    """A row group whose rows are all training rows is named by its group and first index alone; one
    that lost rows to the validation or test split carries a bit per row of the group, not a number a
    sample: the items the driver puts in Ray's object store stay a few bytes a group."""
    split = grouped[1].train
    items = split.items()
    partial = [item for item in items if len(item["mask"])]
    assert partial and all(set(item) == {"chunk", "start", "mask"} for item in items)
    group_rows = np.diff(split.source.group_start)
    for item in partial:
        assert len(item["mask"]) == -(-group_rows[item["chunk"]] // 8)
    for item in items:
        index = item_index(split.source, item)
        np.testing.assert_array_equal(split.rows[index], item_rows(split.source, item))
    total = int(split.source.group_start[-1])  # a split of every row of the files: no group needs a mask
    every_row = StreamedSplit(split.source, np.arange(total, dtype=np.int32), np.zeros(total, np.int32),
                              split.image_shape)
    items = every_row.items()
    assert items and all(item["mask"] == b"" for item in items)
    for read in (item_rows, item_index):
        np.testing.assert_array_equal(np.concatenate([read(split.source, item) for item in items]), np.arange(total))


def test_a_streamed_folder_whose_first_image_is_grey_refuses_a_later_rgb_one(tmp_path):
    folder = tmp_path / "folder"
    for i, channels in enumerate((1, 3)):  # three grey images of class 0, three RGB of class 1
        os.makedirs(folder / "train" / f"c{i}")
        for k in range(3):
            pixels = np.full((8, 8, channels) if channels == 3 else (8, 8), 100, dtype=np.uint8)
            (folder / "train" / f"c{i}" / f"{k}.png").write_bytes(png_bytes(pixels))
    from boostray.errors import DataError

    with pytest.raises(DataError, match="is RGB but the first image of the folder is grey"):
        load_dataset("imagefolder", str(folder), stream=True)


@pytest.mark.parametrize("args,message", [
    (["--dataset", "digits", "--stream"], "--stream reads parquet or imagefolder data, not digits"),
    (["--stream", "--stream-window", "0"], "--stream-window must be >= 1, got 0"),
])
def test_stream_errors_are_one_line(capsys, tmp_path, args, message):
    folder = write_grouped(tmp_path / "data", n=100, rows_per_group=1000)
    out = tmp_path / "out"
    if "--dataset" not in args:
        args = ["--dataset", "parquet", "--data-dir", folder, *args]
    code = main(["train", "--workers", "0", *args, "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not out.exists()


def streamed_config(folder: str, tmp_path, **kw) -> TrainConfig:
    """Two ranks of half a CPU each: the session's 2-CPU Ray keeps one CPU for Ray Data's read tasks."""
    options = dict(dataset="parquet", data_dir=folder, stream=True, epochs=4, members=2, seed=5, workers=2,
                   cpus_per_worker=0.5, output=str(tmp_path), name="streamed")
    return TrainConfig(**{**options, **kw})


@pytest.mark.ray
def test_a_streamed_run_on_two_workers_reads_through_ray_data(ray_cluster, grouped, tmp_path):
    """Ray Data tasks read and augment the row groups; each rank trains its equal share of every epoch,
    and the correctness pass scores every sample once (N bytes a round)."""
    from boostray.distributed.trainer import train

    folder, streamed, _ = grouped
    run_dir, metrics = train(streamed_config(folder, tmp_path))
    n = len(streamed.train)
    assert metrics["stream_reader"] == "ray-data" and metrics["stream"]["groups"] == 18
    assert [e["samples"] for e in metrics["epochs"]] == [n // 2 * 2] * 4  # equal shares: an odd row left out
    assert metrics["error_pass_bytes"] == [n, n]
    weights = pq.read_table(os.path.join(run_dir, "sample_weights.parquet")).to_pandas()
    assert sorted(weights["index"]) == list(range(n))
    assert len(metrics["members"]) == 2 and metrics["test"]["accuracy"] > 0.9


@pytest.mark.ray
def test_the_ranks_passes_and_the_held_out_rows_read_every_sample_once(ray_cluster, grouped):
    """The pieces a rank's correctness pass reads, a pass over every sample (SWA's), and the validation
    and test rows, read by Ray tasks, are the images the split holds, each once, in the items' order,
    whether a task reads one group or several; each task's block holds its items' rows."""
    from boostray.core.data.streaming import item_index, reader_source
    from boostray.distributed.ingest import (RayDataBatches, items_per_pass_task, read_held_out_in_tasks,
                                             read_in_tasks, train_window)

    folder, streamed, twin = grouped
    items, source = streamed.train.items(), reader_source(streamed.train.source)
    assert items_per_pass_task(streamed.train) > 1  # small groups: several to a task
    assert train_window(streamed.train, 1) == items_per_pass_task(streamed.train)  # and to a training task
    larger = items_per_pass_task(streamed.train) + 1
    assert train_window(streamed.train, larger) == larger  # never fewer than --stream-window
    blocks = list(read_in_tasks(items, source, per_task=3))
    assert len(blocks) == math.ceil(len(items) / 3)
    for k, block in enumerate(blocks):
        np.testing.assert_array_equal(block["index"], np.concatenate([item_index(source, it) for it in items[3 * k:3 * k + 3]]))
    seen = []
    for rank in range(2):  # rank 0 reads a group per task, rank 1 three
        batches = RayDataBatches(None, streamed.train, source, batch_size=32, device=torch.device("cpu"), rank=rank,
                                 world=2, per_task=1 + 2 * rank)
        for idx, images in batches.eval_chunks(50):
            assert len(idx) <= 50
            np.testing.assert_array_equal(images, twin.train.images[idx])
            seen.append(idx)
    assert sorted(np.concatenate(seen).tolist()) == list(range(len(streamed.train)))
    np.testing.assert_array_equal(np.concatenate(list(batches.all_chunks(64))), twin.train.images)
    deferred = load_dataset("parquet", folder, stream=True, defer_held_out=True)
    assert isinstance(deferred.val, StreamedSplit) and isinstance(deferred.test, StreamedSplit)
    val, test = read_held_out_in_tasks([deferred.val, deferred.test])
    np.testing.assert_array_equal(val.images, streamed.val.images)
    np.testing.assert_array_equal(test.images, streamed.test.images)


@pytest.mark.ray
def test_every_training_epoch_from_ray_data_reads_every_sample_once_in_an_order_of_its_own(ray_cluster, grouped):
    """The training dataset deals the items into blocks (several to a read task): each execution (an
    epoch) reads every training sample once, with the image the split holds, a window's worth of items
    per task, and in a new order."""
    from boostray.core.data.streaming import reader_source
    from boostray.distributed.ingest import BLOCKS_PER_WINDOW, items_dataset

    _, streamed, twin = grouped
    items, source = streamed.train.items(), reader_source(streamed.train.source)
    window = 2 * BLOCKS_PER_WINDOW
    dataset = items_dataset(items, source, window=window)
    orders = []
    for _ in range(2):
        blocks = list(dataset.iter_batches(batch_size=None, batch_format="numpy"))
        assert len(blocks) == math.ceil(len(items) / window)  # one block a task
        for block in blocks:
            np.testing.assert_array_equal(block["image"], twin.train.images[block["index"]])
            assert "label" not in block  # a rank takes the labels from its split
        orders.append(np.concatenate([block["index"] for block in blocks]))
        assert sorted(orders[-1].tolist()) == list(range(len(streamed.train)))
    assert not np.array_equal(*orders)


@pytest.mark.ray
def test_a_read_task_hands_its_rows_over_in_blocks_of_at_most_the_block_size(ray_cluster, grouped, monkeypatch):
    """What a rank holds and has in flight is a block, not a task's output: a task that reads every item
    (a window of all of them) hands its rows over in several blocks near BLOCK_BYTES, every sample once."""
    from boostray.core.data.streaming import reader_source
    from boostray.distributed import ingest

    _, streamed, twin = grouped
    items, source = streamed.train.items(), reader_source(streamed.train.source)
    task_bytes = twin.train.images.nbytes
    monkeypatch.setattr(ingest, "BLOCK_BYTES", task_bytes // 4)
    dataset = ingest.items_dataset(items, source, window=len(items) * ingest.BLOCKS_PER_WINDOW)
    sizes, seen = [], []
    for bundle in dataset.iter_internal_ref_bundles():
        sizes += [entry.metadata.size_bytes for entry in bundle.blocks]
    for block in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        np.testing.assert_array_equal(block["image"], twin.train.images[block["index"]])
        seen.append(block["index"])
    assert len(sizes) >= 4 and max(sizes) <= 2 * task_bytes // 4, sizes  # one task, several blocks
    assert sorted(np.concatenate(seen).tolist()) == list(range(len(streamed.train)))


def test_a_streamed_split_holds_its_labels_in_a_byte_and_the_weights_file_in_four(grouped, tmp_path):
    """The driver, the object store and every rank hold a streamed split's labels, one per sample: one
    byte for up to 256 classes. The sample-weights file keeps its 4-byte label column."""
    from boostray.core.artifact.run_directory import write_sample_weights
    from boostray.core.data.streaming import compact_labels
    from boostray.core.method.boost_state import BoostState

    _, streamed, twin = grouped
    assert streamed.train.labels.dtype == np.uint8
    np.testing.assert_array_equal(streamed.train.labels, twin.train.labels)
    assert twin.train.labels.dtype == np.int64  # the in-memory twin, as a loss wants them
    assert compact_labels(np.array([0, 300])).dtype == np.int16
    assert compact_labels(np.array([0, 70_000])).dtype == np.int32
    write_sample_weights(str(tmp_path / "w.parquet"), BoostState.initial(len(streamed.train)), streamed)
    column = pq.read_table(tmp_path / "w.parquet", columns=["label"]).column("label")
    assert column.type == pa.int32() and column.to_pylist() == streamed.train.labels.tolist()


@pytest.mark.ray
def test_a_worker_lost_during_a_streamed_round_still_gives_every_member(ray_cluster, tmp_path):
    """A rank killed while round 2 reads its Ray Data shard: Ray Train restarts the group from round 1's
    checkpoint, the dataset is split again, and the run ends with every member."""
    from test_train_ray import train_losing_a_worker

    folder = write_grouped(tmp_path / "data", n=2000, rows_per_group=100)
    config = streamed_config(folder, tmp_path, epochs=12, members=3, max_failures=1, name="lost")
    _, (_, metrics) = train_losing_a_worker(config, ray_cluster, "round_0001", "round_0002")
    assert len(metrics["rank_nodes_history"]) == 2  # a second worker group took over
    assert metrics["resumed_at_rounds"] and len(metrics["error_pass_bytes"]) == 3
    assert len(metrics["members"]) == 3 and metrics["stream_reader"] == "ray-data"
