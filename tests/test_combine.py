"""Combination rules, temperature fitting and cross-fitting: pure NumPy, checked on constructed cases."""

import numpy as np
import pytest

from boostray.core.method.boosting import apply_temperature, checkpoint_weight, clamp_error, vote
from boostray.core.method.combine import (
    _score, choose_combination, crossfit_halves, crossfit_proba, fit_combination, fit_temperature, fit_weights,
    greedy_selection, lambda_from_validation,
)
from boostray.core.method.metrics import accuracy, nll


def noisy_members(rng, n=400, k=5, m=5, skill=(0.9, 0.7, 0.6, 0.55, 0.5)):
    """m members, each right on about skill[i] of n samples, with independent mistakes."""
    labels = rng.integers(0, k, n)
    proba = rng.dirichlet(np.ones(k), size=(m, n)) * 0.5
    for i in range(m):
        right = rng.random(n) < skill[i]
        target = np.where(right, labels, (labels + rng.integers(1, k, n)) % k)
        proba[i, np.arange(n), target] += 1.0
    return proba / proba.sum(-1, keepdims=True), labels


@pytest.mark.parametrize("seed", range(20))
def test_greedy_selection_is_never_below_the_final_member_on_the_data_it_fits(seed):
    rng = np.random.default_rng(seed)
    skill = tuple(rng.uniform(0.3, 0.9, 4))
    proba, labels = noisy_members(rng, n=int(rng.integers(20, 300)), m=4, skill=skill)
    counts = greedy_selection(proba, labels)
    assert counts.sum() >= 1 and counts.min() >= 0
    assert counts[-1] >= 1  # it starts from the final network
    assert _score(vote(proba, counts), labels) >= _score(proba[-1], labels)
    if counts.sum() == 1:  # nothing added: exactly the final network
        assert counts.tolist() == [0, 0, 0, 1]


def test_greedy_selection_adds_complementary_members_and_leaves_out_a_useless_one():
    labels = np.array([0, 1, 2, 0, 1, 2])
    eye = np.eye(3)
    a = eye[[0, 1, 2, 1, 1, 2]] * 0.6 + 0.4 / 3  # wrong on sample 3
    b = eye[[0, 1, 2, 0, 2, 2]] * 0.6 + 0.4 / 3  # wrong on sample 4
    c = eye[[0, 1, 2, 0, 1, 0]] * 0.6 + 0.4 / 3  # wrong on sample 5
    bad = eye[[1, 2, 0, 1, 2, 0]] * 0.9 + 0.1 / 3
    proba = np.stack([bad, a, b, c])  # c is the final network
    counts = greedy_selection(proba, labels)
    assert counts[0] == 0 and (counts[1:] > 0).all()  # the vote of a, b, c fixes every single mistake
    assert accuracy(vote(proba, counts), labels) == 1.0


def test_fit_weights_rules():
    rng = np.random.default_rng(0)
    proba, labels = noisy_members(rng, m=3, skill=(0.9, 0.6, 0.8))
    assert fit_weights("uniform", proba, labels, num_classes=5).tolist() == [1, 1, 1]
    assert fit_weights("final", proba, labels, num_classes=5).tolist() == [0, 0, 1]
    lambdas = np.array([3.0, 2.0, 1.0])
    assert fit_weights("lambda", proba, labels, num_classes=5, lambdas=lambdas).tolist() == lambdas.tolist()
    from_val = fit_weights("lambda", proba, labels, num_classes=5)
    expected = [checkpoint_weight(clamp_error(1 - accuracy(p, labels), 5), 5) for p in proba]
    np.testing.assert_allclose(from_val, expected)
    np.testing.assert_allclose(lambda_from_validation(proba, labels, 5), expected)


