"""A user's own network and a user's own numbers, as a new user brings them: a model module outside the
repository, torchvision's ResNet-18 named by import path, and tabular features in Parquet. Each run is
then loaded, exported, evaluated, batch-predicted and served by fresh processes."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import synthetic_images

BIN = os.path.join(os.path.dirname(sys.executable), "boostray")

USER_MODULE = '''
"""A user's network, in a module boostray has never seen."""
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, num_classes))
        self.width = width

    def forward(self, x):
        return self.body(x)


def make_net(*, in_channels, num_classes, width=8):
    return TinyNet(in_channels, num_classes, width)
'''


def run(args: list[str], env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    full_env.update(env or {})
    return subprocess.run([BIN, *args], capture_output=True, text=True, env=full_env, timeout=timeout)


@pytest.fixture(scope="module")
def user_code(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("user-code")
    (folder / "usernets.py").write_text(USER_MODULE)
    return str(folder)


@pytest.fixture(scope="module")
def user_run(user_code, tmp_path_factory) -> str:
    """`boostray train --model usernets:make_net --workers 2`: two Ray Train workers that import the module."""
    out = tmp_path_factory.mktemp("user-run")
    done = run(["train", "--model", "usernets:make_net", "--model-kwargs", '{"width": 12}', "--workers", "2",
                "--epochs", "2", "--members", "2", "--output", str(out), "--name", "user"],
               env={"PYTHONPATH": user_code}, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return str(out / "user")


@pytest.mark.ray
def test_a_model_from_a_module_outside_the_repository_trains_on_ray_train_workers(user_run):
    manifest = json.loads(open(os.path.join(user_run, "ensemble", "manifest.json")).read())
    assert manifest["model"] == {"name": "usernets:make_net", "kwargs": {"width": 12}, "num_classes": 10,
                                 "input_shape": [1, 8, 8]}
    metrics = json.loads(open(os.path.join(user_run, "metrics.json")).read())
    assert len(metrics["rank_nodes"]) == 2 and metrics["test"]["accuracy"] > 0.3
    assert not any(f.endswith((".pkl", ".py")) for f in os.listdir(os.path.join(user_run, "ensemble")))  # no code saved


@pytest.mark.ray
def test_fresh_processes_load_export_and_evaluate_the_users_model(user_run, user_code):
    env = {"PYTHONPATH": user_code}
    script = textwrap.dedent(f"""
        import boostray, numpy as np
        ens = boostray.load_ensemble({user_run!r})
        print(type(ens.members[0]).__name__, ens.members[0].width, ens.predict(np.zeros((2, 1, 8, 8), np.uint8)).shape)
    """)
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, **env})
    assert loaded.returncode == 0 and loaded.stdout.split() == ["TinyNet", "12", "(2,)"], loaded.stderr[-2000:]
    exported = run(["export", user_run, "--check", "16"], env=env)
    assert exported.returncode == 0 and "max |difference|" in exported.stdout, exported.stderr[-2000:]
    evaluated = run(["evaluate", user_run], env=env)
    assert evaluated.returncode == 0 and "accuracy" in evaluated.stdout, evaluated.stderr[-2000:]
    missing = run(["evaluate", user_run])  # the module is not importable: one line naming it, exit 2
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "usernets" in missing.stderr, missing.stderr


@pytest.mark.ray
def test_predict_and_serve_import_the_users_model_in_their_ray_processes(user_run, user_code, tmp_path):
    import urllib.request

    from cluster import free_port

    images = np.random.default_rng(0).integers(0, 256, (6, 1, 8, 8), dtype=np.uint8)
    pq.write_table(pa.table({"id": list(range(6)), "image": [im.reshape(-1).tolist() for im in images]}),
                   tmp_path / "in.parquet")
    predicted = run(["predict", user_run, "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out")],
                    env={"PYTHONPATH": user_code})
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert pq.read_table(tmp_path / "out").num_rows == 6
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([BIN, "serve", user_run, "--port", str(port), "--cpus-per-replica", "0.25"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**env, "PYTHONPATH": user_code},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("serving "):
                break
        body = json.dumps({"instances": images[:2].tolist()}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/user:predict", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert len(json.loads(resp.read())["predictions"]) == 2, "".join(lines[-20:])
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_a_model_that_cannot_be_imported_or_built_stops_with_one_line(tmp_path, user_code):
    from boostray.cli import main

    for model, words in (("no_such_module:net", "cannot import no_such_module"),
                         ("usernets:nothing", "has no attribute 'nothing'")):
        done = run(["train", "--workers", "0", "--model", model, "--output", str(tmp_path)], env={"PYTHONPATH": user_code})
        assert done.returncode == 2 and words in done.stderr and done.stderr.count("\n") == 1, done.stderr
    broken = run(["train", "--workers", "0", "--model", "usernets:make_net", "--model-kwargs", '{"depth": 3}',
                  "--output", str(tmp_path)], env={"PYTHONPATH": user_code})
    assert broken.returncode == 2 and "usernets:make_net failed to build" in broken.stderr, broken.stderr
    assert os.listdir(tmp_path) == []  # nothing written
    assert main(["models"]) == 0


def test_torchvision_resnet18_by_import_path_on_a_three_channel_image_folder(tmp_path):
    from PIL import Image

    images, labels = synthetic_images(48, classes=2, size=32, channels=3)
    for split, rows in (("train", range(0, 36)), ("test", range(36, 48))):
        for i in rows:
            folder = tmp_path / "data" / split / f"c{labels[i]}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(folder / f"{i}.png")
    done = run(["train", "--workers", "0", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"),
                "--model", "torchvision.models:resnet18", "--epochs", "1", "--members", "1", "--method", "single",
                "--output", str(tmp_path / "out"), "--name", "r18"])
    assert done.returncode == 0, done.stderr[-3000:]
    script = ("import boostray, numpy as np; e = boostray.load_ensemble(%r); "
              "print(type(e.members[0]).__name__, e.members[0].conv1.in_channels, e.predict_proba(np.zeros((1, 3, 32, 32), np.uint8)).shape)"
              % str(tmp_path / "out" / "r18"))
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert loaded.stdout.split() == ["ResNet", "3", "(1,", "2)"], loaded.stderr[-2000:]


def tabular(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """16 features a row, some negative, large or fractional; the class is a linear rule over them."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, 16)) * np.linspace(0.5, 300, 16)).astype(np.float32)
    y = (x[:, 0] / 0.5 - x[:, 15] / 300 > 0).astype(np.int64) + (x[:, 3] > 0)
    return x, y


def write_tabular(folder, n_train: int = 500, n_test: int = 200) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        x, y = tabular(n, seed)
        pq.write_table(pa.table({"image": [row.tolist() for row in x], "label": y}), folder / f"{split}-0.parquet")
    return str(folder)


def test_tabular_features_train_with_mlp_and_are_never_read_as_pixels(tmp_path):
    from boostray.cli import main
    from boostray.core.data.datasets import load_dataset
    from boostray.errors import DataError

    data = write_tabular(tmp_path / "tab")
    with pytest.raises(DataError, match="not pixel values.*--feature-columns"):
        load_dataset("parquet", data)  # a 4x4 'image' with negative values: refused, not clipped
    refused = run(["train", "--workers", "0", "--dataset", "parquet", "--data-dir", data, "--output", str(tmp_path / "o1")])
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--feature-columns" in refused.stderr
    assert not os.path.exists(tmp_path / "o1") or os.listdir(tmp_path / "o1") == []
    assert main(["train", "--workers", "0", "--dataset", "parquet", "--data-dir", data, "--feature-columns", "image",
                 "--model", "mlp", "--epochs", "8", "--members", "2", "--standardize", "--output", str(tmp_path / "o"),
                 "--name", "tab"]) == 0
    run_dir = tmp_path / "o" / "tab"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.75  # chance is below 0.5 (three classes)
    manifest = json.loads((run_dir / "ensemble" / "manifest.json").read_text())
    assert manifest["input_kind"] == "features" and manifest["input_shape"] == [16]
    assert manifest["normalization"]["scale"] == 1.0 and len(manifest["normalization"]["mean"]) == 16
    from boostray import load_ensemble

    x, y = tabular(200, 1)
    assert (load_ensemble(str(run_dir)).predict(x) == y).mean() == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)
    assert main(["export", str(run_dir), "--check", "32"]) == 0  # float32 features in, probabilities out


@pytest.mark.ray
def test_features_are_served_v1_and_oip_and_batch_predicted(ray_cluster, tmp_path):
    import urllib.request

    from ray import serve

    from boostray import load_ensemble
    from boostray.apps.batch_predict import predict_parquet
    from boostray.apps.serving import build_app
    from boostray.cli import main
    from cluster import free_port

    data = write_tabular(tmp_path / "tab", n_train=200, n_test=50)
    assert main(["train", "--workers", "0", "--dataset", "parquet", "--data-dir", data, "--feature-columns", "image",
                 "--model", "mlp", "--epochs", "2", "--members", "2", "--output", str(tmp_path / "o"), "--name", "f"]) == 0
    run_dir = str(tmp_path / "o" / "f")
    x, _ = tabular(8, 5)
    expected = load_ensemble(run_dir).predict_proba(x)
    pq.write_table(pa.table({"id": list(range(8)), "image": [r.tolist() for r in x]}), tmp_path / "in.parquet")
    assert predict_parquet(run_dir, str(tmp_path / "in.parquet"), str(tmp_path / "out.parquet"), batch_size=4,
                           cpus_per_actor=0.5) == 8
    out = pq.read_table(tmp_path / "out.parquet").to_pandas().sort_values("id")
    np.testing.assert_allclose(np.stack(out["probabilities"].to_numpy()), expected, atol=1e-5)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app({"run_dir": run_dir, "cpus_per_replica": 0.25}), name="features", route_prefix="/")

        def post(path: str, body: dict) -> dict:
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as resp:
                return json.loads(resp.read())

        v1 = post("/v1/models/f:predict", {"instances": x.tolist()})
        np.testing.assert_allclose([p["probabilities"] for p in v1["predictions"]], expected, atol=1e-5)
        v2 = post("/v2/models/f/infer", {"inputs": [{"name": "images", "datatype": "FP32", "shape": [8, 16],
                                                      "data": x.reshape(-1).tolist()}]})
        proba = next(o for o in v2["outputs"] if o["name"] == "probabilities")
        np.testing.assert_allclose(np.array(proba["data"]).reshape(8, -1), expected, atol=1e-5)
    finally:
        serve.shutdown()
