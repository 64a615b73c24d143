"""Export a :class:`PawNet` to ONE self-contained ONNX file with its :class:`ModelMetadata`, and check parity."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from pawfinder.breeds import LABELS
from pawfinder.inference import INPUT_NAME, OUTPUT_NAMES, OnnxClassifier
from pawfinder.modelmeta import MIN_ONNX_OPSET, ModelMetadata
from pawfinder.models.backbones import PawNet
from pawfinder.models.onnx_files import write_model

DEFAULT_OPSET = 17


class _LogitsAndEmbedding(nn.Module):
    """Graph outputs in contract order: ``logits``, ``embedding``."""

    def __init__(self, model: PawNet):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_with_embedding(image)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def metadata_for(
    model: PawNet,
    name: str,
    *,
    opset: int = DEFAULT_OPSET,
    temperature: float = 1.0,
    ood_threshold: float = 0.0,
    extra: dict[str, Any] | None = None,
) -> ModelMetadata:
    """The metadata describing ``model`` (labels = the 37 breeds in output order, default preprocessing)."""
    return ModelMetadata(
        name=name,
        backbone=model.backbone_name,
        labels=list(LABELS[: model.num_classes]),
        preprocessing=model.default_spec(),
        temperature=temperature,
        ood_threshold=ood_threshold,
        embedding_dim=model.embedding_dim,
        onnx_opset=opset,
        extra=extra or {},
    )


def _check_consistent(model: PawNet, metadata: ModelMetadata, opset: int) -> None:
    problems = []
    if opset < MIN_ONNX_OPSET:
        problems.append(f"opset {opset} < {MIN_ONNX_OPSET}")
    if metadata.onnx_opset != opset:
        problems.append(f"metadata.onnx_opset {metadata.onnx_opset} != opset {opset}")
    if len(metadata.labels) != model.num_classes:
        problems.append(f"{len(metadata.labels)} labels for {model.num_classes} logits")
    if metadata.embedding_dim != model.embedding_dim:
        problems.append(f"metadata.embedding_dim {metadata.embedding_dim} != model's {model.embedding_dim}")
    if metadata.backbone != model.backbone_name:
        problems.append(f"metadata.backbone {metadata.backbone!r} != model's {model.backbone_name!r}")
    if problems:
        raise ValueError("cannot export: " + "; ".join(problems))


def export_onnx(model: PawNet, path: str | Path, metadata: ModelMetadata, *, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``model`` (eval mode) to ``path`` as one ONNX file: input ``image`` (N, 3, H, W) with a dynamic batch,
    outputs ``logits`` and ``embedding``, weights inside the file, ``metadata`` JSON under metadata_props key
    ``pawfinder``. The file appears atomically. Returns the path."""
    _check_consistent(model, metadata, opset)
    size = metadata.preprocessing.crop_size
    example = torch.zeros(2, 3, size, size)
    buffer = io.BytesIO()
    with _eval_mode(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is chosen on purpose
        torch.onnx.export(
            _LogitsAndEmbedding(model),
            (example,),
            buffer,
            dynamo=False,  # TorchScript exporter: no onnxscript dependency, weights always embedded
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
            opset_version=opset,
            do_constant_folding=True,
        )
    return write_model(onnx.load_from_string(buffer.getvalue()), path, metadata)


def onnx_parity(model: PawNet, path: str | Path, batch: torch.Tensor | np.ndarray) -> float:
    """Max |logit difference| between ``model`` in eval mode and the exported file run by :class:`OnnxClassifier`."""
    inputs = torch.as_tensor(np.asarray(batch, dtype=np.float32))
    with _eval_mode(model), torch.no_grad():
        expected = model(inputs).numpy()
    logits, _ = OnnxClassifier.from_path(path, intra_op_threads=1).run(inputs.numpy())
    return float(np.abs(logits - expected).max())
