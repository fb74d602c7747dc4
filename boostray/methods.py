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
    averaged_member: bool = False  # the member is a running weight average (SWA), not the network

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

    def averages_after_epoch(self, epoch: int) -> bool:
        """Whether the weights after epoch ``epoch`` join a running weight average (SWA only)."""
        return False


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


@dataclass(frozen=True)
class Snapshot(Method):
    """Snapshot Ensemble (Huang et al. 2017): M cosine cycles, a member at each cycle's end.
    lr(t) = lr0/2 (cos(pi t_cycle / len_cycle) + 1), each cycle spanning one round."""

    name: str = "snapshot"

    def lr_factor(self, t: float) -> float:
        bounds = [0, *self.boundaries()]
        for start, end in zip(bounds, bounds[1:]):
            if t < end:
                return cosine_lr(t - start, end - start)
        return 0.0


@dataclass(frozen=True)
class FGE(Method):
    """Fast Geometric Ensembling (Garipov et al. 2018): the ordinary schedule for E - M*c epochs
    (cosine from lr0 down to lr2), then M triangular cycles of c epochs between lr2 and lr1, a member at
    each cycle's LR minimum. The triangle is shifted by half a period (rise, then fall) so that its
    minimum falls on the cycle's last epoch boundary, where checkpoints are taken."""

    name: str = "fge"
    cycle_epochs: int = 0  # c; 0 = max(1, E // (2M))
    lr1: float = 0.5
    lr2: float = 0.01

    @property
    def c(self) -> int:
        return self.cycle_epochs or max(1, self.epochs // (2 * self.checkpoints))

    def __post_init__(self) -> None:
        if self.checkpoints * self.c >= self.epochs:
            raise ConfigError(
                f"fge needs --epochs > checkpoints x cycle epochs ({self.checkpoints} x {self.c}); raise --epochs"
            )

    @property
    def first_phase(self) -> int:
        return self.epochs - self.checkpoints * self.c

    def boundaries(self) -> list[int]:
        return [self.first_phase + (m + 1) * self.c for m in range(self.checkpoints)]

    def lr_factor(self, t: float) -> float:
        if t < self.first_phase:
            return self.lr2 + (1 - self.lr2) * cosine_lr(t, self.first_phase)
        phase = ((t - self.first_phase) % self.c) / self.c  # 0 at a cycle start (an LR minimum)
        tri = 1 - abs(2 * phase - 1)  # 0 -> 1 -> 0
        return self.lr2 + (self.lr1 - self.lr2) * tri


@dataclass(frozen=True)
class SWA(Method):
    """Stochastic Weight Averaging (Izmailov et al. 2018): the ordinary schedule for 75 % of E, cosine
    down to swa_lr, then constant swa_lr with the weights averaged (AveragedModel) after every epoch;
    BN statistics recomputed (update_bn); ONE member, the averaged network."""

    name: str = "swa"
    averaged_member: bool = True
    swa_lr: float = 0.05  # as a fraction of lr0
    start_fraction: float = 0.75

    @property
    def swa_start(self) -> int:
        return max(1, min(self.epochs - 1, int(round(self.start_fraction * self.epochs))))

    def lr_factor(self, t: float) -> float:
        if t < self.swa_start:
            return self.swa_lr + (1 - self.swa_lr) * cosine_lr(t, self.swa_start)
        return self.swa_lr

    def is_member(self, round_index: int) -> bool:
        return round_index == self.checkpoints - 1

    def averages_after_epoch(self, epoch: int) -> bool:
        """Whether the weights after epoch ``epoch`` (0-based) join the average."""
        return epoch + 1 > self.swa_start


METHODS: dict[str, type[Method]] = {
    "cbnn": CBNN, "single": Single, "checkpoint": CheckpointEnsemble, "snapshot": Snapshot, "fge": FGE, "swa": SWA,
}


def create_method(name: str, *, epochs: int, checkpoints: int) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name](epochs=epochs, checkpoints=checkpoints)
