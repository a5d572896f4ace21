"""Stage ``train_teacher``: train ``teacher.arch`` on the labels (method ``ce``), or import the trained
teacher of ``teacher.checkpoint`` (a file in teachers/, the stage's dependency) and evaluate it."""
from training.jobs import TrainJob, run_import_job, run_train_job
from stages.params import load_params
from core.stage import run_stage

from core.paths import DATA, PARAMS, curves_path, metrics_path, role_dir


def main() -> None:
    p = load_params(PARAMS)
    params_slice = {"teacher": p.teacher.model_dump(), "methods.ce": p.method_params("ce").model_dump()}
    if p.teacher.checkpoint is not None:
        run_import_job("train_teacher", p.teacher, DATA, role_dir("teacher"), metrics_path("teacher"),
                       curves_path("teacher"), params_slice, p.data.workers)
        return
    run_train_job(TrainJob(
        stage="train_teacher", arch=p.teacher.arch, train=p.teacher.train, seed=p.teacher.seed,
        method="ce", method_params=p.method_params("ce"), data_dir=DATA, out_dir=role_dir("teacher"),
        metrics_path=metrics_path("teacher"), curves_path=curves_path("teacher"),
        params_slice=params_slice, trainer=p.trainer, role="teacher", workers=p.data.workers))


if __name__ == "__main__":
    run_stage(main)
