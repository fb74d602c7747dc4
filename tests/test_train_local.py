"""Ray Train's local mode (workers=0): the whole training path in-process, through the CLI."""

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from boostray import load_ensemble
from boostray.cli import main

FAST = ["--workers", "0", "--epochs", "4", "--members", "2"]


@pytest.fixture(scope="module")
def cbnn_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    # lambda weights, so that the manifest's weights are the members' lambdas (the default weighs them equally)
    assert main(["train", *FAST, "--combine", "lambda", "--output", str(out), "--name", "cbnn", "--seed", "3"]) == 0
    return out / "cbnn"


def test_run_directory_holds_artifact_metrics_weights_and_config(cbnn_run, capsys):
    manifest = json.loads((cbnn_run / "ensemble" / "manifest.json").read_text())
    assert manifest["format_version"] == 3 and manifest["method"] == "cbnn-tail"
    assert manifest["model"]["name"] == "small_cnn" and manifest["input_shape"] == [1, 8, 8]
    assert [m["epoch"] for m in manifest["members"]] == [2, 4]
    assert all(m["weight"] > 0 and len(m["sha256"]) == 64 for m in manifest["members"])

    metrics = json.loads((cbnn_run / "metrics.json").read_text())
    assert [m["lambda"] for m in metrics["members"]] == [m["weight"] for m in manifest["members"]]
    for key in ("accuracy", "nll", "ece", "staged_accuracy", "disagreement", "single_accuracy", "balanced_accuracy"):
        assert key in metrics["test"]
    assert len(metrics["ess"]) == 2 and 0 < metrics["ess"][0] < 1  # round 1 re-weighted the samples
    assert 0 < metrics["train_seconds"] < metrics["wall_seconds"]
    assert metrics["test"]["accuracy"] > 0.8

    table = pq.read_table(cbnn_run / "sample_weights.parquet").to_pydict()
    assert set(table) == {"index", "label", "round_1", "round_2", "final"}
    np.testing.assert_allclose(table["round_1"], 1 / len(table["index"]), rtol=1e-6)  # round 1: uniform
    assert np.std(table["round_2"]) > 0 and sum(table["round_2"]) == pytest.approx(1, rel=1e-4)

    ens = load_ensemble(str(cbnn_run))
    from boostray.core.data.datasets import load_dataset

    test = load_dataset("digits").test
    assert (ens.predict(test.images) == test.labels).mean() == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)
    assert not [p for p in os.listdir(cbnn_run.parent) if p.startswith(".cbnn.partial")]


def test_same_seed_same_ensemble_and_config_repeats_the_run(cbnn_run, tmp_path):
    config = yaml.safe_load((cbnn_run / "config.yaml").read_text())
    assert config["seed"] == 3 and "name" not in config
    assert main(["train", "--config", str(cbnn_run / "config.yaml"), "--output", str(tmp_path), "--name", "again"]) == 0
    a, b = load_ensemble(str(cbnn_run)), load_ensemble(str(tmp_path / "again"))
    np.testing.assert_array_equal(a.weights, b.weights)
    for ma, mb in zip(a.members, b.members):
        for ta, tb in zip(ma.state_dict().values(), mb.state_dict().values()):
            assert torch.equal(ta, tb)


@pytest.mark.parametrize("method,members", [("single", 1), ("checkpoint", 2)])
def test_baseline_methods_have_uniform_members(tmp_path, method, members):
    assert main(["train", *FAST, "--method", method, "--output", str(tmp_path), "--name", method]) == 0
    manifest = json.loads((tmp_path / method / "ensemble" / "manifest.json").read_text())
    assert len(manifest["members"]) == members
    assert all(m["weight"] == 1.0 for m in manifest["members"])
    weights = pq.read_table(tmp_path / method / "sample_weights.parquet").column("final").to_numpy()
    assert np.ptp(weights) == 0  # never re-weighted


def test_running_error_source_and_hard_vote(tmp_path):
    assert main(["train", *FAST, "--error-source", "running", "--vote", "hard", "--output", str(tmp_path), "--name", "r"]) == 0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["members"][0]["raw_error"] > 0 and metrics["ess"][0] < 1


