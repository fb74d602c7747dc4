"""Batch inference over Parquet with Ray Data, compared with in-process prediction."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from boostray import load_ensemble
from boostray.cli import main
from boostray.core.data.datasets import load_dataset
from helpers import png_bytes

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("predict-run")
    assert main(["train", "--workers", "0", "--epochs", "2", "--members", "2", "--output", str(out), "--name", "p"]) == 0
    return str(out / "p")


@pytest.fixture(scope="module")
def test_images():
    split = load_dataset("digits").test
    return split.images[:40], split.labels[:40]


def test_batch_predict_parquet_equals_in_process(ray_cluster, run_dir, tmp_path, test_images):
    from boostray.apps.batch_predict import predict_parquet

    images, _ = test_images
    table = pa.table({
        "id": pa.array([f"img-{i}" for i in range(len(images))]),
        "image": pa.array([{"bytes": png_bytes(im[0]), "path": None} for im in images]),
    })
    pq.write_table(table, tmp_path / "in.parquet")
    rows = predict_parquet(run_dir, str(tmp_path / "in.parquet"), str(tmp_path / "out.parquet"), batch_size=16, cpus_per_actor=0.5)
    assert rows == len(images)
    out = pq.read_table(tmp_path / "out.parquet").to_pandas().sort_values("id", key=lambda s: s.str[4:].astype(int))
    expected = load_ensemble(run_dir).predict_proba(images)
    assert out["id"].tolist() == [f"img-{i}" for i in range(len(images))]
    assert out["label"].tolist() == expected.argmax(1).tolist()
    np.testing.assert_allclose(np.stack(out["probabilities"].to_numpy()), expected, atol=1e-5)


def test_cli_predict_refuses_bad_input_before_starting_ray(run_dir, tmp_path, capsys):
    pq.write_table(pa.table({"image": pa.array([[0.0] * 64])}), tmp_path / "noid.parquet")
    assert main(["predict", run_dir, "--input", str(tmp_path / "noid.parquet"), "--output", str(tmp_path / "o")]) == 2
    assert "no 'id' column" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_images_are_decoded_by_cpu_tasks_never_inside_gpu_actors(ray_cluster, run_dir, tmp_path, capsys):
    """The optimized plan that Ray Data would run: the decoding in CPU tasks, the GPU actor pool doing the
    forward alone (nothing runs: this machine has no GPU)."""
    from boostray.apps.batch_predict import prediction_dataset

    pq.write_table(pa.table({"id": pa.array([0]), "image": pa.array([[0.0] * 64])}), tmp_path / "in.parquet")
    capsys.readouterr()
    prediction_dataset(run_dir, str(tmp_path / "in.parquet"), gpu=True).explain()
    plan = capsys.readouterr().out.split("Physical Plan (Optimized) --------")[1]
    operators = [line.strip("+- ") for line in plan.splitlines() if "[" in line]
    assert [o for o in operators if o.startswith("ActorPool")] == ["ActorPoolMapOperator[MapBatches(EnsemblePredictor)]"], plan
    assert any(o.startswith("TaskPoolMapOperator[") and "MapBatches(decode_pixels)" in o for o in operators), plan
