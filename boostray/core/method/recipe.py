"""The parts of the training recipe a user may bring: the network, the optimizer and the loss.

The learning-rate schedule stays the method's (it decides where the members are taken), and the loss
must return one value per sample, so that the boosting weights apply: L = sum_i (n w_i) loss_i / |batch|.
Without a recipe a run trains as it always has: the model its name builds, SGD with Nesterov momentum
0.9 and the run's weight decay, cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from boostray.errors import ConfigError

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Recipe:
    """``model``: a class or factory used instead of the run's model name (its runs load with
    ``load_ensemble(path, model=...)``); ``optimizer``: parameters -> a torch optimizer, whose learning
    rate the method's schedule scales; ``loss``: (logits, targets) -> one loss per sample."""

    model: Callable[..., torch.nn.Module] | None = None
    optimizer: OptimizerFactory | None = None
    loss: PerSampleLoss | None = None

    def make_optimizer(self, parameters: Iterable[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
        if self.optimizer is None:
            return torch.optim.SGD(parameters, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
        optimizer = self.optimizer(parameters)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(f"optimizer returned {type(optimizer).__name__}, not a torch.optim.Optimizer")
        return optimizer

    def per_sample_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.loss is None:
            return F.cross_entropy(logits, targets, reduction="none")
        values = self.loss(logits, targets)
        if not isinstance(values, torch.Tensor) or values.shape != targets.shape:
            got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise ConfigError(f"loss must return one value per sample, shaped {tuple(targets.shape)}, got {got} "
                              f"(use reduction='none')")
        return values


DEFAULT_RECIPE = Recipe()
