import json
import os

import numpy as np
import pytest
import torch

from boostray import load_ensemble
from boostray.core.method.boosting import vote
from boostray.core.artifact.ensemble import write_ensemble
from boostray.errors import ArtifactError
from boostray.core.models import create_model

SPEC = {"num_classes": 4, "in_channels": 1, "image_size": 8}


def make_artifact(path, weights=(0.5, 2.0, 1.0), mode="soft", temperature=None, lean=0.0):
    """``lean``: member m's output bias for class m is raised by this much, so that the members disagree."""
    states = []
    for seed in range(len(weights)):
        torch.manual_seed(seed)
        sd = create_model("small_cnn", **SPEC).state_dict()
        bias = [k for k, v in sd.items() if v.ndim == 1 and v.numel() == SPEC["num_classes"]][-1]
        sd[bias][seed] += lean
        states.append(sd)
    write_ensemble(
        str(path), member_states=states,
        member_info=[{"weight": w, "epoch": i + 1, "round": i + 1, "error": 0.1} for i, w in enumerate(weights)],
        manifest={"method": "cbnn", "model": {"name": "small_cnn", "kwargs": SPEC}, "input_shape": [1, 8, 8],
                  "normalization": {"scale": 255.0, "mean": [0.3], "std": [0.2]}, "classes": list("abcd"), "vote": mode,
                  **({} if temperature is None else {"temperature": temperature})},
    )
    return states


