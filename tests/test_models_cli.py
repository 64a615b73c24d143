"""CLI smoke tests for ``pawfinder models``."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from pawfinder.cli import app

runner = CliRunner()


def test_models_list_json() -> None:
    result = runner.invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == [
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
        "mobilenet_v2",
    ]
    assert [r["name"] for r in rows if r["default"]] == ["efficientnet_lite0"]


def test_export_then_info(tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    result = runner.invoke(
        app, ["models", "export-onnx", "--backbone", "mobilenet_v2", "--no-pretrained", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "max |logit diff|" in result.output
    info = runner.invoke(app, ["models", "info", str(tmp_path)])
    assert info.exit_code == 0, info.output
    metadata = json.loads(info.output)
    assert (metadata["backbone"], len(metadata["labels"]), metadata["onnx_opset"]) == ("mobilenet_v2", 37, 17)


def test_clear_errors(tmp_path: Path) -> None:
    bad = runner.invoke(app, ["models", "export-onnx", "--backbone", "resnet50", "--out", str(tmp_path / "x.onnx")])
    assert bad.exit_code == 1
    assert "unknown backbone 'resnet50'" in bad.output
    missing = runner.invoke(app, ["models", "info", str(tmp_path / "missing.onnx")])
    assert missing.exit_code == 1
    assert "no model at" in missing.output
