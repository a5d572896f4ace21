"""Stage ``check_params``: all of params.yaml validated before any work, and the method checked against
the student/teacher pair.

It depends on params.yaml as a *file*, so DVC runs it after every edit, however the pipeline is started
(``dvc repro``, ``dvc repro <stage>``, ``dvc exp run -S ...``: every stage lies downstream of it). A
misspelt key anywhere, an edit inside an unselected ``methods.<x>`` section, an unknown method or a
method that cannot serve the pair (e.g. kdsvd's equal channel counts) stops it in one line, before the
teacher trains. Its output holds nothing that depends on the params, so DVC finds it unchanged and an
edit that no other stage reads still re-runs nothing else. It computes nothing, so it logs no MLflow run.
"""
from core.files import write_json
from core.paths import PARAMS, PARAMS_CHECK
from core.stage import run_stage
from dataset import expected_shape
from stages.params import load_params
from training.fitter import check_pair

STAND_IN_CLASSES = 2  # a folder's class count is known after prepare_data; no pair check depends on it


def main() -> None:
    p = load_params(PARAMS, every_method=True)
    classes, side = expected_shape(p.data)
    check_pair(p.method, p.method_params(), p.student.arch, p.teacher.arch, classes or STAND_IN_CLASSES, side,
               p.vam)
    write_json(PARAMS_CHECK, {"params": str(PARAMS), "valid": True})


if __name__ == "__main__":
    run_stage(main)
