"""Training one network of a job: the student as every arm builds it, its method, its loaders, and
``Fitter``, which trains a network with a method on what all trainings of one job share."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

import methods
import models
from core import distributed
from core.errors import KdlensError
from dataset.loader import BatchLoader, loader_for
from dataset.store import Prepared
from models.vam import VamParams, attach_vam, vam_regulariser

from .params import TrainParams
from .trainer import FitResult, fit


def new_student(arch: str, num_classes: int, input_size: int, seed: int, vam: VamParams | None,
                dev: torch.device):
    torch.manual_seed(seed)  # same seed + arch => the baseline and every student start alike
    student = models.create(arch, num_classes)
    if vam is not None and vam.enabled:
        try:
            attach_vam(student, vam.stages, vam.groups, vam.init_gain, vam.entropy_weight, input_size=input_size)
        except ValueError as e:
            raise KdlensError(f"params.yaml: vam: {e}") from None
    return student.to(dev)


def build_method(name: str, params: methods.MethodParams, ctx: methods.MethodContext) -> methods.Method:
    try:
        return methods.create(name, params, ctx)
    except methods.MethodNotApplicable as e:
        raise KdlensError(f"method {name!r} with student {type(ctx.student).__name__}: {e}") from None


def check_pair(name: str, params: methods.MethodParams, student_arch: str, teacher_arch: str,
               num_classes: int, input_size: int, vam: VamParams | None) -> None:
    """Whether method ``name`` can serve this student and teacher, known from the params alone: the method
    is built, as distill builds it, on freshly initialised networks and a stand-in training set of two
    images per class. A method that reads the teacher-derived supervision (letKD) is checked where that
    supervision exists, at distill."""
    if methods.get(name).needs_supervision:
        return
    cpu = torch.device("cpu")
    student = new_student(student_arch, num_classes, input_size, 0, vam, cpu)
    teacher = models.create(teacher_arch, num_classes) if methods.get(name).needs_teacher else None
    labels = torch.arange(2 * num_classes) % num_classes
    build_method(name, params, methods.MethodContext(student=student, teacher=teacher, num_classes=num_classes,
                                                     num_train=len(labels), input_size=input_size,
                                                     train_labels=labels))


def loaders(data: Prepared, cfg: TrainParams, seed: int, dev: torch.device) -> tuple[BatchLoader, BatchLoader]:
    mean, std = data.card["mean"], data.card["std"]
    train = loader_for(data.train, mean, std, cfg.batch_size, dev, augment=cfg.augment, shuffle=True,
                       seed=seed, drop_last=len(data.train.labels) >= 2 * cfg.batch_size)
    return train, loader_for(data.test, mean, std, cfg.eval_batch_size, dev)


@dataclass
class Fitter:
    """Trains one network with one method on a student's data and teacher (``fit`` with what every training
    of one job shares): the main training, and a learned-structure student's stage 1 (training/structure.py)."""
    student: torch.nn.Module  # the job's student: the only network whose regularisers (VAM) are added
    data: Prepared
    cfg: TrainParams  # the main training's (its loader is reused when a stage has the same batch size)
    seed: int
    work: Path
    name: str
    train: BatchLoader
    test: BatchLoader
    teacher: torch.nn.Module | None
    fast_teacher: torch.nn.Module | None  # BN-folded (and compiled) for the forward passes
    supervision: dict | None
    sync_bn: bool
    dev: torch.device

    def __call__(self, net, method_name: str, method_params, cfg: TrainParams, work: Path, on_epoch=None,
                 teacher_outputs=None) -> tuple[methods.Method, FitResult]:
        data = self.data
        ctx = methods.MethodContext(student=net, teacher=self.teacher, num_classes=data.num_classes,
                                    num_train=len(data.train.labels), input_size=data.input_size,
                                    train_labels=torch.from_numpy(data.train.labels), supervision=self.supervision)
        method = build_method(method_name, method_params, ctx).to(self.dev)
        if self.sync_bn:
            distributed.use_sync_batchnorm(net, method)
        train = loaders(self.data, cfg, self.seed, self.dev)[0] if cfg.batch_size != self.cfg.batch_size else self.train
        regularisers = (lambda: vam_regulariser(self.student)) if net is self.student else None
        result = fit(net, method, cfg, train, self.test, seed=self.seed, work_dir=work,
                     teacher=self.fast_teacher if method.needs_teacher else None,
                     name=f"{self.name} {work.name}" if work != self.work else self.name, on_epoch=on_epoch,
                     regularisers=regularisers, teacher_outputs=teacher_outputs)
        return method, result

    def new_student(self, arch: str, vam: VamParams | None) -> torch.nn.Module:
        return new_student(arch, self.data.num_classes, self.data.input_size, self.seed, vam, self.dev)
