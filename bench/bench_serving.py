"""Serving benchmarks; prints one JSON object. Not a test: figures go into the README.

  http     : requests/s and p50/p99 latency at 1, 8 and 32 concurrent clients, batching on and off
  forward  : the all-members forward per sample, stacked (vmap) vs loop, vs M x one member
  cascade  : average members used with --cascade on the test split
  predict  : batch predict (Ray Data actor pool) images/s

Usage: python bench/bench_serving.py [--run-dir RUN_DIR] [--requests N] [--json-out F]
(without --run-dir it first trains the README's main job in-process on digits)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from report_json import emit  # noqa: E402  (bench/, beside this script)

from boostray.distributed.runtime import loopback_environment  # noqa: E402

loopback_environment()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_forward(run_dir: str, images: np.ndarray, repeats: int = 5) -> dict:
    import torch

    from boostray.core.ensemble import load_ensemble
    from boostray.core.inference import MemberStack

    ens = load_ensemble(run_dir)
    out = {"members": len(ens)}
    for batch in (1, 32, 256):
        x = np.resize(images, (batch, *images.shape[1:])).astype(np.float32)
        row = {}
        for mode in ("stacked", "loop"):
            stack = MemberStack(ens, mode)
            stack.member_proba(x)  # warm-up
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                stack.member_proba(x)
                times.append(time.perf_counter() - t)
            row[f"{mode}_us_per_sample"] = statistics.median(times) / batch * 1e6
        stack = MemberStack(ens, "loop")
        xn = stack.normalize(x)
        with torch.no_grad():
            ens.members[0](xn)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                ens.members[0](xn)
                times.append(time.perf_counter() - t)
        row["one_member_us_per_sample"] = statistics.median(times) / batch * 1e6
        row["m_x_one_member_us_per_sample"] = row["one_member_us_per_sample"] * len(ens)
        out[f"batch_{batch}"] = row
    return out


def bench_cascade(run_dir: str, images: np.ndarray, labels: np.ndarray) -> dict:
    from boostray.core.ensemble import load_ensemble
    from boostray.core.inference import MemberStack, cascade_predict

    ens = load_ensemble(run_dir)
    stack = MemberStack(ens)
    result = cascade_predict(stack, images.astype(np.float32))
    full = stack.predict_proba(images.astype(np.float32))
    return {
        "samples": len(images),
        "members": len(ens),
        "average_members_used": float(result.members_used.mean()),
        "labels_equal_full": bool((result.proba.argmax(1) == full.argmax(1)).all()),
        "accuracy": float((full.argmax(1) == labels).mean()),
    }


def _server_timing(header: str | None) -> dict[str, float]:
    """``parse;dur=0.2, queue;dur=0.1, ...`` -> {"parse": 0.2, ...} (ms)."""
    out = {}
    for part in (header or "").split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur)
    return out


def _load(url: str, payloads: list[bytes], clients: int, per_client: int) -> dict:
    latencies: list[float] = []
    timings: list[dict[str, float]] = []
    errors = [0]
    lock = threading.Lock()

    def client(c: int) -> None:
        for i in range(per_client):
            body = payloads[(c * per_client + i) % len(payloads)]
            req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            t = time.perf_counter()
            timing = {}
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    resp.read()
                    timing = _server_timing(resp.headers.get("Server-Timing"))
                ok = resp.status == 200
            except Exception:  # counted, reported
                ok = False
            dt = time.perf_counter() - t
            with lock:
                latencies.append(dt)
                timings.append(timing)
                errors[0] += not ok

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    out = {"clients": clients, "requests": len(latencies), "errors": errors[0], "requests_per_s": len(latencies) / wall,
           "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}
    parts = ("parse", "queue", "forward", "encode")
    if timings and all(all(p in t for p in parts) for t in timings):  # median of each part of the replica's time
        replica = {p: float(np.median([t[p] for t in timings])) for p in parts}
        replica["outside_replica"] = out["p50_ms"] - sum(replica.values())  # HTTP proxy, Ray RPC, client
        out["p50_breakdown_ms"] = replica
    return out


def bench_http(run_dir: str, images: np.ndarray, requests_per_level: int) -> dict:
    from ray import serve

    from boostray.distributed.runtime import ray_session
    from boostray.apps.serving import build_app

    payloads = [json.dumps({"instances": images[i:i + 1].tolist()}).encode() for i in range(min(len(images), 64))]
    out = {"instances_per_request": 1, "replicas": 1}
    with ray_session():
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for label, batch, wait in (("batching_on", 32, 0.0), ("batching_on_wait_5ms", 32, 5.0), ("batching_off", 1, 0.0)):
            serve.run(build_app({"run_dir": run_dir, "max_batch_size": batch, "batch_wait_ms": wait}),
                      name="bench", route_prefix="/")
            name = json.load(open(os.path.join(run_dir, "ensemble", "manifest.json")))["name"]
            url = f"http://127.0.0.1:{port}/v1/models/{name}:predict"
            _load(url, payloads, 4, 5)  # warm-up
            out[label] = [_load(url, payloads, c, max(1, requests_per_level // c)) for c in (1, 8, 32)]
            serve.delete("bench")
        serve.shutdown()
    return out


def bench_predict(run_dir: str, images: np.ndarray, rows: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from boostray.apps.batch_predict import predict_parquet
    from boostray.distributed.runtime import ray_session

    tmp = tempfile.mkdtemp(prefix="boostray-bench-predict-")
    flat = np.resize(images, (rows, *images.shape[1:])).reshape(rows, -1)
    pq.write_table(pa.table({"id": np.arange(rows), "image": pa.array(list(flat.astype(np.float32)))}), os.path.join(tmp, "in.parquet"))
    with ray_session():
        start = time.perf_counter()
        n = predict_parquet(run_dir, os.path.join(tmp, "in.parquet"), os.path.join(tmp, "out.parquet"), batch_size=1024)
        wall = time.perf_counter() - start
    return {"rows": n, "actors": 1, "seconds": wall, "images_per_s": n / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir")
    parser.add_argument("--requests", type=int, default=320, help="requests per concurrency level")
    parser.add_argument("--predict-rows", type=int, default=50000)
    parser.add_argument("--json-out")
    args = parser.parse_args()
    from boostray.core.data import load_dataset

    run_dir = args.run_dir
    if run_dir is None:
        from boostray.config import TrainConfig
        from boostray.distributed.trainer import train

        run_dir, _ = train(TrainConfig(workers=0, output=tempfile.mkdtemp(prefix="boostray-bench-"), name="served"))
    test = load_dataset("digits").test
    report = {
        "run_dir": run_dir,
        "forward": bench_forward(run_dir, test.images),
        "cascade": bench_cascade(run_dir, test.images, test.labels),
        "http": bench_http(run_dir, test.images, args.requests),
        "batch_predict": bench_predict(run_dir, test.images, args.predict_rows),
    }
    emit(report, args.json_out)


if __name__ == "__main__":
    main()
