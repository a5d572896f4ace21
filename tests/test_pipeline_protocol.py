"""A published protocol end to end (protocols/): on tiny CIFAR-100 files in the real on-disk format, with
the pair's teacher imported from a reference-layout checkpoint, in a project of its own (a file apart
from test_pipeline.py, so that the two long pipeline files run on different test workers)."""
import json
import sys
from pathlib import Path

import mlflow
import pytest

from pipeline_project import run_cmd

pytestmark = pytest.mark.cost(55)


@pytest.fixture(scope="module")
def repo(tiny_repo):
    return tiny_repo


SITECUSTOMIZE = """\
# Test only: torchvision's expected MD5s of CIFAR-100 (of the real files) become the tiny files' own, in
# every Python process the test starts (DVC's stages too); the integrity check itself still runs.
import importlib.abc, importlib.util, json, os, sys

MD5 = json.loads(os.environ["KDLENS_TINY_CIFAR100_MD5"])


class _Patch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "torchvision.datasets.cifar":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            c = module.CIFAR100
            c.train_list, c.test_list = [["train", MD5["train"]]], [["test", MD5["test"]]]
            c.meta = {**c.meta, "md5": MD5["meta"]}

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Patch())
"""


def _tiny_cifar100(root: Path, hooks: Path) -> dict:
    """A tiny CIFAR-100 (2 training and 1 test image per class) in CIFAR's own on-disk layout under
    ``root``, and the environment that makes torchvision accept it."""
    import hashlib
    import pickle

    import numpy as np

    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def batch(n):
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": [i % 100 for i in range(n)],
                "coarse_labels": [i % 20 for i in range(n)]}

    md5 = {}
    for name, obj in (("train", batch(200)), ("test", batch(100)),
                      ("meta", {"fine_label_names": [f"class{i:02d}" for i in range(100)],
                                "coarse_label_names": [f"super{i:02d}" for i in range(20)]})):
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
        md5[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {"PYTHONPATH": str(hooks), "KDLENS_TINY_CIFAR100_MD5": json.dumps(md5)}


def test_protocol_imports_the_teacher_and_evaluate_reads_every_file(repo, tmp_path, monkeypatch, capsys):
    """A published protocol (python -m protocols FILE) runs as a DVC experiment on tiny CIFAR-100 files in
    the real format, one epoch, with the pair's teacher imported from a reference-layout checkpoint in
    teachers/: its metrics name the file's SHA-256 and layout. stages.evaluate reads the imported file, a
    model.pt and a kept epoch alike. A file that does not fit stops check_params in one line."""
    import stages.evaluate
    from core.files import sha256_file
    from models.imported import REFERENCE
    from reference_layouts import ARCHS, randomised, save_reference

    env = _tiny_cifar100(repo / "data/downloads", tmp_path / "hooks")
    ckpt = repo / "teachers/cifar_teachers/resnet56_vanilla/ckpt_epoch_240.pth"
    ckpt.parent.mkdir(parents=True)
    save_reference(randomised(ARCHS["resnet56"](100), seed=3), ckpt)
    out = run_cmd(repo, sys.executable, "-m", "protocols", "protocols/cifar100/resnet56-resnet20/kd.yaml",
               "--target", "distill", "-S", "student.train.epochs=1", "-S", "student.train.milestones=[]", "-S", "student.train.keep_epochs=[0, 1]",
               "-S", "student.train.batch_size=32", "-S", "supervision.k=8", env=env)
    assert out.stdout.startswith("dvc exp run distill -n resnet56-resnet20-kd -S 'data.name=\"cifar100\"'"), out.stdout[:300]
    rows = run_cmd(repo, sys.executable, "-m", "protocols.table").stdout.splitlines()
    assert any(r.startswith("| resnet56-resnet20 | kd | 1 | ") and r.endswith(" | 70.66 | 71.97 |") for r in rows), rows
    data, teacher = (json.loads((repo / f"metrics/{r}.json").read_text()) for r in ("data", "teacher"))
    student = json.loads((repo / "metrics/student.json").read_text())
    assert (data["name"], data["num_classes"], data["train"]) == ("cifar100", 100, 200), data
    assert (teacher["method"], teacher["layout"], teacher["checkpoint_sha256"]) == ("imported", REFERENCE, sha256_file(ckpt))
    assert "epochs" not in teacher and (student["arch"], student["epochs"]) == ("resnet20", 1)
    assert {"test_top1", "best_test_top1"} <= set(student)  # the published tables report the best epoch
    run = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}").get_run(teacher["mlflow_run_id"])
    assert run.data.tags["kdlens.teacher_source"] == f"imported ({REFERENCE})"

    def evaluate(*args) -> str:  # in this process: the command's imports are already loaded here
        monkeypatch.setattr(sys, "argv", ["evaluate", *args])
        stages.evaluate.main()
        return capsys.readouterr().out

    monkeypatch.chdir(repo)
    capsys.readouterr()
    ev = json.loads(evaluate(str(ckpt.relative_to(repo)), "--arch", "resnet56", "--json"))
    assert (ev["layout"], ev["top1"], len(ev["per_class_top1"])) == (REFERENCE, teacher["test_top1"], 100), ev
    assert 0 <= ev["ece"] <= 100
    again = json.loads(evaluate("data/teacher/model.pt", "--json"))
    assert (again["layout"], again["top1"], again["ece"]) == ("kdlens model.pt", ev["top1"], pytest.approx(ev["ece"]))
    line = evaluate("data/student/checkpoints/epoch_001.pt")
    assert "kept epoch 1 of data/student/model.pt" in line and f"top-1 {student['test_top1']:.2f}%" in line, line

    save_reference(randomised(ARCHS["resnet20"](100), seed=0), ckpt)  # another arch's file in its place
    model = (repo / "data/teacher/model.pt").read_bytes()
    out = run_cmd(repo, "dvc", "repro", "train_teacher", check=False, env=env)
    assert out.returncode != 0 and (f"error: {ckpt.relative_to(repo)}: does not fit resnet56 with 100 classes: "
                                    "missing key 'stages.0.3.conv1.weight'") in out.stderr, out.stderr[-2000:]
    assert "its keys fit resnet20: set the arch to resnet20" in out.stderr
    assert (repo / "data/teacher/model.pt").read_bytes() == model
