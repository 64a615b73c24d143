"""The MLflow model registry with aliases (never the deprecated stages): register, resolve, promote, roll back.

Every training registers a new version with alias ``challenger``. ``champion`` moves only through :func:`promote`
(accuracy gate + ONNX smoke prediction) or :func:`rollback`; both record who, when and why as version tags.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from pawfinder.evaluation import load_model, smoke_check
from pawfinder.settings import Settings

CHAMPION = "champion"
CHALLENGER = "challenger"
GATE_METRIC = "test_top1"
DEFAULT_TOLERANCE = 0.005

#: Version tags written by promote/rollback.
PROMOTED_BY, PROMOTED_AT, PROMOTION_REASON = "promoted_by", "promoted_at", "promotion_reason"
PREVIOUS_CHAMPION, PROMOTION_GATE = "previous_champion", "promotion_gate"
ROLLED_BACK_BY, ROLLED_BACK_AT, ROLLBACK_REASON = "rolled_back_by", "rolled_back_at", "rollback_reason"

#: Computes the gate metric of a version that has none recorded: ``(name, version) -> test top-1`` or ``None``.
Evaluator = Callable[[str, str], float | None]


class RegistryError(RuntimeError):
    """A registry operation that failed or was refused; the message says what to do next."""


class PromotionRefused(RegistryError):
    """The accuracy gate or the smoke prediction refused the candidate."""


@dataclass(frozen=True)
class PromotionResult:
    """What :func:`promote` did."""

    name: str
    version: str
    previous_champion: str | None
    candidate_top1: float | None
    champion_top1: float | None
    gate: str  # "passed", "first_champion" or "forced"
    reason: str
    promoted_by: str
    promoted_at: str


@dataclass(frozen=True)
class RollbackResult:
    """What :func:`rollback` did: ``restored`` is champion again, ``demoted`` no longer is."""

    name: str
    restored: str
    demoted: str
    by: str
    at: str


def registry_client(settings: Settings) -> MlflowClient:
    """A client for the tracking server and registry of ``settings``."""
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)


def register(
    model_uri: str,
    name: str,
    tags: Mapping[str, Any] | None = None,
    *,
    client: MlflowClient,
    alias: str | None = CHALLENGER,
) -> ModelVersion:
    """Register ``model_uri`` as a new version of ``name`` with ``tags``, and point ``alias`` at it.

    ``model_uri`` is what ``mlflow.onnx.log_model`` returned (``models:/<model_id>``) or a ``runs:/`` URI.
    """
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    run_id = model_uri.removeprefix("runs:/").split("/", 1)[0] if model_uri.startswith("runs:/") else None
    version = client.create_model_version(
        name,
        source=model_uri,
        run_id=run_id,
        tags={key: str(value) for key, value in (tags or {}).items()},
        model_id=model_id,
    )
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return client.get_model_version(name, version.version)


def set_alias(name: str, alias: str, version: str, *, client: MlflowClient) -> None:
    """Point ``alias`` at ``version`` (moving it away from any other version)."""
    get_version(name, version, client=client)
    client.set_registered_model_alias(name, alias, version)


def resolve(name: str, alias: str, *, client: MlflowClient) -> ModelVersion | None:
    """The version ``alias`` points at, or ``None`` when the alias (or the model) does not exist."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if err.error_code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return None
        raise


def get_version(name: str, version: str, *, client: MlflowClient) -> ModelVersion:
    """One version; a clear :class:`RegistryError` when it does not exist."""
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(
                f"model {name!r} has no version {version}; see the versions with `pawfinder registry list`"
            ) from err
        raise


def list_versions(name: str, *, client: MlflowClient) -> list[ModelVersion]:
    """All versions of ``name``, newest first (with aliases and tags); empty when the model is not registered."""
    versions = client.search_model_versions(f"name = '{name}'")
    # search results may omit aliases: take them from the registered model
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    for version in versions:
        version.aliases = sorted(by_version.get(version.version, []))
    return sorted(versions, key=lambda v: int(v.version), reverse=True)


def gate_metric(version: ModelVersion, *, client: MlflowClient, key: str = GATE_METRIC) -> float | None:
    """The recorded ``key`` of a version: its version tag, else its source run's metric, else ``None``."""
    if key in version.tags:
        return float(version.tags[key])
    if version.run_id:
        try:
            metrics = client.get_run(version.run_id).data.metrics
        except MlflowException:
            return None
        if key in metrics:
            return float(metrics[key])
    return None


