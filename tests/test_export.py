"""boostray export: one ONNX / torch.export file equal to load_ensemble's predictions."""

import json
import os

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from boostray import load_ensemble
from boostray.cli import main
from boostray.core.data.datasets import load_dataset
from boostray.core.artifact.ensemble import write_ensemble
from boostray.core.models import create_model
from helpers import train_digits_run

TOLERANCE = 1e-5  # float32 graphs: ONNX Runtime and PyTorch differ by rounding only


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    return train_digits_run(tmp_path_factory.mktemp("export"), "r", "--members", "2", "--method", "checkpoint")


def resnet_artifact(path, vote="soft", temperature=1.7):
    spec = {"num_classes": 10, "in_channels": 3, "image_size": 32}
    states = []
    for seed in range(3):
        torch.manual_seed(seed)
        states.append(create_model("resnet20", **spec).state_dict())
    write_ensemble(str(path), member_states=states,
                   member_info=[{"weight": w, "epoch": i + 1, "round": i + 1} for i, w in enumerate((1.0, 2.0, 1.0))],
                   manifest={"method": "cbnn", "model": {"name": "resnet20", "kwargs": spec}, "input_shape": [3, 32, 32],
                             "normalization": {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]},
                             "classes": [str(c) for c in range(10)], "vote": vote, "temperature": temperature})
    return str(path)


def run_onnx(path, images):
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})[0]


def test_onnx_equals_load_ensemble_on_the_test_split_for_any_batch_size(digits_run, capsys):
    assert main(["export", digits_run, "--check", "32"]) == 0
    assert "max |difference|" in capsys.readouterr().out
    path = os.path.join(digits_run, "ensemble.onnx")
    ens, test = load_ensemble(digits_run), load_dataset("digits").test
    np.testing.assert_allclose(run_onnx(path, test.images), ens.predict_proba(test.images), atol=TOLERANCE)
    np.testing.assert_allclose(run_onnx(path, test.images[:1]), ens.predict_proba(test.images[:1]), atol=TOLERANCE)
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    manifest = json.loads(open(os.path.join(digits_run, "ensemble", "manifest.json")).read())
    assert json.loads(meta["boostray.member_sha256"]) == [m["sha256"] for m in manifest["members"]]
    assert float(meta["boostray.temperature"]) == pytest.approx(manifest["temperature"])


@pytest.mark.parametrize("vote", ["soft", "hard"])
def test_onnx_and_torch_export_of_a_cifar_resnet_ensemble(tmp_path, vote):
    run_dir = resnet_artifact(tmp_path / "ensemble", vote=vote)
    images = np.random.default_rng(0).integers(0, 256, (16, 3, 32, 32), dtype=np.uint8)
    expected = load_ensemble(run_dir).predict_proba(images)
    onnx_path, pt2_path = str(tmp_path / "e.onnx"), str(tmp_path / "e.pt2")
    assert main(["export", run_dir, "--output", onnx_path]) == 0
    assert main(["export", run_dir, "--format", "torch-export", "--output", pt2_path]) == 0
    np.testing.assert_allclose(run_onnx(onnx_path, images), expected, atol=TOLERANCE)
    program = torch.export.load(pt2_path).module()
    with torch.no_grad():
        for batch in (images, images[:1]):
            np.testing.assert_allclose(program(torch.from_numpy(batch)).numpy(), expected[: len(batch)], atol=TOLERANCE)


def test_export_refuses_bad_input_with_one_line(tmp_path, capsys):
    for argv, message in ((["export", str(tmp_path / "nope")], "no ensemble manifest"),
                          (["export", resnet_artifact(tmp_path / "a"), "--format", "torch-export", "--check", "4"], "--check runs"),
                          (["export", str(tmp_path / "a"), "--output", str(tmp_path / "no" / "x.onnx")], "existing folder")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
    assert not os.path.exists(tmp_path / "no")
