"""``letkd1``: letKD with one KD layer at the penultimate position (spec B5). The implementation, its
formula and defaults are in methods/letkd.py; this file registers the name (and is the distill stage's
``methods/${method}.py`` dependency, next to methods/letkd.py)."""
from .letkd import LetKD1
from .registry import register

register(LetKD1)
