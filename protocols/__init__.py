"""The published protocols as params files, one per (teacher, student) pair and method:
``protocols/<dataset>/<teacher>-<student>/<method>.yaml``. Each file is a flat mapping of dotted
params.yaml keys to values, exactly what ``dvc exp run -S key=value`` takes; ``python -m protocols FILE``
runs it (protocols/__main__.py, docs/reproducing.md). ``protocols/write.py`` writes them from the
reference recipes.

* ``cifar100``: the reference frameworks' protocol (Tian, Krishnan & Isola, "Contrastive Representation
  Distillation", ICLR 2020; Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022) with their
  pretrained teachers: 240 epochs, batch 64, SGD momentum 0.9, lr 0.05 (0.01 for MobileNetV2 and ShuffleNet
  students), x0.1 at epochs 150, 180 and 210, weight decay 5e-4, full precision; every method at its own
  CIFAR defaults, DKD's beta per pair.
* ``imagenet``: the two ImageNet pairs of the DKD paper (Table 3), torchvision's pretrained teachers: 100
  epochs, x0.1 at 30, 60 and 90, weight decay 1e-4, each method's batch size, learning rate and weights
  from the reference configurations (protocols/write.py).

``PAIRS`` holds the pairs of both, with the published KD and DKD top-1 (best test top-1, mean over
several runs; DKD paper Tables 1-3, and the reference framework's own KD re-run on ImageNet).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Pair:
    dataset: str  # the folder under protocols/, and the recipe protocols/write.py applies
    teacher: str
    student: str
    dkd_beta: float
    published_kd: float
    published_dkd: float

    @property
    def name(self) -> str:
        return f"{self.teacher}-{self.student}"


PAIRS = (
    Pair("cifar100", "resnet56", "resnet20", 2.0, 70.66, 71.97),
    Pair("cifar100", "resnet110", "resnet32", 2.0, 73.08, 74.11),
    Pair("cifar100", "resnet32x4", "resnet8x4", 8.0, 73.33, 76.32),
    Pair("cifar100", "wrn_40_2", "wrn_16_2", 6.0, 74.92, 76.23),
    Pair("cifar100", "wrn_40_2", "wrn_40_1", 6.0, 73.54, 74.81),
    Pair("cifar100", "vgg13", "vgg8", 6.0, 72.98, 74.68),
    Pair("cifar100", "resnet32x4", "ShuffleV1", 8.0, 74.07, 76.45),
    Pair("cifar100", "wrn_40_2", "ShuffleV1", 8.0, 74.83, 76.70),
    Pair("cifar100", "vgg13", "MobileNetV2", 6.0, 67.37, 69.71),
    Pair("cifar100", "ResNet50", "MobileNetV2", 8.0, 67.35, 70.35),
    Pair("cifar100", "resnet32x4", "ShuffleV2", 8.0, 74.45, 77.07),
    # ImageNet: KD as the reference framework re-ran it (T = 1, CE and KD weights 0.5; the DKD paper's own
    # KD rows are 70.66 and 68.58), DKD from the DKD paper's Table 3.
    Pair("imagenet", "imagenet_resnet34", "imagenet_resnet18", 0.5, 71.03, 71.70),
    Pair("imagenet", "imagenet_resnet50", "imagenet_mobilenet_v1", 2.0, 70.50, 72.05),
)
DATASETS = tuple(dict.fromkeys(p.dataset for p in PAIRS))


def files(under: Path = ROOT) -> list[Path]:
    return sorted(under.rglob("*.yaml")) if under.is_dir() else [under]
