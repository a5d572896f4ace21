"""The typed schema of ``params.yaml``, validated at the start of every stage.

Every section is a pydantic model with ``extra="forbid"``: a misspelt key is an error, not a silently
ignored value. ``load_params`` turns the first validation error into one line that names the key, what
was wrong and, for choices, the valid values.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model,
                      field_validator, model_validator)

import methods
from models import registry as model_registry

from .errors import KdlensError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScenesParams(Section):
    """The embedded ``scenes`` dataset (digits over clutter); see engine/datasets/scenes.py."""

    n_train: int = Field(4000, ge=10)
    n_test: int = Field(1000, ge=10)
    image_size: int = Field(32, ge=16, le=128)
    digit_size: tuple[int, int] = (12, 18)
    clutter: float = Field(0.35, ge=0.0, le=1.0)
    fragments: int = Field(4, ge=0, le=32)
    noise: float = Field(0.08, ge=0.0, le=1.0)
    test_fraction: float = Field(0.3, gt=0.0, lt=1.0)
    seed: int = Field(0, ge=0)  # numpy seeds must be non-negative

    @field_validator("digit_size")
    @classmethod
    def _digit_size(cls, v):
        lo, hi = v
        if not 4 <= lo <= hi:
            raise ValueError(f"must be [min, max] with 4 <= min <= max, got {list(v)}")
        return v


class DataParams(Section):
    name: Literal["scenes", "cifar10", "cifar100", "folder"] = "scenes"
    root: str = "data/downloads"  # cifar*: torchvision's files; folder: train/<class>/*, test/<class>/*
    download: bool = False
    image_size: int = Field(32, ge=8, le=512)  # folder: side every image is resized to
    masks: str | None = None  # folder: a PNG tree or a CSV of boxes, inside root (engine/datasets/folder.py)
    scenes: ScenesParams = ScenesParams()

    @model_validator(mode="after")
    def _image_size_fits(self):
        if self.scenes.digit_size[1] > self.scenes.image_size:
            raise ValueError("scenes.digit_size max must not exceed scenes.image_size")
        return self

    @model_validator(mode="after")
    def _masks_need_folder(self):
        if self.masks is not None and self.name != "folder":
            raise ValueError(f"masks: only data.name: folder reads masks, not {self.name}; set data.masks: null")
        return self


class TrainParams(Section):
    """Optimisation of one network (teacher, or the students)."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"  # adam: KDExplainer's LTB stage 1 (coupled L2, as upstream)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    # linear: to 3% of lr at the last epoch (KDExplainer's stage 1: lr·(1 − e/int(1.03·E)))
    schedule: Literal["cosine", "multistep", "linear"] = "cosine"
    milestones: list[int] = []
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_epochs: int = Field(0, ge=0)
    augment: bool = True
    amp: bool = True  # used only on CUDA
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


def _known_arch(name: str) -> str:
    if name not in model_registry.names():
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(model_registry.names())}")
    return name


def _known_method(name: str) -> str:
    if name not in methods.names():
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(methods.names())}")
    return name


ArchName = Annotated[str, AfterValidator(_known_arch)]
MethodName = Annotated[str, AfterValidator(_known_method)]

# ``methods.<name>``: one field per registered method, typed by that method's own schema, so an error
# names the exact key (``methods.kd.T``) and an unknown method is an unknown key.
MethodsParams = create_model(
    "MethodsParams", __config__=ConfigDict(extra="forbid", frozen=True),
    **{name: (methods.params_class(name), methods.params_class(name)()) for name in methods.names()})


class TeacherParams(Section):
    arch: ArchName = "resnet20"
    seed: int = 0
    train: TrainParams = TrainParams()


