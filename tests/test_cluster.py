"""A real two-node Ray cluster on this machine (tests/cluster.py), driven the way users drive one:
`ray job submit --working-dir .` of the pipelines, a node lost mid-run, `serve deploy` of the served
ensemble. The single-node reference runs on the test session's own local Ray."""

import json
import os
import re
import subprocess
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from boostray import load_ensemble
from boostray.apps.evaluate import evaluate_run
from boostray.config import TrainConfig
from boostray.core.data.datasets import load_dataset
from boostray.distributed.trainer import train
from cluster import ROOT, LocalCluster, free_port, running_cluster, submit

pytestmark = [pytest.mark.ray, pytest.mark.cluster]
RUN = {"workers": 2, "cpus_per_worker": 1, "epochs": 4, "members": 2, "seed": 3}  # one rank per 1-CPU node


def run_options(name: str, output: str, **extra) -> list[str]:
    options = {**RUN, "name": name, "output": output, **extra}
    return [item for key, value in options.items() for item in (f"--{key.replace('_', '-')}", str(value))]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(str(tmp_path_factory.mktemp("cluster")), ["node-a", "node-b"]) as c:
        yield c


@pytest.fixture(scope="module")
def reference(ray_cluster, tmp_path_factory):
    """The same run on one node: the session's local Ray, 2 CPUs."""
    out = tmp_path_factory.mktemp("single-node")
    return train(TrainConfig(**RUN, name="single-node", output=str(out)))


@pytest.fixture(scope="module")
def two_node_run(cluster, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("two-node"))
    job = submit(cluster, "train.py", *run_options("two-node", out))
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
    run_dir = os.path.join(out, "two-node")
    return run_dir, json.load(open(os.path.join(run_dir, "metrics.json"))), job.stdout


def assert_same_ensemble(run_dir: str, metrics: dict, reference: tuple[str, dict]) -> None:
    """Bit for bit: the members' weights, lambdas, every rank's sample-weight digest per round, the
    sample weights of every round."""
    ref_dir, ref = reference
    assert [m["lambda"] for m in metrics["members"]] == [m["lambda"] for m in ref["members"]]
    assert metrics["rank_weight_digests"] == ref["rank_weight_digests"]
    a = pq.read_table(os.path.join(run_dir, "sample_weights.parquet")).to_pandas()
    b = pq.read_table(os.path.join(ref_dir, "sample_weights.parquet")).to_pandas()
    assert a.equals(b)
    for got, want in zip(load_ensemble(run_dir).members, load_ensemble(ref_dir).members, strict=True):
        for (name, x), y in zip(got.state_dict().items(), want.state_dict().values()):
            assert torch.equal(x, y), name


def test_a_job_trains_one_rank_per_node_to_the_single_node_ensemble(cluster, two_node_run, reference):
    run_dir, metrics, log = two_node_run
    nodes = {n["node_id"] for n in cluster.alive_nodes()} - {cluster.node_ids["head"]}
    assert len(set(metrics["rank_nodes"])) == 2 and set(metrics["rank_nodes"]) == nodes  # one rank on each node
    assert "epoch 1/4 round 1/2" in log and "epoch 4/4 round 2/2" in log  # the per-epoch progress reaches the client
    assert_same_ensemble(run_dir, metrics, reference)
    assert evaluate_run(run_dir)["accuracy"] == pytest.approx(metrics["test"]["accuracy"])


def registered(storage: str, checkpoint: str) -> bool:
    """True once Ray Train's checkpoint manager has recorded ``checkpoint`` (what a resume reads)."""
    try:
        with open(os.path.join(storage, "checkpoint_manager_snapshot.json")) as f:
            return checkpoint in f.read()
    except FileNotFoundError:
        return False