def promote(
    name: str,
    version: str | None = None,
    *,
    client: MlflowClient,
    force: bool = False,
    reason: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    evaluator: Evaluator | None = None,
    user: str | None = None,
) -> PromotionResult:
    """Move ``champion`` to ``version`` (default: the current ``challenger``) if the gate passes.

    Gate: the candidate's test top-1 is not below the champion's by more than ``tolerance`` (a missing figure is
    computed with ``evaluator`` when given), and one generated image runs through the candidate's ONNX model.
    ``force`` (which requires ``reason``) skips the accuracy gate, never the smoke prediction. The first champion
    needs no comparison. Raises :class:`PromotionRefused` or :class:`RegistryError` with the next step to take.
    """
    if force and not (reason and reason.strip()):
        raise RegistryError("--force bypasses the accuracy gate and needs --reason TEXT saying why")
    candidate = _candidate(name, version, client=client)
    champion = resolve(name, CHAMPION, client=client)
    if champion is not None and champion.version == candidate.version:
        raise RegistryError(f"version {candidate.version} of {name!r} is already the champion; nothing to do")
    candidate_top1 = gate_metric(candidate, client=client)
    champion_top1 = gate_metric(champion, client=client) if champion else None
    if champion is None:
        gate = "first_champion"
    elif force:
        gate = "forced"
    else:
        if evaluator is not None:
            candidate_top1 = candidate_top1 if candidate_top1 is not None else evaluator(name, candidate.version)
            champion_top1 = champion_top1 if champion_top1 is not None else evaluator(name, champion.version)
        _check_accuracy(candidate, champion, candidate_top1, champion_top1, tolerance)
        gate = "passed"
    _smoke(name, candidate.version, client)

    at = _utc_now()
    by = user or getpass.getuser()
    why = (reason or "").strip() or _default_reason(gate, candidate_top1, champion, champion_top1)
    tags = {PROMOTED_BY: by, PROMOTED_AT: at, PROMOTION_REASON: why, PROMOTION_GATE: gate}
    if champion is not None:
        tags[PREVIOUS_CHAMPION] = champion.version
    elif PREVIOUS_CHAMPION in candidate.tags:
        client.delete_model_version_tag(name, candidate.version, PREVIOUS_CHAMPION)
    for key, value in tags.items():
        client.set_model_version_tag(name, candidate.version, key, value)
    client.set_registered_model_alias(name, CHAMPION, candidate.version)
    if CHALLENGER in candidate.aliases:
        client.delete_registered_model_alias(name, CHALLENGER)
    return PromotionResult(
        name=name,
        version=candidate.version,
        previous_champion=champion.version if champion else None,
        candidate_top1=candidate_top1,
        champion_top1=champion_top1,
        gate=gate,
        reason=why,
        promoted_by=by,
        promoted_at=at,
    )


def rollback(name: str, *, client: MlflowClient, reason: str | None = None, user: str | None = None) -> RollbackResult:
    """Give ``champion`` back to the version it replaced (tag ``previous_champion``) and record it on both versions.

    Repeated rollbacks walk further back, as each champion remembers its own predecessor.
    """
    champion = resolve(name, CHAMPION, client=client)
    if champion is None:
        raise RegistryError(f"{name!r} has no champion to roll back; promote one with `pawfinder promote VERSION`")
    previous_version = champion.tags.get(PREVIOUS_CHAMPION)
    if not previous_version:
        raise RegistryError(
            f"champion version {champion.version} of {name!r} has no previous champion recorded (it was the first); "
            "to replace it, promote another version: `pawfinder promote VERSION --force --reason TEXT`"
        )
    try:
        previous = get_version(name, previous_version, client=client)
    except RegistryError as err:
        raise RegistryError(
            f"the previous champion, version {previous_version}, no longer exists; "
            "promote another version instead: `pawfinder promote VERSION --force --reason TEXT`"
        ) from err
    at = _utc_now()
    by = user or getpass.getuser()
    why = (reason or "").strip() or "manual rollback"
    for key, value in {ROLLED_BACK_BY: by, ROLLED_BACK_AT: at, ROLLBACK_REASON: why}.items():
        client.set_model_version_tag(name, champion.version, key, value)
    restored_tags = {
        PROMOTED_BY: by,
        PROMOTED_AT: at,
        PROMOTION_REASON: f"rollback from version {champion.version}: {why}",
        PROMOTION_GATE: "rollback",
    }
    for key, value in restored_tags.items():
        client.set_model_version_tag(name, previous.version, key, value)
    client.set_registered_model_alias(name, CHAMPION, previous.version)
    return RollbackResult(name=name, restored=previous.version, demoted=champion.version, by=by, at=at)


def _candidate(name: str, version: str | None, *, client: MlflowClient) -> ModelVersion:
    if version is not None:
        return get_version(name, version, client=client)
    challenger = resolve(name, CHALLENGER, client=client)
    if challenger is None:
        raise RegistryError(
            f"{name!r} has no {CHALLENGER!r} version: train one first, or name the version: `pawfinder promote VERSION`"
        )
    return challenger


def _check_accuracy(
    candidate: ModelVersion,
    champion: ModelVersion,
    candidate_top1: float | None,
    champion_top1: float | None,
    tolerance: float,
) -> None:
    for version, value in ((candidate, candidate_top1), (champion, champion_top1)):
        if value is None:
            raise PromotionRefused(
                f"version {version.version} has no {GATE_METRIC} recorded: run `pawfinder evaluate --model-uri "
                f"models:/{version.name}/{version.version} --data-dir DIR --split test --log-to-mlflow` "
                "(or set PAWFINDER_DATA_DIR so promote evaluates it), or bypass with --force --reason TEXT"
            )
    assert candidate_top1 is not None and champion_top1 is not None
    if candidate_top1 < champion_top1 - tolerance:
        raise PromotionRefused(
            f"version {candidate.version} has test top-1 {candidate_top1:.4f}, worse than champion version "
            f"{champion.version} ({champion_top1:.4f}) by more than the tolerance {tolerance:.4f}; "
            "keep the champion, train a better model, or bypass with --force --reason TEXT"
        )


def _smoke(name: str, version: str, client: MlflowClient) -> None:
    uri = f"models:/{name}/{version}"
    try:
        model, _ = load_model(uri, tracking_uri=client.tracking_uri)
        smoke_check(model)
    except Exception as err:  # any failure to load or run the model must block the promotion
        raise PromotionRefused(
            f"the ONNX smoke prediction of {uri} failed ({err}); this version cannot be promoted, even with --force"
        ) from err


def _default_reason(gate: str, candidate_top1: float | None, champion: ModelVersion | None, top1: float | None) -> str:
    if champion is None:
        return "first champion"
    return f"gate {gate}: test_top1 {_fmt(candidate_top1)} vs champion version {champion.version} {_fmt(top1)}"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
