"""The published protocols (protocols/): every file validates against the params schema, holds the
values of the reference configurations (the tables below, written from the CRD and DKD papers' CIFAR-100
and ImageNet setups and the methods' papers, independently of protocols/write.py), is what the writer
writes, and becomes the DVC command it should. The run itself: tests/test_pipeline_protocol.py (tiny
CIFAR-100, one epoch) and tests/test_pipeline_folder.py (a tiny ImageNet layout, its models)."""
import sys

import pytest
import yaml

import methods
import protocols.__main__ as runner
import protocols.table as table
from tiny_profile import ROOT
from core.errors import KdlensError
from core.schema import read_yaml
from protocols import PAIRS, ROOT as PROTOCOLS, files
from protocols.write import protocol, serves
from stages.params import parse_params

# (teacher, student): (student lr, DKD beta)
REFERENCE_PAIRS = {
    ("resnet56", "resnet20"): (0.05, 2), ("resnet110", "resnet32"): (0.05, 2), ("resnet32x4", "resnet8x4"): (0.05, 8),
    ("wrn_40_2", "wrn_16_2"): (0.05, 6), ("wrn_40_2", "wrn_40_1"): (0.05, 6), ("vgg13", "vgg8"): (0.05, 6),
    ("resnet32x4", "ShuffleV1"): (0.01, 8), ("wrn_40_2", "ShuffleV1"): (0.01, 8), ("vgg13", "MobileNetV2"): (0.01, 6),
    ("ResNet50", "MobileNetV2"): (0.01, 8), ("resnet32x4", "ShuffleV2"): (0.01, 8),
}
REFERENCE_SCHEDULE = {"epochs": 240, "batch_size": 64, "optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4,
                      "schedule": "multistep", "milestones": [150, 180, 210], "gamma": 0.1, "warmup_epochs": 0}
REFERENCE_METHODS = {  # the loss weights and settings of the reference configurations
    "kd": {"ce_weight": 0.1, "kd_weight": 0.9, "T": 4}, "at": {"at_weight": 1000, "p": 2},
    "fitnet": {"hint_weight": 100}, "sp": {"sp_weight": 3000}, "vid": {"vid_weight": 1, "init_pred_var": 5},
    "rkd": {"feat_weight": 1, "distance_weight": 25, "angle_weight": 50}, "pkt": {"pkt_weight": 30000},
    "nst": {"nst_weight": 50}, "ft": {"ft_weight": 200}, "ofd": {"ofd_weight": 1e-3}, "kdsvd": {"kdsvd_weight": 1},
    "crd": {"crd_weight": 0.8, "num_negatives": 16384, "temperature": 0.07, "momentum": 0.5, "feat_dim": 128},
    "dkd": {"ce_weight": 1, "alpha": 1, "T": 4, "warmup": 20}, "reviewkd": {"reviewkd_weight": 5, "warmup": 20},
    "ab": {"ab_weight": 3e-3, "margin": 1, "init_epochs": 30}, "fsp": {"init_epochs": 30},
    "dist": {"beta": 2, "gamma": 2, "T": 4}, "nkd": {"T": 3, "gamma": 3.5}, "cc": {"gamma": 0.4, "order": 2, "feat_dim": 128},
    "ctkd": {"ce_weight": 0.1, "kd_weight": 0.9, "variant": "global", "t_start": 1, "t_range": 20, "lambda_min": 0,
             "lambda_max": 1, "curriculum_epochs": 10},
    "mlkd": {"ce_weight": 0.1, "kd_weight": 0.9, "temperatures": [2, 3, 4, 5, 6]},
}
# CAT-KD's per-pair configurations (Guo, Yan, Li & Lin, CVPR 2023): (cat_weight, cam_resolution, normalize)
REFERENCE_CAT_KD = {
    ("resnet56", "resnet20"): (0.7, 2, False), ("resnet110", "resnet32"): (1.8, 2, False),
    ("resnet32x4", "resnet8x4"): (15, 2, False), ("wrn_40_2", "wrn_16_2"): (12, 2, False),
    ("wrn_40_2", "wrn_40_1"): (1.5, 2, False), ("vgg13", "vgg8"): (4.5, 2, False),
    ("resnet32x4", "ShuffleV1"): (600, 4, True), ("wrn_40_2", "ShuffleV1"): (80, 4, True),
    ("resnet32x4", "ShuffleV2"): (600, 4, True), ("vgg13", "MobileNetV2"): (15, 2, True),
    ("ResNet50", "MobileNetV2"): (40, 2, True),
}
# MLKD's per-pair (epochs, student lr) (Jin, Wang & Lin, CVPR 2023; the authors' configurations)
REFERENCE_MLKD = {
    ("resnet56", "resnet20"): (240, 0.025), ("resnet110", "resnet32"): (240, 0.025),
    ("resnet32x4", "resnet8x4"): (240, 0.025), ("wrn_40_2", "wrn_16_2"): (240, 0.025),
    ("wrn_40_2", "wrn_40_1"): (240, 0.025), ("vgg13", "vgg8"): (240, 0.025), ("resnet32x4", "ShuffleV1"): (480, 0.01),
    ("wrn_40_2", "ShuffleV1"): (480, 0.0025), ("resnet32x4", "ShuffleV2"): (480, 0.01),
    ("vgg13", "MobileNetV2"): (480, 0.0025), ("ResNet50", "MobileNetV2"): (480, 0.0025),
}
CIFAR = [p for p in PAIRS if p.dataset == "cifar100"]
# ImageNet (the reference framework's ImageNet configurations): (teacher, student): DKD beta, and per method
# (global batch, lr, weights).
IMAGENET_PAIRS = {("imagenet_resnet34", "imagenet_resnet18"): 0.5, ("imagenet_resnet50", "imagenet_mobilenet_v1"): 2}
IMAGENET_METHODS = {
    "kd": (512, 0.2, {"T": 1, "ce_weight": 0.5, "kd_weight": 0.5}), "at": (512, 0.2, {"at_weight": 1000}),
    "dkd": (512, 0.2, {"T": 1, "warmup": 1, "alpha": 1, "ce_weight": 1}),
    "crd": (256, 0.1, {"crd_weight": 0.8, "num_negatives": 16384, "temperature": 0.07}),
    "reviewkd": (256, 0.1, {"warmup": 1}), "ofd": (256, 0.1, {"ofd_weight": 1e-4}),
}
IMAGENET_BY_PAIR = {
    ("imagenet_resnet34", "imagenet_resnet18", "reviewkd"): {"reviewkd_weight": 1, "student_preact": True},
    ("imagenet_resnet50", "imagenet_mobilenet_v1", "reviewkd"): {"reviewkd_weight": 8, "max_mid_channels": 256},
}
IMAGENET_SCHEDULE = {"epochs": 100, "optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-4, "schedule": "multistep",
                     "milestones": [30, 60, 90], "gamma": 0.1, "warmup_epochs": 0}


