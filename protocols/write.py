"""(Re)write every protocol file from ``PAIRS`` and the methods' schemas:  python -m protocols.write

One file per pair and method that can serve the pair (checked as check_params checks it: kdsvd needs
equal channel counts, so most pairs have none).
"""
from __future__ import annotations

import shutil

import yaml

import methods
from core.errors import KdlensError
from methods import MethodNotApplicable
from methods.letkd.params import SupervisionParams
from training.fitter import check_pair

from . import DATASET, PAIRS, ROOT, TEACHER_FILE, Pair

CLASSES, SIDE = 100, 32
SCHEDULE = {"epochs": 240, "batch_size": 64, "optimizer": "sgd", "momentum": 0.9, "nesterov": False,
            "weight_decay": 5e-4, "schedule": "multistep", "milestones": [150, 180, 210], "gamma": 0.1,
            "warmup_epochs": 0, "augment": True, "amp": False, "keep_epochs": [0, 60, 120, 180, 240]}
HEADER = """\
# CIFAR-100, {teacher} -> {student}, {method}: the reference frameworks' protocol (Tian et al., ICLR 2020;
# Zhao et al., CVPR 2022) with their pretrained teacher. Published for this pair: KD {kd}, DKD {dkd} (best
# test top-1, mean of several runs). Written by `python -m protocols.write`; run with
#   python -m protocols {path}        (docs/reproducing.md)
"""


def protocol(pair: Pair, method: str) -> dict:
    """The dotted params of one (pair, method) run."""
    sets = {"data.name": DATASET, "teacher.arch": pair.teacher,
            "teacher.checkpoint": TEACHER_FILE.format(arch=pair.teacher), "student.arch": pair.student,
            **{f"student.train.{k}": v for k, v in {**SCHEDULE, "lr": pair.lr}.items()}, "method": method}
    cls = methods.get(method)
    params = cls.Params().model_dump(mode="json")
    if method == "dkd":
        params["beta"] = pair.dkd_beta  # the DKD paper's per-pair beta
    sets.update({f"methods.{method}.{k}": v for k, v in params.items()})
    if cls.needs_supervision:  # letKD's k-means / LDA at the paper's CIFAR-100 sizes (the schema's defaults)
        sets.update({f"supervision.{k}": v for k, v in SupervisionParams().model_dump(mode="json").items()})
    return sets


def serves(pair: Pair, method: str) -> bool:
    try:
        check_pair(method, methods.get(method).Params(), pair.student, pair.teacher, CLASSES, SIDE, None)
    except (MethodNotApplicable, KdlensError):
        return False
    return True


def main() -> None:
    out = ROOT / DATASET
    shutil.rmtree(out, ignore_errors=True)
    for pair in PAIRS:
        for method in methods.names():
            if not serves(pair, method):
                print(f"{pair.name}: {method} cannot serve this pair; no file")
                continue
            path = out / pair.name / f"{method}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            head = HEADER.format(teacher=pair.teacher, student=pair.student, method=method, kd=pair.published_kd,
                                 dkd=pair.published_dkd, path=path.relative_to(ROOT.parent))
            path.write_text(head + yaml.safe_dump(protocol(pair, method), sort_keys=False, default_flow_style=None))
    print(f"{sum(1 for _ in out.rglob('*.yaml'))} protocol files under {out}")


if __name__ == "__main__":
    main()
