"""The gateway's and the CLI's conversation with the MLflow registry about rollouts.

Governance rule for promotion: a version may become ``champion`` only if it carries the tag
``mlgate.approved_by`` (who approved it; ``mlgate rollout approve`` sets it, or set it in the
MLflow UI) and no ``mlgate.rollback`` tag (the record an automatic rollback leaves on it).

Approval also pins what was approved: ``approve`` downloads the version's artifacts and records
their SHA-256 digest in ``mlgate.artifact_sha256``; gateways refuse a version whose artifacts
no longer have it (serving/runtime/loader.py). A version approved in the MLflow UI carries no
digest and loads unchecked, unless ``registry.require_digest`` is on.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from serving.canary import Breach
from serving.errors import RolloutConflict
from serving.runtime.artifacts import ARTIFACT_SHA256, artifact_digest
from serving.runtime.loader import download, resolve_version
from serving.settings import ModelSettings

APPROVED_BY = "mlgate.approved_by"
ROLLBACK = "mlgate.rollback"
PROMOTED = "mlgate.promoted"
ADMIN_CHANGE = "mlgate.last_admin_change"
CHAMPION_ALIAS = "champion"


class Registry:
    """An MlflowClient made once per process, on first use (opening a SQL store is slow)."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                from mlflow import MlflowClient

                self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
            return self._client

    def resolve(self, model: ModelSettings) -> str:
        """The version a model reference points at now (ModelValidationError: nowhere)."""
        return resolve_version(self.client, model)[0]

    def lineage(self, model: str, version: str) -> dict[str, Any]:
        """What ``GET /v1/models/{name}`` shows of a version: its lineage tags, its run's
        metrics, who approved it (blocking: call it from a thread)."""
        from serving import lineage

        found = self.client.get_model_version(model, version)
        tags = dict(found.tags or {})
        metrics = dict(self.client.get_run(found.run_id).data.metrics) if found.run_id else {}
        return {**lineage.read(tags), "metrics": metrics, "approved_by": tags.get(APPROVED_BY)}

    def record_rollback(self, model: str, version: str, breach: Breach) -> None:
        if version.isdigit():
            note = {"check": breach.check, "detail": breach.detail, "at": _now()}
            self.client.set_model_version_tag(model, version, ROLLBACK, json.dumps(note))

    def record_admin_change(self, model: str, version: str, record: dict[str, Any]) -> None:
        """The last admin change of a model's rollout, on the version whose traffic it moved."""
        self.client.set_model_version_tag(model, version, ADMIN_CHANGE, json.dumps(record))

    def approve(self, model: str, version: str, by: str) -> str:
        """Record the digest of the version's artifacts, then who approved it; the digest."""
        self.client.get_model_version(model, version)  # fails for a version that does not exist
        with tempfile.TemporaryDirectory(prefix="mlgate-approve-") as tmp:
            digest = artifact_digest(download(self.tracking_uri, model, version, Path(tmp)))
        # Digest first: an approved version always carries the digest of what was approved.
        self.client.set_model_version_tag(model, version, ARTIFACT_SHA256, digest)
        self.client.set_model_version_tag(model, version, APPROVED_BY, by)
        return digest

    def promote(self, model: str, version: str, force: bool = False) -> None:
        """Point ``champion`` at ``version`` if the governance rule allows it."""
        tags = dict(self.client.get_model_version(model, version).tags or {})
        if not tags.get(APPROVED_BY):
            raise RolloutConflict(f"{model} v{version} is not approved (tag {APPROVED_BY} is missing): "
                                  f"run `mlgate rollout approve --version {version} --by <you>`")
        if ROLLBACK in tags and not force:
            raise RolloutConflict(f"{model} v{version} was rolled back automatically "
                                  f"({json.loads(tags[ROLLBACK]).get('check')}); pass --force to promote it anyway")
        self.client.set_registered_model_alias(model, CHAMPION_ALIAS, version)
        self.client.set_model_version_tag(model, version, PROMOTED, _now())


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
