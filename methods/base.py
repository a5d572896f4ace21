"""What a distillation method is in kdlens.

A method is an ``nn.Module`` that owns only its *own* learnable parts (connectors, embeddings, memory
banks) and turns one training step's outputs into a dict of **weighted**, named loss terms. The trainer
sums the dict; it knows nothing else about any method. Each method module also exports its pure loss
function on tensors (e.g. ``kd_loss``), which is what the unit tests check by hand.

Student and teacher are reached through ``self.ctx`` (a plain dataclass, so their weights are never
registered as the method's parameters nor saved in its state dict).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from core.optim import OptimizerSettings
from models.base import Features

Output = tuple[torch.Tensor, Features]  # (logits, features) as every model returns them


class ViewOutputs(NamedTuple):
    """The student's and the teacher's outputs on one extra view of the batch (``Method.extra_views``)."""

    student: Output
    teacher: Output | None


class MethodParams(BaseModel):
    """Base of every method's hyperparameter schema (``methods.<name>`` in params.yaml). Every method
    weights its cross-entropy on the labels by ``ce_weight`` (a method sets its own default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ce_weight: float = Field(1.0, ge=0)


@dataclass
class MethodContext:
    student: nn.Module
    teacher: nn.Module | None
    num_classes: int
    num_train: int  # size of the training set (memory banks are indexed by sample)
    input_size: int = 32
    train_labels: torch.Tensor | None = None  # [num_train] labels by dataset index (CRD's negatives)
    supervision: dict | None = None  # teacher-derived arrays + "card" (Method.load_supervision) if needs_supervision


LossFn = Callable[[Output, "Output | None", torch.Tensor, torch.Tensor, int], dict[str, torch.Tensor]]


@dataclass
class Phase:
    """An extra training phase a method runs before the main one (e.g. FT's paraphraser pre-training).

    The trainer runs ``epochs`` epochs over the training set, optimising only ``parameters`` with SGD at
    ``lr`` on the sum of ``losses`` (same signature as ``Method.losses``), and logs its terms under
    ``phase/<name>/...``. The student's weights change only if they are among ``parameters``.

    ``parameters`` are trainable during the phase whatever their ``requires_grad``; afterwards each gets
    its flag back. So a part trained only in its phase (FT's paraphraser) is created with
    ``requires_grad=False``: the main optimiser then never sees it, also when a resumed run skips phases.
    """

    name: str
    epochs: int
    lr: float
    parameters: list[nn.Parameter]
    losses: LossFn
    momentum: float = 0.9
    weight_decay: float = 5e-4
    train_modules: list[nn.Module] = field(default_factory=list)  # put in train mode during the phase


class MethodNotApplicable(ValueError):
    """This method is not defined for this student/teacher pair (e.g. shapes it cannot align)."""


class Method(nn.Module):
    name: ClassVar[str]
    Params: ClassVar[type[MethodParams]] = MethodParams
    needs_teacher: ClassVar[bool] = True
    # Reads ctx.supervision (built by the build_supervision stage; the distill stage loads it only then).
    needs_supervision: ClassVar[bool] = False
    # The method's own modules are part of the student at test time (letKD's KD layers): the distill
    # stage stores their state in model.pt under "method" next to the student's.
    part_of_student: ClassVar[bool] = False
    # Reads intermediate features (Features.stages/preact/pooled, a classifier's weights), not only
    # logits. A student that exposes none a method could match (the LTB tree) refuses such a method.
    uses_features: ClassVar[bool] = True
    # The names of the terms that train on the labels alone (every other term distils the teacher): what
    # an optimiser that treats the two apart reads (train.optimizer: dot, training/optimizers.py).
    task_terms: ClassVar[frozenset[str]] = frozenset({"ce"})
    # Views of each batch the method reads besides the standard one (dataset/augment.py: "strong"): the
    # trainer runs the student and the teacher on each and passes ``losses`` ``views={name: ViewOutputs}``.
    extra_views: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: MethodParams, ctx: MethodContext):
        super().__init__()
        if self.needs_teacher and ctx.teacher is None:
            raise MethodNotApplicable(f"method {self.name!r} needs a teacher")
        if self.needs_supervision and ctx.supervision is None:
            raise MethodNotApplicable(f"method {self.name!r} needs the teacher-derived supervision "
                                      "(stage build_supervision)")
        if self.uses_features and not ctx.student.exposes_features:
            raise MethodNotApplicable(f"method {self.name!r} matches intermediate features, which "
                                      f"{type(ctx.student).__name__} does not expose; use a logit-only "
                                      "method (ce, ls, kd, dkd, dist, nkd, wttm)")
        self.params = params
        self.ctx = ctx

    def losses(self, student: Output, teacher: Output | None, targets: torch.Tensor,
               index: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        """Weighted loss terms for one batch. ``epoch`` counts from 1 (for warm-ups). A method with
        ``extra_views`` takes a keyword ``views`` as well: {view name: ViewOutputs} of the same samples."""
        raise NotImplementedError

    def phases(self) -> list[Phase]:
        """Extra phases to run before the main training, in order (none by default)."""
        return []

    def own_optimizer(self, groups: list[dict], settings: OptimizerSettings) -> torch.optim.Optimizer | None:
        """An optimiser of the method's own for the main training's parameter ``groups`` (built from the
        training's ``settings``: lr, momentum, weight decay), replacing the one ``train.optimizer`` names;
        None (the default): that one. One that runs its own backward passes subclasses
        ``core.optim.TermsOptimizer``. Extra phases always train with SGD."""
        return None

    def test_time_config(self) -> dict:
        """(``part_of_student`` methods) JSON-able description of the parts the student keeps at test time."""
        raise NotImplementedError(f"method {self.name!r} keeps no parts in the student")

    @classmethod
    def restore_into(cls, student: nn.Module, config: dict) -> nn.Module:
        """(``part_of_student`` methods) Rebuild those parts from ``test_time_config`` into a fresh
        ``student`` (wired into its forward) and return them as one module, weights still to load."""
        raise NotImplementedError(f"method {cls.name!r} keeps no parts in the student")

    @classmethod
    def load_supervision(cls, directory: Path) -> dict:
        """(``needs_supervision`` methods) The teacher-derived supervision that stage build_supervision
        wrote into ``directory``, as ``ctx.supervision`` expects it."""
        raise NotImplementedError(f"method {cls.name!r} reads no supervision")

    def epoch_diagnostics(self) -> dict[str, float]:
        """Merged into each epoch's training record by the trainer (ctkd: its learnt temperature); none by default."""
        return {}

    def extra_parameter_count(self) -> int:
        """Trainable parameters and buffers the method adds on top of the student (mdistiller's 'extra cost')."""
        return sum(p.numel() for p in self.parameters()) + sum(b.numel() for b in self.buffers())


def cross_entropy_term(logits: torch.Tensor, targets: torch.Tensor, weight: float) -> torch.Tensor:
    return weight * F.cross_entropy(logits, targets)
