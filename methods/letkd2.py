"""``letkd2``: letKD with KD layers at the last stage and at ``supervision.inter_stage`` (Gorgun et al.,
BMVC 2023, Sec. 3): the intermediate layer's x̂ feeds the rest of the network.

    L = w_ce·CE + w_p·L_penult + w_i·L_inter

The layers, their loss and the teacher-derived targets are in the ``methods/letkd/`` package.
"""
from .letkd.method import LetKD, LetKD2Params
from .registry import register


@register
class LetKD2(LetKD):
    name = "letkd2"
    Params = LetKD2Params
    intermediate = True
