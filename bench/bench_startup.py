"""Start-up of a local run: the main job (`boostray train`, digits, 1 Ray Train worker) as a user runs it.

Each run is a fresh `boostray train` process with its own local Ray. Per run: the process's wall time
(from exec to exit, Ray's stop included), the run's `timing_seconds` from metrics.json, and whether the
process wall stays within the training loop + 15 s (issue 10's target). Variants run in turn, run after
run, so that the machine's drift reaches each alike. ``--before TREE`` adds the same job from another
checkout (say `git worktree add /tmp/before COMMIT`), run with that tree first on PYTHONPATH.

    python bench/bench_startup.py --runs 4 --json-out bench/results/startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from report_json import emit  # bench/, beside this script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_OVERHEAD_S = 15.0
VARIANTS = {  # name -> extra `boostray train` arguments
    "main job": [],
    "main job --dashboard": ["--dashboard"],
    "main job --workers 0": ["--workers", "0"],
}


def run_once(tree: str, extra: list[str], scratch: str) -> dict:
    output = tempfile.mkdtemp(dir=scratch)
    env = {**os.environ, "PYTHONPATH": tree, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "boostray", "train", "--output", output, "--name", "run", *extra]
    started = time.perf_counter()
    # cwd outside any checkout: the tree on PYTHONPATH is the one imported
    proc = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    with open(os.path.join(output, "run", "metrics.json")) as f:
        metrics = json.load(f)
    timing = {k: round(v, 2) for k, v in metrics.get("timing_seconds", {}).items()}
    loop = timing.get("training_loop", metrics["train_seconds"])
    return {"process_wall_s": round(wall, 2), "run_wall_s": round(metrics["wall_seconds"], 2), "training_loop_s": loop,
            "within_target": wall <= loop + TARGET_OVERHEAD_S, "timing_seconds": timing}


def summarise(runs: list[dict]) -> dict:
    walls = [r["process_wall_s"] for r in runs]
    over = [r["process_wall_s"] - r["training_loop_s"] for r in runs]
    return {"process_wall_s": {"mean": round(statistics.mean(walls), 2), "min": min(walls), "max": max(walls)},
            "overhead_s": {"mean": round(statistics.mean(over), 2), "min": round(min(over), 2), "max": round(max(over), 2)},
            "within_target": f"{sum(r['within_target'] for r in runs)}/{len(runs)}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4, help="runs of each variant (default 4)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of: {', '.join(VARIANTS)} (default: all)")
    parser.add_argument("--before", metavar="TREE", help="also run the main job from this checkout, as 'before'")
    parser.add_argument("--json-out", help="also write the JSON to this file")
    args = parser.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or args.runs < 1:
        parser.error(f"unknown variant {unknown[0]!r}" if unknown else "--runs must be >= 1")
    plan = [(name, ROOT, VARIANTS[name]) for name in names]
    if args.before:
        plan.insert(0, ("before: main job", os.path.abspath(args.before), []))
    results: dict[str, list[dict]] = {name: [] for name, _, _ in plan}
    with tempfile.TemporaryDirectory(prefix="boostray-startup-") as scratch:
        for i in range(args.runs):
            for name, tree, extra in plan:
                results[name].append(run_once(tree, extra, scratch))
                r = results[name][-1]
                print(f"[{i + 1}/{args.runs}] {name}: process wall {r['process_wall_s']} s, "
                      f"training loop {r['training_loop_s']} s", file=sys.stderr, flush=True)
    out = {"command": "boostray train --output OUT --name run [variant's options]", "runs": args.runs,
           "target": f"process wall <= training loop + {TARGET_OVERHEAD_S:g} s",
           "variants": {name: {"summary": summarise(runs), "runs": runs} for name, runs in results.items()}}
    emit(out, args.json_out)


if __name__ == "__main__":
    main()
