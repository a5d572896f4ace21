"""Stage ``cache_teacher``: the teacher's logits for every training view of the students, once per sweep.

Keyed (through DVC) by the teacher, the data, the students' seed and the view-defining training params
(epochs, batch size, augmentation); every ``dvc exp run -S method=...`` reuses it. Only the methods that
read nothing but the teacher's logits use it; the others run the (BN-folded) teacher live. A method that
also reads an extra view of each batch (mlkd's strong view) uses it only if ``teacher_cache.extra_views``
names that view.
"""
from dataset.store import load_prepared
from core.device import device
from core.files import atomic_dir, sha256_file, write_json
from training.fitter import loaders
from models.saved import load_model
from stages.params import load_params
from core.stage import run_stage
from training.teacher import CARD, build_cache, frozen_teacher
from core.tracking import StageRun

from core.paths import DATA, PARAMS, TEACHER_CACHE, metrics_path, model_path


def main() -> None:
    p = load_params(PARAMS)
    cfg, train = p.teacher_cache, p.student.train
    dev = device()
    data = load_prepared(DATA, p.data.workers)
    teacher_path = model_path("teacher")
    inputs = {"data_sha256": data.card["sha256"], "teacher_sha256": sha256_file(teacher_path)}
    views = {"seed": p.seed, "epochs": train.epochs, "batch_size": train.batch_size, "augment": train.augment}
    params = {"teacher_cache": cfg.model_dump(), "views": views, "trainer.compile_teacher": p.trainer.compile_teacher}
    with StageRun.keyed("cache_teacher", data.card["name"], params, inputs) as run, atomic_dir(TEACHER_CACHE) as out:
        card = {"enabled": False}
        if cfg.enabled:
            teacher = frozen_teacher(load_model(teacher_path, dev), data.input_size,
                                     p.trainer.compile_teacher)
            loader = loaders(data, train, p.seed, dev)[0]
            card = build_cache(teacher, loader, train.epochs, out, cfg.dtype, cfg.top_k, inputs, tuple(cfg.extra_views))
        else:
            write_json(out / CARD, card)
        summary = {**{k: card.get(k) for k in ("bytes", "seconds", "dtype", "top_k")}, "enabled": cfg.enabled,
                   "mlflow_run_id": run.run_id, "params_hash": run.key}
        write_json(metrics_path("teacher_cache"), summary)
        if cfg.enabled:
            run.log_metrics({"cache/bytes": card["bytes"], "cache/seconds": card["seconds"]})
        print(f"teacher cache: {summary['bytes'] or 0:,} bytes ({'on' if cfg.enabled else 'off'}; read by the "
              "methods that need only the teacher's logits)")


if __name__ == "__main__":
    run_stage(main)
