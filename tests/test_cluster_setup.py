"""A cluster as a team sets one up: nodes whose Python has torch and Ray but not boostray (the job
brings the code in its working dir), and a node that does not share the machine's folders (a local
--output is refused before any training)."""

import json
import os
import subprocess
import zipfile

import numpy as np
import pytest
import yaml

from boostray import load_ensemble
from boostray.core.data.datasets import load_dataset
from cluster import ROOT, bare_python, can_hide_folders, free_port, running_cluster, submit

pytestmark = [pytest.mark.ray, pytest.mark.cluster]


@pytest.fixture(scope="module")
def node_bin(tmp_path_factory):
    folder = bare_python(str(tmp_path_factory.mktemp("bare") / "venv"))
    python = os.path.join(folder, "python")
    check = subprocess.run([python, "-c", "import torch, ray\nimport boostray"], capture_output=True, text=True, cwd="/")
    assert "No module named 'boostray'" in check.stderr, check.stderr  # torch and Ray import; boostray does not
    return folder


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, node_bin):
    with running_cluster(str(tmp_path_factory.mktemp("bare-cluster")), ["node-a"], node_bin=node_bin) as c:
        yield c


@pytest.fixture(scope="module")
def bare_run(cluster, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bare-runs"))
    job = submit(cluster, "train.py", "--workers", "1", "--epochs", "2", "--members", "2", "--output", out, "--name", "bare")
    return os.path.join(out, "bare"), job


def test_a_job_brings_boostray_to_nodes_that_do_not_have_it(cluster, bare_run):
    """`ray job submit --working-dir .`: the driver and the Train workers import boostray from the
    uploaded working directory."""
    run_dir, job = bare_run
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert metrics["rank_nodes"] == [cluster.node_ids["node-a"]]
    assert "[boostray] round 2/2" in job.stdout


def code_zip(path: str) -> str:
    """The repository's package as a runtime_env zip (one top-level folder), as `git archive` makes it."""
    with zipfile.ZipFile(path, "w") as z:
        for folder, _, files in os.walk(os.path.join(ROOT, "boostray")):
            for name in files:
                if name.endswith(".py"):
                    full = os.path.join(folder, name)
                    z.write(full, os.path.join("boostray-src", os.path.relpath(full, ROOT)))
    return path


def test_serve_deploy_brings_the_code_in_its_runtime_env_and_the_run_from_a_uri(cluster, bare_run, tmp_path):
    """pipelines/serve_cluster.yaml with local stand-ins: the zip and the run at file:// URIs, the proxy on
    127.0.0.1. Every replica runs on a node whose Python lacks boostray."""
    run_dir, job = bare_run
    assert job.returncode == 0, job.stdout[-4000:]
    port = free_port()
    config = yaml.safe_load(open(os.path.join(ROOT, "pipelines", "serve_cluster.yaml")))
    config.update(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    app = config["applications"][0]
    app["runtime_env"]["working_dir"] = "file://" + code_zip(str(tmp_path / "boostray.zip"))
    app["args"].update(run_dir=f"file://{run_dir}", replicas=1, cpus_per_replica=0.5)
    path = str(tmp_path / "serve.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    deployed = cluster.cli("serve", "deploy", path, "--address", cluster.dashboard)
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    try:
        images = load_dataset("digits").test.images[:8]
        answer = cluster.post_when_ready(f"http://127.0.0.1:{port}/v1/models/bare:predict",
                                         json.dumps({"instances": images.tolist()}).encode())
        expected = load_ensemble(run_dir).predict_proba(images)
        np.testing.assert_allclose([p["probabilities"] for p in answer["predictions"]], expected, atol=1e-5)
    finally:
        cluster.cli("serve", "shutdown", "-y", "--address", cluster.dashboard)


@pytest.mark.skipif(not can_hide_folders(), reason="needs unshare -m (root) to give a node a filesystem of its own")
def test_a_local_output_that_a_node_cannot_see_stops_before_any_training(cluster, tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    private = cluster.add_node("private", cpus=1, hidden=str(out))
    try:
        job = submit(cluster, "train.py", "--workers", "1", "--epochs", "2", "--members", "2", "--output", str(out),
                     "--name", "unseen")
    finally:
        cluster.kill_node("private")
    assert job.returncode != 0
    # one line (`ray job submit` prints the job's log twice: as it runs, and with the final status)
    errors = sorted({line for line in job.stdout.splitlines() if line.startswith("boostray: error:")})
    assert len(errors) == 1 and "is not shared with every node" in errors[0] and private[:12] in errors[0], job.stdout[-3000:]
    assert cluster.node_ids["node-a"][:12] not in errors[0]  # a node on this host sees it
    assert "[boostray] epoch" not in job.stdout
    assert os.listdir(out) == []  # no run, no Ray Train folder, no marker left
