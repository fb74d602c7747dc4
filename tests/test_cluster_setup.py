"""A cluster as a team sets one up: nodes whose Python has torch and Ray but not boostray (the job
brings the code in its working dir), and a node that does not share the machine's folders (a local
--output is refused before any training)."""

import json
import os
import subprocess

import pytest

from cluster import LocalCluster, bare_python, can_hide_folders, submit

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
    c = LocalCluster(str(tmp_path_factory.mktemp("bare-cluster")), node_bin=node_bin)
    try:
        c.start_head(cpus=0)
        c.add_node("node-a", cpus=1)
        yield c
    finally:
        c.shutdown()


def test_a_job_brings_boostray_to_nodes_that_do_not_have_it(cluster, tmp_path):
    """`ray job submit --working-dir .`: the driver and the Train workers import boostray from the
    uploaded working directory."""
    out = str(tmp_path / "runs")
    job = submit(cluster, "train.py", "--workers", "1", "--epochs", "2", "--members", "2", "--output", out, "--name", "bare")
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
    metrics = json.load(open(os.path.join(out, "bare", "metrics.json")))
    assert metrics["rank_nodes"] == [cluster.node_ids["node-a"]]
    assert "[boostray] round 2/2" in job.stdout


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
