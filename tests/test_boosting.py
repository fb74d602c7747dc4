"""The boosting step against its formulas and against scikit-learn's AdaBoostClassifier (SAMME)."""

import itertools
import math
import warnings

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import AdaBoostClassifier

from boostray.core.method.boosting import (
    ChanceLevelWarning,
    boost_step,
    cap_weight_ratio,
    checkpoint_weight,
    effective_sample_size,
    ess_bounded_eta,
    mix_with_uniform,
    uniform_weights,
    vote,
)

K = 5
N = 200


def fixed_rounds(seed: int = 0, rounds: int = 4) -> tuple[np.ndarray, list[np.ndarray]]:
    """Labels and, per round, a checkpoint's fixed predictions with 10-40 % errors."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, N)
    preds = []
    for r in range(rounds):
        p = y.copy()
        wrong = rng.random(N) < 0.1 + 0.1 * r
        p[wrong] = (y[wrong] + rng.integers(1, K, wrong.sum())) % K
        preds.append(p)
    return y, preds


class FixedPredictions(ClassifierMixin, BaseEstimator):
    """An 'estimator' that replays round r's predictions: the checkpoint's, fixed in advance.
    sklearn clones it each round; the shared counter says which round a clone is."""

    PREDS: list = []
    COUNTER = itertools.count()
    SEEN_WEIGHTS: list = []

    def fit(self, X, y, sample_weight=None):
        self.round_ = next(FixedPredictions.COUNTER)
        FixedPredictions.SEEN_WEIGHTS.append(np.array(sample_weight, dtype=np.float64))
        self.classes_ = np.arange(K)
        return self

    def predict(self, X):
        return FixedPredictions.PREDS[self.round_][X[:, 0].astype(int)]


@pytest.mark.parametrize("eta", [1.0, 0.3])
def test_matches_sklearn_adaboost_samme(eta):
    y, preds = fixed_rounds()
    FixedPredictions.PREDS, FixedPredictions.COUNTER, FixedPredictions.SEEN_WEIGHTS = preds, itertools.count(), []
    X = np.arange(N)[:, None].astype(float)
    ada = AdaBoostClassifier(FixedPredictions(), n_estimators=len(preds), learning_rate=eta, random_state=0).fit(X, y)
    assert len(ada.estimator_weights_) == len(preds)

    w = uniform_weights(N)
    for m, p in enumerate(preds):
        np.testing.assert_allclose(w, FixedPredictions.SEEN_WEIGHTS[m], rtol=1e-12)
        res = boost_step(w, p == y, K, eta=eta)
        assert res.lambda_ == pytest.approx(ada.estimator_weights_[m] / eta, rel=1e-12)
        assert res.error == pytest.approx(ada.estimator_errors_[m], rel=1e-12)
        w = res.weights


def test_samme_invariant_misclassified_hold_k_minus_1_over_k():
    y, preds = fixed_rounds(seed=3)
    w = np.random.default_rng(1).random(N)
    w /= w.sum()
    for p in preds:
        res = boost_step(w, p == y, K, eta=1.0)
        assert res.weights[p != y].sum() == pytest.approx((K - 1) / K, rel=1e-12)
        assert res.weights.sum() == pytest.approx(1.0)
        w = res.weights


def test_zero_error_is_clamped_to_a_finite_weight():
    res = boost_step(uniform_weights(N), np.ones(N, bool), K, min_error=1e-4)
    assert res.raw_error == 0.0
    assert res.error == 1e-4
    assert res.lambda_ == pytest.approx(math.log((1 - 1e-4) / 1e-4) + math.log(K - 1))
    assert np.isfinite(res.weights).all()


def test_chance_level_checkpoint_gets_zero_weight_and_leaves_weights_alone():
    correct = np.zeros(N, bool)
    correct[: int(N / K) - 1] = True  # error just above 1 - 1/K
    w = np.random.default_rng(0).random(N)
    w /= w.sum()
    with pytest.warns(ChanceLevelWarning):
        res = boost_step(w, correct, K)
    assert res.lambda_ == 0.0 and res.chance_level
    np.testing.assert_allclose(res.weights, w, rtol=1e-12)


def test_positive_weight_iff_better_than_chance():
    for e in np.linspace(0.01, 0.99, 99):
        if abs(e - (1 - 1 / K)) < 1e-9:
            continue
        assert (checkpoint_weight(e, K) > 0) == (e < 1 - 1 / K)


def test_last_round_computes_lambda_without_updating():
    y, preds = fixed_rounds()
    w = uniform_weights(N)
    res = boost_step(w, preds[0] == y, K, update=False)
    assert res.lambda_ > 0
    np.testing.assert_allclose(res.weights, w, rtol=1e-12)


def test_soft_and_hard_votes_differ_where_they_should():
    # member 0 is confident in class 0, members 1 and 2 mildly prefer class 1
    p = np.array([[[0.95, 0.05]], [[0.45, 0.55]], [[0.45, 0.55]]])
    lambdas = np.ones(3)
    assert vote(p, lambdas, "soft").argmax() == 0
    assert vote(p, lambdas, "hard").argmax() == 1
    np.testing.assert_allclose(vote(p, lambdas, "hard"), [[1 / 3, 2 / 3]])
    # lambda weighting: a heavy member 0 wins the hard vote too
    assert vote(p, np.array([3.0, 1.0, 1.0]), "hard").argmax() == 0
    np.testing.assert_allclose(vote(p, np.array([2.0, 1.0, 1.0]), "soft"), [[(1.9 + 0.9) / 4, (0.1 + 1.1) / 4]])


def test_effective_sample_size_and_weight_cap():
    assert effective_sample_size(uniform_weights(10)) == pytest.approx(1.0)
    one_hot = np.zeros(10)
    one_hot[3] = 1
    assert effective_sample_size(one_hot) == pytest.approx(0.1)
    w = np.array([10.0, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    capped = cap_weight_ratio(w / w.sum(), 3.0)
    assert capped.max() / capped.mean() <= 3.0 + 1e-9
    assert capped.sum() == pytest.approx(1.0)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError):
        boost_step(uniform_weights(3), np.ones(3, bool), K, eta=0)
    with pytest.raises(ValueError):
        boost_step(uniform_weights(3), np.ones(4, bool), K)
    with pytest.raises(ValueError):
        vote(np.ones((2, 3, K)), np.ones(2), "plurality")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        boost_step(uniform_weights(3), np.array([True, True, False]), K)  # no spurious warnings


# -- the levers of the method reference: adaptive shrinkage, mixing with uniform, lambda from validation


def test_ess_bounded_eta_is_the_largest_eta_that_keeps_the_ess():
    rng = np.random.default_rng(3)
    w, correct = uniform_weights(500), rng.random(500) > 0.1
    unbounded = boost_step(w, correct, 10, eta=1.0)
    assert effective_sample_size(unbounded.weights) < 0.6
    eta = ess_bounded_eta(w, correct, unbounded.lambda_, 1.0, 0.6)
    assert 0 < eta < 1
    res = boost_step(w, correct, 10, eta=1.0, ess_min=0.6)
    assert res.eta == pytest.approx(eta)
    assert effective_sample_size(res.weights) == pytest.approx(0.6, abs=1e-6)
    assert effective_sample_size(boost_step(w, correct, 10, eta=eta * 1.01).weights) < 0.6
    # a bound that eta_max already satisfies leaves eta alone, and equals the plain step
    loose = boost_step(w, correct, 10, eta=0.3, ess_min=0.01)
    assert loose.eta == 0.3 and np.array_equal(loose.weights, boost_step(w, correct, 10, eta=0.3).weights)


def test_ess_bounded_eta_is_zero_when_the_weights_are_already_below_the_bound():
    w = np.r_[np.full(10, 10.0), np.ones(90)]
    w /= w.sum()
    correct = np.r_[np.zeros(10, bool), np.ones(90, bool)]
    assert effective_sample_size(w) < 0.5
    assert ess_bounded_eta(w, correct, 2.0, 1.0, 0.9) == 0.0


def test_mixing_with_uniform_bounds_every_weight_from_below():
    w = np.r_[1.0, np.zeros(99)]
    mixed = mix_with_uniform(w, 0.2)
    assert mixed.sum() == pytest.approx(1.0)
    assert mixed.min() == pytest.approx(0.2 / 100) and mixed[0] == pytest.approx(0.8 + 0.002)
    res = boost_step(uniform_weights(100), np.arange(100) > 4, 10, eta=1.0, gamma=0.5)
    plain = boost_step(uniform_weights(100), np.arange(100) > 4, 10, eta=1.0)
    np.testing.assert_allclose(res.weights, 0.5 * plain.weights + 0.005)
    with pytest.raises(ValueError):
        mix_with_uniform(w, 1.5)


def test_lambda_from_an_outside_error_replaces_the_weighted_training_error():
    w, correct = uniform_weights(100), np.arange(100) > 0  # 1 % training error
    res = boost_step(w, correct, 10, lambda_error=0.2)
    assert res.lambda_ == pytest.approx(checkpoint_weight(0.2, 10)) and res.error == pytest.approx(0.2)
    assert res.raw_error == pytest.approx(0.01)
    # the update uses that lambda: the one misclassified sample grows by exp(eta * lambda)
    assert res.weights[0] / res.weights[1] == pytest.approx(math.exp(0.3 * res.lambda_))
    with pytest.warns(ChanceLevelWarning):
        chance = boost_step(w, correct, 10, lambda_error=0.95)
    assert chance.lambda_ == 0.0 and chance.chance_level
    np.testing.assert_allclose(chance.weights, w)
