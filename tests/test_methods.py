import math

import pytest

from boostray.errors import ConfigError
from boostray.methods import create_method, round_boundaries


def test_round_boundaries_follow_the_reference_formula():
    # round m covers [round((m-1)E/M), round(mE/M))
    assert round_boundaries(12, 4) == [3, 6, 9, 12]
    assert round_boundaries(10, 3) == [3, 7, 10]
    assert round_boundaries(5, 5) == [1, 2, 3, 4, 5]
    assert round_boundaries(7, 1) == [7]


@pytest.mark.parametrize("m", [0, 13])
def test_checkpoints_outside_1_to_epochs_are_rejected(m):
    with pytest.raises(ConfigError, match="--checkpoints"):
        create_method("cbnn", epochs=12, checkpoints=m)


def test_one_cosine_schedule_over_the_whole_budget_without_restarts():
    m = create_method("cbnn", epochs=10, checkpoints=5)
    assert m.lr_factor(0) == 1.0 and m.lr_factor(10) == pytest.approx(0.0)
    assert m.lr_factor(5) == pytest.approx(0.5)
    values = [m.lr_factor(t / 10) for t in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone: no restart at round ends
    assert m.lr_factor(2.5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))


def test_methods_differ_only_in_policy():
    cbnn, single, ckpt = (create_method(n, epochs=8, checkpoints=4) for n in ("cbnn", "single", "checkpoint"))
    assert cbnn.boundaries() == single.boundaries() == ckpt.boundaries()
    assert cbnn.reweights and cbnn.weighted_members
    assert not ckpt.reweights and not ckpt.weighted_members and all(ckpt.is_member(r) for r in range(4))
    assert [single.is_member(r) for r in range(4)] == [False, False, False, True]
    with pytest.raises(ConfigError, match="unknown method"):
        create_method("bagging", epochs=8, checkpoints=4)
