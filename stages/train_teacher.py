"""Stage ``train_teacher``: train ``teacher.arch`` on the labels (method ``ce``)."""
from training.jobs import TrainJob, run_train_job
from stages.params import load_params
from core.stage import run_stage

from core.paths import DATA, PARAMS, curves_path, metrics_path, role_dir


def main() -> None:
    p = load_params(PARAMS)
    run_train_job(TrainJob(
        stage="train_teacher", arch=p.teacher.arch, train=p.teacher.train, seed=p.teacher.seed,
        method="ce", method_params=p.method_params("ce"), data_dir=DATA, out_dir=role_dir("teacher"),
        metrics_path=metrics_path("teacher"), curves_path=curves_path("teacher"),
        params_slice={"teacher": p.teacher.model_dump(), "methods.ce": p.method_params("ce").model_dump()},
        trainer=p.trainer, role="teacher"))


if __name__ == "__main__":
    run_stage(main)
