"""What opening a streamed Parquet split leaves in a process under each Arrow allocator: the labels and
metadata of N rows read through ``ParquetSource.open`` (as a streamed driver does), then the source
dropped and ``release_unused_memory`` called. Reported per allocator (each in a fresh process, since
Arrow reads ``ARROW_DEFAULT_MEMORY_POOL`` once): the process's anonymous PSS before and after (MB), the
anonymous pages of mimalloc's 1 GiB arena (MB), and Arrow's pool figures (MB in use, MB at most).

    python bench/bench_arrow_pool.py --rows 400000 --json-out bench/results/arrow-pool.json
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
import gc, json, sys
import pyarrow as pa
from boostray.core.data.datasets import release_unused_memory
from boostray.core.data.streaming import ParquetSource

def anon_mb():
    with open("/proc/self/smaps_rollup") as f:
        return {l.split(":")[0]: int(l.split()[1]) for l in f if l.startswith("Pss")}["Pss_Anon"] / 1024

def arena_mb():  # mimalloc reserves its arena as one 1 GiB private anonymous mapping
    total, size, anonymous = 0, 0, False
    for line in open("/proc/self/smaps"):
        parts = line.split()
        if "-" in parts[0] and not parts[0].endswith(":"):
            anonymous, size = parts[1] == "rw-p" and len(parts) == 5, 0
        elif parts[0] == "Size:":
            size = int(parts[1])
        elif parts[0] == "Anonymous:" and anonymous and size == 1 << 20:
            total += int(parts[1])
    return total / 1024

before = anon_mb()
source = ParquetSource.open([sys.argv[1]], "train")
del source
gc.collect()
release_unused_memory()
pool = pa.default_memory_pool()
print(json.dumps({"backend": pool.backend_name, "anon_before_mb": round(before, 1), "anon_after_mb": round(anon_mb(), 1),
                  "mimalloc_arena_mb": round(arena_mb(), 1), "arrow_in_use_mb": round(pool.bytes_allocated() / 2**20, 1),
                  "arrow_max_mb": round(pool.max_memory() / 2**20, 1)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000, help="training rows of the synthetic Parquet file")
    parser.add_argument("--json-out", help="also write the report to this file")
    args = parser.parse_args()
    from bench_scale import write_data

    with tempfile.TemporaryDirectory() as folder:
        write_data(folder, args.rows)
        runs = []
        for backend in ("mimalloc", "system"):
            env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": backend}
            out = subprocess.run([sys.executable, "-c", CHILD, os.path.join(folder, "train.parquet")], env=env,
                                 capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    emit({"rows": args.rows, "runs": runs}, args.json_out)


if __name__ == "__main__":
    main()
