"""Sweep config validation, and a real digits sweep with ASHA on the session's Ray."""

import json
import os

import pytest
import yaml

from boostray.cli import main
from boostray.config import TrainConfig, read_config_file
from boostray.errors import ConfigError
from boostray.apps.tuning import read_sweep_config, run_sweep

ROOT = os.path.dirname(os.path.dirname(__file__))

BASE = {
    "name": "s",
    "train": {"dataset": "digits", "epochs": 3, "members": 3, "workers": 1, "cpus_per_worker": 0.9},
    "search_space": {"lr": {"type": "grid", "values": [0.05, 0.0001]}},  # the weak one meets a recorded rung
    "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    "num_samples": 1,
    "max_concurrent_trials": 1,
}


def write(tmp_path, **changes) -> str:
    data = json.loads(json.dumps(BASE))
    for key, value in changes.items():
        node, *rest = key.split(".")
        if rest:
            data[node][rest[0]] = value
        else:
            data[node] = value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("path", sorted(os.listdir(os.path.join(ROOT, "tune_configs"))))
def test_shipped_sweep_configs_validate(path):
    read_sweep_config(os.path.join(ROOT, "tune_configs", path))


@pytest.mark.parametrize("changes,message", [
    ({"searchspace": {}}, "unknown key 'searchspace'"),
    ({"train.learning_rate": 0.1}, "unknown key 'train.learning_rate'"),
    ({"train.epochs": "three"}, "train.epochs"),
    ({"search_space": {"lr": {"type": "loguniform", "low": 0.1, "high": 0.01}}}, "inverted range"),
    ({"search_space": {"lr": {"type": "uniform", "low": 0.1, "high": 0.1}}}, "empty or inverted"),
    ({"search_space": {"lr": {"type": "loguniform", "low": 0, "high": 0.1}}}, "low > 0"),
    ({"search_space": {"eta": {"type": "choice", "values": []}}}, "search_space.eta.values must not be empty"),
    ({"search_space": {"eta": {"type": "choice", "values": [0.5, 2.0]}}}, "search_space.eta"),
    ({"search_space": {"model": {"type": "choice", "values": ["small_cnn"]}}}, "cannot be searched"),
    ({"metric": "test_accuracy"}, "metric must be one of 'val_accuracy' or 'network_val_accuracy', got 'test_accuracy'"),
    ({"scheduler": {"type": "hyperband"}}, "scheduler.type"),
    ({"num_samples": 0}, "num_samples"),
    ({"search_space": {"combine": {"type": "choice", "values": ["greedy", "median"]}}}, "search_space.combine"),
    ({"scheduler.grace_period": "one"}, "scheduler.grace_period must be an integer"),
    ({"scheduler.reduction_factor": 1}, "scheduler.reduction_factor must be > 1, got 1"),
    ({"search": {"algorithm": "random", "seed": "zero"}}, "search.seed must be an integer"),
    ({"output": 3}, "output must be text, got 3"),
    ({"search_space": {"schedule": {"type": "choice", "values": ["cyclic"]}}}, "search_space.schedule"),
    ({"search_space": {"first_member": {"type": "uniform", "low": 0.5, "high": 1.5}}}, "search_space.first_member"),
    ({"search_space": {"placement": {"type": "choice", "values": ["tail"]}},
      "train.first_member": 0.9, "train.members": 3}, "--first-member"),
])
def test_bad_sweep_configs_name_the_key(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        read_sweep_config(write(tmp_path, **changes))


def test_cli_rejects_bad_sweep_before_starting_ray(tmp_path, capsys):
    assert main(["tune", write(tmp_path, metric="loss")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("metric must be one of 'val_accuracy' or 'network_val_accuracy', got 'loss'")


@pytest.mark.ray
def test_resources_the_cluster_cannot_hold_fail_before_any_trial(ray_cluster, tmp_path):
    config = read_sweep_config(write(tmp_path, **{"train.workers": 4, "train.cpus_per_worker": 1}))
    config.output = str(tmp_path / "out")
    with pytest.raises(ConfigError, match="needs 4.1 CPUs"):
        run_sweep(config)
    assert not os.path.exists(config.sweep_dir)


@pytest.fixture(scope="module")
def sweep(ray_cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    config = read_sweep_config(write(tmp, **{"train.mlflow": "auto"}))
    config.output = str(tmp / "out")
    return config, run_sweep(config)


@pytest.mark.ray
def test_asha_sweep_stops_weak_trials_and_exports_the_best(sweep):
    config, summary = sweep
    assert summary["trials"] == 2 and summary["errored"] == 0
    assert summary["stopped_early"] >= 1
    assert summary["best_params"] == {"lr": 0.05}
    # max_concurrent_trials: 1 holds, so the grid runs in its order and the weak trials meet a recorded rung
    tune_dir = os.path.join(config.sweep_dir, "tune", config.name)
    spans = []
    for trial in sorted(d for d in os.listdir(tune_dir) if d.startswith("trial_fn_")):
        stamps = [json.loads(line)["timestamp"] for line in open(os.path.join(tune_dir, trial, "result.json"))]
        spans.append((min(stamps), max(stamps)))
    assert len(spans) == 2 and all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:])), spans
    rows = open(os.path.join(config.sweep_dir, "trials.csv")).read().splitlines()
    assert len(rows) == 3 and "stopped_early" in rows[0]
    trial_ids = [row.split(",")[0] for row in rows[1:]]  # Tune's ids, which its trial folders carry too
    folders = [d for d in os.listdir(tune_dir) if d.startswith("trial_fn_")]
    assert all(t != "?" and sum(t in d for d in folders) == 1 for t in trial_ids), (trial_ids, folders)
    assert os.path.isfile(os.path.join(config.sweep_dir, "trials.md"))
    best = read_config_file(os.path.join(config.sweep_dir, "best_config.yaml"))
    assert best["lr"] == 0.05 and TrainConfig(**best).lr == 0.05
    from boostray.apps.evaluate import evaluate_run

    report = evaluate_run(summary["best_run_dir"])
    assert report["accuracy"] == pytest.approx(summary["best_test_accuracy"])
    assert summary["best_val_accuracy"] > 0.8


@pytest.mark.ray
def test_the_sweep_logs_one_mlflow_run_per_trial_under_its_own(sweep):
    from mlflow.tracking import MlflowClient

    config, summary = sweep
    client = MlflowClient(f"sqlite:///{os.path.join(config.sweep_dir, 'mlflow.db')}")
    runs = client.search_runs([client.get_experiment_by_name("boostray").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("boostray.kind") == "group"]
    trials = [r for r in runs if r.data.tags.get("boostray.kind") == "trial"]
    assert parent.info.run_name == "sweep s" and len(trials) == summary["trials"] == 2
    assert sorted(float(r.data.params["lr"]) for r in trials) == [0.0001, 0.05]
    assert sum(r.info.status == "KILLED" for r in trials) == summary["stopped_early"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in trials)
    best = [r for r in runs if r.data.tags.get("boostray.kind") == "train"]
    assert len(best) == 1 and best[0].data.metrics["test_accuracy"] == pytest.approx(summary["best_test_accuracy"])


@pytest.mark.ray
def test_resume_does_not_rerun_finished_trials(sweep):
    config, summary = sweep
    trials = os.path.join(config.sweep_dir, "trials", ".ray")  # each trial's Ray Train storage

    def snapshots():
        return {d: os.path.getmtime(os.path.join(trials, d, "checkpoint_manager_snapshot.json")) for d in os.listdir(trials)}

    before = snapshots()
    assert len(before) == 2
    with pytest.raises(ConfigError, match="already finished"):
        run_sweep(config)
    again = run_sweep(config, resume=True)
    assert again["trials"] == summary["trials"] and again["best_trial"] == summary["best_trial"]
    assert snapshots() == before  # no trial trained again


def test_the_method_axes_can_be_searched(tmp_path):
    space = {"schedule": {"type": "choice", "values": ["decay", "restart"]},
             "placement": {"type": "grid", "values": ["spread", "tail"]},
             "first_member": {"type": "uniform", "low": 0.3, "high": 0.6},
             "reweight": {"type": "choice", "values": ["none", "samme"]},
             "combine": {"type": "choice", "values": ["lambda", "uniform", "greedy", "final"]},
             "restart_lr": {"type": "uniform", "low": 0.2, "high": 1.0},
             "calibrate": {"type": "choice", "values": [True, False]}}
    config = read_sweep_config(write(tmp_path, search_space=space, **{"train.epochs": 12}))
    assert set(config.search_space) == set(space)


def test_cli_name_and_output_overrides_are_checked(tmp_path, capsys):
    assert main(["tune", write(tmp_path), "--name", "../escape"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("boostray: error: name must match")


@pytest.mark.ray
@pytest.mark.cluster  # a second Ray instance on the machine: with the cluster tests (make test-cluster)
def test_a_sweep_beside_another_local_ray_instance_finishes(ray_cluster, tmp_path):
    """`boostray tune` started while another local Ray runs on this machine (the session's, as a served
    model's would be): every process of the sweep's own Ray must know its instance, or Ray Train's
    helpers find two and stop, and the trials after the first ones never start."""
    import signal
    import subprocess
    import sys

    # ASHA stops the weak learning rates early: their worker groups' placement groups are what Ray Train's
    # cleaner frees, and a leaked one leaves the next trials waiting for CPUs for ever
    lrs = [0.05, 0.0001, 0.03, 0.0002, 0.02, 0.0003]
    path = write(tmp_path, **{"search_space": {"lr": {"type": "grid", "values": lrs}}, "train.epochs": 3,
                              "max_concurrent_trials": 2, "resources": {"trial_cpu": 0.1}})
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "boostray"), "tune", path, "--output",
                             str(tmp_path / "sweeps")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)  # its Ray's processes share its process group
    try:
        log = proc.communicate(timeout=420)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the sweep beside another local Ray did not finish in 420 s: " + proc.communicate()[0][-3000:])
    assert proc.returncode == 0, log[-4000:]
    rows = (tmp_path / "sweeps" / "s" / "trials.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + len(lrs), rows
