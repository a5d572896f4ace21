"""Stage ``check_params``: all of params.yaml validated before any work, and the method checked against
the student/teacher pair.

It depends on params.yaml as a *file*, so DVC runs it after every edit, however the pipeline is started
(``dvc repro``, ``dvc repro <stage>``, ``dvc exp run -S ...``: every stage lies downstream of it). A
misspelt key anywhere, an edit inside an unselected ``methods.<x>`` section, an unknown method or a
method that cannot serve the pair (e.g. kdsvd's equal channel counts), or a ``teacher.checkpoint`` that is
missing or does not fit ``teacher.arch`` (it also depends on teachers/), stops it in one line, before the
teacher trains and before DVC removes any output. Its output holds nothing that depends on the params, so DVC finds it unchanged and an
edit that no other stage reads still re-runs nothing else. It computes nothing, so it logs no MLflow run.
"""
from pathlib import Path

from core.errors import KdlensError
from core.files import write_json
from core.paths import PARAMS, PARAMS_CHECK
from core.stage import run_stage
from dataset import expected_shape
from models.imported import check_checkpoint
from stages.params import load_params
from training.fitter import check_pair

STAND_IN_CLASSES = 2  # a folder's class count is known after prepare_data; no pair check depends on it


def main() -> None:
    p = load_params(PARAMS, every_method=True)
    classes, side = expected_shape(p.data)
    check_pair(p.method, p.method_params(), p.student.arch, p.teacher.arch, classes or STAND_IN_CLASSES, side,
               p.vam)
    if p.teacher.checkpoint is not None:
        if not Path(p.teacher.checkpoint).is_file():
            raise KdlensError(f"teacher.checkpoint: {p.teacher.checkpoint} not found; put the teacher's file "
                              "there (docs/reproducing.md) or set teacher.checkpoint: null to train one")
        check_checkpoint(p.teacher.arch, p.teacher.checkpoint, classes)
    write_json(PARAMS_CHECK, {"params": str(PARAMS), "valid": True})


if __name__ == "__main__":
    run_stage(main)
