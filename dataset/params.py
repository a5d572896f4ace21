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
    name: Literal["scenes", "cifar10", "cifar100", "folder", "imagenet"] = "scenes"
    # cifar*: torchvision's files; folder: train/<class>/*, test/<class>/*; imagenet: train/<wnid>/*, val/<wnid>/*
    root: str = "data/downloads"
    download: bool = False
    image_size: int = Field(32, ge=8, le=512)  # folder, imagenet: the side of every view a network is given
    # memory: decoded once into data/prepared; stream: an index of the files, views decoded while training
    # (dataset/stream.py). null: the dataset's own (imagenet streams, the others are held in memory).
    storage: Literal["memory", "stream"] | None = None
    # Streamed data: DataLoader processes decoding views (0: in the stage's process); prepare_data's threads
    # checking files. The views do not depend on it, so the training stages do not declare it (dvc.yaml).
    workers: int = Field(4, ge=0, le=64)
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

    @model_validator(mode="after")
    def _storage_fits(self):
        if self.storage == "stream" and self.name not in ("folder", "imagenet"):
            raise ValueError(f"storage: {self.name} is prepared in memory; only folder and imagenet stream")
        if self.storage == "memory" and self.name == "imagenet":
            raise ValueError("storage: imagenet (~190 GB as uint8 at 224 px) does not fit in memory; set "
                             "data.storage: stream or null")
        if self.streams and self.masks is not None:
            raise ValueError("masks: a streamed folder carries no masks; set data.storage: memory or data.masks: null")
        return self

    @property
    def streams(self) -> bool:
        """Whether ``prepare_data`` writes an index of image files (streamed while training), not pixels."""
        return self.storage == "stream" or (self.storage is None and self.name == "imagenet")
