"""Metadata that travels inside every exported model (ONNX metadata_props key ``pawfinder``); torch-free."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pawfinder.breeds import by_label
from pawfinder.preprocessing.spec import PreprocessSpec

METADATA_KEY = "pawfinder"
MIN_ONNX_OPSET = 17


class ModelMetadata(BaseModel):
    """What a runtime needs besides the graph: labels in output order, preprocessing, calibration, OOD threshold."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Registered model name, e.g. 'pawfinder'.")
    backbone: str = Field(min_length=1)
    labels: list[str] = Field(min_length=2, description="Dataset label of each logit, in output order.")
    preprocessing: PreprocessSpec
    temperature: float = Field(1.0, gt=0, description="Softmax temperature fitted on validation data.")
    ood_threshold: float = Field(0.0, ge=0, le=1, description="Minimum calibrated max-probability to call it a pet.")
    embedding_dim: int = Field(gt=0)
    onnx_opset: int = Field(ge=MIN_ONNX_OPSET)
    extra: dict[str, Any] = Field(default_factory=dict, description="Free-form provenance (run id, metrics, ...).")

    @field_validator("labels")
    @classmethod
    def _known_unique_labels(cls, labels: list[str]) -> list[str]:
        for label in labels:
            try:
                by_label(label)
            except KeyError as exc:
                raise ValueError(exc.args[0]) from None
        if len(set(labels)) != len(labels):
            raise ValueError("labels must be unique")
        return labels

    def to_json(self) -> str:
        """Compact JSON form stored in the model file."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelMetadata:
        """Parse and validate the JSON form written by :meth:`to_json`."""
        return cls.model_validate_json(text)