def test_evaluate_reports_staged_accuracy(cbnn_run, capsys):
    assert main(["evaluate", str(cbnn_run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    metrics = json.loads((cbnn_run / "metrics.json").read_text())
    assert report["samples"] == metrics["samples"]["test"]
    assert report["staged_accuracy"] == pytest.approx(metrics["test"]["staged_accuracy"])


def test_levers_lambda_from_validation_ess_bound_and_uniform_mixing(tmp_path):
    args = ["--lambda-source", "val", "--eta", "1", "--ess-min", "0.9", "--mix-uniform", "0.1"]
    assert main(["train", *FAST, *args, "--output", str(tmp_path), "--name", "lev"]) == 0
    metrics = json.loads((tmp_path / "lev" / "metrics.json").read_text())
    from boostray.core.method.boosting import checkpoint_weight, clamp_error

    for m in metrics["members"]:  # lambda_m from the member's validation error, not the training error
        assert m["error"] == pytest.approx(clamp_error(1 - m["val_accuracy"], 10))
        assert m["lambda"] == pytest.approx(checkpoint_weight(m["error"], 10))
    first = metrics["members"][0]
    assert 0 < first["eta"] < 1  # eta = 1 would drop the ESS far below 0.9 on digits: the bound bit
    assert metrics["ess"][0] >= 0.9 - 1e-6
    weights = pq.read_table(tmp_path / "lev" / "sample_weights.parquet").column("round_2").to_numpy()
    assert weights.min() >= 0.1 / weights.size * (1 - 1e-5)  # mixing keeps gamma / n for every sample


def test_the_run_records_calibration_crossfit_and_every_combination_rule(cbnn_run):
    metrics = json.loads((cbnn_run / "metrics.json").read_text())
    manifest = json.loads((cbnn_run / "ensemble" / "manifest.json").read_text())
    assert manifest["temperature"] == metrics["temperature"] > 0
    assert manifest["method_axes"]["reweight"] == "samme" and manifest["method_axes"]["member_epochs"] == [2, 4]
    # the temperature was fitted on validation by NLL: it cannot make validation NLL worse
    assert metrics["val"]["nll"] <= metrics["val"]["uncalibrated"]["nll"] + 1e-9
    assert set(metrics["val_crossfit"]) == {"accuracy", "nll", "ece"}
    assert set(metrics["combinations"]) == {"lambda", "uniform", "greedy", "final"}
    final = metrics["combinations"]["final"]
    assert final["weights"] == [0.0, 1.0] and final["test"]["accuracy"] == pytest.approx(metrics["test"]["single_accuracy"])
    greedy = metrics["combinations"]["greedy"]
    val_acc = [m["val_accuracy"] for m in metrics["members"]]
    assert any(w >= 1 for w, a in zip(greedy["weights"], val_acc) if a == max(val_acc))  # starts at the best member


def test_summary_puts_the_ensemble_against_its_final_network_on_validation_and_warns_when_worse():
    from boostray.cli import format_summary

    member = {"epoch": 4, "lambda": 3.0, "error": 0.1, "weight": 1.0, "val_accuracy": 0.9, "test_accuracy": 0.9}
    metrics = {"members": [member, {**member, "weight": 0.0}], "method": "cbnn", "temperature": 1.2,
               "val": {"single_accuracy": 0.90}, "val_crossfit": {"accuracy": 0.92},
               "test": {"accuracy": 0.91, "nll": 0.3, "ece": 0.02, "single_accuracy": 0.9},
               "train_seconds": 1.0, "wall_seconds": 2.0}
    text = format_summary("RUN", metrics)
    assert "validation: ensemble of 1 (cbnn) 0.9200 (cross-fitted), final network alone 0.9000: +2.00 points" in text
    assert "warning" not in text
    worse = format_summary("RUN", {**metrics, "val_crossfit": {"accuracy": 0.895}})
    assert worse.splitlines()[-1].startswith("warning: on validation the ensemble is 0.50 points WORSE")


def test_sample_weights_are_written_a_row_group_at_a_time(tmp_path, monkeypatch):
    """sample_weights.parquet holds every sample's index, label and weights whatever the row groups it is
    written in (small ones here: several groups, the last one short)."""
    import boostray.core.artifact.run_directory as run_directory
    from boostray.core.data.datasets import load_dataset
    from boostray.core.method.boost_state import BoostState

    monkeypatch.setattr(run_directory, "SAMPLE_WEIGHTS_GROUP_ROWS", 100)
    data = load_dataset("digits")
    n = len(data.train)
    rng = np.random.default_rng(0)
    history = [rng.random(n).astype(np.float32) for _ in range(2)]
    state = BoostState(weights=rng.random(n), weights_history=history)
    path = tmp_path / "sample_weights.parquet"
    run_directory.write_sample_weights(str(path), state, data)
    assert pq.ParquetFile(path).num_row_groups == -(-n // 100) > 2
    table = pq.read_table(path).to_pydict()
    np.testing.assert_array_equal(table["index"], np.arange(n))
    np.testing.assert_array_equal(table["label"], data.train.labels)
    np.testing.assert_array_equal(table["round_2"], history[1])
    np.testing.assert_array_equal(table["final"], state.weights.astype(np.float32))