def test_every_pair_has_a_file_per_method_that_can_serve_it():
    assert {(p.teacher, p.student) for p in CIFAR} == set(REFERENCE_PAIRS)
    found = {(f.parent.name, f.stem) for f in files(PROTOCOLS / "cifar100")}
    absent = {(p, m) for p in CIFAR for m in methods.names() if (p.name, m) not in found}
    assert {m for _, m in absent} == {"kdsvd", "fsp"}  # they need equal channel counts in each paired stage
    assert not any(serves(p, m) for p, m in absent) and serves(CIFAR[0], "kdsvd") and serves(CIFAR[0], "fsp")
    assert ("resnet56-resnet20", "kdsvd") in found and len(found) == len(CIFAR) * len(methods.names()) - len(absent)
    # ImageNet: the methods the reference framework runs there, on both of its pairs.
    imagenet = {(f.parent.name, f.stem) for f in files(PROTOCOLS / "imagenet")}
    assert imagenet == {(f"{t}-{s}", m) for t, s in IMAGENET_PAIRS for m in IMAGENET_METHODS}


@pytest.mark.parametrize("pair", CIFAR, ids=lambda p: p.name)
def test_files_validate_and_hold_the_reference_values(pair):
    params = read_yaml(ROOT / "params.yaml")
    lr, beta = REFERENCE_PAIRS[(pair.teacher, pair.student)]
    for path in files(ROOT / "protocols/cifar100" / pair.name):
        sets = yaml.safe_load(path.read_text())
        assert sets == protocol(pair, path.stem), f"{path} is stale: run python -m protocols.write"
        p = parse_params(runner.merged(params, sets, str(path)), str(path), every_method=False)
        m = p.method_params()
        assert (p.data.name, p.teacher.arch, p.student.arch, p.method) == ("cifar100", pair.teacher, pair.student, path.stem)
        assert p.teacher.checkpoint == f"teachers/cifar_teachers/{pair.teacher}_vanilla/ckpt_epoch_240.pth"
        schedule, student_lr = dict(REFERENCE_SCHEDULE), lr
        if path.stem == "mlkd":
            schedule["epochs"], student_lr = REFERENCE_MLKD[(pair.teacher, pair.student)]
        assert p.student.train.lr == student_lr and not p.student.train.amp
        assert {k: getattr(p.student.train, k) for k in schedule} == schedule
        cat_kd = dict(zip(("cat_weight", "cam_resolution", "normalize"),
                          REFERENCE_CAT_KD[(pair.teacher, pair.student)]))
        want = {**REFERENCE_METHODS.get(path.stem, {}), **({"beta": beta} if path.stem == "dkd" else {}),
                **(cat_kd if path.stem == "cat_kd" else {}),
                **({"init_lr": lr} if path.stem in ("ab", "fsp") else {})}
        assert {k: getattr(m, k) for k in want} == want, path
        if methods.get(path.stem).needs_supervision:  # letKD at the paper's CIFAR-100 sizes
            assert (p.supervision.k, p.supervision.lda_dim) == (4096, 60)


