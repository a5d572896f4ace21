"""How one training step turns its named loss terms into an update of the optimiser.

A plain optimiser (SGD, Adam) takes one backward pass of the terms' sum. A ``TermsOptimizer`` takes the
terms themselves and runs its own backward passes, e.g. one per kind of term with a momentum each (DOT,
training/optimizers.py). ``backward_step`` is the one step the trainer takes for either; it names no
optimiser. Both go through the loss scaler alike (``scale``, ``step``, ``update``: no-ops unless fp16).
"""
from __future__ import annotations

from typing import Protocol

import torch


class OptimizerSettings(Protocol):
    """What an optimiser is built from, as ``training.params.TrainParams`` holds it (a method building its
    own optimiser, ``methods.base.Method.own_optimizer``, reads these)."""

    @property
    def lr(self) -> float: ...

    @property
    def momentum(self) -> float: ...

    @property
    def weight_decay(self) -> float: ...


class TermsOptimizer(torch.optim.Optimizer):
    """An optimiser that runs a training step's backward passes itself, from its named loss terms.

    Across training processes, DDP (core/distributed.py ``replicate``) averages the gradients of one
    ``backward()`` per forward only (a second one is not averaged, silently), so a TermsOptimizer takes its
    gradients with ``torch.autograd.grad``, which DDP does not see, and averages them over the ranks itself.
    """

    def backward_step(self, terms: dict[str, torch.Tensor], task: frozenset[str],
                      scaler: torch.amp.GradScaler) -> None:
        """Update the parameters from one step's weighted ``terms``; ``task`` names those that train on the
        labels alone (every other term distils the teacher)."""
        raise NotImplementedError


def backward_step(optimizer: torch.optim.Optimizer, terms: dict[str, torch.Tensor], task: frozenset[str],
                  scaler: torch.amp.GradScaler) -> None:
    """One update of ``optimizer`` from one step's weighted loss ``terms`` (``task``: the names of those that
    train on the labels alone): a TermsOptimizer's own passes, else one backward pass of their sum."""
    if isinstance(optimizer, TermsOptimizer):
        optimizer.backward_step(terms, task, scaler)
        return
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(sum(terms.values())).backward()
    scaler.step(optimizer)
    scaler.update()
