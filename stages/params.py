"""The schema of ``params.yaml``: every package's own schema, composed; validated at the start of a stage.

Each section is owned by the package whose knobs it holds (``dataset.params``, ``training.params``,
``models.vam``, ``methods.letkd.params``, ``explain.params``, and each method's
``Params`` in ``methods/<name>.py``). A method's section is validated by its own schema when the method is
used (``Params.method_params``), so a stage imports the code of the method it runs and no other;
``parse_params(..., every_method=True)`` validates every ``methods.<name>`` section as well.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ConfigDict, create_model

from core.schema import Section, Seed, read_yaml, validate
from dataset.params import DataParams
from explain.params import KnowledgeParams, SigmaParams
from methods import MethodName, MethodParams
from methods import names as method_names
from methods import params_class
from methods.letkd.params import SupervisionParams
from models.vam import VamParams
from training.params import StudentParams, TeacherCacheParams, TeacherParams, TrainerParams

SOURCE = "params.yaml"

# ``methods.<name>``: a key per method (an unknown name is an unknown key), each a mapping that the
# method's own schema validates when the method is used; listing them imports no method.
MethodSections = create_model("MethodSections", __config__=ConfigDict(extra="forbid", frozen=True),
                              **{name: (dict[str, Any], {}) for name in method_names()})


class Params(Section):
    seed: Seed = 0  # the students' seed (baseline and distilled); the teacher has its own
    method: MethodName = "kd"
    data: DataParams = DataParams()
    teacher: TeacherParams = TeacherParams()
    student: StudentParams = StudentParams()
    methods: MethodSections = MethodSections()
    vam: VamParams = VamParams()
    teacher_cache: TeacherCacheParams = TeacherCacheParams()
    supervision: SupervisionParams = SupervisionParams()
    sigma: SigmaParams = SigmaParams()
    knowledge: KnowledgeParams = KnowledgeParams()
    trainer: TrainerParams = TrainerParams()

    def method_params(self, name: str | None = None) -> MethodParams:
        """The validated hyperparameters of a method (its schema's defaults where params.yaml names none)."""
        name = name or self.method
        return validate(params_class(name), getattr(self.methods, name), SOURCE, f"methods.{name}.")


def parse_params(raw: dict, source: str = SOURCE, every_method: bool = True) -> Params:
    """``raw`` validated; ``every_method``: each ``methods.<name>`` section too (imports every method)."""
    p = validate(Params, raw, source)
    if every_method:
        for name in method_names():
            validate(params_class(name), getattr(p.methods, name), source, f"methods.{name}.")
    return p


def load_params(path: str | Path = SOURCE, every_method: bool = False) -> Params:
    """params.yaml validated, the selected method's section included (``every_method``: all of them)."""
    p = parse_params(read_yaml(path), str(path), every_method)
    if not every_method:
        p.method_params()
    return p

