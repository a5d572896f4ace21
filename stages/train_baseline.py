"""Stage ``train_baseline``: the student architecture trained on labels alone ("learning from raw data")."""
from training.jobs import TrainJob, run_train_job
from stages.params import load_params
from core.stage import run_stage

from core.paths import DATA, PARAMS, curves_path, metrics_path, role_dir


def main() -> None:
    p = load_params(PARAMS)
    run_train_job(TrainJob(
        stage="train_baseline", arch=p.student.arch, train=p.student.train, seed=p.seed,
        method="ce", method_params=p.method_params("ce"), data_dir=DATA, out_dir=role_dir("baseline"),
        metrics_path=metrics_path("baseline"), curves_path=curves_path("baseline"), structure=p.student.structure,
        params_slice={"seed": p.seed, "student": p.student.model_dump(),
                      "methods.ce": p.method_params("ce").model_dump()}, trainer=p.trainer,
        workers=p.data.workers))


if __name__ == "__main__":
    run_stage(main)
