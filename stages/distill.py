"""Stage ``distill``: train the student with the method named by ``method``, from the trained teacher."""
from training.jobs import TrainJob, run_train_job
from stages.params import load_params
from core.stage import run_stage

from core.paths import DATA, PARAMS, SUPERVISION, TEACHER_CACHE, curves_path, metrics_path, model_path, role_dir


def main() -> None:
    p = load_params(PARAMS)
    method_params = p.method_params()
    run_train_job(TrainJob(
        stage="distill", arch=p.student.arch, train=p.student.train, seed=p.seed,
        method=p.method, method_params=method_params, data_dir=DATA, out_dir=role_dir("student"),
        metrics_path=metrics_path("student"), curves_path=curves_path("student"),
        teacher_path=model_path("teacher"), supervision_path=SUPERVISION,
        structure=p.student.structure, vam=p.vam, teacher_cache_path=TEACHER_CACHE,
        params_slice={"seed": p.seed, "method": p.method, "student": p.student.model_dump(),
                      f"methods.{p.method}": method_params.model_dump(), "vam": p.vam.model_dump()},
        trainer=p.trainer, workers=p.data.workers))


if __name__ == "__main__":
    run_stage(main)
