"""The CBNN boosting step: pure functions over NumPy arrays, no torch, no Ray.

Multi-class AdaBoost in its SAMME form (Zhu et al. 2009; docs/method.md): one `boost_step` per round takes
the current sample weights and the checkpoint's per-sample correctness on the training set and returns
the weighted error e_m, the checkpoint weight lambda_m and the new sample weights. Read it like
scikit-learn's ``AdaBoostClassifier._boost``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

DEFAULT_MIN_ERROR = 1e-4
DEFAULT_ETA = 0.3


class ChanceLevelWarning(UserWarning):
    """A checkpoint was no better than chance (e_m >= 1 - 1/K): it gets weight 0."""


@dataclass(frozen=True)
class BoostResult:
    """What one boosting round produced."""

    error: float  # weighted training error e_m after clamping
    raw_error: float  # weighted training error before clamping
    lambda_: float  # checkpoint weight lambda_m (0 for a chance-level checkpoint)
    weights: np.ndarray  # sample weights for the next round, summing to 1
    chance_level: bool
    eta: float = DEFAULT_ETA  # the shrinkage actually applied (lower than asked when ess_min bounds it; NaN: no update)


def uniform_weights(n: int) -> np.ndarray:
    """w_i = 1/n: the weights of round 1 and of the non-boosting methods."""
    if n < 1:
        raise ValueError("need at least one sample")
    return np.full(n, 1.0 / n, dtype=np.float64)


def weighted_error(weights: np.ndarray, correct: np.ndarray) -> float:
    """e_m = sum_i w_i (1 - c_i) / sum_i w_i."""
    w = np.asarray(weights, dtype=np.float64)
    wrong = ~np.asarray(correct, dtype=bool)
    return float(w[wrong].sum() / w.sum())


def clamp_error(error: float, num_classes: int, min_error: float = DEFAULT_MIN_ERROR) -> float:
    """Clamp e_m to [min_error, 1 - 1/K - min_error] so lambda_m stays finite."""
    return float(min(max(error, min_error), 1.0 - 1.0 / num_classes - min_error))


def checkpoint_weight(error: float, num_classes: int) -> float:
    """lambda_m = log((1 - e_m) / e_m) + log(K - 1); positive iff e_m < 1 - 1/K."""
    return math.log((1.0 - error) / error) + math.log(num_classes - 1)


def effective_sample_size(weights: np.ndarray) -> float:
    """(sum w)^2 / sum w^2 / n: 1 for uniform weights, 1/n when one sample holds all the weight."""
    w = np.asarray(weights, dtype=np.float64)
    return float(w.sum() ** 2 / np.square(w).sum() / w.size)


def cap_weight_ratio(weights: np.ndarray, max_ratio: float) -> np.ndarray:
    """Cap max(w) / mean(w) at ``max_ratio`` (after normalisation), redistributing by renormalising.

    Capping then renormalising can push other weights over the cap, so iterate; it converges in a few
    steps because each pass only lowers the largest weights.
    """
    w = np.asarray(weights, dtype=np.float64)
    if max_ratio < 1:
        raise ValueError("max_weight_ratio must be >= 1")
    for _ in range(100):
        cap = max_ratio / w.size * w.sum()
        if w.max() <= cap * (1 + 1e-12):
            break
        w = np.minimum(w, cap)
        w = w / w.sum()
    return w / w.sum()


def _reweighted(weights: np.ndarray, wrong: np.ndarray, factor: float) -> np.ndarray:
    new = weights / weights.sum()  # a new array: the caller's weights are never modified
    new[wrong] *= factor  # only the misclassified samples change: no exp over all n samples
    return new / new.sum()


def ess_bounded_eta(
    weights: np.ndarray, correct: np.ndarray, lam: float, eta_max: float, ess_min: float, *, steps: int = 40
) -> float:
    """The largest eta <= eta_max whose update keeps the effective sample size >= ess_min.

    Adaptive shrinkage: it bounds how far one round can move the loss surface. The ESS after the update
    is a ratio of quadratics in the factor exp(eta * lam); bisection finds the boundary. When even
    eta = 0 is below ess_min (the weights are already that concentrated) the answer is 0: no update.
    """
    w = np.asarray(weights, dtype=np.float64)
    wrong = ~np.asarray(correct, dtype=bool)

    def ok(eta: float) -> bool:
        return effective_sample_size(_reweighted(w, wrong, math.exp(eta * lam))) >= ess_min

    if ok(eta_max):
        return float(eta_max)
    if not ok(0.0):
        return 0.0
    lo, hi = 0.0, float(eta_max)
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def mix_with_uniform(weights: np.ndarray, gamma: float) -> np.ndarray:
    """w <- (1 - gamma) w + gamma / n: every sample keeps at least gamma / n of the weight."""
    if not 0 <= gamma <= 1:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    w = np.asarray(weights, dtype=np.float64)
    return (1 - gamma) * w / w.sum() + gamma / w.size


def boost_step(
    weights: np.ndarray,
    correct: np.ndarray,
    num_classes: int,
    *,
    eta: float = DEFAULT_ETA,
    min_error: float = DEFAULT_MIN_ERROR,
    update: bool = True,
    max_weight_ratio: float | None = None,
    ess_min: float | None = None,
    gamma: float = 0.0,
    lambda_error: float | None = None,
) -> BoostResult:
    """One SAMME round: error, checkpoint weight, and (unless ``update`` is False) the new weights.

    ``update=False`` is the last round (m == M): lambda_M is needed, new weights are not.
    ``lambda_error`` replaces the weighted training error in lambda_m (e.g. the validation error:
    honest member weights once the training error nears 0). ``ess_min`` lowers eta for this round so
    the effective sample size stays >= ess_min; ``gamma`` mixes the new weights with uniform.
    """
    if num_classes < 2:
        raise ValueError("boosting needs at least 2 classes")
    if not 0 < eta <= 1:
        raise ValueError(f"eta must be in (0, 1], got {eta}")
    w = np.asarray(weights, dtype=np.float64)
    c = np.asarray(correct, dtype=bool)
    if w.shape != c.shape:
        raise ValueError(f"weights {w.shape} and correctness {c.shape} differ in shape")
    raw = weighted_error(w, c)
    decisive = raw if lambda_error is None else float(lambda_error)  # the error lambda_m is computed from
    if decisive >= 1.0 - 1.0 / num_classes:
        warnings.warn(
            f"checkpoint {'weighted' if lambda_error is None else 'validation'} error {decisive:.4f} >= "
            f"1 - 1/K = {1 - 1 / num_classes:.4f}: no better than chance, weight 0 and sample weights unchanged",
            ChanceLevelWarning,
            stacklevel=2,
        )
        return BoostResult(error=decisive, raw_error=raw, lambda_=0.0, weights=w / w.sum(), chance_level=True, eta=0.0)
    err = clamp_error(decisive, num_classes, min_error)
    lam = checkpoint_weight(err, num_classes)
    new = w / w.sum()
    if update:
        if ess_min is not None:
            eta = ess_bounded_eta(w, c, lam, eta, ess_min)
        new = _reweighted(w, ~c, math.exp(eta * lam))
        if gamma:
            new = mix_with_uniform(new, gamma)
        if max_weight_ratio is not None:
            new = cap_weight_ratio(new, max_weight_ratio)
    return BoostResult(error=err, raw_error=raw, lambda_=lam, weights=new, chance_level=False, eta=eta if update else math.nan)


def vote(member_proba: np.ndarray, lambdas: np.ndarray, mode: str = "soft") -> np.ndarray:
    """Combine members' class probabilities (M, n, K) into ensemble scores (n, K) summing to 1.

    ``soft``: sum_m lambda_m p_m / sum lambda; ``hard``: the same over one-hot argmax votes.
    """
    p = np.asarray(member_proba, dtype=np.float64)
    a = np.asarray(lambdas, dtype=np.float64)
    if p.ndim != 3 or p.shape[0] != a.shape[0]:
        raise ValueError(f"expected (M, n, K) probabilities for {a.shape[0]} members, got {p.shape}")
    if a.sum() <= 0:
        a = np.ones_like(a)  # every member at chance level: fall back to a plain average
    if mode == "hard":
        p = np.eye(p.shape[-1])[p.argmax(axis=-1)]
    elif mode != "soft":
        raise ValueError(f"unknown vote mode {mode!r} (soft, hard)")
    return np.einsum("m,mnk->nk", a, p) / a.sum()


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): T > 1 softens, T < 1 sharpens; T = 1 returns ``proba`` itself."""
    if temperature == 1.0:
        return proba
    logits = np.log(np.clip(np.asarray(proba, dtype=np.float64), 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=-1, keepdims=True)


# ------------------------------------------------------------------------------------- class balance


def class_balanced(labels: np.ndarray) -> np.ndarray:
    """Per-sample values 1 / (K' n_{y_i}), K' the classes present: they sum to 1 and give every class the
    same total. The balanced sampler's draw probabilities and the balanced start of the sample weights."""
    counts = np.bincount(labels)
    present = int((counts > 0).sum())
    return 1.0 / (present * counts[labels].astype(np.float64))


def class_loss_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class loss weights proportional to 1 / class frequency, N / (K' n_c), normalised so that their
    mean over the training samples is 1: the learning rate keeps its meaning (absent classes: 0)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = int((counts > 0).sum())
    return np.where(counts > 0, labels.size / (present * np.maximum(counts, 1)), 0.0)


def imbalance(labels: np.ndarray) -> float:
    """The ratio of the largest class to the smallest present one."""
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    return float(counts.max() / counts.min())