class StructureParams(Section):
    """Stage 1 of a student whose structure is learned (``ltb``, KDExplainer spec A5-A7); unused otherwise.

    ``train`` learns the soft routing with the arm's own method; then ``student.train`` retrains the hard
    tree from re-initialised weights (stage 2). ``tree_from``: which stage-1 tree a distilled arm's
    stage 2 keeps: ``own`` (learned with its method; KamalEngine's configs, what "KD shapes the tree"
    needs) or ``ce`` (a CE-trained stage 1 with the same seed, i.e. the CE arm's tree; xmq1221's configs).
    """
    train: TrainParams = TrainParams(optimizer="adam", schedule="linear", warmup_epochs=2,
                                     group_lr={"routing": 0.01}, frozen_epochs={"routing": 2})
    tree_from: Literal["own", "ce"] = "own"


class StudentParams(Section):
    arch: ArchName = "resnet8"
    train: TrainParams = TrainParams()
    structure: StructureParams = StructureParams()


class VamParams(Section):
    """kdlens's Virtual Attention Module on the distilled student (models/vam.py; our own design, spec A10):
    gates over groups of the filters of the listed stages plus an entropy regulariser."""
    enabled: bool = False
    stages: list[int] = [-2]  # indices into Features.stages
    groups: int = Field(4, ge=1)
    init_gain: float = 3.0  # gate logits start at init_gain·I: each virtual block attends mostly to itself
    entropy_weight: float = Field(0.01, ge=0)


class TeacherCacheParams(Section):
    """Stage ``cache_teacher`` (engine/teacher.py): the teacher's logits for every training view, used by
    the methods that read only logits (kd, dkd). ``top_k`` > 0 keeps the k largest logits and the tail's
    log-sum-exp (for large class counts; what is lost: how the tail mass splits across classes)."""
    enabled: bool = True
    dtype: Literal["float32", "float16"] = "float32"
    top_k: int = Field(0, ge=0)


class SupervisionParams(Section):
    """Teacher-derived supervision (stage ``build_supervision``, engine/supervision.py; letKD spec B3/B4).

    Defaults are the paper's CIFAR-100 values (k=4096, lda_dim=60); params.yaml sizes them for ``scenes``.
    """

    k: int = Field(4096, ge=1)  # k-means centroids of the teacher's last-stage locations
    iterations: int = Field(20, ge=1)  # k-means iterations (penultimate and per-class sub-classes)
    n_init: int = Field(1, ge=1)  # k-means restarts, best kept
    init: Literal["afkmc2", "kmeans++", "random"] = "afkmc2"  # k-means seeding (upstream: random)
    seed: int = Field(0, ge=0)
    inter_stage: int = -2  # index into the teacher's (and student's) Features.stages; not the last
    lda_dim: int = Field(60, ge=1)  # LDA components (<= min(channels, classes - 1))
    subclasses: int = Field(8, ge=1)  # k-means sub-classes per class
    penult_size: int = Field(0, ge=0)  # average-pool the last-stage map to this side first (0 = as is)
    inter_size: int = Field(0, ge=0)  # the same for the intermediate map
    batch_size: int = Field(256, ge=1)  # teacher feature-extraction batch


class SigmaSection(Section):
    """Stage ``estimate_sigma`` (explain/sigma.py ``SigmaParams`` plus what to analyse; spec §6.1).

    ``noise_batch``: the spec's faithful value is 96 (the default here); params.yaml uses 16 on ``scenes``
    to fit the CPU time budget (2 models x 5 checkpoints x 16 images). ``mask_mode``: how the exact pixel
    masks become grid cells for the report -- ``any`` (default): a cell is foreground if any of its pixels
    is; the spec's nearest sampling (``center``) leaves too few foreground cells on thin digit strokes.
    """

    grid: int = Field(8, ge=1)
    sigma0: float = Field(0.01, gt=0)
    clamp: tuple[float, float] = (1e-3, 1.0)
    lambda_h: float = Field(6.0, ge=0)
    lr: float = Field(2.5e-5, gt=0)
    steps: int = Field(80, ge=1)
    probe_step: int = Field(60, ge=1)
    lambda_boost: float = Field(1.5, gt=0)
    budget_ratio: float = Field(1.4714, gt=0)
    entropy_target: float | None = None  # overrides budget_ratio when set (reference: -2.8)
    noise_batch: int = Field(96, ge=1)
    relu: bool = True
    max_samples: int | None = Field(128, ge=1)
    n_images: int = Field(16, ge=1)  # test images, those with a foreground mask first (select_images)
    seed: int = Field(0, ge=0)  # same noise for every checkpoint and model (common random numbers)
    tap: Literal["stem", "stages", "preact", "pooled", "logits"] = "stages"
    index: int = -1  # which of Features.stages/preact
    mask_mode: Literal["any", "center", "nearest"] = "any"

    def library(self):
        from explain.sigma import SigmaParams

        d = self.model_dump(exclude={"n_images", "seed", "tap", "index", "mask_mode"})
        return SigmaParams(**d)