def test_round_trip_predicts_the_weighted_vote_of_the_members(tmp_path):
    states = make_artifact(tmp_path / "ensemble")
    ens = load_ensemble(str(tmp_path))  # the run directory or the ensemble folder both work
    assert len(ens) == 3 and ens.weights.tolist() == [0.5, 2.0, 1.0]
    x = np.random.default_rng(0).integers(0, 256, (7, 1, 8, 8), dtype=np.uint8)
    xn = (torch.from_numpy(x).float() / 255 - 0.3) / 0.2
    manual = []
    for sd in states:
        net = create_model("small_cnn", **SPEC)
        net.load_state_dict(sd)
        manual.append(torch.softmax(net.eval()(xn), 1).detach().numpy())
    expected = vote(np.stack(manual), np.array([0.5, 2.0, 1.0]), "soft")
    np.testing.assert_allclose(ens.predict_proba(x), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ens.predict(x), expected.argmax(1))
    staged = list(ens.staged_predict_proba(x))
    assert len(staged) == 3
    np.testing.assert_allclose(staged[0], manual[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(staged[-1], expected, rtol=1e-5, atol=1e-6)
    assert ens.to("cpu") is ens
    with pytest.raises(ValueError, match="expected images shaped"):
        ens.predict(np.zeros((2, 3, 8, 8)))


def test_hard_vote_artifact(tmp_path):
    make_artifact(tmp_path, mode="hard")
    ens = load_ensemble(str(tmp_path))
    p = ens.predict_proba(np.zeros((3, 1, 8, 8), np.uint8))
    assert set(np.round(p.ravel() * 3.5, 6)) <= {0.0, 0.5, 1.0, 2.0, 1.5, 2.5, 3.0, 3.5}  # sums of member weights


def test_tampered_member_is_refused(tmp_path):
    make_artifact(tmp_path)
    sd = torch.load(tmp_path / "member_001.pt", weights_only=True)
    next(iter(sd.values())).add_(1.0)
    torch.save(sd, tmp_path / "member_001.pt")
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        load_ensemble(str(tmp_path))


def test_missing_or_broken_artifacts_are_refused(tmp_path):
    with pytest.raises(ArtifactError, match="no ensemble manifest"):
        load_ensemble(str(tmp_path))
    make_artifact(tmp_path)
    os.remove(tmp_path / "member_002.pt")
    with pytest.raises(ArtifactError, match="missing"):
        load_ensemble(str(tmp_path))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["format_version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format_version"):
        load_ensemble(str(tmp_path))


def test_the_manifest_temperature_calibrates_every_prediction_path_and_keeps_labels(tmp_path):
    from boostray.core.method.boosting import apply_temperature
    from boostray.core.artifact.inference import MemberStack, cascade_predict

    make_artifact(tmp_path / "plain")
    make_artifact(tmp_path / "hot", temperature=2.5)
    plain, hot = load_ensemble(str(tmp_path / "plain")), load_ensemble(str(tmp_path / "hot"))
    assert plain.temperature == 1.0 and hot.temperature == 2.5
    x = np.random.default_rng(1).integers(0, 256, (16, 1, 8, 8), dtype=np.uint8)
    expected = apply_temperature(plain.predict_proba(x), 2.5)
    np.testing.assert_allclose(hot.predict_proba(x), expected, rtol=1e-6)
    assert not np.allclose(hot.predict_proba(x), plain.predict_proba(x))
    np.testing.assert_array_equal(hot.predict(x), plain.predict(x))
    np.testing.assert_allclose(list(hot.staged_predict_proba(x))[-1], expected, rtol=1e-6)
    stack = MemberStack(hot, "loop")
    np.testing.assert_allclose(stack.predict_proba(x), expected, rtol=1e-5, atol=1e-7)
    cascade = cascade_predict(stack, x)
    np.testing.assert_array_equal(cascade.proba.argmax(1), expected.argmax(1))
    full = cascade.members_used == len(hot)  # samples that used every member get the full calibrated vote
    np.testing.assert_allclose(cascade.proba[full], expected[full], rtol=1e-5, atol=1e-7)


def test_a_version_1_manifest_still_loads_without_a_temperature(tmp_path):
    make_artifact(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["format_version"] = 1
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    ens = load_ensemble(str(tmp_path))
    assert ens.temperature == 1.0 and ens.manifest["format_version"] == 1


def test_hard_vote_is_the_weighted_count_of_each_members_label(tmp_path):
    weights = np.array([0.5, 2.0, 1.0])
    make_artifact(tmp_path, weights=tuple(weights), mode="hard", lean=0.5)
    ens = load_ensemble(str(tmp_path))
    x = np.random.default_rng(3).integers(0, 256, (64, 1, 8, 8), dtype=np.uint8)
    labels = np.stack([ens.member_proba(x)[m].argmax(1) for m in range(3)])  # (M, N) each member's label
    votes = np.zeros((64, 4))
    for m in range(3):
        votes[np.arange(64), labels[m]] += weights[m]
    np.testing.assert_allclose(ens.predict_proba(x), votes / weights.sum(), atol=1e-6)
    assert (labels[1] != labels[0]).any()  # the members disagree somewhere, so the weights matter


def test_stacked_forward_equals_the_member_loop(tmp_path):
    from boostray.core.artifact.inference import MemberStack

    make_artifact(tmp_path)
    ens = load_ensemble(str(tmp_path))
    x = np.random.default_rng(4).integers(0, 256, (32, 1, 8, 8), dtype=np.uint8)
    stacked, loop = MemberStack(ens, "stacked"), MemberStack(ens, "loop")
    np.testing.assert_allclose(stacked.member_proba(x), loop.member_proba(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stacked.predict_proba(x), loop.predict_proba(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["small_cnn", "resnet20", "resnet18", "efficientnet_b0"])
def test_inference_copies_fold_every_batch_norm_and_keep_the_outputs(name):
    """Serving's CPU forward (MemberStack's loop) runs inference_copy of each member: no batch norm left,
    channels-last, the same logits as the member in eval mode."""
    from boostray.core.artifact.inference import inference_copy

    torch.manual_seed(0)
    net = create_model(name, num_classes=10, in_channels=3, image_size=32).eval()
    for module in net.modules():  # batch norm that is not the identity, so that folding it is checked
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.8, 1.2)
            module.weight.data.uniform_(0.8, 1.2)
            module.bias.data.uniform_(-0.1, 0.1)
    fast = inference_copy(net)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fast.modules())
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        expected, got = net(x), fast(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())  # the member is untouched


@pytest.mark.parametrize("cascade", [False, True])
def test_a_forward_in_chunks_equals_one_forward_and_never_takes_more_than_the_limit(tmp_path, cascade):
    """Serve batches requests; predict_in_chunks bounds the instances of one forward."""
    from boostray.core.artifact.inference import MemberStack, cascade_predict, predict_in_chunks

    make_artifact(tmp_path, lean=1.0)
    stack = MemberStack(load_ensemble(str(tmp_path)), "loop")
    x = np.random.default_rng(5).integers(0, 256, (23, 1, 8, 8), dtype=np.uint8)
    sizes = []
    forward = stack.nets[0].forward
    stack.nets[0].forward = lambda batch: (sizes.append(batch.shape[0]), forward(batch))[1]  # every member-0 forward
    proba, used = predict_in_chunks(stack, x, 5, cascade=cascade)
    assert max(sizes) <= 5 and sum(sizes) == 23
    sizes.clear()
    whole = cascade_predict(stack, x) if cascade else None
    expected = whole.proba if cascade else stack.predict_proba(x)
    assert max(sizes) == 23
    np.testing.assert_allclose(proba, expected, rtol=1e-5, atol=1e-7)
    if cascade:
        np.testing.assert_array_equal(used, whole.members_used)
    else:
        assert used is None
