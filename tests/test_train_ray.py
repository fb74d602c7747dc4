"""Real Ray Train runs: 2 DDP workers, a worker killed mid-run, a driver killed and resumed, and the
main job's own loopback Ray instance."""

import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import sys
import threading
import uuid

import pyarrow.parquet as pq
import pytest

from boostray.config import TrainConfig
from boostray.distributed.trainer import train
from sockets import is_loopback, ray_listeners

pytestmark = pytest.mark.ray
BOOSTRAY = os.path.join(os.path.dirname(sys.executable), "boostray")


def two_worker_config(tmp_path, **overrides) -> TrainConfig:
    return TrainConfig(
        workers=2, epochs=6, members=3, seed=1, output=str(tmp_path), name=f"ddp-{uuid.uuid4().hex[:6]}",
        **overrides,
    )


def wait_for(condition, thread: threading.Thread) -> None:
    """Poll ``condition`` while the training thread is alive (waiting on a state, not a fixed sleep)."""
    event = threading.Event()
    while not condition() and thread.is_alive():
        event.wait(0.05)


def registered(storage: str, checkpoint: str):
    """True once Ray Train's checkpoint manager has recorded ``checkpoint`` (what a resume reads)."""
    def check() -> bool:
        try:
            with open(os.path.join(storage, "checkpoint_manager_snapshot.json")) as f:
                return checkpoint in f.read()
        except FileNotFoundError:
            return False
    return check


