"""--stream against the in-memory path on the same data: load time, train_seconds, test accuracy.

Fashion-MNIST's 60,000 training images are written once to Parquet (row groups of 1,000, under $TMPDIR)
with its 10,000 test images; each seed trains cbnn for 2 epochs and 2 rounds in this process (one torch
thread, no Ray), from memory and then streamed. About 10 minutes here.

    python bench/bench_stream.py --json-out bench/results/stream.json
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from boostray.config import TrainConfig
from boostray.core.data.datasets import load_dataset
from boostray.core.method.engine import train_in_process
from report_json import emit  # bench/, beside this script

FOLDER = os.path.join(os.environ.get("TMPDIR", "/tmp"), "boostray-fmnist-parquet")


def write_parquet(folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    fm = load_dataset("fashion-mnist", val_fraction=0.0001)
    for name, split in (("train", fm.train), ("test", fm.test)):
        flat = split.images.reshape(len(split), -1)
        offsets = pa.array(np.arange(0, flat.size + 1, flat.shape[1], dtype=np.int32))
        column = pa.ListArray.from_arrays(offsets, pa.array(flat.reshape(-1)))
        pq.write_table(pa.table({"image": column, "label": pa.array(split.labels)}), os.path.join(folder, f"{name}.parquet"),
                       row_group_size=1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json-out", help="also write the JSON to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not os.path.exists(os.path.join(FOLDER, "train.parquet")):
        write_parquet(FOLDER)
    out: dict = {}
    for seed in (0, 1):
        for stream in (False, True):
            started = time.perf_counter()
            data = load_dataset("parquet", FOLDER, stream=stream)
            load = time.perf_counter() - started
            config = TrainConfig(dataset="parquet", data_dir=FOLDER, stream=stream, epochs=2, members=2, workers=0, seed=seed)
            state = train_in_process(config.spec(), data)
            out.setdefault("stream" if stream else "memory", []).append({
                "load_s": round(load, 2), "train_seconds": round(state.train_seconds, 2),
                "test_acc": state.members[-1].test_accuracy, "peak_groups": state.peak_chunks_held})
            out["samples_train"] = len(data.train)
    emit(out, args.json_out)


if __name__ == "__main__":
    main()
