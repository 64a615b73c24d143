"""The preprocessing spec: the few numbers that travel with every model so serving reproduces the eval transform."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, model_validator

Interpolation = Literal["bilinear", "bicubic"]
Augment = Literal["trivialaugment", "randaugment", "none"]
AUGMENTS: tuple[Augment, ...] = ("trivialaugment", "randaugment", "none")


class PreprocessSpec(BaseModel):
    """Eval transform: short side to ``resize_size``, center crop ``crop_size``, scale to [0, 1], normalise."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    resize_size: int = Field(ge=16, le=4096, description="Short side after resizing, in pixels.")
    crop_size: int = Field(ge=16, le=4096, description="Side of the square center crop fed to the model.")
    mean: tuple[float, float, float] = Field(description="Per-channel RGB mean of [0, 1] pixels.")
    std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = Field(description="Per-channel RGB standard deviation.")
    interpolation: Interpolation = "bilinear"

    @model_validator(mode="after")
    def _crop_fits(self) -> PreprocessSpec:
        if self.crop_size > self.resize_size:
            raise ValueError(f"crop_size {self.crop_size} is larger than resize_size {self.resize_size}")
        return self

    def to_json(self) -> str:
        """Compact JSON form, stored with the model."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> PreprocessSpec:
        """Parse and validate the JSON form written by :meth:`to_json`."""
        return cls.model_validate_json(text)
