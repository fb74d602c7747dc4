import math

import pytest

from boostray.errors import ConfigError
from boostray.core.method.methods import create_method, round_boundaries


def test_round_boundaries_follow_the_reference_formula():
    # round m covers [round((m-1)E/M), round(mE/M))
    assert round_boundaries(12, 4) == [3, 6, 9, 12]
    assert round_boundaries(10, 3) == [3, 7, 10]
    assert round_boundaries(5, 5) == [1, 2, 3, 4, 5]
    assert round_boundaries(7, 1) == [7]


@pytest.mark.parametrize("m", [0, 13])
def test_members_outside_1_to_epochs_are_rejected(m):
    with pytest.raises(ConfigError, match="--members"):
        create_method("cbnn", epochs=12, members=m)


def test_one_cosine_schedule_over_the_whole_budget_without_restarts():
    m = create_method("cbnn-paper", epochs=10, members=5)
    assert m.lr_factor(0) == 1.0 and m.lr_factor(10) == pytest.approx(0.0)
    assert m.lr_factor(5) == pytest.approx(0.5)
    values = [m.lr_factor(t / 10) for t in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone: no restart at round ends
    assert m.lr_factor(2.5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))


def test_methods_differ_only_in_policy():
    paper, single, ckpt = (create_method(n, epochs=8, members=4) for n in ("cbnn-paper", "single", "checkpoint"))
    assert paper.boundaries() == single.boundaries() == ckpt.boundaries()
    assert paper.reweights and paper.combine == "lambda"
    assert not ckpt.reweights and ckpt.combine == "uniform" and all(ckpt.is_member(r) for r in range(4))
    assert [single.is_member(r) for r in range(4)] == [False, False, False, True]
    with pytest.raises(ConfigError, match="unknown method"):
        create_method("bagging", epochs=8, members=4)


def test_snapshot_schedule_is_cyclic_cosine_with_members_at_cycle_ends():
    m = create_method("snapshot", epochs=12, members=4)
    assert m.boundaries() == [3, 6, 9, 12]
    for start in (0, 3, 6, 9):
        for frac in (0.0, 0.25, 0.5, 0.9):
            t = start + 3 * frac
            assert m.lr_factor(t) == pytest.approx(0.5 * (math.cos(math.pi * frac) + 1))
    assert all(m.lr_factor(b - 1e-6) < 1e-6 for b in m.boundaries())  # each member at a cycle's end
    assert all(m.is_member(r) for r in range(4)) and not m.reweights


def test_fge_members_at_lr_minima_after_an_ordinary_first_phase():
    m = create_method("fge", epochs=20, members=4)
    c = m.fge_cycle
    assert c == 2 and m.boundaries() == [14, 16, 18, 20]
    first_phase = 20 - 4 * c  # FGE's ordinary phase: E - M c epochs
    lrs = [m.lr_factor(t / 100) for t in range(0, 2001)]
    assert lrs[0] == 1.0 and m.lr_factor(first_phase - 1e-9) == pytest.approx(m.lr2, abs=1e-6)
    for b in m.boundaries():  # the minimum of each cycle is where the member is taken
        window = [m.lr_factor(b - c + k * c / 50) for k in range(51)]
        assert min(window) == pytest.approx(m.lr_factor(b), abs=1e-9) == pytest.approx(m.lr2)
        assert max(window) == pytest.approx(m.lr1)  # triangular between lr2 and lr1
    with pytest.raises(ConfigError, match="fge needs"):
        create_method("fge", epochs=4, members=4)


def test_swa_schedule_holds_swa_lr_after_75_percent_and_keeps_one_member():
    m = create_method("swa", epochs=12, members=4)
    assert m.swa_start == 9
    assert m.lr_factor(0) == 1.0 and m.lr_factor(9) == m.lr_factor(11.5) == m.swa_lr
    assert [m.averages_after_epoch(e) for e in range(12)] == [False] * 9 + [True] * 3
    assert [m.is_member(r) for r in range(4)] == [False, False, False, True] and m.averaged_member


def test_tail_placement_trains_plainly_until_the_first_member_then_spreads_the_rest():
    m = create_method("checkpoint", epochs=96, members=4, placement="tail", first_member=0.5)
    assert m.boundaries() == [48, 64, 80, 96]
    assert create_method("checkpoint", epochs=12, members=4, placement="tail", first_member=0.75).boundaries() == [9, 10, 11, 12]
    assert create_method("checkpoint", epochs=12, members=1, placement="tail").boundaries() == [12]
    with pytest.raises(ConfigError, match="--first-member"):  # member 1 at epoch 11 leaves 1 epoch for 3 rounds
        create_method("checkpoint", epochs=12, members=4, placement="tail", first_member=0.9)
    with pytest.raises(ConfigError, match="--first-member must be in"):
        create_method("checkpoint", epochs=12, members=4, placement="tail", first_member=0)
    # without --first-member the half-way point moves earlier when the budget is short, never an error
    assert create_method("checkpoint", epochs=5, members=5, placement="tail").boundaries() == [1, 2, 3, 4, 5]
    assert create_method("checkpoint", epochs=6, members=3, placement="tail").boundaries() == [3, 5, 6]