def test_the_runner_prints_the_dvc_commands_and_refuses_a_bad_key(monkeypatch, capsys):
    def run(*args):
        monkeypatch.setattr(sys, "argv", ["protocols", *args])
        runner.main()
        return capsys.readouterr().out.splitlines()

    monkeypatch.chdir(ROOT)
    lines = run("protocols/cifar100/vgg13-vgg8", "--queue", "--seeds", "2", "--target", "distill", "--dry-run", "-S",
                "student.train.amp=true")
    assert len(lines) == 2 * len(files(ROOT / "protocols/cifar100/vgg13-vgg8"))
    dkd = [ln for ln in lines if " -n vgg13-vgg8-dkd-seed1 " in ln]
    assert dkd and dkd[0].startswith("dvc exp run --queue distill -n vgg13-vgg8-dkd-seed1 -S 'data.name=\"cifar100\"'")
    for part in ("-S methods.dkd.beta=6.0", "-S student.train.lr=0.05", "-S student.train.amp=true", "-S seed=1",
                 "-S 'student.train.milestones=[150, 180, 210]'"):
        assert part in dkd[0], part
    with pytest.raises(KdlensError) as e:
        run("protocols/cifar100/vgg13-vgg8/kd.yaml", "--dry-run", "-S", "student.train.epoch=3")
    assert str(e.value) == ("protocols/cifar100/vgg13-vgg8/kd.yaml: student.train.epoch: not a key of params.yaml; "
                            "check the spelling against params.yaml")


def test_the_table_gives_mean_and_std_over_seeds_next_to_the_published_numbers():
    def exp(name, best, last):
        return {"rev": "abc", "name": name, "data": {"metrics": {"metrics/student.json": {"data": {
            "best_test_top1": best, "test_top1": last}}}}}

    shown = [{"rev": "workspace", "name": None, "data": {"metrics": {}}, "experiments": [
        {"revs": [exp("vgg13-vgg8-kd-seed0", 73.0, 72.5)]}, {"revs": [exp("vgg13-vgg8-kd-seed1", 74.0, 73.5)]},
        {"revs": [exp("resnet56-resnet20-dkd", 71.5, 71.0)]}, {"revs": [exp("my-sweep-3", 50.0, 50.0)]}]}]
    lines = table.markdown(table.experiments(shown)).splitlines()
    assert lines[2:] == ["| resnet56-resnet20 | dkd | 1 | 71.50 | 71.00 | 70.66 | 71.97 |",
                         "| vgg13-vgg8 | kd | 2 | 73.50 ± 0.71 | 73.00 ± 0.71 | 72.98 | 74.68 |"]


@pytest.mark.parametrize("pair", [p for p in PAIRS if p.dataset == "imagenet"], ids=lambda p: p.name)
def test_imagenet_files_hold_the_reference_imagenet_configurations(pair):
    params = read_yaml(ROOT / "params.yaml")
    for path in files(PROTOCOLS / "imagenet" / pair.name):
        sets = yaml.safe_load(path.read_text())
        assert sets == protocol(pair, path.stem), f"{path} is stale: run python -m protocols.write"
        p = parse_params(runner.merged(params, sets, str(path)), str(path), every_method=False)
        assert (p.data.name, p.data.image_size, p.data.streams) == ("imagenet", 224, True)
        assert (p.teacher.arch, p.student.arch, p.method) == (pair.teacher, pair.student, path.stem)
        assert p.teacher.checkpoint.startswith(f"teachers/imagenet/{pair.teacher.removeprefix('imagenet_')}-")
        assert {k: getattr(p.student.train, k) for k in IMAGENET_SCHEDULE} == IMAGENET_SCHEDULE
        batch, lr, weights = IMAGENET_METHODS[path.stem]
        if (pair.student, path.stem) == ("imagenet_mobilenet_v1", "ofd"):
            batch, lr = 128, 0.05
        assert (p.student.train.batch_size, p.student.train.lr) == (batch, lr), path
        want = {**weights, **IMAGENET_BY_PAIR.get((pair.teacher, pair.student, path.stem), {}),
                **({"beta": IMAGENET_PAIRS[(pair.teacher, pair.student)]} if path.stem == "dkd" else {})}
        m = p.method_params()
        assert {k: getattr(m, k) for k in want} == want, path
        assert not p.teacher_cache.enabled
