"""Serving benchmarks; prints one JSON object. Not a test: figures go into the README.

  http     : requests/s and p50/p99 latency at 1, 8 and 32 concurrent clients, batching on and off,
             through Serve's proxy and with direct ingress (each mode in a fresh Ray: the flag is read
             when Ray starts); each client keeps one HTTP connection open, as HTTP clients do
  forward  : the all-members forward per sample, stacked (vmap) vs loop, vs M x one member
  cascade  : average members used with --cascade on the test split
  predict  : batch predict (Ray Data actor pool) images/s

Usage: python bench/bench_serving.py [--run-dir RUN_DIR] [--requests N] [--ingress proxy,direct] [--json-out F]
(without --run-dir it first trains the README's main job in-process on digits)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from report_json import emit  # noqa: E402  (bench/, beside this script)



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_forward(run_dir: str, images: np.ndarray, repeats: int = 5) -> dict:
    import torch

    from boostray.core.artifact.ensemble import load_ensemble
    from boostray.core.artifact.inference import MemberStack

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
    from boostray.core.artifact.ensemble import load_ensemble
    from boostray.core.artifact.inference import MemberStack, cascade_predict

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


def _load(port: int, path: str, payloads: list[bytes], clients: int, per_client: int) -> dict:
    latencies: list[float] = []
    timings: list[dict[str, float]] = []
    errors = [0]
    lock = threading.Lock()

    def client(c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)  # kept open, as clients do
        for i in range(per_client):
            body = payloads[(c * per_client + i) % len(payloads)]
            t = time.perf_counter()
            timing = {}
            try:
                conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                timing = _server_timing(resp.headers.get("Server-Timing"))
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):  # counted, reported; the next request reconnects
                conn.close()
                ok = False
            dt = time.perf_counter() - t
            with lock:
                latencies.append(dt)
                timings.append(timing)
                errors[0] += not ok
        conn.close()

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


def bench_http(run_dir: str, images: np.ndarray, requests_per_level: int, ingress: str) -> dict:
    """One ingress mode, in this process's own fresh Ray."""
    from boostray.distributed.runtime import direct_ingress_environment

    port = _free_port()
    ports = direct_ingress_environment(port + 1) if ingress == "direct" else None
    from ray import serve

    from boostray.apps.serving import build_app
    from boostray.distributed.runtime import ray_session, replica_ports

    payloads = [json.dumps({"instances": images[i:i + 1].tolist()}).encode() for i in range(min(len(images), 64))]
    name = json.load(open(os.path.join(run_dir, "ensemble", "manifest.json")))["name"]
    path = f"/v1/models/{name}:predict"
    out: dict = {"ingress": ingress, "instances_per_request": 1, "replicas": 1}
    with ray_session():
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        # the default (a batch waits up to 5 ms only while other requests are in the replica), no wait, no batching
        for label, batch, wait in (("batching_on", 32, 5.0), ("batching_on_no_wait", 32, 0.0), ("batching_off", 1, 0.0)):
            serve.run(build_app({"run_dir": run_dir, "max_batch_size": batch, "batch_wait_ms": wait}),
                      name="bench", route_prefix="/")
            target = port if ports is None else replica_ports(ports)[0]  # a new replica takes a new port
            _load(target, path, payloads, 4, 5)  # warm-up
            out[label] = [_load(target, path, payloads, c, max(1, requests_per_level // c)) for c in (1, 8, 32)]
            serve.delete("bench")
        serve.shutdown()
    return out


def bench_http_modes(run_dir: str, requests_per_level: int, modes: list[str]) -> dict:
    """Each ingress mode in a child process (Serve reads the flag when Ray and the controller start)."""
    out = {}
    for mode in modes:
        with tempfile.NamedTemporaryFile(suffix=".json") as result:
            subprocess.run([sys.executable, __file__, "--run-dir", run_dir, "--requests", str(requests_per_level),
                            "--http-only", mode, "--json-out", result.name], check=True)
            out[mode] = json.load(open(result.name))
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
    parser.add_argument("--ingress", default="proxy,direct", help="ingress modes to measure, comma-separated")
    parser.add_argument("--http-only", choices=("proxy", "direct"), help=argparse.SUPPRESS)  # one mode, as a child
    parser.add_argument("--json-out")
    args = parser.parse_args()
    from boostray.core.data.datasets import load_dataset

    if args.http_only:
        with open(args.json_out, "w") as f:  # not stdout: Ray and Serve print there too
            json.dump(bench_http(args.run_dir, load_dataset("digits").test.images, args.requests, args.http_only), f)
        return

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
        "http": bench_http_modes(run_dir, args.requests, args.ingress.split(",")),
        "batch_predict": bench_predict(run_dir, test.images, args.predict_rows),
    }
    emit(report, args.json_out)


if __name__ == "__main__":
    main()
