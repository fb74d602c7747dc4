"""The figures every report uses, checked against scikit-learn's own implementations."""

import numpy as np
import pytest
from sklearn import metrics as sk

from boostray.core.method.metrics import accuracy, balanced_accuracy, nll


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_accuracy_balanced_accuracy_and_nll_equal_scikit_learns(seed):
    rng = np.random.default_rng(seed)
    k = 5
    labels = rng.choice(k, size=300, p=[0.5, 0.2, 0.15, 0.1, 0.05])  # imbalanced, so balanced != plain
    proba = rng.dirichlet(np.ones(k) * 0.7, size=300)
    proba[np.arange(150), labels[:150]] += 1.0  # half of the samples lean to their true class
    proba /= proba.sum(1, keepdims=True)
    pred = proba.argmax(1)
    assert accuracy(proba, labels) == pytest.approx(sk.accuracy_score(labels, pred))
    assert balanced_accuracy(proba, labels, k) == pytest.approx(sk.balanced_accuracy_score(labels, pred))
    assert nll(proba, labels) == pytest.approx(sk.log_loss(labels, proba, labels=list(range(k))))
    assert balanced_accuracy(proba, labels, k) != pytest.approx(accuracy(proba, labels))
