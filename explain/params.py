"""The explanation knobs of params.yaml: the ``sigma`` section (stage estimate_sigma) and the ``knowledge``
section (the report's knowledge metrics). Kept apart from the algorithms, so that the stages which only
validate these sections do not run (and depend on) the estimation code."""
from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from core.schema import Section, Seed

HALF_LOG_2PI_E = 0.5 * math.log(2.0 * math.pi * math.e)  # 1.4189385...


def entropy_target(sigma0: float = 0.01, budget_ratio: float = 1.4714) -> float:
    """H* = ln(sigma0 * r) + 1/2 ln(2 pi e): the mean entropy of a uniform map r times sigma0."""
    return math.log(sigma0) + math.log(budget_ratio) + HALF_LOG_2PI_E


class SigmaParams(Section):
    """The ``sigma`` section: the knobs of the estimation, and which images and layer stage
    ``estimate_sigma`` analyses. Defaults are for 32x32 inputs on an 8x8 grid (Cheng et al., "Explaining
    Knowledge Distillation by Quantifying the Knowledge", CVPR 2020, Sec. 3.1).

    ``lr = 2.5e-5`` with ``lambda_h = 6`` reproduces, on an 8x8 grid, the per-step dynamics of the
    reference's 16x16 grid at lr 1e-4 / lambda 6 (ResNet): with the *mean* entropy over G^2 cells, both
    the entropy and the feature gradient on one cell scale as 1/G^2, so keeping ``lr / G^2`` fixed keeps
    every per-cell step size, and keeping lambda_h keeps the balance point (how far sigma grows before the
    feature term stops it). Lowering lambda_h to 6 * 64/256 at lr 1e-4 instead keeps the step size but
    moves the balance point below the entropy target.

    ``noise_batch``: 96 samples per image is the faithful value (the default here); params.yaml uses 16 on
    ``scenes`` to fit the CPU time budget (2 models x 5 checkpoints x 16 images). ``mask_mode``: how the
    exact pixel masks become grid cells for the report -- ``any`` (default): a cell is foreground if any of
    its pixels is; nearest sampling (``center``) leaves too few foreground cells on thin digit strokes.
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
    entropy_target: float | None = None  # overrides the budget semantics when set (reference: -2.8)
    noise_batch: int = Field(96, ge=1)
    relu: bool = True
    # batched only: at most this many samples per forward/backward (whole images; the math is unchanged).
    # On a CPU core the convolutions cost the same per sample at any batch size and the elementwise ops
    # (BN, ReLU) get slower once a batch's activations leave the cache, so ~100 samples per pass is the
    # fastest there (measured on resnet8: 96 < 192 < 384 s); it also bounds memory. None = all N*B
    # samples in one pass: use it on a GPU, where batching is what makes the estimation fast.
    max_samples: int | None = Field(128, ge=1)
    # what stage estimate_sigma analyses
    n_images: int = Field(16, ge=1)  # test images, those with a foreground mask first (select_images)
    seed: Seed = 0  # same noise for every checkpoint and model (common random numbers)
    tap: Literal["stem", "stages", "preact", "pooled", "logits"] = "stages"
    index: int = -1  # which of Features.stages/preact
    mask_mode: Literal["any", "center", "nearest"] = "any"

    @property
    def target(self) -> float:
        if self.entropy_target is not None:
            return float(self.entropy_target)
        return entropy_target(self.sigma0, self.budget_ratio)

    @model_validator(mode="after")
    def _clamp_ordered(self):
        if not 0 < self.clamp[0] <= self.clamp[1]:
            raise ValueError(f"clamp must satisfy 0 < lo <= hi, got {list(self.clamp)}")
        return self


class KnowledgeParams(Section):
    """The ``knowledge`` section: how the report turns sigma maps into the knowledge metrics."""

    b: float = Field(0.2, gt=0)
    background: Literal["dataset", "per_image"] = "dataset"  # dataset (upstream, per checkpoint) | per_image
    empty: Literal["zero", "exclude"] = "zero"  # zero (upstream) | exclude
    skip_first: bool = False  # exclude checkpoint 0 from the peak search (upstream ResNets), offset fixed
    effect_filter: bool = False
    filter_min_epoch: int | None = None  # None: epochs >= 40/150 of the final epoch (upstream: 40 of 150)
    filter_top_frac: float | None = Field(None, gt=0, le=1)  # None: whole sets; 0.1 = upstream's Top10
    intersect_runs: bool = True  # compare two runs on the images valid in both
    center_box_frac: float = Field(1 / 6, ge=0, lt=0.5)  # foreground prior when the data has no masks (CIFAR)
    # Uncertainty over images: a paired bootstrap of each criterion's difference (explain.knowledge).
    bootstrap: int = Field(1000, ge=100)  # resamples of the analysed images
    level: float = Field(0.95, gt=0.5, lt=1)  # of the intervals; a criterion is decided when its excludes 0
    bootstrap_seed: Seed = 0
    flat_tol: float = Field(1.0, ge=0)  # an image's N_fg curve is flat when max - min <= this many concepts