def train_losing_a_worker(config: TrainConfig, ray_cluster: str, after: str, not_yet: str) -> tuple[list, dict]:
    """Train ``config`` on a thread; once checkpoint ``after`` is registered (and ``not_yet`` is not on disk),
    SIGKILL the last Train worker. Returns (the workers alive at the kill, what train returned, if it did)."""
    from ray.util.state import list_actors

    storage = os.path.join(config.output, ".ray", config.name)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(result=train(config)))
    thread.start()
    wait_for(registered(storage, after), thread)
    assert thread.is_alive() and not os.path.exists(os.path.join(storage, not_yet))
    workers = list_actors(address=ray_cluster, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    os.kill(workers[-1]["pid"], signal.SIGKILL)
    thread.join(timeout=600)
    assert "result" in outcome, "the run did not recover from the killed worker"
    return workers, outcome["result"]


RESULTS = {}  # module fixtures' Ray Train results, for the tests that look at what reached the driver


@pytest.fixture(scope="module")
def ddp_run(ray_cluster, tmp_path_factory):
    from boostray.distributed.trainer import fit

    out = tmp_path_factory.mktemp("ddp")
    config = two_worker_config(out)
    outcome = fit(config)
    RESULTS["ddp"] = outcome.ray_result
    return config, outcome.run_dir, outcome.metrics


def test_two_workers_hold_identical_weights_every_round(ddp_run):
    config, run_dir, metrics = ddp_run
    digests = metrics["rank_weight_digests"]
    assert len(digests) == 3
    for per_rank in digests:
        assert len(per_rank) == 2 and per_rank[0] == per_rank[1]
        assert per_rank[0][1] == pytest.approx(1.0)  # [crc32, sum]
    assert digests[0][0] != digests[1][0]  # round 1 re-weighted the samples
    assert digests[2][0][1] == pytest.approx(digests[1][0][1])  # the last round computes lambda_M only
    assert [m["epoch"] for m in metrics["members"]] == [3, 5, 6]  # cbnn: member 1 half-way, then the tail
    assert all(m["lambda"] > 0 for m in metrics["members"])
    assert metrics["test"]["accuracy"] > 0.9


def test_the_error_pass_moves_one_byte_a_sample_not_probabilities(ddp_run):
    """Each round's correctness is all-reduced as one uint8 code a training sample: N bytes a rank, not the
    N x K float32 probabilities (K = 10 here: 40 times as many)."""
    config, run_dir, metrics = ddp_run
    n_train = len(pq.read_table(os.path.join(run_dir, "sample_weights.parquet"), columns=["index"]))
    assert metrics["error_pass_bytes"] == [n_train] * 3


def test_the_driver_receives_no_per_sample_arrays_and_the_run_keeps_every_weight(ddp_run):
    """Rank 0 writes sample_weights.parquet beside the checkpoints, and the state it returns leaves out
    the N-sized weights: the driver copies the file. What it copied is the last checkpoint's weights,
    every round's and the final ones."""
    import numpy as np

    from boostray.core.artifact.checkpoints import read_checkpoint

    config, run_dir, _ = ddp_run
    returned = RESULTS["ddp"].return_value
    assert returned["weights"].size == 0 and returned["weights_history"] == [] and len(returned["members"]) == 3
    saved = read_checkpoint(os.path.join(config.output, ".ray", config.name, "round_0003"))["boost"]
    table = pq.read_table(os.path.join(run_dir, "sample_weights.parquet"))
    n = table.num_rows
    assert n == saved["weights"].numel() > 0 and table.column("index").to_pylist() == list(range(n))
    np.testing.assert_array_equal(table.column("final").to_numpy(), saved["weights"].numpy().astype(np.float32))
    for r, weights in enumerate(saved["weights_history"]):
        np.testing.assert_array_equal(table.column(f"round_{r + 1}").to_numpy(), weights.numpy())


def test_worker_killed_mid_run_resumes_to_the_same_ensemble(ddp_run, ray_cluster, tmp_path):
    config, reference_dir, reference = ddp_run
    faulty = two_worker_config(tmp_path, max_failures=2)
    workers, result = train_losing_a_worker(faulty, ray_cluster, "round_0001", "round_0003")
    assert len(workers) == 2
    outcome = {"result": result}
    _, metrics = outcome["result"]
    assert len(metrics["members"]) == 3
    assert [m["lambda"] for m in metrics["members"]] == [m["lambda"] for m in reference["members"]]
    assert metrics["rank_weight_digests"] == reference["rank_weight_digests"]
    a = pq.read_table(os.path.join(outcome["result"][0], "sample_weights.parquet")).to_pandas()
    b = pq.read_table(os.path.join(reference_dir, "sample_weights.parquet")).to_pandas()
    assert a.equals(b)


def test_resumed_swa_run_equals_an_uninterrupted_one(ray_cluster, tmp_path):
    """A baseline whose state goes beyond the network: SWA's running average must survive a lost worker.
    The worker holds after round 3 (epoch 6 of 8, averaging under way) until the test kills it."""
    import torch
    from ray.util.state import list_actors

    from boostray import load_ensemble

    def swa_config(**kw) -> TrainConfig:
        return TrainConfig(method="swa", workers=1, epochs=8, members=4, seed=2, output=str(tmp_path),
                           name=f"swa-{uuid.uuid4().hex[:6]}", **kw)

    reference_dir, reference = train(swa_config())
    faulty = swa_config(max_failures=1)
    storage = os.path.join(str(tmp_path), ".ray", faulty.name)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(result=train(faulty, hold_after_round=3)))
    thread.start()
    wait_for(registered(storage, "round_0003"), thread)
    workers = list_actors(address=ray_cluster, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    assert thread.is_alive() and len(workers) == 1
    os.kill(workers[0]["pid"], signal.SIGKILL)
    thread.join(timeout=600)
    assert "result" in outcome, "the run did not recover from the killed worker"
    run_dir, metrics = outcome["result"]
    assert metrics["resumed_at_rounds"] == [3] and reference["resumed_at_rounds"] == []
    assert metrics["test"]["accuracy"] == reference["test"]["accuracy"]
    (a,), (b,) = load_ensemble(run_dir).members, load_ensemble(reference_dir).members
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(ta, tb), name


def test_driver_killed_and_rerun_with_same_name_resumes(ray_cluster, tmp_path):
    name = f"resume-{uuid.uuid4().hex[:6]}"
    cmd = [BOOSTRAY, "train", "--address", ray_cluster, "--epochs", "6", "--members", "3",
           "--name", name, "--output", str(tmp_path)]
    storage = os.path.join(str(tmp_path), ".ray", name)
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in first.stdout:  # the driver's own stream: act on the line that says round 1 is saved
        if "round 1/3: member val acc" in line:
            break
    waiter = threading.Thread(target=first.wait)
    waiter.start()
    wait_for(registered(storage, "round_0001"), waiter)
    first.kill()
    first.wait()
    assert not os.path.exists(os.path.join(str(tmp_path), name))  # nothing that looks finished

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert "resuming from the checkpoint of round" in log
    assert "epoch 1/6" not in log  # the first round was not trained again
    metrics = json.loads(open(os.path.join(str(tmp_path), name, "metrics.json")).read())
    assert [m["epoch"] for m in metrics["members"]] == [3, 5, 6]  # cbnn: member 1 half-way, then the tail
    assert metrics["resumed_at_rounds"] and metrics["resumed_at_rounds"][0] >= 1


def actors_started(ray_tmpdir: str) -> set[str]:
    """Names of the actors a Ray instance ran, from its session logs (each actor's worker log names it)."""
    logs = glob.glob(os.path.join(ray_tmpdir, "ray", "session_*", "logs", "worker-*.out"))
    names = set()
    for path in logs:
        with open(path) as f:
            names.update(line.strip().partition(":actor_name:")[2] for line in f if line.startswith(":actor_name:"))
    return names


def test_main_job_starts_its_own_ray_on_loopback_only(tmp_path):
    """`boostray train` starts a local Ray of its own, only on loopback (with no Ray variable set by the
    caller), without the dashboard and without Ray Train's helpers for shared clusters
    (owned_instance.py); it stops it at the end. Its console shows boostray's lines, not Ray's routine
    INFO, which goes to the run's ray.log."""
    ray_tmpdir = tempfile.mkdtemp(prefix="br-", dir="/tmp")  # Ray's socket paths must stay short
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(tmp_path), RAY_TMPDIR=ray_tmpdir)  # default --output is ~/boostray_runs
    try:
        proc = subprocess.Popen([BOOSTRAY, "train", "--epochs", "3", "--members", "3", "--name", "main"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        listeners, lines = [], []
        for line in proc.stdout:
            lines.append(line)
            if "epoch 2/3" in line and not listeners:  # training is running: every Ray port is open
                listeners = ray_listeners()
        assert proc.wait() == 0, "".join(lines[-40:])
        actors = actors_started(ray_tmpdir)
        dashboard_modules = glob.glob(os.path.join(ray_tmpdir, "ray", "session_*", "logs", "dashboard_StateHead.log"))
    finally:
        shutil.rmtree(ray_tmpdir, ignore_errors=True)
    assert listeners, "found no Ray listeners to check"
    assert [l for l in listeners if not is_loopback(l[1])] == []
    out = "".join(lines)
    assert "validation: ensemble of" in out and "final network alone" in out
    assert os.path.isfile(tmp_path / "boostray_runs" / "main" / "ensemble" / "manifest.json")
    assert {"TrainController", "RayTrainWorker", "SynchronizationActor", "WeightRegistry"} <= actors, actors
    assert not actors & {"PlacementGroupCleaner", "DatasetManager", "PreemptionWatcher"}, actors
    assert dashboard_modules == []  # no --dashboard
    assert "[boostray] round 1/3" in out and "[boostray] epoch 3/3" in out
    for routine in ("Reporting training result", "Started a local Ray instance", "Attempting to start training worker group",
                    "Setting up process group"):
        assert routine not in out, routine
    ray_log = open(tmp_path / "boostray_runs" / ".ray" / "main" / "ray.log").read()
    assert ray_log.count("Reporting training result") == 3 and "[boostray]" not in ray_log


def test_a_trainer_on_an_owned_instance_leaves_out_the_cluster_helpers(ray_cluster):
    """Ray Train's default callbacks, read from Ray itself: if a Ray upgrade renames the helpers or the
    private method that builds them, this fails (and the run would quietly start them again)."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    from boostray.distributed.owned_instance import OwnedInstanceTorchTrainer

    def names(cls) -> set[str]:
        trainer = cls(lambda: None, scaling_config=ScalingConfig(num_workers=1))
        return {type(c).__name__ for c in trainer._create_default_callbacks()}

    plain, owned = names(TorchTrainer), names(OwnedInstanceTorchTrainer)
    assert {"PlacementGroupCleanerCallback", "DatasetsCallback", "BackendSetupCallback"} <= plain
    assert plain - owned == {"PlacementGroupCleanerCallback", "DatasetsCallback"}
