"""What a streamed rank's pass over its share leaves in the rank's memory, read the way boostray reads it
(plain Ray tasks, ``ingest.read_in_tasks``) and the way it read it before (a Ray Data execution per
pass, whose streaming executor runs a scheduling thread in the reading process). One rank's share (rank
0 of 2) of N synthetic 16x16 Parquet rows, read in pieces of 256 rows with a pause after each piece
(``--pause``, standing in for scoring), outside Ray Train, on a local Ray; each way in a fresh process.
Reported per way: the process's anonymous PSS (MB) before the first pass and after each pass (the heap
trimmed), the growth over the first pass and over each later one, and each pass's seconds.

    python bench/bench_pass_memory.py --rows 400000 --passes 3 --json-out bench/results/pass-memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from report_json import emit  # bench/, beside this script

CHILD = """
import json, os, sys, time
import numpy as np
import torch
from boostray.core.data.datasets import release_unused_memory
from boostray.core.data.streaming import open_parquet_train, reader_source
from boostray.distributed import ingest
from boostray.distributed.runtime import ray_session

path, way, passes, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])

def anon_mb():
    with open("/proc/self/smaps_rollup") as f:
        return {l.split(":")[0]: int(l.split()[1]) for l in f if l.startswith("Pss")}["Pss_Anon"] / 1024

def ray_data_pieces(items, source, per_task, store_bytes, max_rows):  # the pass as it was read before
    import ray
    from ray.data import ExecutionResources
    from ray.data.block import BlockAccessor

    dataset = ingest.items_dataset(items, source, per_task=per_task)
    dataset.context.execution_options.resource_limits = ExecutionResources(object_store_memory=store_bytes)
    for bundle in dataset.iter_internal_ref_bundles():
        for ref in bundle.block_refs:
            block = BlockAccessor.for_block(ray.get(ref)).to_numpy()
            for start in range(0, len(block["index"]), max_rows):
                yield block["index"][start:start + max_rows]
            del block
            release_unused_memory()

torch.set_num_threads(1)
with ray_session(num_cpus=3, dashboard=False):
    split, _ = open_parquet_train([path])
    source, per_task = reader_source(split.source), ingest.items_per_pass_task(split)
    store_bytes = max(ingest.MIN_STORE_BYTES, ingest.TASKS_AHEAD * per_task * ingest.group_bytes(split))
    batches = ingest.RayDataBatches(None, split, source, batch_size=256, device=torch.device("cpu"), rank=0, world=2,
                                    per_task=per_task)
    release_unused_memory()
    after, seconds = [anon_mb()], []
    for _ in range(passes):
        start, rows = time.perf_counter(), 0
        pieces = ((idx for idx, _ in batches.eval_chunks(256)) if way == "tasks"
                  else ray_data_pieces(split.items(0, 2), source, per_task, store_bytes, 256))
        for idx in pieces:
            rows += len(idx)
            time.sleep(pause)
        release_unused_memory()
        after.append(anon_mb())
        seconds.append(round(time.perf_counter() - start, 1))
    growth = np.diff(after)
    print(json.dumps({"way": way, "rows_a_pass": rows, "anon_mb": [round(a, 1) for a in after],
                      "first_pass_mb": round(float(growth[0]), 2), "later_passes_mb": [round(float(g), 2) for g in growth[1:]],
                      "pass_seconds": seconds}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000, help="training rows of the synthetic Parquet file")
    parser.add_argument("--passes", type=int, default=4, help="passes over the rank's share, each way")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds of pause after each piece of 256 rows")
    parser.add_argument("--json-out", help="also write the report to this file")
    args = parser.parse_args()
    from bench_scale import write_data

    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    env.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")  # as the boostray command and its local Ray have it
    with tempfile.TemporaryDirectory() as folder:
        write_data(folder, args.rows)
        runs = []
        for way in ("tasks", "ray-data"):
            out = subprocess.run([sys.executable, "-c", CHILD, os.path.join(folder, "train.parquet"), way,
                                  str(args.passes), str(args.pause)], env=env, capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    emit({"rows": args.rows, "pause_s": args.pause, "runs": runs}, args.json_out)


if __name__ == "__main__":
    main()
