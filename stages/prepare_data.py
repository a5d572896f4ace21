"""Stage ``prepare_data``: build or load the dataset named by ``data.name`` into data/prepared."""
import sys

from engine.datasets import prepare
from engine.files import write_json
from engine.params import flatten, load_params, params_hash
from engine.stage import run_stage
from engine.tracking import StageRun

from .paths import DATA, METRICS, PARAMS

SHOWN = 3  # skipped files named on stderr (card.json names more)


def main() -> None:
    p = load_params(PARAMS)
    with StageRun("prepare_data", p.data.name, flatten({"data": p.data}), params_hash(p.data)) as run:
        card = prepare(p.data, DATA)
        skipped = card.get("skipped", {"images": 0, "masks": 0, "first": []})
        if skipped["first"]:
            print(f"prepare_data: skipped {skipped['images']} image and {skipped['masks']} mask files, e.g. "
                  f"{'; '.join(skipped['first'][:SHOWN])} (the first {len(skipped['first'])} are in "
                  f"{DATA / 'card.json'})", file=sys.stderr)
        summary = {"name": card["name"], "num_classes": card["num_classes"], "train": card["counts"]["train"],
                   "test": card["counts"]["test"], "has_masks": card["has_masks"], "masked": card["mask_counts"],
                   "skipped": {k: skipped[k] for k in ("images", "masks")}, "sha256": card["sha256"],
                   "mlflow_run_id": run.run_id}
        write_json(METRICS / "data.json", summary)
        run.log_metrics({"train_images": summary["train"], "test_images": summary["test"],
                         "skipped_images": skipped["images"], "skipped_masks": skipped["masks"]})
        run.log_artifact(DATA / "card.json")


if __name__ == "__main__":
    run_stage(main)
