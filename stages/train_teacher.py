"""Stage ``train_teacher``: train ``teacher.arch`` on the labels (method ``ce``)."""
from engine.jobs import TrainJob, run_train_job
from engine.params import load_params
from engine.stage import run_stage

from .paths import CURVES, DATA, METRICS, PARAMS, role_dir


def main() -> None:
    p = load_params(PARAMS)
    run_train_job(TrainJob(
        stage="train_teacher", arch=p.teacher.arch, train=p.teacher.train, seed=p.teacher.seed,
        method="ce", method_params=p.method_params("ce"), data_dir=DATA, out_dir=role_dir("teacher"),
        metrics_path=METRICS / "teacher.json", curves_path=CURVES / "teacher.json",
        params_slice={"teacher": p.teacher.model_dump(), "methods.ce": p.method_params("ce").model_dump()},
        trainer=p.trainer, role="teacher"))


if __name__ == "__main__":
    run_stage(main)
