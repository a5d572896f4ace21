"""Stage ``build_supervision``: the teacher-derived supervision of letkd1/letkd2 into data/supervision."""
from dataset.store import load_prepared
from core.device import device
from core.files import sha256_file, write_json
from models.saved import load_model
from stages.params import load_params
from core.stage import run_stage
from methods.letkd.store import CARD, save_supervision
from methods.letkd.supervision import build_supervision, cluster_size_figure, faiss_use_gpu
from core.tracking import StageRun

from core.paths import DATA, PARAMS, SUPERVISION, metrics_path, model_path


def main() -> None:
    p = load_params(PARAMS)
    cfg = p.supervision
    dev = device()
    data = load_prepared(DATA, p.data.workers)
    teacher_path = model_path("teacher")
    teacher = load_model(teacher_path, dev)
    inputs = {"data_sha256": data.card["sha256"], "teacher_sha256": sha256_file(teacher_path)}
    logged = {"device": str(dev), "kmeans_device": "faiss-gpu" if faiss_use_gpu() else "faiss-cpu"}
    with StageRun.keyed("build_supervision", data.card["name"], {"supervision": cfg.model_dump()}, inputs,
                        logged) as run:
        built = build_supervision(teacher, data, cfg, dev)
        card = save_supervision(SUPERVISION, built.arrays, {**built.info, **inputs, "seconds": built.seconds})
        for step, value in enumerate(built.kmeans.inertia, start=1):
            run.log_metrics({"kmeans/inertia": value}, step=step)
        run.log_metrics({"kmeans/final_inertia": built.info["final_inertia"],
                         "kmeans/empty_clusters": built.info["empty_clusters"],
                         "kmeans/code_perplexity": built.info["code_perplexity"],
                         "subclass/self_decision": built.info["subclass_self_decision"],
                         **{f"seconds/{k}": v for k, v in built.seconds.items()}})
        run.set_tags({"kdlens.kmeans_device": built.kmeans.device})
        run.log_figure(cluster_size_figure(built.arrays["centroid_counts"]), "plots/cluster_sizes.png")
        summary = {"dataset": data.card["name"], "kmeans_device": built.kmeans.device, "k": cfg.k,
                   "final_inertia": built.info["final_inertia"], "empty_clusters": built.info["empty_clusters"],
                   "code_perplexity": built.info["code_perplexity"],
                   "subclass_self_decision": built.info["subclass_self_decision"],
                   "locations": built.info["locations"], "seconds": built.seconds, "sha256": card["sha256"],
                   "mlflow_run_id": run.run_id, "mlflow_experiment_id": run.experiment_id, "params_hash": run.key}
        write_json(metrics_path("supervision"), summary)
        run.log_artifact(SUPERVISION / CARD)
        run.log_artifact(metrics_path("supervision"))


if __name__ == "__main__":
    run_stage(main)