def test_temperature_fitting_lowers_validation_nll_and_keeps_every_label():
    rng = np.random.default_rng(1)
    proba, labels = noisy_members(rng, n=2000, m=1, skill=(0.7,))
    overconfident = apply_temperature(proba[0], 0.25)  # far too sharp for a 70 % accurate model
    t = fit_temperature(overconfident, labels)
    calibrated = apply_temperature(overconfident, t)
    assert t > 1 and nll(calibrated, labels) < nll(overconfident, labels) - 0.1
    assert (calibrated.argmax(1) == overconfident.argmax(1)).all()
    np.testing.assert_allclose(calibrated.sum(1), 1.0)
    assert apply_temperature(overconfident, 1.0) is overconfident
    # the fitted temperature is the minimum: nearby temperatures are no better
    assert nll(calibrated, labels) <= min(nll(apply_temperature(overconfident, t * f), labels) for f in (0.9, 1.1)) + 1e-9


def test_crossfit_scores_each_half_with_the_combination_fitted_on_the_other():
    a, b = crossfit_halves(11)
    assert sorted(np.concatenate([a, b]).tolist()) == list(range(11)) and len(a) == 5
    rng = np.random.default_rng(2)
    proba, labels = noisy_members(rng, n=600, m=4, skill=(0.6, 0.6, 0.6, 0.6))
    # a rule that fits nothing scores the same in and out of fold
    uniform = crossfit_proba("uniform", proba, labels, num_classes=5, calibrate=False)
    np.testing.assert_allclose(uniform, vote(proba, np.ones(4)))
    # greedy out of fold: each half gets the selection fitted on the other half
    oof = crossfit_proba("greedy", proba, labels, num_classes=5, calibrate=True)
    for fit, score in ((a := crossfit_halves(600)[0], crossfit_halves(600)[1]), (crossfit_halves(600)[1], a)):
        comb = fit_combination("greedy", proba[:, fit], labels[fit], num_classes=5)
        np.testing.assert_allclose(oof[score], comb.predict_proba(proba[:, score]))


def test_greedy_ships_the_final_network_alone_when_no_member_helps_and_says_so():
    rng = np.random.default_rng(3)
    proba, labels = noisy_members(rng, n=600, m=3, skill=(0.3, 0.35, 0.95))  # weak early members, strong final
    choice = choose_combination("greedy", proba, labels, num_classes=5)
    assert choice.rule == "final" and choice.combination.weights.tolist() == [0, 0, 1]
    assert "final network alone" in choice.reason


def test_greedy_ships_the_selection_when_it_holds_the_final_networks_accuracy_out_of_fold():
    rng = np.random.default_rng(4)
    proba, labels = noisy_members(rng, n=2000, m=4, skill=(0.7, 0.7, 0.7, 0.7))  # independent mistakes: averaging pays
    choice = choose_combination("greedy", proba, labels, num_classes=5)
    assert choice.rule == "greedy" and (choice.combination.weights > 0).sum() >= 2
    oof = crossfit_proba("greedy", proba, labels, num_classes=5, calibrate=False)
    assert accuracy(oof, labels) >= accuracy(proba[-1], labels)
    assert f"{accuracy(oof, labels):.4f}" in choice.reason


def test_a_selection_that_loses_out_of_fold_falls_back_to_the_final_network():
    """On each half a different member fits by chance, so the selection fitted on one half hurts the
    other: the cross-fitted check catches what the in-sample selection cannot."""
    rng = np.random.default_rng(5)
    n = 400
    proba, labels = noisy_members(rng, n=n, m=2, skill=(0.6, 0.8))
    noise = np.eye(5)[(labels + 1) % 5]
    a, b = crossfit_halves(n)
    proba[0, a] = np.eye(5)[labels[a]] * 0.9 + 0.02  # member 0 is confidently right on one half ...
    proba[0, b] = noise[b] * 0.5 + 0.1  # ... and mildly wrong on the other
    assert greedy_selection(proba, labels).tolist() == [1, 1]  # in sample, it looks like it helps
    choice = choose_combination("greedy", proba, labels, num_classes=5)
    assert choice.rule == "final" and choice.combination.weights.tolist() == [0, 1]
    assert "cross-fitted against the final network's" in choice.reason
