"""Stage ``prepare_data``: build or load the dataset named by ``data.name`` into data/prepared."""
import sys

from dataset import prepare
from core.files import write_json
from core.schema import read_yaml, validate
from dataset.params import DataParams
from core.stage import run_stage
from core.tracking import StageRun

from core.paths import DATA, PARAMS, metrics_path

SHOWN = 3  # skipped files named on stderr (card.json names more)


def main() -> None:
    # Only the data section: this stage reads nothing else, so it imports no model or method code.
    data = validate(DataParams, read_yaml(PARAMS).get("data", {}), str(PARAMS), "data.")
    with StageRun.keyed("prepare_data", data.name, {"data": data.model_dump()}, {}) as run:
        card = prepare(data, DATA)
        skipped = card.get("skipped", {"images": 0, "masks": 0, "first": []})
        if skipped["first"]:
            print(f"prepare_data: skipped {skipped['images']} image and {skipped['masks']} mask files, e.g. "
                  f"{'; '.join(skipped['first'][:SHOWN])} (the first {len(skipped['first'])} are in "
                  f"{DATA / 'card.json'})", file=sys.stderr)
        summary = {"name": card["name"], "num_classes": card["num_classes"], "train": card["counts"]["train"],
                   "test": card["counts"]["test"], "has_masks": card["has_masks"], "masked": card["mask_counts"],
                   "skipped": {k: skipped[k] for k in ("images", "masks")}, "sha256": card["sha256"],
                   "mlflow_run_id": run.run_id}
        write_json(metrics_path("data"), summary)
        run.log_metrics({"train_images": summary["train"], "test_images": summary["test"],
                         "skipped_images": skipped["images"], "skipped_masks": skipped["masks"]})
        run.log_artifact(DATA / "card.json")


if __name__ == "__main__":
    run_stage(main)
