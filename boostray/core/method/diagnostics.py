"""Which regime a run was in: still improving (compute-limited), saturated with members that agree, or
saturated with members diverse enough for an ensemble to pay. Pure NumPy.

- ``disagreement``: the mean, over pairs of members, of the fraction of validation samples on which
  the two predict different classes.
- ``diversity_ratio``: that disagreement over the members' mean validation error. Ensembles gain when
  members disagree often relative to how often they are wrong; checkpoints of one run tend to make the
  same mistakes, which shows as a low ratio.
- ``late_gain``: the final network's validation accuracy minus that of the same network at 3/4 of its
  schedule. A network still gaining over the last quarter would have gained more from a longer budget
  than from splitting the budget into members.
"""

from __future__ import annotations

import math

import numpy as np

from boostray.core.method.metrics import accuracy, pairwise_disagreement

RISING = 0.002  # late gain (a fraction) from which a run counts as still improving: 0.2 points
LOW_DIVERSITY = 0.5  # diversity ratio below which the members make mostly the same mistakes


def diagnostics(member_val_proba: np.ndarray, val_labels: np.ndarray, final_val_accuracy: float,
                probe_val_accuracy: float) -> dict:
    """disagreement, diversity_ratio, late_gain and a one-line ``regime`` for (M, n, K) member
    probabilities on validation; NaN where a figure needs two members or a probe that was not taken."""
    m = member_val_proba.shape[0]
    disagreement = pairwise_disagreement(member_val_proba) if m > 1 else math.nan
    mean_error = float(np.mean([1.0 - accuracy(p, val_labels) for p in member_val_proba]))
    ratio = disagreement / mean_error if m > 1 and mean_error > 0 else math.nan
    late_gain = final_val_accuracy - probe_val_accuracy
    out = {"disagreement": disagreement, "mean_member_error": mean_error, "diversity_ratio": ratio,
           "late_gain": late_gain}
    out["regime"] = regime(out)
    return out


def regime(d: dict) -> str:
    """One line: which regime the figures in ``d`` say the run was in, and what to try."""
    gain, ratio = d["late_gain"], d["diversity_ratio"]
    if gain == gain and gain >= RISING:
        return (f"compute-limited: the final network still gained {gain * 100:+.2f} points on validation over the "
                "last quarter of its schedule; a longer budget (--epochs) is the better use of compute before "
                "members can pay")
    if ratio != ratio:
        return "one member: nothing to diagnose beyond the final network (no longer improving)"
    if ratio < LOW_DIVERSITY:
        return (f"saturated, members alike: they disagree on {d['disagreement'] * 100:.2f} % of validation against "
                f"a mean error of {d['mean_member_error'] * 100:.2f} % (ratio {ratio:.2f}); checkpoints of one run add "
                "little here, independent networks (--method deep, M x the cost) show the ceiling")
    return (f"saturated, members diverse (ratio {ratio:.2f}): the regime where an ensemble of checkpoints can pay")
