"""Training methods as four orthogonal choices, and the named presets built from them.

- schedule: ``decay`` (one cosine over the whole budget), ``step`` (LR / 10 at 50 % and again at 75 % of
  the budget: the single baseline of the checkpoint-ensemble papers), ``restart`` (a cosine cycle per
  round, so every member ends at an LR minimum; with SAMME re-weighting this is Snapshot Boosting),
  ``fge`` (ordinary decay, then a triangular cycle per round), ``swa`` (decay to a constant LR, weights
  averaged);
- placement: ``spread`` (round m ends at round(mE/M), the paper's rounds) or ``tail``
  (plain training until the first member at ``first_member`` x E, the other rounds evenly after it);
- re-weighting: ``none`` or ``samme`` (the boosting step of boosting.py at every round's end);
- combination: ``lambda``, ``uniform``, ``greedy`` (selection on validation data) or ``final`` (the
  last network alone); see combine.py.

A method with ``independent`` networks (the ``deep`` ensemble) starts every round from a fresh
initialisation and runs the whole schedule again: M networks of E epochs each (M x the cost), or with
``deep_budget="split"`` of E/M epochs each (the same cost as one network).

The training loop asks the method for the LR, the rounds and the members; it never branches on a name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from boostray.errors import ConfigError

SCHEDULES = ("decay", "step", "restart", "fge", "swa")
DEEP_BUDGETS = ("full", "split")
PLACEMENTS = ("spread", "tail")
REWEIGHTINGS = ("none", "samme")
COMBINATIONS = ("lambda", "uniform", "greedy", "final")
DEFAULT_FIRST_MEMBER = 0.5


def round_boundaries(epochs: int, rounds: int) -> list[int]:
    """End epoch (exclusive) of each round: [round(E/M), round(2E/M), ..., E]."""
    if rounds < 1 or rounds > epochs:
        raise ConfigError(f"--members must be between 1 and --epochs ({epochs}), got {rounds}")
    return [int(math.floor(m * epochs / rounds + 0.5)) for m in range(1, rounds + 1)]


def tail_boundaries(epochs: int, rounds: int, first: int) -> list[int]:
    """Member 1 at epoch ``first``, the other M - 1 rounds spread evenly over [first, E]."""
    if rounds < 1 or rounds > epochs:
        raise ConfigError(f"--members must be between 1 and --epochs ({epochs}), got {rounds}")
    if rounds == 1:
        return [epochs]
    if not 1 <= first <= epochs - (rounds - 1):
        raise ConfigError(
            f"--first-member puts member 1 at epoch {first}, which leaves {epochs - first} epochs for "
            f"{rounds - 1} more rounds; lower --first-member or --members, or raise --epochs"
        )
    tail = epochs - first
    return [first] + [first + int(math.floor(m * tail / (rounds - 1) + 0.5)) for m in range(1, rounds)]


def cosine_lr(t: float, total: float) -> float:
    """LR multiplier of one cosine decay from 1 to 0 over ``total`` epochs, t in epochs."""
    return 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))


def step_lr(t: float, total: float) -> float:
    """LR multiplier of the step schedule: 1, then 0.1 from 50 % of ``total``, 0.01 from 75 %."""
    return 1.0 if t < 0.5 * total else 0.1 if t < 0.75 * total else 0.01


@dataclass(frozen=True)
class Method:
    """One point in the method space; ``name`` is the preset it came from (for records only)."""

    epochs: int
    members: int
    schedule: str = "decay"
    placement: str = "spread"
    first_member: float | None = None  # tail: member 1 at this fraction of E (None: 0.5; fge: its classic start)
    reweight: str = "none"
    combine: str = "uniform"
    restart_lr: float = 1.0  # restart: peak LR of the cycles after member 1, as a fraction of lr0
    independent: bool = False  # each round a fresh network over the whole schedule (deep ensemble)
    deep_budget: str = "full"  # independent: full (E epochs per network) or split (E/M epochs each)
    name: str = "custom"
    lr1: float = 0.5  # fge: top of the triangle, as a fraction of lr0
    lr2: float = 0.01  # fge: bottom of the triangle (where members are taken)
    swa_lr: float = 0.05  # swa: the constant LR after swa_start, as a fraction of lr0
    swa_start_fraction: float = 0.75

    def __post_init__(self) -> None:
        if not 1 <= self.members <= self.epochs:
            raise ConfigError(f"--members must be between 1 and --epochs ({self.epochs}), got {self.members}")
        for key, value, allowed in (("schedule", self.schedule, SCHEDULES), ("placement", self.placement, PLACEMENTS),
                                    ("reweight", self.reweight, REWEIGHTINGS), ("combine", self.combine, COMBINATIONS)):
            if value not in allowed:
                raise ConfigError(f"--{key} must be one of {', '.join(allowed)}, got {value!r}")
        if self.first_member is not None and not 0 < self.first_member <= 1:
            raise ConfigError(f"--first-member must be in (0, 1], got {self.first_member}")
        if not 0 < self.restart_lr <= 1:
            raise ConfigError(f"--restart-lr must be in (0, 1], got {self.restart_lr}")
        if self.deep_budget not in DEEP_BUDGETS:
            raise ConfigError(f"--deep-budget must be one of {', '.join(DEEP_BUDGETS)}, got {self.deep_budget!r}")
        if self.independent and self.schedule not in ("decay", "step"):
            raise ConfigError(f"independent networks train with --schedule decay or step, not {self.schedule}")
        if self.independent and self.reweights:
            raise ConfigError("independent networks are not boosted: use --reweight none")
        if self.schedule == "swa" and self.combine != "final":
            raise ConfigError("--schedule swa makes one averaged network: it needs --combine final")
        bounds = self.boundaries()  # validates M against E and the placement
        if self.schedule == "fge" and bounds[0] - self.fge_cycle < 1:
            raise ConfigError(
                f"fge needs --epochs > members x cycle epochs ({self.members} x {self.fge_cycle}); raise --epochs"
            )

    # -- rounds ---------------------------------------------------------------------------------------
    @property
    def classic_fge_cycle(self) -> int:
        """FGE's cycle c = E // 2M (Garipov et al. take their members from the budget's tail)."""
        return max(1, self.epochs // (2 * self.members))

    def first_member_epoch(self) -> int:
        if self.first_member is None and self.schedule == "fge":
            return self.epochs - (self.members - 1) * self.classic_fge_cycle
        if self.first_member is None:  # the default half-way point gives way when the budget is short
            latest = self.epochs - (self.members - 1)  # the rounds after member 1 need an epoch each
            return max(1, min(latest, int(math.floor(DEFAULT_FIRST_MEMBER * self.epochs + 0.5))))
        return max(1, int(math.floor(self.first_member * self.epochs + 0.5)))

    @property
    def network_epochs(self) -> int:
        """Epochs one network trains: E, or E/M for split independent networks."""
        if self.independent and self.deep_budget == "split":
            return max(1, self.epochs // self.members)
        return self.epochs

    @property
    def total_epochs(self) -> int:
        """Epochs the whole run trains: E, or M x network_epochs for independent networks."""
        return self.members * self.network_epochs if self.independent else self.epochs

    def network_start(self, round_index: int) -> int:
        """Epoch at which the network of round ``round_index`` began: 0 unless networks are independent."""
        return round_index * self.network_epochs if self.independent else 0

    def probe_epoch(self) -> int:
        """The epoch after which the last network's validation accuracy is probed: 3/4 of its schedule
        (what ``late_gain`` compares the final network with)."""
        start = self.network_start(self.members - 1)
        return start + max(1, min(self.network_epochs - 1, int(math.floor(0.75 * self.network_epochs + 0.5))))

    def boundaries(self) -> list[int]:
        """End epoch (exclusive) of each round; a member (candidate) is taken at each."""
        if self.independent:
            return [(m + 1) * self.network_epochs for m in range(self.members)]
        if self.placement == "tail":
            return tail_boundaries(self.epochs, self.members, self.first_member_epoch())
        return round_boundaries(self.epochs, self.members)

    @property
    def reweights(self) -> bool:
        return self.reweight == "samme"

    @property
    def averaged_member(self) -> bool:
        """The member is a running weight average (SWA), not the network itself."""
        return self.schedule == "swa"

    def is_member(self, round_index: int) -> bool:
        """Whether the checkpoint at the end of round ``round_index`` (0-based) is a member candidate."""
        return self.combine != "final" or round_index == self.members - 1

    # -- learning rate --------------------------------------------------------------------------------
    @property
    def fge_cycle(self) -> int:
        """FGE's cycle length: the length of the rounds after the first (c for the classic placement)."""
        bounds = self.boundaries()
        return bounds[1] - bounds[0] if len(bounds) > 1 else self.classic_fge_cycle

    @property
    def swa_start(self) -> int:
        return max(1, min(self.epochs - 1, int(round(self.swa_start_fraction * self.epochs))))

    def lr_factor(self, t: float) -> float:
        """Multiplier of the base LR at fractional epoch t."""
        if self.independent:  # every network runs the schedule from its own start
            length = self.network_epochs
            local = t - min(int(t // length), self.members - 1) * length
            return cosine_lr(local, length) if self.schedule == "decay" else step_lr(local, length)
        if self.schedule == "decay":
            return cosine_lr(t, self.epochs)
        if self.schedule == "step":
            return step_lr(t, self.epochs)
        if self.schedule == "swa":
            if t < self.swa_start:
                return self.swa_lr + (1 - self.swa_lr) * cosine_lr(t, self.swa_start)
            return self.swa_lr
        bounds = [0, *self.boundaries()]
        for i, (start, end) in enumerate(zip(bounds, bounds[1:])):
            if t < end:
                break
        else:
            i, start, end = len(bounds) - 2, bounds[-2], bounds[-1]
        if self.schedule == "restart":  # round 1 from lr0, later rounds restart at restart_lr x lr0
            return (1.0 if i == 0 else self.restart_lr) * cosine_lr(t - start, end - start)
        # fge: round 1 decays to lr2 and ends with a triangle as long as the later rounds, each of which
        # is one triangle lr2 -> lr1 -> lr2 (rise first, so the minimum falls on the round's end)
        if i == 0:
            first_phase = end - self.fge_cycle
            if t < first_phase:
                return self.lr2 + (1 - self.lr2) * cosine_lr(t, first_phase)
            start = first_phase
        phase = min(max((t - start) / (end - start), 0.0), 1.0)
        return self.lr2 + (self.lr1 - self.lr2) * (1 - abs(2 * phase - 1))

    def averages_after_epoch(self, epoch: int) -> bool:
        """Whether the weights after epoch ``epoch`` (0-based) join the running average (SWA only)."""
        return self.schedule == "swa" and epoch + 1 > self.swa_start

    def describe(self) -> dict[str, Any]:
        """The resolved choices, as recorded in the manifest."""
        out = {"preset": self.name, "schedule": self.schedule, "placement": self.placement,
               "member_epochs": self.boundaries(), "reweight": self.reweight, "combine": self.combine}
        if self.schedule == "restart":
            out["restart_lr"] = self.restart_lr
        if self.independent:
            out.update(independent=True, deep_budget=self.deep_budget, cost=self.total_epochs / self.epochs)
        return out


# The four axes of each named method, plus the options it sets (eta, lambda_source, calibrate).
# An option given explicitly (flag or YAML key) wins over the preset.
_PAPER = {"schedule": "decay", "placement": "spread", "reweight": "samme", "combine": "lambda",
          "lambda_source": "train", "calibrate": False}
PRESETS: dict[str, dict[str, Any]] = {
    # the default: one network on the single baseline's own schedule, re-weighted gently (eta 0.1) from
    # half the budget on; members from the tail, chosen greedily from the final network on validation
    "cbnn-tail": {"schedule": "decay", "placement": "tail", "reweight": "samme", "combine": "greedy", "eta": 0.1},
    # the paper's form: members along one decay, lambda from the weighted training error
    "cbnn": _PAPER,
    "cbnn-paper": _PAPER,  # the same, under the name it had while "cbnn" was another preset
    "single": {"schedule": "decay", "placement": "spread", "reweight": "none", "combine": "final"},
    "checkpoint": {"schedule": "decay", "placement": "spread", "reweight": "none", "combine": "uniform"},
    "snapshot": {"schedule": "restart", "placement": "spread", "reweight": "none", "combine": "uniform"},
    "fge": {"schedule": "fge", "placement": "tail", "reweight": "none", "combine": "uniform"},
    "swa": {"schedule": "swa", "placement": "spread", "reweight": "none", "combine": "final"},
    # Snapshot Boosting (Zhang et al. 2020): a restart per round with SAMME re-weighting
    "snapshot-boost": {"schedule": "restart", "placement": "spread", "reweight": "samme", "combine": "lambda"},
    # the ceiling: M independently initialised networks, each over the whole schedule (M x the cost)
    "deep": {"schedule": "decay", "placement": "spread", "reweight": "none", "combine": "uniform", "independent": True},
}
DEFAULT_METHOD = "cbnn-tail"

# What an option means when neither the preset nor the user sets it.
OPTION_DEFAULTS: dict[str, Any] = {
    "schedule": "decay", "placement": "spread", "first_member": None, "reweight": "none", "combine": "uniform",
    "restart_lr": 1.0, "eta": 0.3, "lambda_source": "val", "calibrate": True,
}
AXES = tuple(f.name for f in fields(Method) if f.name in OPTION_DEFAULTS)  # what a user may set


def preset_options(name: str) -> dict[str, Any]:
    """Every preset-dependent option of method ``name``: the preset's value, else the plain default."""
    if name not in PRESETS:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(PRESETS)}")
    return {**OPTION_DEFAULTS, **PRESETS[name]}


def create_method(name: str, *, epochs: int, members: int, deep_budget: str = "full", **overrides: Any) -> Method:
    """The preset ``name`` over E epochs and M rounds, with any axis in ``overrides`` replaced
    (None means: the preset's). ``deep_budget`` applies to a preset of independent networks."""
    options = preset_options(name)
    unknown = set(overrides) - set(AXES)
    if unknown:
        raise TypeError(f"not method axes: {sorted(unknown)}")
    options.update({k: v for k, v in overrides.items() if v is not None})
    return Method(epochs=epochs, members=members, name=name, independent=options.get("independent", False),
                  deep_budget=deep_budget, **{k: options[k] for k in AXES})
