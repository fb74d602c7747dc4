"""The driver's private memory (anonymous, and the object store's pages it maps; MB) after each step it
takes before a streamed run's training starts, on bench_scale's synthetic Parquet of N rows: imports,
loading the split, starting Ray, the held-out read, putting the data in the object store (the driver then
holds the store's copy), the training items' blocks, and giving back the heap. Run at two sizes, the
difference is what each step holds per row.

    python bench/bench_driver_phases.py --rows 50000
    python bench/bench_driver_phases.py --rows 400000
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

from bench_scale import pss_rows, write_data  # bench/, beside this script
from report_json import emit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000, help="training rows written")
    parser.add_argument("--json-out", help="also write the JSON to this file")
    args = parser.parse_args()
    import boostray  # noqa: F401 - before Ray: a loopback-only local instance
    import ray.data  # noqa: F401 - imported before the first reading, as a run has it by then
    import ray.train.torch  # noqa: F401

    from boostray.config import TrainConfig
    from boostray.core.data.datasets import load_training_data, read_deferred_held_out, release_unused_memory
    from boostray.distributed.ingest import read_held_out_in_tasks
    from boostray.distributed.runtime import ray_session
    from boostray.distributed.trainer import held_in_object_store, streamed_input

    phases: dict[str, dict[str, float]] = {}

    def mark(name: str) -> None:
        rows = pss_rows(os.getpid())
        phases[name] = {"anon_mb": round(rows.get("Pss_Anon", 0) / 1024, 1), "shm_mb": round(rows.get("Pss_Shmem", 0) / 1024, 1)}

    folder = tempfile.mkdtemp(prefix="boostray-driver-")
    try:
        write_data(folder, args.rows)
        release_unused_memory()
        mark("imports")
        config = TrainConfig(dataset="parquet", data_dir=folder, workers=2, stream=True, epochs=2, members=2,
                             name="phases", output=folder).resolved()
        data = load_training_data(config, defer_held_out=True)
        mark("load")
        with ray_session(num_cpus=3, dashboard=False):
            mark("ray")
            data = read_deferred_held_out(data, read_held_out_in_tasks)
            mark("held_out")
            data, ref = held_in_object_store(data)  # noqa: F841 - held, as fit holds them
            release_unused_memory()
            mark("put")
            datasets, _ = streamed_input(config, data)
            mark("items")
            release_unused_memory()
            mark("released")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    emit({"rows": args.rows, "phases": phases}, args.json_out)


if __name__ == "__main__":
    main()
