"""Runs kept at a storage URI: `file://` and a real S3-compatible server (moto_server, a local process
speaking the S3 HTTP API) through pyarrow; Ray Train's checkpoints, the members and the run directory
go there, and load / evaluate / serve read from there."""

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from boostray import load_ensemble
from boostray.cli import main
from boostray.core.artifact import storage
from boostray.core.data.datasets import load_dataset
from cluster import free_port


def test_join_keeps_the_query_string_last():
    assert storage.join("s3://b/runs?endpoint_override=h:1&scheme=http", "r", "x.pt") == \
        "s3://b/runs/r/x.pt?endpoint_override=h:1&scheme=http"
    assert storage.join("/tmp/a", "b") == "/tmp/a/b"


def test_file_uri_write_read_exists_and_a_cached_local_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    uri = f"file://{tmp_path}/store/run"
    assert not storage.exists(storage.join(uri, "a.bin"))
    storage.write_bytes(storage.join(uri, "a.bin"), b"abc")
    assert storage.exists(storage.join(uri, "a.bin")) and storage.read_bytes(storage.join(uri, "a.bin")) == b"abc"
    copy = storage.local_copy(uri)
    assert copy.startswith(str(tmp_path / "cache")) and open(os.path.join(copy, "a.bin"), "rb").read() == b"abc"
    assert storage.local_copy(uri) == copy  # fetched once


