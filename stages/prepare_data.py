"""Stage ``prepare_data``: build or load the dataset named by ``data.name`` into data/prepared."""
from engine.datasets import prepare
from engine.files import write_json
from engine.params import flatten, load_params, params_hash
from engine.stage import run_stage
from engine.tracking import StageRun

from .paths import DATA, METRICS, PARAMS


def main() -> None:
    p = load_params(PARAMS)
    with StageRun("prepare_data", p.data.name, flatten({"data": p.data}), params_hash(p.data)) as run:
        card = prepare(p.data, DATA)
        summary = {"name": card["name"], "num_classes": card["num_classes"], "train": card["counts"]["train"],
                   "test": card["counts"]["test"], "has_masks": card["has_masks"], "sha256": card["sha256"],
                   "mlflow_run_id": run.run_id}
        write_json(METRICS / "data.json", summary)
        run.log_metrics({"train_images": summary["train"], "test_images": summary["test"]})
        run.log_artifact(DATA / "card.json")


if __name__ == "__main__":
    run_stage(main)
