"""The Ray-free core: a whole boosting run in one process with PyTorch alone."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from boostray.config import TrainConfig
from boostray.core.data.datasets import load_dataset
from boostray.core.method.engine import train_in_process
from helpers import crash_after_round


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_engine_trains_boosts_and_captures_members_in_process(digits):
    rounds = []
    state = train_in_process(TrainConfig(epochs=4, members=2, method="cbnn-paper").spec(), digits,
                             on_round=lambda metrics, state: rounds.append(metrics))
    assert [m["round"] for m in rounds] == [1, 2] and [m["epoch"] for m in rounds] == [2, 4]
    assert state.rounds_done == 2 and [m.epoch for m in state.members] == [2, 4]
    assert len(state.member_states) == 2 and np.stack(state.val_proba).shape == (2, len(digits.val), 10)
    assert 0 < state.ess[0] < 1  # round 1 re-weighted the samples
    assert state.weights.sum() == pytest.approx(1.0)
    assert state.members[-1].test_accuracy > 0.8


def test_deep_trains_independent_networks_the_first_of_which_is_the_single_network(digits):
    single = train_in_process(TrainConfig(epochs=3, members=1, method="single", seed=2).spec(), digits)
    deep = train_in_process(TrainConfig(epochs=3, members=3, method="deep", seed=2).spec(), digits)
    assert [m.epoch for m in deep.members] == [3, 6, 9] and len(deep.epoch_log) == 9  # 3x the budget
    for key, value in single.member_states[0].items():  # network 1: the single run's seed, batches and schedule
        np.testing.assert_array_equal(value.numpy(), deep.member_states[0][key].numpy())
    first, second = deep.member_states[0]["0.weight"], deep.member_states[1]["0.weight"]
    assert not torch.equal(first, second)  # network 2 started from its own initialisation
    quarter = 0.05 * 0.25  # the LR after 2 of 3 epochs of a cosine from 0.05: each network runs its own
    assert [e["lr"] for e in deep.epoch_log[1::3]] == pytest.approx([quarter] * 3)
    assert 0 < deep.probe_val_accuracy <= 1 and 0 < single.probe_val_accuracy <= 1


def test_same_seed_same_run_in_process(digits):
    config = TrainConfig(epochs=2, members=2, method="snapshot", seed=5)
    a, b = train_in_process(config.spec(), digits), train_in_process(config.spec(), digits)
    for sa, sb in zip(a.member_states, b.member_states):
        for key in sa:
            np.testing.assert_array_equal(sa[key].numpy(), sb[key].numpy())


def test_the_core_runs_where_ray_cannot_be_imported(tmp_path):
    """Import every core module and train with Ray made unimportable: the core needs PyTorch alone."""
    script = textwrap.dedent("""
        import sys
        class NoRay:
            def find_spec(self, name, path=None, target=None):
                if name == "ray" or name.startswith("ray."):
                    raise ImportError("ray is not installed here")
        sys.meta_path.insert(0, NoRay())
        import importlib, pkgutil
        import boostray.core
        for module in pkgutil.iter_modules(boostray.core.__path__):  # every core module imports without Ray
            importlib.import_module(f"boostray.core.{module.name}")
        from boostray.config import TrainConfig
        from boostray.core.data.datasets import load_dataset
        from boostray.core.method.engine import train_in_process
        state = train_in_process(TrainConfig(epochs=2, members=2).spec(), load_dataset("digits"))
        assert "ray" not in sys.modules
        print("members", len(state.members), "ess", round(state.ess[0], 3))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1].startswith("members 2 ess 0.")


