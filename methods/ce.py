"""``ce``: cross-entropy on the labels only, no teacher ("learning from raw data")."""
from __future__ import annotations

from pydantic import Field

from .base import Method, MethodParams, cross_entropy_term
from .registry import register


class CEParams(MethodParams):
    ce_weight: float = Field(1.0, gt=0)


@register
class CE(Method):
    name = "ce"
    Params = CEParams
    needs_teacher = False
    uses_features = False

    def losses(self, student, teacher, targets, index, epoch):
        return {"ce": cross_entropy_term(student[0], targets, self.params.ce_weight)}
