"""(Re)write every protocol file from ``PAIRS``, the recipes below and the methods' schemas:
python -m protocols.write

One file per pair and method of the pair's recipe that can serve the pair (checked as check_params checks
it: kdsvd needs equal channel counts, so most CIFAR pairs have none).

* CIFAR-100: every method, each at its schema's defaults (its CIFAR settings; each method's docstring cites
  them), DKD's beta per pair, and CAT-KD's beta, CAM grid and normalisation per pair; MLKD at its authors'
  per-pair epochs and lr (``MLKD_SCHEDULE``).
* ImageNet: the methods the reference framework runs there (kd, at, ofd, crd, reviewkd, dkd), with its
  ImageNet configurations: batch 512 at lr 0.2 for KD, AT and DKD, batch 256 at lr 0.1 for CRD, ReviewKD
  and OFD (OFD's ResNet-50 -> MobileNetV1 run: batch 128 at lr 0.05; its ResNet-34 -> ResNet-18 batch is
  not in the reference configurations, so it takes CRD's); KD at T = 1 with CE and KD weights 0.5 each;
  DKD at T = 1 with a one-epoch warm-up; OFD's weight 1e-4 (Heo et al., ICCV 2019, section 4.3: the
  ImageNet loss is divided by 10^4 rather than CIFAR's 10^3); ReviewKD's weight 1 with student
  pre-activations (ResNet-18) or weight 8 with 256 middle channels (MobileNetV1), a one-epoch warm-up.
  Images stream from disk at 224 px (data.name: imagenet). The teacher cache is off: 100 epochs of
  1.28 M views are ~11 GB even at top-k 20, more than the forward it saves is worth for six methods.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Callable

import yaml

import methods
from core.errors import KdlensError
from methods import MethodNotApplicable
from methods.letkd.params import SupervisionParams
from training.fitter import check_pair

from . import PAIRS, ROOT, Pair

# -------------------------------------------------------------------------------------------- CIFAR-100
CIFAR_TEACHER = "teachers/cifar_teachers/{arch}_vanilla/ckpt_epoch_240.pth"  # cifar_teachers.tar, unpacked
LIGHT_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")  # trained at lr 0.01 in the references
# CAT-KD (Guo, Yan, Li & Lin, CVPR 2023): (cat_weight, cam_resolution, normalize), the authors' per-pair
# CIFAR-100 configurations
CAT_KD_PAIRS = {"resnet56-resnet20": (0.7, 2, False), "resnet110-resnet32": (1.8, 2, False),
                "resnet32x4-resnet8x4": (15.0, 2, False), "wrn_40_2-wrn_16_2": (12.0, 2, False),
                "wrn_40_2-wrn_40_1": (1.5, 2, False), "vgg13-vgg8": (4.5, 2, False),
                "resnet32x4-ShuffleV1": (600.0, 4, True), "wrn_40_2-ShuffleV1": (80.0, 4, True),
                "resnet32x4-ShuffleV2": (600.0, 4, True), "vgg13-MobileNetV2": (15.0, 2, True),
                "ResNet50-MobileNetV2": (40.0, 2, True)}
# MLKD (Jin, Wang & Lin, CVPR 2023): the authors' per-pair CIFAR-100 (epochs, lr); their 480-epoch runs keep
# the lr steps at 150, 180 and 210
MLKD_SCHEDULE = {"resnet56-resnet20": (240, 0.025), "resnet110-resnet32": (240, 0.025),
                 "resnet32x4-resnet8x4": (240, 0.025), "wrn_40_2-wrn_16_2": (240, 0.025),
                 "wrn_40_2-wrn_40_1": (240, 0.025), "vgg13-vgg8": (240, 0.025), "resnet32x4-ShuffleV1": (480, 0.01),
                 "wrn_40_2-ShuffleV1": (480, 0.0025), "resnet32x4-ShuffleV2": (480, 0.01),
                 "vgg13-MobileNetV2": (480, 0.0025), "ResNet50-MobileNetV2": (480, 0.0025)}
CIFAR_SCHEDULE = {"epochs": 240, "batch_size": 64, "optimizer": "sgd", "momentum": 0.9, "nesterov": False,
                  "weight_decay": 5e-4, "schedule": "multistep", "milestones": [150, 180, 210], "gamma": 0.1,
                  "warmup_epochs": 0, "augment": True, "amp": False, "keep_epochs": [0, 60, 120, 180, 240]}
CIFAR_HEADER = """\
# CIFAR-100, {teacher} -> {student}, {method}: the reference frameworks' protocol (Tian et al., ICLR 2020;
# Zhao et al., CVPR 2022) with their pretrained teacher. Published for this pair: KD {kd}, DKD {dkd} (best
# test top-1, mean of several runs). Written by `python -m protocols.write`; run with
#   python -m protocols {path}        (docs/reproducing.md)
"""


def cifar_sets(pair: Pair, method: str) -> dict:
    lr = 0.01 if pair.student in LIGHT_STUDENTS else 0.05
    epochs, lr = MLKD_SCHEDULE[pair.name] if method == "mlkd" else (CIFAR_SCHEDULE["epochs"], lr)
    sets = {"data.name": "cifar100", "teacher.arch": pair.teacher,
            "teacher.checkpoint": CIFAR_TEACHER.format(arch=pair.teacher), "student.arch": pair.student,
            **{f"student.train.{k}": v for k, v in {**CIFAR_SCHEDULE, "epochs": epochs, "lr": lr}.items()},
            "method": method}
    params = methods.get(method).Params().model_dump(mode="json")
    if method == "dkd":
        params["beta"] = pair.dkd_beta  # the DKD paper's per-pair beta
    if method == "cat_kd":
        params.update(zip(("cat_weight", "cam_resolution", "normalize"), CAT_KD_PAIRS[pair.name]))
    if "init_lr" in params:  # AB's and FSP's initialisation phase runs at the student's lr (RepDistiller)
        params["init_lr"] = lr
    sets.update({f"methods.{method}.{k}": v for k, v in params.items()})
    if methods.get(method).needs_supervision:  # letKD's k-means / LDA at the paper's CIFAR-100 sizes
        sets.update({f"supervision.{k}": v for k, v in SupervisionParams().model_dump(mode="json").items()})
    return sets


# --------------------------------------------------------------------------------------------- ImageNet
# torchvision's IMAGENET1K_V1 files (the weights the reference framework loads with pretrained=True).
IMAGENET_TEACHER = {"imagenet_resnet34": "teachers/imagenet/resnet34-b627a593.pth",
                    "imagenet_resnet50": "teachers/imagenet/resnet50-0676ba61.pth"}
IMAGENET_SCHEDULE = {"epochs": 100, "eval_batch_size": 256, "optimizer": "sgd", "momentum": 0.9, "nesterov": False,
                     "weight_decay": 1e-4, "schedule": "multistep", "milestones": [30, 60, 90], "gamma": 0.1,
                     "warmup_epochs": 0, "augment": True, "amp": True, "amp_dtype": "bf16",
                     "keep_epochs": [0, 30, 60, 90, 100]}
IMAGENET_BATCH = {"kd": (512, 0.2), "at": (512, 0.2), "dkd": (512, 0.2), "crd": (256, 0.1), "reviewkd": (256, 0.1),
                  "ofd": (256, 0.1)}  # (global batch, lr)
IMAGENET_METHODS = {"kd": {"T": 1.0, "ce_weight": 0.5, "kd_weight": 0.5}, "dkd": {"T": 1.0, "warmup": 1},
                    "ofd": {"ofd_weight": 1e-4}, "reviewkd": {"warmup": 1}, "at": {}, "crd": {}}
IMAGENET_PAIR_METHODS = {  # what one pair's configuration changes further
    "imagenet_resnet34-imagenet_resnet18": {"reviewkd": {"reviewkd_weight": 1.0, "student_preact": True}},
    "imagenet_resnet50-imagenet_mobilenet_v1": {"reviewkd": {"reviewkd_weight": 8.0, "max_mid_channels": 256}},
}
IMAGENET_PAIR_BATCH = {("imagenet_resnet50-imagenet_mobilenet_v1", "ofd"): (128, 0.05)}
IMAGENET_HEADER = """\
# ImageNet, {teacher} -> {student}, {method}: the reference framework's ImageNet configuration (Zhao et al.,
# "Decoupled Knowledge Distillation", CVPR 2022, Table 3) with torchvision's pretrained teacher. Published
# for this pair: KD {kd}, DKD {dkd} (top-1). Images stream from data.root (train/<wnid>/*, val/<wnid>/*).
# Written by `python -m protocols.write`; run with
#   python -m protocols {path}        (docs/imagenet.md)
"""


def imagenet_sets(pair: Pair, method: str) -> dict:
    batch, lr = IMAGENET_PAIR_BATCH.get((pair.name, method), IMAGENET_BATCH[method])
    sets = {"data.name": "imagenet", "data.image_size": 224, "teacher.arch": pair.teacher,
            "teacher.checkpoint": IMAGENET_TEACHER[pair.teacher], "student.arch": pair.student,
            **{f"student.train.{k}": v for k, v in {**IMAGENET_SCHEDULE, "batch_size": batch, "lr": lr}.items()},
            "teacher_cache.enabled": False, "method": method}
    params = {**methods.get(method).Params().model_dump(mode="json"), **IMAGENET_METHODS[method],
              **IMAGENET_PAIR_METHODS.get(pair.name, {}).get(method, {})}
    if method == "dkd":
        params["beta"] = pair.dkd_beta
    sets.update({f"methods.{method}.{k}": v for k, v in params.items()})
    return sets


@dataclass(frozen=True)
class Recipe:
    sets: Callable[[Pair, str], dict]
    classes: int
    side: int
    methods: tuple[str, ...] | None  # None: every method that can serve the pair
    header: str


RECIPES = {"cifar100": Recipe(cifar_sets, 100, 32, None, CIFAR_HEADER),
           "imagenet": Recipe(imagenet_sets, 1000, 224, tuple(IMAGENET_BATCH), IMAGENET_HEADER)}


def protocol(pair: Pair, method: str) -> dict:
    """The dotted params of one (pair, method) run."""
    return RECIPES[pair.dataset].sets(pair, method)


def serves(pair: Pair, method: str) -> bool:
    recipe = RECIPES[pair.dataset]
    if recipe.methods is not None and method not in recipe.methods:
        return False
    try:
        check_pair(method, methods.get(method).Params(), pair.student, pair.teacher, recipe.classes, recipe.side, None)
    except (MethodNotApplicable, KdlensError):
        return False
    return True


def main() -> None:
    for dataset in RECIPES:
        shutil.rmtree(ROOT / dataset, ignore_errors=True)
    for pair in PAIRS:
        for method in methods.names():
            if not serves(pair, method):
                print(f"{pair.name}: {method} is not run on this pair; no file")
                continue
            path = ROOT / pair.dataset / pair.name / f"{method}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            head = RECIPES[pair.dataset].header.format(teacher=pair.teacher, student=pair.student, method=method,
                                                       kd=f"{pair.published_kd:.2f}", dkd=f"{pair.published_dkd:.2f}",
                                                       path=path.relative_to(ROOT.parent))
            path.write_text(head + yaml.safe_dump(protocol(pair, method), sort_keys=False, default_flow_style=None))
    print(f"{sum(1 for _ in ROOT.rglob('*.yaml'))} protocol files under {ROOT}")


if __name__ == "__main__":
    main()
