"""A request for more than the Ray cluster holds (GPUs, or CPUs for the workers) stops at once with one line and
exit code 2: Ray would otherwise wait for ever to place the worker, replica or actor, and nothing falls back to the CPU."""

import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from boostray.cli import main
from boostray.core.data.datasets import load_dataset
from helpers import png_bytes, train_digits_run

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_digits_run(tmp_path_factory.mktemp("gpu-run"), "g", "--members", "2")


def refused(argv: list[str], capsys) -> str:
    started = time.monotonic()
    assert main(argv) == 2
    assert time.monotonic() - started < 60  # it says no; it does not wait for a GPU to appear
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_train_with_gpu_workers_is_refused(ray_cluster, tmp_path, capsys):
    line = refused(["train", "--gpu", "--workers", "2", "--epochs", "2", "--members", "2", "--address", ray_cluster,
                    "--output", str(tmp_path), "--name", "g"], capsys)
    assert "--gpu" in line and "asks for 2 GPU(s)" in line and "has 0" in line
    assert not (tmp_path / "g").exists()


def test_serve_with_gpu_replicas_is_refused(ray_cluster, run_dir, capsys):
    line = refused(["serve", run_dir, "--gpus-per-replica", "0.5", "--address", ray_cluster], capsys)
    assert "--gpus-per-replica" in line and "asks for 0.5 GPU(s)" in line


def test_predict_on_gpu_actors_is_refused(ray_cluster, run_dir, tmp_path, capsys):
    image = load_dataset("digits").test.images[0, 0]
    pq.write_table(pa.table({"id": ["a"], "image": [{"bytes": png_bytes(image), "path": None}]}), tmp_path / "in.parquet")
    line = refused(["predict", run_dir, "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out"),
                    "--gpu", "--address", ray_cluster], capsys)
    assert "--gpu" in line and "asks for 1 GPU(s)" in line
    assert not (tmp_path / "out").exists()


def test_a_worker_group_larger_than_the_cluster_is_refused(ray_cluster, tmp_path, capsys):
    """Three 1-CPU workers on the session's 2-CPU Ray can never be placed: one line, not a wait."""
    line = refused(["train", "--workers", "3", "--epochs", "2", "--members", "2", "--address", ray_cluster,
                    "--output", str(tmp_path), "--name", "c"], capsys)
    assert "--workers 3 x --cpus-per-worker 1 asks for 3 CPU(s)" in line and "has 2" in line
    assert not (tmp_path / "c").exists()


def test_a_streamed_run_without_a_cpu_for_its_read_tasks_is_refused(ray_cluster, tmp_path, capsys):
    """Two 1-CPU workers fit the session's 2-CPU Ray, but streamed through Ray Data they leave no CPU for
    the read tasks, and training would wait for ever for its first batch: one line naming the read task."""
    folder = tmp_path / "data"
    folder.mkdir()
    images = [{"bytes": png_bytes(load_dataset("digits").test.images[i, 0]), "path": None} for i in range(20)]
    pq.write_table(pa.table({"image": images, "label": [i % 2 for i in range(20)]}), folder / "train.parquet")
    line = refused(["train", "--dataset", "parquet", "--data-dir", str(folder), "--stream", "--workers", "2",
                    "--epochs", "2", "--members", "2", "--address", ray_cluster, "--output", str(tmp_path / "out"),
                    "--name", "s"], capsys)
    assert "--workers 2 x --cpus-per-worker 1 and a Ray Data read task (--stream) asks for 3 CPU(s)" in line
    assert "has 2" in line and not (tmp_path / "out" / "s").exists()
