"""How a run's memory and traffic grow with the data: synthetic 16x16 grey Parquet (256 bytes an image),
`boostray train --workers 2 --epochs 2 --members 2` (--epochs to change), streamed and in memory, at N
training images.

Memory is the proportional set size (PSS, from /proc/PID/smaps_rollup) sampled every 0.2 s over the whole
process tree of the command: the driver, Ray's daemons (the object store's pages are mapped there and in
every process that reads them), the Train workers. Reported: the tree's peak (and the PSS of each kind
of process at that moment, and how many of each), the tree's and the driver's peaks without file-backed
pages (whose shares move as other processes map the same libraries) and when the driver's came, each
worker's peak, the bytes each rank all-reduced for the error pass per round (metrics.json), training
images per second (N x epochs / train_seconds).
With --repeats, the growth per image is taken between the medians of the runs.

    python bench/bench_scale.py --sizes 50000,400000 --repeats 3 --json-out bench/results/scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from report_json import emit  # bench/, beside this script

BIN = os.path.join(os.path.dirname(sys.executable), "boostray")
SIDE = 16


def write_data(folder: str, n_train: int, n_test: int = 2_000, seed: int = 0) -> None:
    """Class c (of 4) is a bright band at rows 4c..4c+3 over uniform noise: learnable, 256 bytes a row."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in (("train", n_train), ("test", n_test)):
        writer = None
        for start in range(0, n, 50_000):
            m = min(50_000, n - start)
            labels = rng.integers(0, 4, m)
            images = rng.integers(0, 100, (m, SIDE, SIDE), dtype=np.uint8)
            for c in range(4):
                images[labels == c, 4 * c:4 * c + 4] = 220
            offsets = pa.array(np.arange(0, m * SIDE * SIDE + 1, SIDE * SIDE, dtype=np.int32))
            column = pa.ListArray.from_arrays(offsets, pa.array(images.reshape(-1)))
            table = pa.table({"image": column, "label": pa.array(labels)})
            writer = writer or pq.ParquetWriter(os.path.join(folder, f"{name}.parquet"), table.schema)
            writer.write_table(table, row_group_size=1_000)
        writer.close()


