"""Smoke tests of `pawfinder data ...` through Typer's CliRunner (settings from PAWFINDER_* variables)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import free_port
from datasets import make_tiny_dataset
from typer.testing import CliRunner

from pawfinder.cli import app
from pawfinder.data.download import OFFLINE_MESSAGE

runner = CliRunner()


@pytest.fixture
def dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = make_tiny_dataset(tmp_path / "pets", breeds=("Abyssinian", "pug"), per_breed=4, test_per_breed=2)
    monkeypatch.setenv("PAWFINDER_DATA_DIR", str(root))
    monkeypatch.setenv("PAWFINDER_WORKERS", "1")
    monkeypatch.setenv("PAWFINDER_PREPARE_SHORT_SIDE", "48")
    return root


@pytest.mark.parametrize("command", ["data", "data download", "data verify", "data prepare", "data stats"])
def test_help(command: str) -> None:
    result = runner.invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_stats_json(dataset: Path) -> None:
    (dataset / "images" / "pug_6.jpg").write_bytes(b"")
    result = runner.invoke(app, ["data", "stats", "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["classes"] == 2
    assert stats["images"] == 12
    assert stats["splits"] == {"trainval": 8, "val": 2, "test": 4}
    assert stats["per_breed"]["Abyssinian"] == {"trainval": 4, "val": 1, "test": 2}
    assert [bad["image"] for bad in stats["bad_files"]] == ["pug_6"]


def test_verify_json_and_strict(dataset: Path) -> None:
    result = runner.invoke(app, ["data", "verify", "--json", "--no-progress", "--strict"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["ok"] == 12

    (dataset / "images" / "Abyssinian_2.jpg").write_bytes(b"GIF89a broken")
    result = runner.invoke(app, ["data", "verify", "--no-progress", "--strict"])
    assert result.exit_code == 1
    assert "Abyssinian_2.jpg: truncated" in result.output


def test_prepare_twice(dataset: Path) -> None:
    first = runner.invoke(app, ["data", "prepare", "--json", "--no-progress"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["processed"] == 12
    second = runner.invoke(app, ["data", "prepare", "--no-progress"])
    assert second.exit_code == 0, second.output
    assert "0 processed, 12 unchanged" in second.output


def test_missing_dataset_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAWFINDER_DATA_DIR", str(tmp_path / "nowhere"))
    for command in ("verify", "prepare", "stats"):
        result = runner.invoke(app, ["data", command, "--no-progress"])
        assert result.exit_code == 1
        assert "PAWFINDER_DATA_DIR" in result.output


def test_download_offline_and_already_present(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = runner.invoke(app, ["data", "download", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "nothing to download" in result.output

    monkeypatch.setenv("PAWFINDER_DATA_DIR", str(dataset.parent / "empty"))
    monkeypatch.setenv("PAWFINDER_DATASET_URLS", json.dumps([f"http://127.0.0.1:{free_port()}/pets"]))
    result = runner.invoke(app, ["data", "download", "--no-progress"])
    assert result.exit_code == 2
    assert OFFLINE_MESSAGE in result.output
