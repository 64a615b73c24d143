"""Reading and writing PawFinder ONNX files with their metadata (torch-free)."""

from __future__ import annotations

from pathlib import Path

import onnx

from pawfinder.files import atomic_file
from pawfinder.modelmeta import METADATA_KEY, ModelMetadata


def read_metadata(path: str | Path) -> ModelMetadata:
    """The :class:`ModelMetadata` stored in the ONNX file ``path`` (weights are not loaded)."""
    props = {prop.key: prop.value for prop in onnx.load(str(path), load_external_data=False).metadata_props}
    if METADATA_KEY not in props:
        raise ValueError(f"{path} has no {METADATA_KEY!r} metadata: export it with pawfinder.models.onnx_export")
    return ModelMetadata.from_json(props[METADATA_KEY])


def write_model(proto: onnx.ModelProto, path: str | Path, metadata: ModelMetadata) -> Path:
    """Stamp ``metadata`` into ``proto``, check it and write it to ``path`` atomically as one self-contained file."""
    onnx.helper.set_model_props(proto, {METADATA_KEY: metadata.to_json()})
    onnx.checker.check_model(proto)
    with atomic_file(path) as handle:
        handle.write(proto.SerializeToString())
    return Path(path)


def replace_metadata(source: str | Path, target: str | Path, metadata: ModelMetadata) -> Path:
    """Copy the model ``source`` to ``target`` with ``metadata`` instead of its own."""
    return write_model(onnx.load(str(source)), target, metadata)