def pss_rows(pid: int) -> dict[str, int]:
    """The Pss lines of a process's smaps_rollup (KiB): Pss, Pss_Anon, Pss_File, Pss_Shmem; empty when it
    has gone. A process's private memory here is Pss_Anon + Pss_Shmem (the object store's pages it maps):
    its file-backed PSS changes as other processes map and unmap the same libraries (a driver's doubles
    when Ray's workers exit, and any Python process beside the benchmark takes a share of torch's), which
    has nothing to do with its data."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return {line.split(":")[0]: int(line.split()[1]) for line in f if line.startswith("Pss")}
    except (OSError, ValueError):
        return {}


def process_kind(cmd: str, root: bool) -> str:
    """What a process of the tree is, for the breakdown: the driver, a Train worker, a Ray actor or task
    by its class or function (``ray::SplitCoordinator``), a pooled idle worker, or a daemon by name."""
    if root:
        return "driver"
    if "RayTrainWorker" in cmd:
        return "train worker"
    if cmd.startswith("ray::"):
        return cmd.split()[0].split(".")[0]
    for daemon in ("raylet", "gcs_server", "dashboard", "log_monitor", "runtime_env", "monitor.py"):
        if daemon in cmd:
            return daemon
    return "other"


def descendants(root: int) -> dict[int, str]:
    """pid -> command line of ``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                names[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        out[pid] = names.get(pid, "")
        todo += children.get(pid, [])
    return out


class Sampler(threading.Thread):
    """Samples the tree every 0.2 s and keeps the peaks: the tree's PSS and its private part (with the
    PSS of each kind of process at the moment of the PSS peak), the driver's, each Train worker's."""

    def __init__(self, root: int, timeline: str | None = None) -> None:
        super().__init__(daemon=True)
        self.root, self.stop, self.timeline = root, threading.Event(), timeline
        self.tree = self.tree_private = self.driver = self.driver_private = 0
        self.started, self.driver_private_at = time.perf_counter(), 0.0
        self.at_peak: dict[str, int] = {}
        self.count_at_peak: dict[str, int] = {}
        self.workers: dict[int, int] = {}

    def run(self) -> None:
        while not self.stop.is_set():
            tree = private = 0
            kinds: dict[str, int] = {}
            counts: dict[str, int] = {}
            owns: dict[str, list[int]] = {}
            for pid, cmd in descendants(self.root).items():
                rows = pss_rows(pid)  # read once: smaps_rollup walks the page tables, costly for big processes
                pss, own = rows.get("Pss", 0), rows.get("Pss_Anon", 0) + rows.get("Pss_Shmem", 0)
                tree, private = tree + pss, private + own
                kind = process_kind(cmd, pid == self.root)
                if self.timeline:
                    owns[f"{kind}:{pid}"] = [rows.get("Pss_Anon", 0), rows.get("Pss_Shmem", 0)]
                kinds[kind] = kinds.get(kind, 0) + pss
                counts[kind] = counts.get(kind, 0) + 1
                if kind == "train worker":
                    self.workers[pid] = max(self.workers.get(pid, 0), pss)
                if pid == self.root:
                    self.driver = max(self.driver, pss)
                    if own > self.driver_private:
                        self.driver_private, self.driver_private_at = own, time.perf_counter() - self.started
            if tree > self.tree:
                self.tree, self.at_peak, self.count_at_peak = tree, kinds, counts
            self.tree_private = max(self.tree_private, private)
            if self.timeline:
                with open(self.timeline, "a") as f:
                    f.write(json.dumps({"t": round(time.perf_counter() - self.started, 1), "tree": tree, "private": owns}) + "\n")
            self.stop.wait(0.2)


def one_run(data: str, out: str, name: str, stream: bool, epochs: int = 2, timeline: str | None = None) -> dict:
    args = [BIN, "train", "--dataset", "parquet", "--data-dir", data, "--workers", "2", "--epochs", str(epochs),
            "--members", "2", "--method", "cbnn", "--output", out, "--name", name, *(["--stream"] if stream else [])]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    sampler = Sampler(proc.pid, timeline and f"{timeline}.{name}.jsonl")
    sampler.start()
    log = proc.communicate()[0]
    sampler.stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{log[-3000:]}")
    metrics = json.load(open(os.path.join(out, name, "metrics.json")))
    n = len(pq.read_table(os.path.join(out, name, "sample_weights.parquet"), columns=["index"]))
    return {"train_images": n, "wall_s": round(time.perf_counter() - started, 1),
            "train_seconds": round(metrics["train_seconds"], 1),
            "images_per_s": round(epochs * n / metrics["train_seconds"]),
            "peak_tree_mb": round(sampler.tree / 1024, 1), "peak_tree_private_mb": round(sampler.tree_private / 1024, 1),
            "peak_driver_mb": round(sampler.driver / 1024, 1),
            "peak_driver_private_mb": round(sampler.driver_private / 1024, 1),
            "driver_private_peak_at_s": round(sampler.driver_private_at, 1),
            "peak_worker_mb": sorted(round(v / 1024, 1) for v in sampler.workers.values()),
            "error_pass_bytes_per_round": metrics.get("error_pass_bytes"),
            "test_accuracy": metrics["test"]["accuracy"],
            "tree_at_peak_mb": {k: round(v / 1024, 1) for k, v in sorted(sampler.at_peak.items(), key=lambda kv: -kv[1])},
            "processes_at_peak": {k: sampler.count_at_peak[k] for k in sorted(sampler.at_peak, key=lambda k: -sampler.at_peak[k])}}


GROWTH_KEYS = ("peak_tree_mb", "peak_tree_private_mb", "peak_driver_mb", "peak_driver_private_mb")


def median_of(runs: list[dict], mode: str, n: int, key: str) -> float:
    return float(np.median([r[key] for r in runs if r["mode"] == mode and r["n"] == n]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="training images, comma-separated")
    parser.add_argument("--modes", default="stream,memory", help="stream and/or memory")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per size and mode; the growth per image is taken between medians")
    parser.add_argument("--epochs", type=int, default=2,
                        help="epochs a run (2 members): more epochs at one size separate what grows with the "
                             "run's length from what grows with the data")
    parser.add_argument("--json-out", help="also write the JSON to this file")
    parser.add_argument("--timeline", help="also write every sample, the PSS less file-backed pages of each process "
                                           "as [anonymous, shared] (KiB), to TIMELINE.<run>.jsonl: where and when memory grows")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="boostray-scale-")
    out: dict = {"image_bytes": SIDE * SIDE, "epochs": args.epochs, "runs": []}
    try:
        for n in (int(v) for v in args.sizes.split(",")):
            data = os.path.join(root, f"data-{n}")
            write_data(data, n)
            for mode in args.modes.split(","):
                for repeat in range(args.repeats):
                    result = one_run(data, os.path.join(root, "runs"), f"{mode}-{n}-{repeat}", mode == "stream", args.epochs,
                                    args.timeline)
                    out["runs"].append({"mode": mode, "n": n, "repeat": repeat, **result})
                    print(json.dumps(out["runs"][-1]), file=sys.stderr, flush=True)
        sizes = sorted({r["n"] for r in out["runs"]})
        if len(sizes) > 1:  # growth per added image between the smallest and the largest N
            lo, hi = sizes[0], sizes[-1]
            for mode in sorted({r["mode"] for r in out["runs"]}):
                out[f"{mode}_bytes_per_image"] = {  # per row added to the Parquet file (90 % of them train)
                    key[5:-3]: round((median_of(out["runs"], mode, hi, key) - median_of(out["runs"], mode, lo, key))
                                     * 2**20 / (hi - lo), 1) for key in GROWTH_KEYS}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    emit(out, args.json_out)


if __name__ == "__main__":
    main()
