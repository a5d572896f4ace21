"""``letkd2``: letKD with KD layers at the penultimate position and at ``supervision.inter_stage`` (spec B5).
The implementation, its formula and defaults are in methods/letkd.py; this file registers the name (and is
the distill stage's ``methods/${method}.py`` dependency, next to methods/letkd.py)."""
from .letkd import LetKD2
from .registry import register

register(LetKD2)