class KnowledgeSection(Section):
    """The knowledge metrics of ``report`` (explain/knowledge.py ``KnowledgeParams``; spec §2, §3)."""

    b: float = Field(0.2, gt=0)
    background: Literal["dataset", "per_image"] = "dataset"
    empty: Literal["zero", "exclude"] = "zero"
    skip_first: bool = False
    effect_filter: bool = False
    filter_min_epoch: int | None = None
    filter_top_frac: float | None = Field(None, gt=0, le=1)
    intersect_runs: bool = True
    center_box_frac: float = Field(1 / 6, ge=0, lt=0.5)  # foreground prior when the data has no masks (CIFAR)

    def library(self):
        from explain.knowledge import KnowledgeParams

        return KnowledgeParams(**self.model_dump(exclude={"center_box_frac"}))


class ReportParams(Section):
    pass


class TrainerParams(Section):
    """How the training stages run (engine/distributed.py): on ``nproc`` processes under torchrun (one per
    GPU; env ``KDLENS_NPROC`` overrides it), with BatchNorm statistics over the whole global batch if
    ``sync_bn`` (CUDA only; no effect on one process). ``compile_teacher``: the frozen teacher's forward
    (distill, cache_teacher) goes through ``torch.compile`` -- 10-30% faster on CPU, the same outputs within
    float rounding, a few seconds of compiling per run (engine/teacher.py)."""
    nproc: int = Field(1, ge=1)
    sync_bn: bool = False
    compile_teacher: bool = True


class Params(Section):
    seed: int = 0  # the students' seed (baseline and distilled); the teacher has its own
    method: MethodName = "kd"
    data: DataParams = DataParams()
    teacher: TeacherParams = TeacherParams()
    student: StudentParams = StudentParams()
    methods: MethodsParams = MethodsParams()
    vam: VamParams = VamParams()
    teacher_cache: TeacherCacheParams = TeacherCacheParams()
    supervision: SupervisionParams = SupervisionParams()
    sigma: SigmaSection = SigmaSection()
    knowledge: KnowledgeSection = KnowledgeSection()
    report: ReportParams = ReportParams()
    trainer: TrainerParams = TrainerParams()

    def method_params(self, name: str | None = None) -> BaseModel:
        """The validated hyperparameters of a method (defaults where params.yaml names none)."""
        return getattr(self.methods, name or self.method)


def _first_error(e: ValidationError) -> tuple[str, str]:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key (misspelt? the valid keys are in params.yaml and engine/params.py)"
    elif err["type"] == "missing":
        msg = "missing"
    elif "input" in err and err["type"] not in ("value_error",):
        msg = f"{msg} (got {err['input']!r})"
    return loc, msg


def parse_params(raw: dict, source: str = "params.yaml") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        loc, msg = _first_error(e)
        raise KdlensError(f"{source}: {loc}: {msg}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise KdlensError(f"{path}: not found; run from the project root (where dvc.yaml is)") from None
    except yaml.YAMLError as e:
        raise KdlensError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise KdlensError(f"{path}: must be a mapping of sections, got {type(raw).__name__}")
    return parse_params(raw, str(path))


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become their JSON text (MLflow params are strings)."""
    if isinstance(d, BaseModel):
        d = d.model_dump()
    if not isinstance(d, dict):
        return {prefix: json.dumps(d) if isinstance(d, (list, tuple)) else d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def params_hash(section: Any) -> str:
    """A short stable hash of a params slice: tags MLflow runs and keys resumable checkpoints."""
    blob = json.dumps(flatten(section), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
