"""``letkd1``: letKD with one KD layer, at the student's last stage (Gorgun et al., BMVC 2023, Sec. 3).

    x̂ = KD_penult(stages[-1]),  logits = FC(GAP(x̂)),  L = w_ce·CE + w_p·L_penult

The layer, its loss and the teacher-derived targets are in the ``methods/letkd/`` package.
"""
from .letkd.method import LetKD, LetKDParams
from .registry import register


@register
class LetKD1(LetKD):
    name = "letkd1"
    Params = LetKDParams
