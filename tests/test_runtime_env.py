"""A library caller's local Ray: on loopback without any variable set by the caller, and the variable
boostray needs for it kept out of the caller's child processes."""

import json
import os
import subprocess
import shutil
import sys
import tempfile

import pytest

pytestmark = pytest.mark.ray

SCRIPT = """
import json, os, subprocess, sys
import boostray  # before Ray, as any boostray entry point imports it
from boostray.distributed.runtime import ray_session
import ray

with ray_session(num_cpus=1, dashboard=DASHBOARD):
    from ray.data._internal.usage.collector import usage_collection_disabled
    usage_off = usage_collection_disabled()  # no Ray Data usage actor for an execution in this process
    node = [n["NodeManagerAddress"] for n in ray.nodes()]
    worker = ray.get(ray.remote(num_cpus=0)(lambda: __import__("ray").util.get_node_ip_address()).remote())
    child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'))"],
                           capture_output=True, text=True).stdout.strip()
    # task events (and metrics) off where they are reported (every worker) and kept (the GCS of this instance)
    worker_events, worker_metrics = ray.get(ray.remote(num_cpus=0)(lambda: [__import__("os").environ.get(v) for v in (
        "RAY_task_events_report_interval_ms", "RAY_enable_metrics_collection")]).remote())
    # Arrow's allocator in the workers (where Ray Data's read tasks decode Parquet)
    worker_pool = ray.get(ray.remote(num_cpus=0)(lambda: __import__("pyarrow").default_memory_pool().backend_name).remote())
    gcs_events = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
            if "gcs_server" in cmdline and os.environ["RAY_TMPDIR"] in cmdline:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    variables = dict(v.split("=", 1) for v in f.read().decode(errors="replace").split(chr(0)) if "=" in v)
                gcs_events.append(variables.get("RAY_task_events_report_interval_ms"))
        except OSError:
            continue
print(json.dumps({"node": node, "worker": worker, "child": child, "usage_off": usage_off,
                  "after": os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"), "worker_events": worker_events,
                  "worker_metrics": worker_metrics, "worker_pool": worker_pool, "gcs_events": gcs_events, "events_after": os.environ.get("RAY_task_events_report_interval_ms")}))
"""


def test_task_events_and_metrics_are_left_to_ray_where_the_dashboard_runs():
    """The dashboard's task table, timeline and Grafana panels need task events and metrics: with it, a
    local instance keeps Ray's default (the real instances below check that the environment reaches the
    GCS and the workers)."""
    from boostray.distributed.runtime import NO_DASHBOARD_RECORDS, local_instance_environment

    assert NO_DASHBOARD_RECORDS.keys() == {"RAY_task_events_report_interval_ms", "RAY_enable_metrics_collection"}
    assert NO_DASHBOARD_RECORDS.items() <= local_instance_environment(False).items()
    assert not NO_DASHBOARD_RECORDS.keys() & local_instance_environment(True).keys()


# a user's own value holds, with the dashboard or without (two instances rather than three keep the suite short)
@pytest.mark.parametrize("user_events,dashboard", [(None, False), ("1000", True)])
def test_a_library_caller_gets_a_loopback_ray_without_usage_stats_task_events_or_metrics_and_children_do_not_inherit_the_variable(
        user_events, dashboard):
    """Task events and metrics are off unless the caller set the variable (theirs then holds for the whole
    instance) or runs the dashboard (whose task table and panels they fill: Ray's default then)."""
    ray_tmpdir = tempfile.mkdtemp(prefix="br-", dir="/tmp")  # Ray's socket paths must stay short
    # (a command run in this process earlier set Arrow's allocator in its environment)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "ARROW_DEFAULT_MEMORY_POOL"}
    if user_events:
        env["RAY_task_events_report_interval_ms"] = user_events
    # usage stats as boostray sets them for its own instance, with no user config that turns them off
    env.update(RAY_TMPDIR=ray_tmpdir, RAY_USAGE_STATS_CONFIG_PATH=os.path.join(ray_tmpdir, "absent.json"))
    try:
        out = subprocess.run([sys.executable, "-c", SCRIPT.replace("DASHBOARD", str(dashboard))], env=env,
                             capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(ray_tmpdir, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    events = user_events or (None if dashboard else "0")
    assert seen == {"node": ["127.0.0.1"], "worker": "127.0.0.1", "child": "None", "usage_off": True, "after": None,
                    "worker_events": events, "worker_metrics": None if dashboard else "0", "worker_pool": "system", "gcs_events": [events],
                    "events_after": user_events}, seen
    assert "not only on 127.0.0.1" not in out.stderr


def test_the_boostray_command_decodes_arrow_data_with_the_system_allocator_unless_the_user_chose_one():
    """The command's own process (the driver, which reads the labels and metadata of a streamed split):
    mimalloc, Arrow's default, kept memory freed across threads (runtime.ARROW_POOL)."""
    probe = ("import sys; from boostray.cli import main; main(['models']); import pyarrow; "
             "print(pyarrow.default_memory_pool().backend_name, file=sys.stderr)")
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    for chosen, expected in ((None, "system"), ("mimalloc", "mimalloc")):
        out = subprocess.run([sys.executable, "-c", probe], env={**env, **({"ARROW_DEFAULT_MEMORY_POOL": chosen} if chosen else {})},
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stderr.strip().splitlines()[-1] == expected, out.stderr[-2000:]
