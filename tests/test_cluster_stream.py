"""--stream on a real cluster whose nodes' object stores are smaller than the training data: a
`ray job submit` of pipelines/train.py trains two ranks (one per node) from a Parquet set of about
90 MB, more than the 75 MiB object store each node is given (Ray's minimum). Ray Data's read tasks run
wherever a CPU is free (a third node is there for them) and stream the row groups through the stores."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster import running_cluster
from helpers import synthetic_images
from test_cluster import submit

pytestmark = [pytest.mark.ray, pytest.mark.cluster]
STORE_BYTES = 75 << 20  # Ray's smallest object store
ROWS_PER_GROUP = 1000


def write_large(folder: str, n_train: int = 30_000, n_test: int = 600) -> int:
    """train.parquet of n_train 32x32 RGB images (3 KB each, written uncompressed), test.parquet.
    Returns the train file's size in bytes."""
    os.makedirs(folder, exist_ok=True)
    images, labels = synthetic_images(n_train + n_test, classes=3, size=32, channels=3, seed=1)
    noise = np.random.default_rng(2).integers(0, 60, images.shape, dtype=np.uint8)
    images = np.maximum(images, noise)  # the bands stay learnable; the rest is incompressible noise
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    for name, rows in (("train", slice(0, n_train)), ("test", slice(n_train, None))):
        part = flat[rows]
        offsets = pa.array(np.arange(0, part.size + 1, part.shape[1], dtype=np.int32))
        column = pa.ListArray.from_arrays(offsets, pa.array(part.reshape(-1)))
        table = pa.table({"image": column, "label": pa.array(labels[rows].astype(np.int64))})
        pq.write_table(table, os.path.join(folder, f"{name}.parquet"), row_group_size=ROWS_PER_GROUP,
                       compression="none", use_dictionary=False)
    return os.path.getsize(os.path.join(folder, "train.parquet"))


@pytest.fixture(scope="module")
def small_store_cluster(tmp_path_factory):
    with running_cluster(str(tmp_path_factory.mktemp("small-store")), ["node-a", "node-b", "reader"],
                         object_store_bytes=STORE_BYTES) as c:
        yield c


def test_a_job_streams_training_data_larger_than_the_object_store(small_store_cluster, tmp_path):
    cluster = small_store_cluster
    stores = [n["resources_total"]["object_store_memory"] for n in cluster.alive_nodes()]
    assert len(stores) == 4 and max(stores) <= STORE_BYTES
    data = str(tmp_path / "data")
    size = write_large(data)
    assert size > STORE_BYTES
    output = str(tmp_path / "runs")
    done = submit(cluster, "train.py", "--dataset", "parquet", "--data-dir", data, "--stream", "--workers", "2",
                  "--cpus-per-worker", "1", "--epochs", "2", "--members", "2", "--name", "large",
                  "--output", output)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "epoch 2/2 round 2/2" in done.stdout
    with open(os.path.join(output, "large", "metrics.json")) as f:
        metrics = json.load(f)
    stream = metrics["stream"]
    assert stream["train_bytes"] > STORE_BYTES and stream["groups"] == 30 and metrics["stream_reader"] == "ray-data"
    n_train = 30_000 - 3_000  # 10 % held out for validation
    assert [e["samples"] for e in metrics["epochs"]] == [n_train] * 2
    assert len(set(metrics["rank_nodes"])) == 2 and len(metrics["members"]) == 2
    assert metrics["test"]["accuracy"] > 0.6  # three classes: chance is 1/3
