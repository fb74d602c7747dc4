"""The public Python API on real Ray: BoostTrainer with NumPy arrays, a Ray Data dataset and a torch
Dataset; 0, 1 and 2 workers; a user's loss and optimizer; inside a Tune function; the README's quick
start and the ported Ray Train example, run as a user runs them."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import boostray
from boostray import BoostConfig, BoostTrainer
from boostray.errors import ArtifactError, ConfigError, DataError

ROOT = os.path.join(os.path.dirname(__file__), "..")


def blobs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three classes of 10 float features around separated centres, some negative."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    centres = np.random.default_rng(99).normal(0, 2.5, (3, 10))
    return (centres[y] + rng.normal(0, 1.0, (n, 10))).astype(np.float32), y


def local_model():
    """A network defined inside a function: not importable elsewhere, so it travels as an object."""

    class Net(nn.Module):
        def __init__(self, input_shape, num_classes):
            super().__init__()
            self.layers = nn.Sequential(nn.Linear(input_shape[0], 24), nn.ReLU(), nn.Linear(24, num_classes))

        def forward(self, x):
            return self.layers(x)

    return Net


def test_numpy_arrays_in_this_process_with_the_users_loss_and_optimizer(tmp_path):
    from ray.train import RunConfig

    x, y = blobs(600)
    calls = {"optimizer": 0, "loss": 0}

    def optimizer(params):
        calls["optimizer"] += 1
        return torch.optim.AdamW(params, lr=0.01)

    def loss(logits, targets):
        calls["loss"] += 1
        return nn.functional.cross_entropy(logits, targets, reduction="none", label_smoothing=0.1)

    Net = local_model()
    result = BoostTrainer(Net, datasets={"train": (x, y)}, boost_config=BoostConfig(epochs=4, members=2),
                          optimizer=optimizer, loss=loss,
                          run_config=RunConfig(name="numpy", storage_path=str(tmp_path))).fit()
    assert isinstance(result, boostray.BoostResult) and result.ray_result is None and result.path == str(tmp_path / "numpy")
    assert calls["optimizer"] == 1 and calls["loss"] > 10
    assert result.metrics["test"]["accuracy"] > 0.9 and isinstance(result.ensemble, boostray.Ensemble)
    xt, yt = blobs(90, seed=3)
    assert (result.ensemble.predict(xt) == yt).mean() > 0.9
    assert result.config.model.startswith("object:")
    with pytest.raises(ArtifactError, match="load_ensemble\\(path, model="):
        boostray.load_ensemble(result.path)  # no code in the run directory: the object is needed again
    again = boostray.load_ensemble(result.path, model=Net)
    np.testing.assert_allclose(again.predict_proba(xt), result.ensemble.predict_proba(xt), atol=1e-6)


def test_a_loss_that_is_not_per_sample_and_bad_datasets_are_one_line_errors(tmp_path):
    from ray.train import RunConfig

    x, y = blobs(60)
    mean_loss = lambda logits, targets: nn.functional.cross_entropy(logits, targets)  # noqa: E731
    trainer = BoostTrainer("mlp", datasets={"train": (x, y)}, loss=mean_loss, boost_config=BoostConfig(epochs=1, members=1),
                           run_config=RunConfig(name="bad", storage_path=str(tmp_path)))
    with pytest.raises(ConfigError, match="one value per sample"):
        trainer.fit()
    with pytest.raises(ConfigError, match="'train'"):
        BoostTrainer("mlp", datasets={"test": (x, y)})
    with pytest.raises(DataError, match="labels must be integers"):
        BoostTrainer("mlp", datasets={"train": (x, y.astype(float))}).fit()


@pytest.mark.ray
def test_a_ray_data_dataset_on_one_ray_train_worker(ray_cluster, tmp_path):
    import ray
    from ray.train import RunConfig, ScalingConfig

    x, y = blobs(450)
    ds = ray.data.from_items([{"features": row, "target": int(t)} for row, t in zip(x, y)])
    result = BoostTrainer("mlp", datasets={"train": ds}, feature_columns=["features"], label_column="target",
                          model_kwargs={"hidden": 32}, boost_config=BoostConfig(epochs=3, members=2),
                          scaling_config=ScalingConfig(num_workers=1),
                          run_config=RunConfig(name="ray-data", storage_path=str(tmp_path))).fit()
    assert type(result.ray_result).__name__ == "Result" and result.ray_result.error is None
    assert result.metrics["test"]["accuracy"] > 0.9 and len(result.metrics["rank_nodes"]) == 1
    assert result.ensemble.manifest["model"]["kwargs"] == {"hidden": 32}


@pytest.mark.ray
def test_numpy_arrays_and_an_object_model_on_two_workers(ray_cluster, tmp_path):
    from ray.train import RunConfig, ScalingConfig

    x, y = blobs(450)
    result = BoostTrainer(local_model(), datasets={"train": (x, y), "test": blobs(90, seed=5)},
                          boost_config=BoostConfig(epochs=3, members=2), scaling_config=ScalingConfig(num_workers=2),
                          run_config=RunConfig(name="two", storage_path=str(tmp_path))).fit()
    assert len(result.metrics["rank_nodes"]) == 2 and result.metrics["test"]["accuracy"] > 0.9


@pytest.mark.ray
def test_inside_a_tune_function_with_tunes_report_callback(ray_cluster, tmp_path):
    from ray import tune
    from ray.train import RunConfig, ScalingConfig
    from ray.tune.integration.ray_train import TuneReportCallback

    x, y = blobs(300)

    def trainable(params: dict) -> None:
        BoostTrainer("mlp", datasets={"train": (x, y)}, boost_config=BoostConfig(epochs=2, members=2, lr=params["lr"]),
                     scaling_config=ScalingConfig(num_workers=1),
                     run_config=RunConfig(name=f"lr-{params['lr']}", storage_path=str(tmp_path / "runs"),
                                          callbacks=[TuneReportCallback()])).fit()

    tuner = tune.Tuner(trainable, param_space={"lr": tune.grid_search([0.02, 0.1])},
                       tune_config=tune.TuneConfig(metric="val_accuracy", mode="max", max_concurrent_trials=1),
                       run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), name="sweep"))
    results = tuner.fit()
    assert len(results) == 2 and not results.errors
    assert {r.metrics["round"] for r in results} == {2} and results.get_best_result().metrics["val_accuracy"] > 0.8
    assert sorted(os.listdir(tmp_path / "runs")) == [".ray", "lr-0.02", "lr-0.1"]


def python_blocks(path: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", open(path).read(), flags=re.S)


@pytest.mark.ray
def test_the_readme_quick_start_runs_as_printed(tmp_path):
    """The README's library quick start is docs/examples/quickstart.py, word for word, and it runs."""
    code = open(os.path.join(ROOT, "docs", "examples", "quickstart.py")).read()
    assert code.strip() in [b.strip() for b in python_blocks(os.path.join(ROOT, "README.md"))]
    assert len(code.strip().splitlines()) <= 15
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", code.replace("/tmp/boostray_runs", str(tmp_path))], cwd=tmp_path,
                          capture_output=True, text=True, timeout=400, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    path, accuracy, *_ = done.stdout.strip().splitlines()[-1].split()
    assert path == str(tmp_path / "digits-api") and float(accuracy) > 0.8


@pytest.mark.ray
def test_the_ported_ray_train_example_runs_on_two_workers(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, os.path.join(ROOT, "docs", "examples", "fashion_mnist_port.py"), "--synthetic",
                           "--subset", "800", "--epochs", "2", "--members", "2", "--storage-path", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=400, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith(f"Training result: {tmp_path / 'fashion-mnist-port'}: ensemble of"), line
    assert float(re.search(r"test accuracy ([0-9.]+)", line).group(1)) > 0.3  # chance: 0.1
