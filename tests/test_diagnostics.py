"""Regime diagnostics: disagreement, diversity ratio, late gain and the one line a run prints."""

import math

import numpy as np
import pytest

from boostray.core.method.diagnostics import LOW_DIVERSITY, RISING, diagnostics


def onehot(predictions, k=3):
    return np.eye(k)[np.asarray(predictions)] * 0.8 + 0.2 / k


LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])


def test_disagreement_and_diversity_ratio_from_member_predictions():
    a = onehot([0, 1, 2, 0, 1, 2, 0, 1, 2, 1])  # wrong on the last sample
    b = onehot([0, 1, 2, 0, 1, 2, 0, 1, 0, 0])  # wrong on the one before
    d = diagnostics(np.stack([a, b]), LABELS, final_val_accuracy=0.9, probe_val_accuracy=0.9)
    assert d["disagreement"] == pytest.approx(0.2) and d["mean_member_error"] == pytest.approx(0.1)
    assert d["diversity_ratio"] == pytest.approx(2.0) and d["late_gain"] == 0.0
    assert d["regime"].startswith("saturated, members diverse")


def test_a_network_still_improving_is_called_compute_limited_first():
    a = onehot([0, 1, 2, 0, 1, 2, 0, 1, 2, 1])
    d = diagnostics(np.stack([a, a]), LABELS, final_val_accuracy=0.9, probe_val_accuracy=0.9 - RISING)
    assert d["regime"].startswith("compute-limited") and "--epochs" in d["regime"]


def test_members_that_make_the_same_mistakes_point_to_the_deep_ceiling():
    a = onehot([0, 1, 2, 0, 1, 2, 0, 1, 2, 1])
    b = onehot([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])  # the same mistake, another wrong class: ratio 1
    same = diagnostics(np.stack([a, a, a]), LABELS, final_val_accuracy=0.9, probe_val_accuracy=0.91)
    assert same["diversity_ratio"] == 0.0 < LOW_DIVERSITY and "--method deep" in same["regime"]
    assert diagnostics(np.stack([a, b]), LABELS, 0.9, 0.9)["diversity_ratio"] == pytest.approx(1.0)


def test_one_member_has_no_diversity_figures():
    d = diagnostics(onehot([0, 1, 2, 0, 1, 2, 0, 1, 2, 1])[None], LABELS, 0.9, 0.9)
    assert math.isnan(d["disagreement"]) and math.isnan(d["diversity_ratio"]) and d["regime"].startswith("one member")
