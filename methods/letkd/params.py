"""The ``supervision`` section of params.yaml: how stage build_supervision builds letKD's targets."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.schema import Section, Seed


class SupervisionParams(Section):
    """Teacher-derived supervision (stage ``build_supervision``; Gorgun et al., BMVC 2023, Sec. 3.2).

    Defaults are the paper's CIFAR-100 values (k=4096, lda_dim=60); params.yaml sizes them for ``scenes``.
    """

    k: int = Field(4096, ge=1)  # k-means centroids of the teacher's last-stage locations
    iterations: int = Field(20, ge=1)  # k-means iterations (penultimate and per-class sub-classes)
    n_init: int = Field(1, ge=1)  # k-means restarts, best kept
    init: Literal["afkmc2", "kmeans++", "random"] = "afkmc2"  # k-means seeding (upstream: random)
    seed: Seed = 0
    inter_stage: int = -2  # index into the teacher's (and student's) Features.stages; not the last
    lda_dim: int = Field(60, ge=1)  # LDA components (<= min(channels, classes - 1))
    subclasses: int = Field(8, ge=1)  # k-means sub-classes per class
    penult_size: int = Field(0, ge=0)  # average-pool the last-stage map to this side first (0 = as is)
    inter_size: int = Field(0, ge=0)  # the same for the intermediate map
    batch_size: int = Field(256, ge=1)  # teacher feature-extraction batch