def test_the_weight_registry_module_imports_without_torch():
    """The weight registry is a Ray actor of its own: importing its module must not pull in PyTorch (about
    1 s of CPU and 400 MB per process at a run's start), while the package's public names still work."""
    script = textwrap.dedent("""
        import sys
        import boostray.distributed.weight_store
        assert "torch" not in sys.modules, "torch imported"
        import boostray
        assert boostray.create_model("small_cnn", num_classes=3, in_channels=1, image_size=8) is not None
        assert boostray.load_ensemble.__module__ == "boostray.core.artifact.ensemble"
        from boostray import Ensemble, list_models
        print(Ensemble.__name__, "small_cnn" in list_models())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["Ensemble", "True"]


def test_compiled_training_keeps_plain_member_state_dicts(digits, monkeypatch):
    """--compile trains through torch.compile; members and checkpoints stay the plain network's. The
    compile here uses torch's aot_eager backend: the same wrapper and graph capture, without inductor's
    C++ code generation, the slow part on a CPU."""
    import torch

    from boostray.core.models import create_model

    real, compiled = torch.compile, []

    def aot_eager(model, **kwargs):
        compiled.append(real(model, **{**kwargs, "backend": "aot_eager"}))
        return compiled[-1]

    monkeypatch.setattr(torch, "compile", aot_eager)
    state = train_in_process(TrainConfig(epochs=3, members=1, method="single", compile=True).spec(), digits)
    assert len(compiled) == 1 and isinstance(compiled[0], torch._dynamo.eval_frame.OptimizedModule)
    member = state.member_states[0]
    assert not any(k.startswith("_orig_mod") for k in member)
    net = create_model("small_cnn", num_classes=10, in_channels=1, image_size=8)
    net.load_state_dict(member)  # loads into the registry's model as is
    assert state.members[0].val_accuracy > 0.8


def test_boost_state_reads_members_saved_when_lambda_was_called_alpha():
    from boostray.core.method.boost_state import BoostState, MemberRecord

    old = {"round": 1, "epoch": 3, "alpha": 2.5, "error": 0.1, "raw_error": 0.1, "train_accuracy": 0.9,
           "val_accuracy": 0.9, "test_accuracy": 0.9}
    state = BoostState.from_saveable({"rounds_done": 1, "members": [old]})
    assert state.members == [MemberRecord(lambda_=2.5, **{k: v for k, v in old.items() if k != "alpha"})]
    assert state.to_saveable()["members"][0]["lambda"] == 2.5


def test_checkpoints_keep_members_beside_them_and_resume_bit_identically(digits, tmp_path):
    """A checkpoint's size does not grow with the members; restoring round 2's and training on gives the
    same members as the uninterrupted run."""
    from boostray.core.method.boost_state import BoostState
    from boostray.core.method.engine import Engine
    from boostray.core.method.weights import LocalWeightStore

    config = TrainConfig(epochs=8, members=4, method="cbnn-paper", seed=1).resolved()
    members_dir = str(tmp_path / "members")
    engine = Engine(config.spec(), digits, store=LocalWeightStore())

    def save(metrics, state):
        directory = tmp_path / f"round_{state.rounds_done}"
        directory.mkdir()
        engine.save(str(directory), state, members_dir)

    reference = engine.run(BoostState.initial(len(digits.train)), save)
    sizes = [(tmp_path / f"round_{r}" / "state.pt").stat().st_size for r in range(1, 5)]
    member_size = (tmp_path / "members" / "round_0001.pt").stat().st_size
    assert sorted(os.listdir(members_dir)) == [f"round_{r:04d}.pt" for r in range(1, 5)]
    assert sizes[3] - sizes[1] < member_size / 4  # two more members, far less than one member's bytes

    resumed = Engine(config.spec(), digits, store=LocalWeightStore())
    state = resumed.restore(str(tmp_path / "round_2"), members_dir)
    assert state.rounds_done == 2 and len(state.member_states) == 2
    final = resumed.run(state, lambda metrics, state: None)
    assert [m.lambda_ for m in final.members] == [m.lambda_ for m in reference.members]
    np.testing.assert_array_equal(final.weights, reference.weights)
    for a, b in zip(final.member_states, reference.member_states):
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_in_process_runs_checkpoint_every_round_and_resume_after_a_crash(digits, tmp_path):
    """workers=0 keeps fault tolerance without Ray: a run that dies after round 2 and is started again
    with the same checkpoint folder resumes there and ends with the uninterrupted run's ensemble."""
    config = TrainConfig(epochs=8, members=4, method="cbnn-paper", seed=4)
    reference = train_in_process(config.spec(), digits)
    crash_after_round(config, digits, str(tmp_path), 2)
    assert sorted(os.listdir(tmp_path)) == ["members", "round_0001", "round_0002"]
    resumed = train_in_process(config.spec(), digits, checkpoint_dir=str(tmp_path))
    assert resumed.resumed_at_rounds == [2] and sorted(os.listdir(tmp_path)) == ["members", "round_0003", "round_0004"]
    np.testing.assert_array_equal(resumed.weights, reference.weights)
    for a, b in zip(resumed.member_states, reference.member_states):
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_a_correctness_pass_keeps_one_byte_a_sample_and_a_sample_no_rank_scored_stops_it():
    """The pass writes each piece into one code vector (no lists of pieces); combining finds a gap."""
    from boostray.core.method.collectives import combine_codes, correctness_codes

    codes = np.zeros(5, dtype=np.uint8)
    correctness_codes(np.array([0, 3]), np.array([True, False]), codes)
    correctness_codes(np.array([1, 2]), np.array([False, True]), codes)
    with pytest.raises(RuntimeError, match="1 training samples got no correctness"):
        combine_codes(codes.copy())
    correctness_codes(np.array([4]), np.array([True]), codes)
    assert combine_codes(codes).tolist() == [True, False, True, False, True]
