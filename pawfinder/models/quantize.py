"""Post-training int8 quantisation of an exported PawFinder ONNX model (ONNX Runtime, static, QDQ format).

Weights are quantised per output channel (int8), activations per tensor (uint8) with ranges observed on a few
preprocessed calibration images. The model's metadata travels unchanged. Torch-free: it runs on ONNX files only.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from pawfinder.inference import INPUT_NAME
from pawfinder.models.onnx_files import read_metadata, write_model


class _Batches(CalibrationDataReader):
    """Feeds preprocessed float32 batches (N, 3, H, W) to the calibrator."""

    def __init__(self, batches: Iterable[np.ndarray]) -> None:
        self._batches: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: np.asarray(batch, dtype=np.float32)}


def quantize_int8(source: str | Path, target: str | Path, calibration: Iterable[np.ndarray]) -> Path:
    """Write the int8 version of the ONNX model ``source`` to ``target`` (atomically); returns ``target``.

    ``calibration`` yields preprocessed batches of representative images (a few per class are enough), e.g.
    :func:`pawfinder.preprocessing.numpy_ops.preprocessed_batches`.
    """
    source, target = Path(source), Path(target)
    metadata = read_metadata(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".quantize-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantized = Path(scratch) / "int8.onnx"
        quantize_static(
            str(prepared),
            str(quantized),
            _Batches(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        return write_model(onnx.load(str(quantized)), target, metadata)
