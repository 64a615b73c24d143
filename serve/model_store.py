"""Where the served model comes from: the registry alias, a local copy of every version served, or a pinned file.

Layout under ``<home>/serving/models/<name>/``: ``<version>/`` (the registered model folder: one ``*.onnx`` plus any
external-data files; downloads land in a temporary folder that is renamed into place, so a version folder is always
complete) and ``current.json`` (the last version served). With the copy on disk,
serving starts and keeps going while MLflow is unreachable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from pawfinder.inference import find_onnx_file
from pawfinder.settings import Settings

logger = logging.getLogger(__name__)

_POINTER = "current.json"


class RegistryUnavailableError(RuntimeError):
    """MLflow could not be asked (down, slow, or answering errors)."""


@dataclass(frozen=True)
class ModelRef:
    """A servable model version on local disk."""

    name: str
    version: str
    path: Path


class ModelStore:
    """Resolves which model to serve and keeps a local copy of it."""

    def __init__(self, settings: Settings, *, timeout_s: float = 5.0) -> None:
        self.name = settings.model_name
        self.alias = settings.serve_model_alias
        self.tracking_uri = str(settings.mlflow_tracking_uri)
        self.pinned = settings.serve_model_path
        self.root = settings.home / "serving" / "models" / self.name
        self.timeout_s = timeout_s

    def wanted(self) -> ModelRef | None:
        """The model to serve now: the pinned file if configured, else the alias's version (downloaded once), else,
        while the registry is unreachable or the alias unset, the last version served from local disk.
        """
        if self.pinned is not None:
            digest = hashlib.sha256(self.pinned.read_bytes()).hexdigest()[:12]
            return ModelRef(self.name, f"file-{digest}", self.pinned)
        try:
            version = self.resolve_alias()
            if version is not None:
                return self.fetch(version)
            logger.warning("registered model %s has no alias %r yet", self.name, self.alias)
        except RegistryUnavailableError as err:
            logger.warning("model registry unavailable (%s); using the local copy", err)
        return self.last_served()

    def resolve_alias(self) -> str | None:
        """The version the alias points to, ``None`` if the model or alias does not exist; fails fast when down."""
        url = f"{self.tracking_uri.rstrip('/')}/api/2.0/mlflow/registered-models/alias"
        try:
            response = httpx.get(url, params={"name": self.name, "alias": self.alias}, timeout=self.timeout_s)
        except httpx.HTTPError as err:
            raise RegistryUnavailableError(f"{self.tracking_uri}: {err!r}") from err
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise RegistryUnavailableError(f"{url} answered {response.status_code}: {response.text[:200]}")
        return str(response.json()["model_version"]["version"])

    def fetch(self, version: str) -> ModelRef:
        """The local copy of ``version``, downloaded from the registry first if needed."""
        target = self.root / version
        if not target.exists():
            self._download(version, target)
        return ModelRef(self.name, version, find_onnx_file(target))

    def remember(self, ref: ModelRef) -> None:
        """Record ``ref`` as the version being served (atomic write)."""
        self.root.mkdir(parents=True, exist_ok=True)
        partial = self.root / f".{_POINTER}.partial"
        partial.write_text(json.dumps({"name": ref.name, "version": ref.version, "path": str(ref.path)}))
        partial.replace(self.root / _POINTER)

    def last_served(self) -> ModelRef | None:
        """The version recorded by :meth:`remember`, if its file is still there."""
        pointer = self.root / _POINTER
        if not pointer.exists():
            return None
        record = json.loads(pointer.read_text())
        path = Path(record["path"])
        return ModelRef(record["name"], record["version"], path) if path.exists() else None

    def _download(self, version: str, target: Path) -> None:
        import mlflow.artifacts  # heavy imports, only needed when a new version appears
        from mlflow import MlflowClient

        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".download-{version}-", dir=self.root))
        try:
            # Resolve the artifact location with an explicit client: a ``models:/`` URI would be looked up in the
            # process-wide default registry, not ``registry_uri``.
            client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
            mlflow.artifacts.download_artifacts(
                artifact_uri=client.get_model_version_download_uri(self.name, version),
                dst_path=str(staging),
                tracking_uri=self.tracking_uri,
            )
            find_onnx_file(staging).parent.replace(target)  # the folder holding the .onnx and its external data
        except Exception as err:  # MLflow raises many types for network and storage failures
            raise RegistryUnavailableError(f"could not download {self.name} version {version}: {err!r}") from err
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("downloaded %s version %s to %s", self.name, version, target)
