"""What the GCS of a local Ray that boostray starts keeps per task and actor call: its private PSS
(anonymous and shared pages, MB) after every 5,000 calls to one actor, with task events as boostray sets
them (off without the dashboard) and as Ray reports them by default (``--events 1000``).

    python bench/bench_task_events.py                # events off (boostray's local default)
    python bench/bench_task_events.py --events 1000  # events on, as with --dashboard
"""

from __future__ import annotations

import argparse
import os
import sys

from report_json import emit  # bench/, beside this script


def private_mb(pid: int) -> float:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        rows = {line.split(":")[0]: int(line.split()[1]) for line in f if line.startswith("Pss")}
    return round((rows.get("Pss_Anon", 0) + rows.get("Pss_Shmem", 0)) / 1024, 1)


def gcs_pid() -> int:
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"gcs_server" in f.read():
                    return int(entry)
        except OSError:
            continue
    raise RuntimeError("no gcs_server process")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", help="RAY_task_events_report_interval_ms for the instance (default: boostray's)")
    parser.add_argument("--calls", type=int, default=20_000, help="actor calls, measured every 5,000")
    parser.add_argument("--json-out", help="also write the JSON to this file")
    args = parser.parse_args()
    if args.events:
        os.environ["RAY_task_events_report_interval_ms"] = args.events
    import boostray  # noqa: F401 - before Ray: a loopback-only local instance
    import ray

    from boostray.distributed.runtime import ray_session

    @ray.remote(num_cpus=0)
    class Target:
        def poll(self) -> int:
            return 1

    out = {"events": args.events or "boostray's default", "gcs_mb_after_calls": {}}
    with ray_session(num_cpus=1, dashboard=False):
        target = Target.remote()
        ray.get(target.poll.remote())
        pid = gcs_pid()
        out["gcs_mb_after_calls"]["0"] = private_mb(pid)
        for done in range(5_000, args.calls + 1, 5_000):
            for _ in range(5_000):
                ray.get(target.poll.remote())
            ray.get(target.poll.remote())  # reported events reach the GCS within the report interval
            out["gcs_mb_after_calls"][str(done)] = private_mb(pid)
            print(f"{done} calls: GCS {out['gcs_mb_after_calls'][str(done)]} MB", file=sys.stderr, flush=True)
    emit(out, args.json_out)


if __name__ == "__main__":
    main()