def lose_node_of_rank_after_round_1(cluster: LocalCluster, job: subprocess.Popen, storage: str, rank: int) -> tuple[str, str]:
    """Every rank holds after reporting round 1 (BOOSTRAY_TEST_HOLD_AFTER_ROUND); once the checkpoint
    is registered, the node that runs ``rank`` dies. Returns (its node id, the job's output so far)."""
    lines, pids = [], {}
    for line in job.stdout:  # the client's log stream: where each rank runs, then round 1's checkpoint
        lines.append(line)
        found = re.search(r"pid=(\d+)\) world_rank=(\d+)", line)
        if found:
            pids[int(found.group(2))] = int(found.group(1))
        if "round_0001" in line:
            break
    done = threading.Event()
    while not registered(storage, "round_0001") and job.poll() is None:
        done.wait(0.1)
    assert job.poll() is None, "".join(lines[-60:])
    actors = [a for a in cluster.state_api("actors") if a["state"] == "ALIVE"]
    # the run's weight registry lives with its driver, on the head: losing a worker node never takes it
    assert [a["node_id"] for a in actors if a["class_name"] == "WeightRegistry"] == [cluster.node_ids["head"]]
    (node_id,) = {a["node_id"] for a in actors if a.get("pid") == pids[rank]}
    (name,) = [n for n, i in cluster.node_ids.items() if i == node_id and n in cluster.nodes]
    return cluster.kill_node(name), "".join(lines)


def test_a_lost_node_is_replaced_and_the_run_ends_as_if_uninterrupted(cluster, reference, tmp_path):
    out, name = str(tmp_path), "lost-node"
    job = submit(cluster, "train.py", *run_options(name, out, max_failures=1), "--verbose",  # where each rank runs
                 env={"BOOSTRAY_TEST_HOLD_AFTER_ROUND": "1"}, popen=True)
    # rank 0 owns the sample-weight object in the object store: it goes down with its node
    lost, log = lose_node_of_rank_after_round_1(cluster, job, os.path.join(out, ".ray", name), rank=0)
    replacement = cluster.add_node("node-c", cpus=1)  # the run waits for a node with room for its lost rank
    log += job.stdout.read()
    assert job.wait(timeout=600) == 0, log[-4000:]
    metrics = json.load(open(os.path.join(out, name, "metrics.json")))
    assert metrics["resumed_at_rounds"] == [1] and len(metrics["rank_nodes_history"]) == 2
    first, second = metrics["rank_nodes_history"]
    assert first[0] == lost and set(second) == set(first) - {lost} | {replacement}  # the lost rank moved to node-c
    assert_same_ensemble(os.path.join(out, name), metrics, reference)


def test_without_max_failures_a_lost_node_fails_the_job_saying_how_to_resume(cluster, reference, tmp_path):
    out, name = str(tmp_path), "no-retries"
    job = submit(cluster, "train.py", *run_options(name, out), "--verbose", env={"BOOSTRAY_TEST_HOLD_AFTER_ROUND": "1"}, popen=True)
    _, log = lose_node_of_rank_after_round_1(cluster, job, os.path.join(out, ".ray", name), rank=1)
    log += job.stdout.read()
    assert job.wait(timeout=600) != 0
    # the job's log, then again in the failed job's status message
    (error,) = {line for line in log.splitlines() if line.startswith("boostray: error: training failed")}
    assert f"--name {name} to resume from its checkpoint of round 1/2" in error
    assert "rank 1 " in error and ("left the cluster" in error or "stopped answering" in error), error
    assert not os.path.exists(os.path.join(out, name))  # nothing that looks finished

    cluster.add_node("node-d", cpus=1)
    again = submit(cluster, "train.py", *run_options(name, out))  # what the error says to do
    assert again.returncode == 0, again.stdout[-4000:]
    assert "resuming from the checkpoint of round 1/2" in again.stdout
    metrics = json.load(open(os.path.join(out, name, "metrics.json")))
    assert_same_ensemble(os.path.join(out, name), metrics, reference)


