"""The published CIFAR-100 protocols as params files, one per (teacher, student) pair and method:
``protocols/cifar100/<teacher>-<student>/<method>.yaml``. Each file is a flat mapping of dotted
params.yaml keys to values, exactly what ``dvc exp run -S key=value`` takes; ``python -m protocols FILE``
runs it (protocols/__main__.py, docs/reproducing.md).

The protocol is the reference frameworks' (Tian, Krishnan & Isola, "Contrastive Representation
Distillation", ICLR 2020; Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022): the pretrained
teacher of the pair, 240 epochs, batch 64, SGD momentum 0.9, lr 0.05 (0.01 for MobileNetV2 and ShuffleNet
students), x0.1 at epochs 150, 180 and 210, weight decay 5e-4, no warm-up, full precision; every method
section at the method's own CIFAR defaults (its schema's, each method's docstring cites them), with DKD's
beta per pair as the DKD paper configures it. ``PAIRS`` holds the pairs, with the published KD and DKD
top-1 (best test top-1, mean over several runs, DKD paper Tables 1 and 2).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DATASET = "cifar100"
TEACHER_FILE = "teachers/cifar_teachers/{arch}_vanilla/ckpt_epoch_240.pth"  # cifar_teachers.tar, unpacked
LIGHT_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")  # trained at lr 0.01 in the references


@dataclass(frozen=True)
class Pair:
    teacher: str
    student: str
    dkd_beta: float
    published_kd: float
    published_dkd: float

    @property
    def name(self) -> str:
        return f"{self.teacher}-{self.student}"

    @property
    def lr(self) -> float:
        return 0.01 if self.student in LIGHT_STUDENTS else 0.05


PAIRS = (
    Pair("resnet56", "resnet20", 2.0, 70.66, 71.97),
    Pair("resnet110", "resnet32", 2.0, 73.08, 74.11),
    Pair("resnet32x4", "resnet8x4", 8.0, 73.33, 76.32),
    Pair("wrn_40_2", "wrn_16_2", 6.0, 74.92, 76.23),
    Pair("wrn_40_2", "wrn_40_1", 6.0, 73.54, 74.81),
    Pair("vgg13", "vgg8", 6.0, 72.98, 74.68),
    Pair("resnet32x4", "ShuffleV1", 8.0, 74.07, 76.45),
    Pair("wrn_40_2", "ShuffleV1", 8.0, 74.83, 76.70),
    Pair("vgg13", "MobileNetV2", 6.0, 67.37, 69.71),
    Pair("ResNet50", "MobileNetV2", 8.0, 67.35, 70.35),
    Pair("resnet32x4", "ShuffleV2", 8.0, 74.45, 77.07),
)


def files(under: Path = ROOT) -> list[Path]:
    return sorted(under.rglob("*.yaml")) if under.is_dir() else [under]
