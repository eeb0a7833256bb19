"""The HTTP API's OpenAPI document, as a reviewed snapshot: a change to the API shows up here as
a diff of ``openapi.json`` to review. Regenerate it with ``MLGATE_UPDATE_SNAPSHOTS=1``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from observability.metrics import GatewayMetrics
from serving.http.app import build_app
from serving.models import ModelTable
from serving.pipeline import Pipeline
from serving.settings import Settings

SNAPSHOT = Path(__file__).with_name("openapi.json")


def current() -> dict:
    settings = Settings(models=[{"name": "any-model"}])
    metrics = GatewayMetrics()
    table = ModelTable(settings, metrics, factory=lambda _: None)  # never started: no model needed
    return build_app(Pipeline(settings, table, metrics)).openapi()


def test_the_openapi_document_matches_the_reviewed_snapshot():
    document = json.loads(json.dumps(current()))  # tuples as lists, as a client sees it
    if os.environ.get("MLGATE_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    assert document == json.loads(SNAPSHOT.read_text()), \
        "the API changed: review it, then MLGATE_UPDATE_SNAPSHOTS=1 pytest tests/contract"