def test_a_sweep_and_a_comparison_run_as_jobs(cluster, tmp_path):
    sweep = {"name": "cluster-sweep", "output": str(tmp_path / "sweeps"),
             "train": {"dataset": "digits", "epochs": 2, "members": 2, "workers": 1, "cpus_per_worker": 0.9},
             "search_space": {"lr": {"type": "grid", "values": [0.05]}}, "num_samples": 1}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    job = submit(cluster, "tune.py", str(tmp_path / "sweep.yaml"))
    assert job.returncode == 0, job.stdout[-4000:]
    summary = json.load(open(tmp_path / "sweeps" / "cluster-sweep" / "summary.json"))
    assert summary["trials"] == 1 and summary["errored"] == 0
    assert evaluate_run(summary["best_run_dir"])["accuracy"] == pytest.approx(summary["best_test_accuracy"])

    report = tmp_path / "report"
    job = submit(cluster, "compare.py", "--methods", "single,cbnn", "--seeds", "1", "--epochs", "2", "--members", "2",
                 "--cpus-per-worker", "0.9", "--output", str(tmp_path / "runs"), "--report", str(report))
    assert job.returncode == 0, job.stdout[-4000:]
    rows = [line.split(",")[:3] for line in (report / "results.csv").read_text().splitlines()]
    assert rows[0] == ["epochs", "method", "seeds"] and sorted(r[1] for r in rows[1:]) == ["cbnn", "single"]


def test_serve_deploy_on_the_cluster_answers_over_http(cluster, two_node_run):
    run_dir, _, _ = two_node_run
    port = free_port()
    config = yaml.safe_load(open(os.path.join(ROOT, "pipelines", "serve_config.yaml")))
    config["http_options"]["port"] = port
    config["proxy_location"] = "HeadOnly"  # every node is this machine: one proxy, one port
    config["applications"][0]["args"].update(run_dir=run_dir, replicas=1, cpus_per_replica=0.5)
    path = os.path.join(cluster.workdir, "serve.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    deployed = cluster.cli("serve", "deploy", path, "--address", cluster.dashboard)
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    try:
        split = load_dataset("digits").test
        body = json.dumps({"instances": split.images[:8].tolist()}).encode()
        answer = cluster.post_when_ready(f"http://127.0.0.1:{port}/v1/models/two-node:predict", body)
        expected = load_ensemble(run_dir).predict_proba(split.images[:8])
        assert [p["label"] for p in answer["predictions"]] == expected.argmax(1).tolist()
        np.testing.assert_allclose([p["probabilities"] for p in answer["predictions"]], expected, atol=1e-5)
    finally:
        cluster.cli("serve", "shutdown", "-y", "--address", cluster.dashboard)


def test_a_job_brings_the_users_model_module_in_its_working_dir(cluster, tmp_path):
    """A user's network, in a module only the job's working directory holds: the driver, both Train
    workers (one per node) and the loading all import it from there."""
    from cluster import BIN
    from test_user_models import USER_MODULE

    user = tmp_path / "user-code"
    user.mkdir()
    (user / "usernets.py").write_text(USER_MODULE)
    out = tmp_path / "out"
    cmd = [os.path.join(BIN, "ray"), "job", "submit", "--address", cluster.dashboard, "--working-dir", str(user), "--",
           "python", "-m", "boostray.cli", "train", "--model", "usernets:make_net", "--model-kwargs", '{"width": 6}',
           *run_options("user-job", str(out))]
    job = subprocess.run(cmd, env=cluster.env, cwd=str(user), capture_output=True, text=True, timeout=900)
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
    metrics = json.load(open(out / "user-job" / "metrics.json"))
    assert len(set(metrics["rank_nodes"])) == 2
    manifest = json.load(open(out / "user-job" / "ensemble" / "manifest.json"))
    assert manifest["model"]["name"] == "usernets:make_net" and manifest["model"]["kwargs"] == {"width": 6}