@pytest.mark.parametrize("placement,first", [("spread", None), ("tail", 0.5), ("tail", 0.3)])
def test_restart_schedule_puts_every_member_at_a_learning_rate_minimum(placement, first):
    m = create_method("cbnn", epochs=40, members=4, schedule="restart", placement=placement, first_member=first,
                      restart_lr=0.5)
    bounds = [0, *m.boundaries()]
    for i, (start, end) in enumerate(zip(bounds, bounds[1:])):
        ts = [start + (end - start) * k / 200 for k in range(200)]
        lrs = [m.lr_factor(t) for t in ts]
        assert lrs[0] == pytest.approx(1.0 if i == 0 else 0.5)  # a restart at every round after the first
        assert all(a > b for a, b in zip(lrs, lrs[1:]))  # annealing within the round
        assert m.lr_factor(end - 1e-9) == pytest.approx(0.0, abs=1e-6)  # the member sits at the minimum
    assert m.is_member(0) and m.reweights


def test_presets_are_points_of_the_axes_and_explicit_axes_win():
    snapshot = create_method("snapshot", epochs=12, members=4)
    assert (snapshot.schedule, snapshot.placement, snapshot.reweight, snapshot.combine) == ("restart", "spread", "none", "uniform")
    boosted = create_method("snapshot-boost", epochs=12, members=4)
    assert boosted.schedule == "restart" and boosted.reweights and boosted.combine == "lambda"
    assert [boosted.lr_factor(t) for t in (0, 1.5, 3, 4.5)] == [snapshot.lr_factor(t) for t in (0, 1.5, 3, 4.5)]
    custom = create_method("cbnn", epochs=12, members=4, combine="greedy", schedule=None)
    assert custom.combine == "greedy" and custom.schedule == create_method("cbnn", epochs=12, members=4).schedule
    with pytest.raises(ConfigError, match="needs --combine final"):
        create_method("swa", epochs=12, members=4, combine="uniform")


def test_fge_tail_cycles_follow_a_chosen_placement_too():
    m = create_method("fge", epochs=40, members=4, first_member=0.7)
    assert m.boundaries() == [28, 32, 36, 40] and m.fge_cycle == 4
    for b in m.boundaries():
        assert m.lr_factor(b - 1e-9) == pytest.approx(m.lr2, abs=1e-6)
        assert m.lr_factor(b - 2) == pytest.approx(m.lr1)  # the top of each triangle, mid-round


def test_resolved_config_records_every_axis_of_its_preset():
    from boostray.config import PRESET_KEYS, TrainConfig

    resolved = TrainConfig(method="snapshot", combine="greedy").resolved()
    assert resolved.schedule == "restart" and resolved.combine == "greedy" and resolved.calibrate is True
    assert all(getattr(resolved, k) is not None for k in PRESET_KEYS if k != "first_member")
    paper = TrainConfig(method="cbnn-paper").resolved()
    assert (paper.lambda_source, paper.calibrate, paper.combine, paper.placement) == ("train", False, "lambda", "spread")


def test_default_trains_the_single_schedule_and_boosts_gently_from_half_the_budget():
    from boostray.config import TrainConfig

    m = create_method("cbnn-tail", epochs=96, members=4)
    single = create_method("single", epochs=96, members=4)
    assert m.boundaries() == [48, 64, 80, 96] and m.reweights and m.combine == "greedy"
    assert all(m.lr_factor(t) == single.lr_factor(t) for t in (0, 30.5, 48, 63.9, 95))  # no restart
    resolved = TrainConfig().resolved()
    assert (resolved.method, resolved.eta, resolved.lambda_source, resolved.calibrate) == ("cbnn-tail", 0.1, "val", True)
    assert TrainConfig(eta=0.3).resolved().eta == 0.3  # an explicit option wins over the preset
    paper = TrainConfig(method="cbnn").resolved()  # the paper's form, one option away
    assert (paper.schedule, paper.placement, paper.combine, paper.lambda_source) == ("decay", "spread", "lambda", "train")


def test_step_schedule_divides_the_lr_by_ten_at_half_and_three_quarters():
    m = create_method("single", epochs=20, members=1, schedule="step")
    assert [m.lr_factor(t) for t in (0, 9.99, 10, 14.99, 15, 19.99)] == [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]


@pytest.mark.parametrize("budget,epochs_each,total", [("full", 10, 30), ("split", 3, 9)])
def test_deep_runs_the_whole_schedule_once_per_network(budget, epochs_each, total):
    m = create_method("deep", epochs=10, members=3, deep_budget=budget)
    assert m.independent and m.network_epochs == epochs_each and m.total_epochs == total
    assert m.boundaries() == [epochs_each, 2 * epochs_each, total]
    for r in range(3):  # every network starts at the peak LR and decays to ~0 by its end
        start = m.network_start(r)
        assert m.lr_factor(start) == 1.0 and m.lr_factor(start + epochs_each - 1e-9) == pytest.approx(0.0, abs=1e-6)
    assert m.network_start(2) < m.probe_epoch() < total  # probed inside the last network's schedule
    assert m.describe()["cost"] == total / 10
    with pytest.raises(ConfigError, match="not boosted"):
        create_method("deep", epochs=10, members=3, reweight="samme")
