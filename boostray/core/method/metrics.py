"""Evaluation figures of a run: accuracy, NLL, ECE, disagreement, staged accuracy. Pure NumPy, no torch, no Ray."""

from __future__ import annotations

import numpy as np

from boostray.core.method.boosting import apply_temperature, vote


def accuracy(proba: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(proba).argmax(axis=-1) == np.asarray(labels)).mean())


def balanced_accuracy(proba: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Mean of per-class recalls over the classes present in ``labels``."""
    per_class = per_class_accuracy(proba, labels, num_classes)
    return float(np.nanmean(per_class))


def per_class_accuracy(proba: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    pred = np.asarray(proba).argmax(axis=-1)
    labels = np.asarray(labels)
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        mask = labels == c
        if mask.any():
            out[c] = (pred[mask] == c).mean()
    return out


def nll(proba: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class."""
    p = np.asarray(proba, dtype=np.float64)[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.log(np.clip(p, 1e-12, 1.0)).mean())


def expected_calibration_error(proba: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al. 2017)."""
    p = np.asarray(proba, dtype=np.float64)
    conf = p.max(axis=-1)
    hit = p.argmax(axis=-1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            ece += mask.mean() * abs(hit[mask].mean() - conf[mask].mean())
    return float(ece)


def pairwise_disagreement(member_proba: np.ndarray) -> float:
    """Mean over member pairs of the fraction of samples on which their predictions differ."""
    preds = np.asarray(member_proba).argmax(axis=-1)  # (M, n)
    m = preds.shape[0]
    if m < 2:
        return 0.0
    total = [(preds[i] != preds[j]).mean() for i in range(m) for j in range(i + 1, m)]
    return float(np.mean(total))


def staged_accuracy(member_proba: np.ndarray, lambdas: np.ndarray, labels: np.ndarray, mode: str) -> list[float]:
    """Ensemble accuracy using the first 1..M members."""
    return [accuracy(vote(member_proba[: k + 1], lambdas[: k + 1], mode), labels) for k in range(len(lambdas))]


def ensemble_report(
    member_proba: np.ndarray, weights: np.ndarray, labels: np.ndarray, num_classes: int, mode: str,
    temperature: float = 1.0,
) -> dict:
    """Every figure for one split: per-member accuracy and the ensemble's accuracy, NLL, ECE, ..."""
    proba = apply_temperature(vote(member_proba, weights, mode), temperature)
    return {
        "member_accuracy": [accuracy(p, labels) for p in member_proba],
        "accuracy": accuracy(proba, labels),
        "balanced_accuracy": balanced_accuracy(proba, labels, num_classes),
        "nll": nll(proba, labels),
        "ece": expected_calibration_error(proba, labels),
        "staged_accuracy": staged_accuracy(member_proba, weights, labels, mode),
        "disagreement": pairwise_disagreement(member_proba),
    }
