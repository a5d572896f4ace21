"""``ls``: label smoothing (Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016), no teacher.

The KDExplainer paper (Xue et al., IJCAI 2021) compares KD against label smoothing: KD "has
much more to offer than label smoothing". This is that arm, on any student. With K classes and ε in [0, 1):

    q   = (1 − ε)·onehot(y) + ε/K        (ε/K on *every* class, the target included)
    L   = w_ce · (1/B) Σ_b −Σ_k q_k log softmax(z)_k

the convention of torch's ``F.cross_entropy(label_smoothing=ε)``. ε = 0 is plain cross-entropy. The paper's
ε was not retrieved; 0.1 is the usual value (Szegedy et al.).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from .base import Method, MethodParams
from .registry import register


def ls_loss(logits: torch.Tensor, targets: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Batch-mean cross-entropy against the smoothed target (1 − ε)·onehot + ε/K."""
    log_p = F.log_softmax(logits, dim=1)
    nll = -log_p.gather(1, targets[:, None]).squeeze(1)
    uniform = -log_p.mean(dim=1)  # cross-entropy against the uniform distribution 1/K
    return ((1.0 - epsilon) * nll + epsilon * uniform).mean()


class LSParams(MethodParams):
    ce_weight: float = Field(1.0, gt=0)
    epsilon: float = Field(0.1, ge=0, lt=1)


@register
class LS(Method):
    """CE with smoothed targets: no teacher, logits only."""

    name = "ls"
    Params = LSParams
    needs_teacher = False
    uses_features = False
    task_terms = frozenset({"ls"})  # its smoothed CE: no distillation term (under optimizer: dot, SGD)

    def losses(self, student, teacher, targets, index, epoch):
        p = self.params
        return {"ls": p.ce_weight * ls_loss(student[0], targets, p.epsilon)}
