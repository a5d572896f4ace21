"""Your own images through the whole pipeline, in a temporary git repo (tiny profile): `dvc exp run -S
data.name=folder` on a tiny image folder with a few bad files and masks for some images, and `-S
data.name=imagenet` on a tiny ImageNet-layout folder streamed from disk with torchvision's ImageNet models."""
import json

import mlflow
import pytest

from test_data_folder import add_bad_files, write_folder
from test_data_stream import write_imagenet
from pipeline_project import STAGES, run_cmd

pytestmark = pytest.mark.cost(200)


@pytest.fixture(scope="module")
def repo(tiny_repo):
    return tiny_repo

ROOT = "mydata"


def test_folder_dataset_runs_every_stage_with_its_masks(repo):
    # 3 classes x 16 train / 8 test; PNG masks for every other training image and two test images, so the
    # 4 analysed test images (sigma.n_images) are 2 with a mask and 2 with the centre-box prior.
    write_folder(repo / ROOT, 16, 8, masks="png",
                 masked=lambda split, label, i: i % 2 == 0 if split == "train" else label == 0 and i < 2)
    add_bad_files(repo / ROOT)  # 2 in train, 1 in test
    run_cmd(repo, "git", "add", "-A")
    run_cmd(repo, "git", "commit", "-qm", "an image folder")
    out = run_cmd(repo, "dvc", "exp", "run", "-n", "folder-run", "-S", "data.name=folder", "-S", f"data.root={ROOT}",
               "-S", f"data.masks={ROOT}/masks", "-S", "supervision.lda_dim=2")  # LDA: at most classes - 1
    assert f"skipped 3 image and 0 mask files, e.g. {ROOT}/train/solid/empty.jpg: empty file" in out.stderr

    data = json.loads((repo / "metrics/data.json").read_text())
    assert data["name"] == "folder" and data["num_classes"] == 3
    assert (data["train"], data["test"]) == (48, 24) and data["skipped"] == {"images": 3, "masks": 0}
    assert data["masked"] == {"train": 24, "test": 2} and data["has_masks"] is True
    card = json.loads((repo / "data/prepared/card.json").read_text())
    assert card["classes"] == ["hstripes", "solid", "vstripes"] and len(card["skipped"]["first"]) == 3

    report = json.loads((repo / "metrics/report.json").read_text())
    k = report["knowledge"]
    assert report["dataset"] == "folder" and sorted(k["hypotheses"]) == ["H1", "H2", "H3"]
    assert k["masks"]["exact_images"] == 2 and len(k["image_ids"]) == 4
    line = f"masks from {ROOT}/masks (PNG tree) for 2 of 4 images"
    assert k["masks"]["source"].startswith(line) and "centre-box prior for the other 2" in k["masks"]["source"]
    assert f"Foreground: {line}" in (repo / "reports/report.md").read_text()

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("kdlens-folder")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["kdlens.stage"] for r in runs) == sorted(STAGES)
    prep = next(r for r in runs if r.data.tags["kdlens.stage"] == "prepare_data")
    assert prep.data.metrics["skipped_images"] == 3 and prep.data.params["data.masks"] == f"{ROOT}/masks"

    # data.root is a dependency of prepare_data: a changed image folder re-runs it, nothing else does.
    assert run_cmd(repo, "dvc", "status").stdout.strip().endswith("Data and pipelines are up to date.")
    (repo / ROOT / "train/solid/img_00.png").write_bytes((repo / ROOT / "train/solid/img_01.png").read_bytes())
    status = run_cmd(repo, "dvc", "status", "prepare_data").stdout
    assert "modified:" in status and ROOT in status


def test_imagenet_layout_streams_through_every_stage(repo):
    # 10 classes x 12 JPEGs of varied sizes (one more, corrupt), 3 per class in val/, at 64 px: a torchvision
    # ResNet-18 teacher and the reference MobileNetV1 student, their views decoded by 2 worker processes.
    wnids = [f"n0{i:07d}" for i in range(10)]
    write_imagenet(repo / "inet", train=12, val=3, classes=wnids)
    run_cmd(repo, "git", "add", "-A")
    run_cmd(repo, "git", "commit", "-qm", "an ImageNet-layout folder")
    out = run_cmd(repo, "dvc", "exp", "run", "-n", "imagenet-run", "-S", "data.name=imagenet", "-S", "data.root=inet",
               "-S", "data.masks=null", "-S", "data.image_size=64", "-S", "data.workers=2",
               "-S", "teacher.arch=imagenet_resnet18",
               "-S", "student.arch=imagenet_mobilenet_v1")
    assert "skipped 1 image and 0 mask files" in out.stderr and "broken.JPEG: unreadable" in out.stderr

    card = json.loads((repo / "data/prepared/card.json").read_text())
    assert card["storage"] == "stream" and card["classes"] == wnids and card["image_shape"] == [3, 64, 64]
    assert (card["counts"]["train"], card["counts"]["test"]) == (120, 30)
    assert sorted(p.name for p in (repo / "data/prepared").iterdir()) == [
        "card.json", "test_files.npy", "test_labels.npy", "train_files.npy", "train_labels.npy"]
    for role, arch in (("teacher", "imagenet_resnet18"), ("student", "imagenet_mobilenet_v1")):
        m = json.loads((repo / f"metrics/{role}.json").read_text())
        assert m["arch"] == arch and m["dataset"] == "imagenet" and 0.0 <= m["test_top1"] <= 100.0
    # kd read the teacher cache: it was built over the very views the streamed student saw.
    assert json.loads((repo / "metrics/student.json").read_text())["teacher_source"] == "cache"
    report = json.loads((repo / "metrics/report.json").read_text())
    assert report["dataset"] == "imagenet" and len(report["knowledge"]["image_ids"]) == 4
    assert "centre-box prior" in report["knowledge"]["masks"]["source"]  # a streamed folder has no masks

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("kdlens-imagenet").experiment_id])
    assert sorted(r.data.tags["kdlens.stage"] for r in runs) == sorted(STAGES)
