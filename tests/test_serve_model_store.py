"""Where serving gets its model when the registry is not there: pinned file, local copy, nothing (no Ray needed)."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import free_port
from PIL import Image

from pawfinder.settings import Settings
from serve.model_store import ModelRef, ModelStore
from serve.runtime import ModelRuntime


def _unreachable(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(home=tmp_path, mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}", **overrides)


def test_pinned_file_is_served_with_a_content_version(tmp_path: Path, tiny_onnx_model: Path) -> None:
    store = ModelStore(_unreachable(tmp_path, serve_model_path=tiny_onnx_model))
    ref = store.wanted()
    assert ref is not None and ref.path == tiny_onnx_model and ref.version.startswith("file-")
    assert store.wanted() == ref


def test_unreachable_registry_falls_back_to_the_last_version_served(tmp_path: Path, tiny_onnx_model: Path) -> None:
    store = ModelStore(_unreachable(tmp_path), timeout_s=1)
    assert store.wanted() is None  # nothing served yet, nothing to fall back on

    copy = store.root / "7" / "model.onnx"
    copy.parent.mkdir(parents=True)
    shutil.copy(tiny_onnx_model, copy)
    store.remember(ModelRef("pawfinder", "7", copy))
    assert store.wanted() == ModelRef("pawfinder", "7", copy)

    runtime = ModelRuntime(store, intra_op_threads=1)
    assert runtime.refresh() is True and runtime.current is not None and runtime.current.version == "7"
    assert runtime.refresh() is False  # same version: no reload
    (answer,) = runtime.predict([Image.new("RGB", (80, 60), "orange")], [2])
    assert answer.model_version == "7" and len(answer.prediction.top_k) == 2 and answer.batch_size == 1

    shutil.rmtree(copy.parent)
    assert store.last_served() is None  # a pointer to a deleted copy is not a model
