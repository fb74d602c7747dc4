"""How the members become one prediction: member weights, one temperature, and honest validation scores.

Pure NumPy, no torch, no Ray. Member probabilities are (M, n, K) arrays on the validation split.

- ``fit_weights``: ``lambda`` (lambda_m, from the boosting step or from each member's validation error),
  ``uniform``, ``final`` (the last member alone) or ``greedy``: ensemble selection with replacement
  (Caruana et al., ICML 2004), started from the final network and growing only while validation
  accuracy (then NLL) improves, so it is never below the final network on the data it was fitted on.
- ``fit_temperature``: one temperature T for the combined probabilities, softmax(log p / T), by
  minimising validation NLL (Guo et al. 2017); argmax, hence accuracy, is unchanged.
- ``crossfit``: a rule that fits on validation data cannot be scored on the same samples. Fit on one
  half and predict the other, both ways; the out-of-fold predictions score the rule as fairly as a
  rule that fits nothing.
- ``choose_combination``: the combination a run ships. For ``greedy`` that is the selection only when
  it is at least as accurate as the final network out of fold; otherwise the final network alone, with
  the reason in one line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from boostray.core.method.boosting import DEFAULT_MIN_ERROR, apply_temperature, checkpoint_weight, clamp_error, vote
from boostray.core.method.metrics import accuracy, expected_calibration_error, nll

CROSSFIT_SEED = 0


def lambda_from_validation(member_proba: np.ndarray, labels: np.ndarray, num_classes: int,
                           min_error: float = DEFAULT_MIN_ERROR) -> np.ndarray:
    """lambda_m = log((1 - e_m) / e_m) + log(K - 1) with e_m each member's error on ``labels``;
    0 for a member no better than chance."""
    out = []
    for p in member_proba:
        error = 1.0 - accuracy(p, labels)
        chance = error >= 1.0 - 1.0 / num_classes
        out.append(0.0 if chance else checkpoint_weight(clamp_error(error, num_classes, min_error), num_classes))
    return np.array(out)


def _score(proba: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """What greedy selection maximises: accuracy first, then lower NLL."""
    return accuracy(proba, labels), -nll(proba, labels)


def greedy_selection(member_proba: np.ndarray, labels: np.ndarray, mode: str = "soft",
                     max_steps: int | None = None) -> np.ndarray:
    """Selection counts per member (with replacement), started from the final (last) member; the
    weights are these counts. Starting from the final network rather than the best-scoring member means
    a selection that adds nothing is exactly the network one plain training run would ship."""
    p = np.asarray(member_proba, dtype=np.float64)
    m = p.shape[0]
    counts = np.zeros(m, dtype=np.int64)
    counts[-1] = 1
    best = _score(p[-1], labels)
    for _ in range(max_steps if max_steps is not None else 4 * m):
        trials = []
        for i in range(m):
            c = counts.copy()
            c[i] += 1
            trials.append((_score(vote(p, c, mode), labels), i, c))
        score, _, c = max(trials, key=lambda t: (t[0], t[1]))
        if score <= best:
            break
        best, counts = score, c
    return counts


def fit_weights(rule: str, member_proba: np.ndarray, labels: np.ndarray, *, num_classes: int,
                lambdas: np.ndarray | None = None, mode: str = "soft") -> np.ndarray:
    """Member weights under ``rule`` fitted on (member_proba, labels), a validation split.
    ``lambdas``: lambda_m from training (None: from each member's error on ``labels``)."""
    m = member_proba.shape[0]
    if rule == "uniform":
        return np.ones(m)
    if rule == "final":
        return np.eye(m)[-1]
    if rule == "lambda":
        return np.asarray(lambdas, dtype=np.float64) if lambdas is not None else lambda_from_validation(member_proba, labels, num_classes)
    if rule == "greedy":
        return greedy_selection(member_proba, labels, mode).astype(np.float64)
    raise ValueError(f"unknown combination rule {rule!r}")


def fit_temperature(proba: np.ndarray, labels: np.ndarray, low: float = 0.05, high: float = 20.0) -> float:
    """The T minimising NLL of softmax(log p / T) on (proba, labels). NLL is convex in 1/T, so a golden-
    section search over 1/T finds the minimum."""
    logp = np.log(np.clip(np.asarray(proba, dtype=np.float64), 1e-12, 1.0))
    rows = np.arange(len(labels))

    def loss(beta: float) -> float:
        z = beta * logp
        z -= z.max(axis=-1, keepdims=True)
        return float((np.log(np.exp(z).sum(axis=-1)) - z[rows, labels]).mean())

    a, b = 1.0 / high, 1.0 / low
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(80):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    beta = (a + b) / 2
    return 1.0 / beta if loss(beta) < loss(1.0) else 1.0


@dataclass(frozen=True)
class Combination:
    """A fitted combination: member weights (zero for members left out) and the temperature."""

    weights: np.ndarray
    temperature: float = 1.0

    def predict_proba(self, member_proba: np.ndarray, mode: str = "soft") -> np.ndarray:
        return apply_temperature(vote(member_proba, self.weights, mode), self.temperature)


def fit_combination(rule: str, member_proba: np.ndarray, labels: np.ndarray, *, num_classes: int,
                    lambdas: np.ndarray | None = None, mode: str = "soft", calibrate: bool = True) -> Combination:
    """Weights under ``rule``, then (if ``calibrate``) the temperature of the weighted vote, both on
    (member_proba, labels)."""
    weights = fit_weights(rule, member_proba, labels, num_classes=num_classes, lambdas=lambdas, mode=mode)
    temperature = fit_temperature(vote(member_proba, weights, mode), labels) if calibrate else 1.0
    return Combination(weights, temperature)


def crossfit_halves(n: int, seed: int = CROSSFIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of 0..n-1, fixed by ``seed`` (every run and method gets the same halves)."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2:])


def crossfit_proba(rule: str, member_proba: np.ndarray, labels: np.ndarray, *, num_classes: int,
                   lambdas: np.ndarray | None = None, mode: str = "soft", calibrate: bool = True) -> np.ndarray:
    """Out-of-fold ensemble probabilities on the validation split: each half predicted by the
    combination fitted on the other half."""
    labels = np.asarray(labels)
    out = np.empty(member_proba.shape[1:], dtype=np.float64)
    if labels.size < 2:  # nothing to hold out: fall back to in-sample
        return fit_combination(rule, member_proba, labels, num_classes=num_classes, lambdas=lambdas, mode=mode,
                               calibrate=calibrate).predict_proba(member_proba, mode)
    a, b = crossfit_halves(labels.size)
    for fit, score in ((a, b), (b, a)):
        comb = fit_combination(rule, member_proba[:, fit], labels[fit], num_classes=num_classes, lambdas=lambdas,
                               mode=mode, calibrate=calibrate)
        out[score] = comb.predict_proba(member_proba[:, score], mode)
    return out


def scores(proba: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"accuracy": accuracy(proba, labels), "nll": nll(proba, labels),
            "ece": expected_calibration_error(proba, labels)}


@dataclass(frozen=True)
class Choice:
    """The combination a run ships, the rule behind it, and one line saying why."""

    combination: Combination
    rule: str
    reason: str


def choose_combination(rule: str, member_proba: np.ndarray, labels: np.ndarray, *, num_classes: int,
                       lambdas: np.ndarray | None = None, crossfit_lambdas: np.ndarray | None = None,
                       mode: str = "soft", calibrate: bool = True) -> Choice:
    """``rule``'s combination fitted on the whole validation split; for ``greedy``, the final network
    alone unless the selection holds at least the final network's accuracy out of fold (cross-fitted)."""
    fitted = fit_combination(rule, member_proba, labels, num_classes=num_classes, lambdas=lambdas, mode=mode,
                             calibrate=calibrate)
    used = int((fitted.weights > 0).sum())
    if rule != "greedy":
        return Choice(fitted, rule, f"{rule} combination of {used} member(s)")
    final_only = fit_combination("final", member_proba, labels, num_classes=num_classes, mode=mode, calibrate=calibrate)
    if fitted.weights[:-1].sum() == 0:
        return Choice(final_only, "final", "no member improved on the final network on validation: "
                                           "shipped the final network alone")
    oof = crossfit_proba(rule, member_proba, labels, num_classes=num_classes, lambdas=crossfit_lambdas, mode=mode,
                         calibrate=False)
    ensemble_acc, final_acc = accuracy(oof, labels), accuracy(member_proba[-1], labels)
    if ensemble_acc < final_acc:
        return Choice(final_only, "final", f"the greedy selection ({used} members) scored {ensemble_acc:.4f} "
                                           f"cross-fitted against the final network's {final_acc:.4f}: shipped "
                                           "the final network alone")
    return Choice(fitted, rule, f"greedy selection of {used} members from {member_proba.shape[0]}: "
                                f"{ensemble_acc:.4f} cross-fitted against the final network's {final_acc:.4f}")
