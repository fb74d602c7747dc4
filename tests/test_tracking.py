"""--mlflow: runs, comparisons and sweeps in a real local MLflow store, read back with MLflow's client."""

import json
import os

import pytest
from mlflow.tracking import MlflowClient

from boostray.cli import main

FAST = ["--workers", "0", "--epochs", "4", "--members", "2"]


def runs_of(uri: str):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("boostray")
    return client, client.search_runs([experiment.experiment_id])


def test_a_run_logs_its_options_curves_members_final_figures_and_ensemble(tmp_path, capsys):
    assert main(["train", *FAST, "--method", "cbnn-paper", "--output", str(tmp_path), "--name", "r", "--mlflow"]) == 0
    assert "logged to MLflow" in capsys.readouterr().out
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the default store: MLflow's embedded one, under --output
    client, (run,) = runs_of(uri)
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert run.info.run_name == "r" and run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "4" and run.data.params["method"] == "cbnn-paper"
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert run.data.metrics["val_crossfit_accuracy"] == pytest.approx(metrics["val_crossfit"]["accuracy"])
    loss = client.get_metric_history(run.info.run_id, "epoch_loss")
    assert sorted(m.step for m in loss) == [1, 2, 3, 4]
    lambdas = client.get_metric_history(run.info.run_id, "member_lambda")
    assert sorted((m.step, round(m.value, 6)) for m in lambdas) == [(m["round"], round(m["lambda"], 6)) for m in metrics["members"]]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"ensemble", "metrics.json", "config.yaml"} <= artifacts
    assert "ensemble/manifest.json" in {a.path for a in client.list_artifacts(run.info.run_id, "ensemble")}
    assert str(tmp_path / "mlflow-artifacts") in run.info.artifact_uri  # nothing written to the working folder


def test_compare_groups_its_runs_under_one_parent(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    assert main(["compare", *FAST, "--methods", "single,cbnn", "--seeds", "1", "--report", str(tmp_path / "rep"),
                 "--mlflow", uri]) == 0
    client, runs = runs_of(uri)
    parents = [r for r in runs if r.data.tags.get("boostray.kind") == "group"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and parents[0].data.params["methods"] == "single,cbnn"
    assert sorted(r.info.run_name for r in children) == ["cbnn-e4-seed0", "single-e4-seed0"]
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    assert "report.html" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}


def test_mlflow_without_the_extra_is_refused_before_any_work(tmp_path):
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import importlib.util, sys
        found = importlib.util.find_spec
        importlib.util.find_spec = lambda name, *a: None if name.split(".")[0] == "mlflow" else found(name, *a)
        from boostray.cli import main
        sys.exit(main(["train", "--workers", "0", "--mlflow", "--output", {str(tmp_path / "out")!r}]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "pip install 'boostray[mlflow]'" in out.stderr
    assert not os.path.exists(tmp_path / "out")
