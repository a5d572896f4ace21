"""The training knobs of params.yaml: how one network is optimised (``TrainParams``), the teacher and the
student sections, the teacher's logits cache and how the training stages run (processes, compiling)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from core.paths import TEACHERS
from core.schema import Section, Seed
from dataset.augment import ExtraView
from models.registry import ArchName


class TrainParams(Section):
    """Optimisation of one network (teacher, or the students)."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    # training/optimizers.py; adam: KDExplainer's LTB stage 1 (coupled L2, as upstream); dot: Zhao et al.'s
    # Distillation-Oriented Trainer (ICCV 2023), SGD with momenta momentum -/+ dot_delta on the task /
    # distillation terms' gradients (the method's own optimiser, if it has one, replaces any of them)
    optimizer: Literal["sgd", "adam", "dot"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd and dot
    dot_delta: float = Field(0.075, ge=0)  # dot only: the paper's CIFAR-100 / Tiny-ImageNet value (ImageNet 0.09)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    # linear: to 3% of lr at the last epoch (KDExplainer's stage 1: lr·(1 − e/int(1.03·E)))
    schedule: Literal["cosine", "multistep", "linear"] = "cosine"
    milestones: list[int] = []
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_epochs: int = Field(0, ge=0)
    augment: bool = True
    # CUDA only (on CPU all three are off): mixed precision in bf16 where the GPU supports it (Ampere and
    # later), else fp16 with a loss scaler; and the training step in channels-last memory format.
    amp: bool = True
    amp_dtype: Literal["bf16", "fp16"] = "bf16"
    channels_last: bool = True
    keep_epochs: list[int] = []  # checkpoints kept as outputs (epoch 0 = the initial weights)
    # Per named parameter group of the model (models' named_param_groups(), e.g. ltb's "routing"):
    # its own base learning rate (same schedule), and epochs at the start during which it is frozen.
    group_lr: dict[str, float] = {}
    frozen_epochs: dict[str, int] = {}

    @model_validator(mode="after")
    def _epochs_in_range(self):
        bad = [e for e in [*self.keep_epochs, *self.milestones] if not 0 <= e <= self.epochs]
        if bad:
            raise ValueError(f"keep_epochs/milestones must lie in [0, epochs={self.epochs}], got {bad}")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be < epochs ({self.epochs})")
        return self

    @model_validator(mode="after")
    def _dot_momenta_in_range(self):
        if self.optimizer != "dot":
            return self
        if not self.dot_delta < self.momentum:
            raise ValueError(f"dot_delta ({self.dot_delta}) must be < momentum ({self.momentum}): DOT's task "
                             "momentum is momentum - dot_delta")
        if not self.momentum + self.dot_delta < 1:
            raise ValueError(f"momentum + dot_delta ({self.momentum} + {self.dot_delta}) must be < 1: it is "
                             "DOT's distillation momentum")
        if self.nesterov:
            raise ValueError("nesterov: DOT has no Nesterov form; set it false with optimizer: dot")
        return self


class TeacherParams(Section):
    arch: ArchName = "resnet20"
    seed: Seed = 0
    train: TrainParams = TrainParams()  # unused when the teacher is imported
    # A teacher trained elsewhere, evaluated and used instead of training one (models/imported.py): a
    # file inside teachers/, the directory train_teacher depends on. None: train ``train`` above.
    checkpoint: str | None = None

    @field_validator("checkpoint")
    @classmethod
    def _inside_teachers(cls, v: str | None) -> str | None:
        if v is not None and (Path(v).is_absolute() or Path(v).parts[:1] != (TEACHERS.name,) or ".." in Path(v).parts):
            raise ValueError(f"must be a file inside {TEACHERS}/ (the directory train_teacher depends on, so "
                             f"DVC sees the file change), got {v!r}: copy or link the file there")
        return v


class StructureParams(Section):
    """Stage 1 of a student whose structure is learned (``ltb``; Shen et al., "KDExplainer", IJCAI 2021, Sec. 3); unused otherwise.

    ``train`` learns the soft routing with the arm's own method; then ``student.train`` retrains the hard
    tree from re-initialised weights (stage 2). ``tree_from``: which stage-1 tree a distilled arm's
    stage 2 keeps: ``own`` (learned with its method; KamalEngine's configs, what "KD shapes the tree"
    needs) or ``ce`` (a CE-trained stage 1 with the same seed, i.e. the CE arm's tree; xmq1221's configs).
    """
    train: TrainParams = TrainParams(optimizer="adam", lr=1e-3, schedule="linear", warmup_epochs=2,
                                     group_lr={"routing": 0.01}, frozen_epochs={"routing": 2})
    tree_from: Literal["own", "ce"] = "own"


class StudentParams(Section):
    arch: ArchName = "resnet8"
    train: TrainParams = TrainParams()
    structure: StructureParams = StructureParams()


class TeacherCacheParams(Section):
    """Stage ``cache_teacher`` (training/teacher.py): the teacher's logits for every training view, used by
    the methods that read only logits (kd, dkd). ``top_k`` > 0 keeps the k largest logits and the tail's
    log-sum-exp (for large class counts; what is lost: how the tail mass splits across classes).
    ``extra_views``: views to cache as well (dataset/augment.py; ``strong`` for mlkd), each one more
    teacher pass over the training views and as many bytes again."""
    enabled: bool = True
    dtype: Literal["float32", "float16"] = "float32"
    top_k: int = Field(0, ge=0)
    extra_views: list[ExtraView] = []


class TrainerParams(Section):
    """How the training stages run (core/distributed.py): on ``nproc`` processes under torchrun (one per
    GPU; env ``KDLENS_NPROC`` overrides it), with BatchNorm statistics over the whole global batch if
    ``sync_bn`` (CUDA only; no effect on one process). ``compile_teacher``: the frozen teacher's forward
    (distill, cache_teacher) goes through ``torch.compile`` -- 10-30% faster on CPU, the same outputs within
    float rounding, a few seconds of compiling per run (training/teacher.py)."""
    nproc: int = Field(1, ge=1)
    sync_bn: bool = False
    compile_teacher: bool = True