def test_a_bad_uri_is_one_line(tmp_path, capsys):
    assert main(["evaluate", "nosuchfs://bucket/run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nosuchfs://bucket/run" in err[0]


def test_workers_0_and_compare_refuse_a_uri_before_any_work(tmp_path, capsys):
    assert main(["train", "--workers", "0", "--output", f"file://{tmp_path}/runs"]) == 2
    assert main(["compare", "--report", f"file://{tmp_path}/report", "--methods", "single"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--workers 0" in err[0] and "--report" in err[1]
    assert not os.listdir(tmp_path)


def check_uri_run(uri: str, name: str, local_dir: str | None, monkeypatch, tmp_path) -> None:
    """The run at ``uri`` loads, evaluates and is served from there, and equals its local form."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    run = storage.join(uri, name)
    assert storage.exists(storage.join(run, "metrics.json")) and storage.exists(storage.join(run, "ensemble", "manifest.json"))
    assert storage.exists(storage.join(uri, ".ray", name, "members", "round_0002.pt"))  # members written by the workers
    assert storage.exists(storage.join(uri, ".ray", name, "round_0002", "state.pt"))  # Ray Train's checkpoint
    metrics = json.loads(storage.read_bytes(storage.join(run, "metrics.json")))
    images = load_dataset("digits").test.images[:50]
    ensemble = load_ensemble(run)
    if local_dir is not None:
        np.testing.assert_array_equal(ensemble.predict_proba(images), load_ensemble(local_dir).predict_proba(images))
    from boostray.apps.evaluate import evaluate_run
    from boostray.apps.serving import build_app

    assert evaluate_run(run)["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert build_app({"run_dir": run}) is not None  # the manifest is read (and checked) through the URI


def train_to(uri: str, ray_address: str) -> int:
    return main(["train", "--epochs", "2", "--members", "2", "--address", ray_address, "--name", "uri-run", "--output", uri])


@pytest.fixture(scope="module")
def file_store(ray_cluster, tmp_path_factory):
    store = tmp_path_factory.mktemp("file-store")
    assert train_to(f"file://{store}", ray_cluster) == 0
    return store


@pytest.mark.ray
def test_a_run_trained_to_a_file_uri_is_read_back_from_it(ray_cluster, file_store, tmp_path, monkeypatch, capsys):
    assert os.path.isfile(file_store / "uri-run" / "metrics.json")
    assert not [p for p in os.listdir(file_store) if "partial" in p]
    check_uri_run(f"file://{file_store}", "uri-run", None, monkeypatch, tmp_path)
    capsys.readouterr()
    assert train_to(f"file://{file_store}", ray_cluster) == 2  # a finished run is never overwritten
    assert "already finished" in capsys.readouterr().err


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto_server on 127.0.0.1; a bucket made through pyarrow as a user would."""
    import pyarrow.fs

    port = free_port()
    log = open(tmp_path_factory.mktemp("s3") / "moto.log", "w")
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"127.0.0.1:{port}"
    fs = pyarrow.fs.S3FileSystem(access_key="testing", secret_key="testing", endpoint_override=endpoint,
                                 scheme="http", allow_bucket_creation=True)
    deadline, pause = time.monotonic() + 60, threading.Event()
    while True:
        try:
            fs.create_dir("runs")
            break
        except OSError:  # not listening yet
            if time.monotonic() > deadline or server.poll() is not None:
                raise
            pause.wait(0.2)
    yield f"s3://testing:testing@runs/boostray?endpoint_override={endpoint}&scheme=http"
    server.terminate()
    server.wait(timeout=30)


@pytest.mark.ray
def test_a_run_trained_to_s3_equals_the_file_one_and_is_read_back(ray_cluster, s3_server, file_store, tmp_path, monkeypatch):
    assert train_to(s3_server, ray_cluster) == 0  # the same options and seed as the file:// run
    check_uri_run(s3_server, "uri-run", str(file_store / "uri-run"), monkeypatch, tmp_path)


@pytest.mark.ray
def test_predict_reads_and_writes_s3_uris(ray_cluster, s3_server, file_store, capsys):
    """`boostray predict` with its input and output in S3 and the run at a file:// URI: every node reads and
    writes the URIs through Ray Data; the output is complete once its _SUCCESS marker is there."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from helpers import png_bytes

    images = load_dataset("digits").test.images[:30]
    table = pa.table({"id": pa.array(range(30)), "image": pa.array([{"bytes": png_bytes(im[0]), "path": None} for im in images])})
    fs, base = storage.filesystem(storage.join(s3_server, "predict"))
    fs.create_dir(base, recursive=True)
    pq.write_table(table, f"{base}/in.parquet", filesystem=fs)
    run, out = f"file://{file_store}/uri-run", storage.join(s3_server, "predict", "out")
    assert main(["predict", run, "--input", storage.join(s3_server, "predict", "in.parquet"), "--output", out,
                 "--address", ray_cluster, "--batch-size", "8", "--cpus-per-actor", "0.5"]) == 0
    assert "wrote 30 predictions" in capsys.readouterr().out
    assert storage.exists(storage.join(out, "_SUCCESS"))
    got = pq.read_table(f"{base}/out", filesystem=fs).to_pandas().sort_values("id")
    expected = load_ensemble(str(file_store / "uri-run")).predict_proba(images)
    assert got["label"].tolist() == expected.argmax(1).tolist()
    np.testing.assert_allclose(np.stack(got["probabilities"].to_numpy()), expected, atol=1e-5)
    assert main(["predict", run, "--input", storage.join(s3_server, "predict", "in.parquet"), "--output", out,
                 "--address", ray_cluster]) == 2  # an output is never overwritten
    assert "already exists" in capsys.readouterr().err


@pytest.mark.ray
def test_a_sweep_at_an_s3_uri_keeps_its_trials_state_and_results_there(ray_cluster, s3_server, tmp_path, monkeypatch, capsys):
    """`boostray tune --output s3://...`: Tune's state, the trials' checkpoints and members, the tables and
    the best trial's run directory all in S3; the best run is read back from there."""
    import yaml

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    sweep = {"name": "s3-sweep", "train": {"dataset": "digits", "epochs": 2, "members": 2, "workers": 1, "cpus_per_worker": 0.5},
             "search_space": {"lr": {"type": "grid", "values": [0.05]}}, "num_samples": 1}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    output = storage.join(s3_server, "sweeps")
    assert main(["tune", str(tmp_path / "sweep.yaml"), "--output", output, "--address", ray_cluster]) == 0
    sweep_dir = storage.join(output, "s3-sweep")
    assert "best ensemble: " + storage.join(sweep_dir, "best") in capsys.readouterr().out
    summary = json.loads(storage.read_bytes(storage.join(sweep_dir, "summary.json")))
    assert summary["trials"] == 1 and summary["errored"] == 0 and summary["best_run_dir"] == storage.join(sweep_dir, "best")
    assert storage.read_bytes(storage.join(sweep_dir, "trials.csv")).decode().startswith("trial,lr,")
    trial = summary["best_trial"]
    assert storage.exists(storage.join(sweep_dir, "trials", ".ray", f"trial-{trial}", "members", "round_0002.pt"))
    assert storage.exists(storage.join(sweep_dir, "tune", "s3-sweep"))
    from boostray.apps.evaluate import evaluate_run

    assert evaluate_run(summary["best_run_dir"])["accuracy"] == pytest.approx(summary["best_test_accuracy"])
    assert not os.path.exists(os.path.expanduser(os.path.join("~", "boostray_runs", "s3-sweep")))


def upload_tree(local: str, fs, base: str) -> None:
    """Every file under ``local`` to ``base`` in ``fs``, as a user's `aws s3 sync` would."""
    for folder, _, files in os.walk(local):
        target = f"{base}/{os.path.relpath(folder, local)}".replace("/.", "")
        fs.create_dir(target, recursive=True)
        for name in files:
            with open(os.path.join(folder, name), "rb") as src, fs.open_output_stream(f"{target}/{name}") as dst:
                dst.write(src.read())


def write_image_folder(root, per_class: int = 40) -> str:
    from helpers import png_bytes, synthetic_images

    images, labels = synthetic_images(3 * per_class, size=8, channels=3)
    for i, (im, y) in enumerate(zip(images, labels)):
        os.makedirs(root / "train" / f"c{y}", exist_ok=True)
        (root / "train" / f"c{y}" / f"{i:04d}.png").write_bytes(png_bytes(im))
    return str(root)


@pytest.mark.ray
@pytest.mark.parametrize("kind", ["parquet", "imagefolder"])
def test_training_streams_parquet_and_image_folders_from_s3(ray_cluster, s3_server, tmp_path, kind):
    """--data-dir s3://...: the driver lists the files and reads the labels and a sample there; Ray Data
    tasks read the training images from S3; loading the same files in memory from S3 equals loading
    them from disk."""
    from boostray.config import TrainConfig
    from boostray.distributed.trainer import train
    from test_streaming import write_grouped

    local = write_grouped(tmp_path / "pq", n=300, rows_per_group=50) if kind == "parquet" else write_image_folder(tmp_path / "img", per_class=100)
    uri = storage.join(s3_server, "data", kind)
    upload_tree(local, *storage.filesystem(uri))
    from_disk, from_s3 = load_dataset(kind, local), load_dataset(kind, uri)
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(from_s3, part).images, getattr(from_disk, part).images)
        np.testing.assert_array_equal(getattr(from_s3, part).labels, getattr(from_disk, part).labels)
    config = TrainConfig(dataset=kind, data_dir=uri, stream=True, workers=1, cpus_per_worker=0.5, epochs=3, members=2,
                         output=str(tmp_path / "runs"), name=f"s3-{kind}")
    _, metrics = train(config)
    assert metrics["stream_reader"] == "ray-data"
    assert [e["samples"] for e in metrics["epochs"]] == [len(from_disk.train)] * 3
    assert metrics["test"]["accuracy"] > 0.8
