"""The ``data`` section of params.yaml: which dataset ``prepare_data`` builds, and how."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from core.schema import Section, Seed


class ScenesParams(Section):
    """The embedded ``scenes`` dataset (digits over clutter); see dataset/scenes.py."""

    n_train: int = Field(4000, ge=10)
    n_test: int = Field(1000, ge=10)
    image_size: int = Field(32, ge=16, le=128)
    digit_size: tuple[int, int] = (12, 18)
    clutter: float = Field(0.35, ge=0.0, le=1.0)
    fragments: int = Field(4, ge=0, le=32)
    noise: float = Field(0.08, ge=0.0, le=1.0)
    test_fraction: float = Field(0.3, gt=0.0, lt=1.0)
    seed: Seed = 0

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
    masks: str | None = None  # folder: a PNG tree or a CSV of boxes, inside root (dataset/folder.py)
    # folder: the most pixels one image or mask may decode to (a JPEG's after its reduced-scale draft);
    # larger files are skipped unread. A small PNG can inflate to gigabytes, up to 8 decode at once, and
    # each is squashed to image_size anyway; 64 MP passes camera photos up to 61 MP (24 MP is common),
    # and larger JPEGs pass too since they decode at a reduced scale.
    # At least 1 MP, so ordinary photos always pass; at most what Pillow itself opens (2 x its
    # Image.MAX_IMAGE_PIXELS, ~179 MP), as a higher cap could never take effect.
    max_pixels: int = Field(64_000_000, ge=1_000_000, le=178_000_000)
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
