"""Training methods as small objects: an LR schedule, when a round ends, which rounds give members,
and whether samples are re-weighted. The training loop asks the method; it never branches on its name.

Rounds follow ../shared/cbnn-method.md: round m covers epochs [round((m-1)E/M), round(mE/M)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from boostray.errors import ConfigError


def round_boundaries(epochs: int, rounds: int) -> list[int]:
    """End epoch (exclusive) of each round: [round(E/M), round(2E/M), ..., E]."""
    if rounds < 1 or rounds > epochs:
        raise ConfigError(f"--checkpoints must be between 1 and --epochs ({epochs}), got {rounds}")
    return [int(math.floor(m * epochs / rounds + 0.5)) for m in range(1, rounds + 1)]


def cosine_lr(t: float, total: float) -> float:
    """LR multiplier of one cosine decay over the whole budget, t and total in epochs."""
    return 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))


@dataclass(frozen=True)
class Method:
    """Base: one ordinary cosine schedule over the whole budget, a round per checkpoint."""

    epochs: int
    checkpoints: int
    name: str = "base"
    reweights: bool = False  # boost the sample weights at each round's end
    weighted_members: bool = False  # members get lambda_m instead of uniform weights

    def __post_init__(self) -> None:
        round_boundaries(self.epochs, self.checkpoints)  # validates

    def lr_factor(self, t: float) -> float:
        """Multiplier of the base LR at fractional epoch t."""
        return cosine_lr(t, self.epochs)

    def boundaries(self) -> list[int]:
        return round_boundaries(self.epochs, self.checkpoints)

    def is_member(self, round_index: int) -> bool:
        """Whether the checkpoint at the end of round ``round_index`` (0-based) joins the ensemble."""
        return True


@dataclass(frozen=True)
class CBNN(Method):
    """Boost Neural Networks by Checkpoints: re-weighted samples, lambda-weighted members."""

    name: str = "cbnn"
    reweights: bool = True
    weighted_members: bool = True


@dataclass(frozen=True)
class Single(Method):
    """The same schedule; only the final network is kept (checkpoints still give fault tolerance)."""

    name: str = "single"

    def is_member(self, round_index: int) -> bool:
        return round_index == self.checkpoints - 1


@dataclass(frozen=True)
class CheckpointEnsemble(Method):
    """CBNN's schedule and checkpoints, uniform sample weights, uniform average: what boosting adds."""

    name: str = "checkpoint"


METHODS: dict[str, type[Method]] = {"cbnn": CBNN, "single": Single, "checkpoint": CheckpointEnsemble}


def create_method(name: str, *, epochs: int, checkpoints: int) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name](epochs=epochs, checkpoints=checkpoints)
