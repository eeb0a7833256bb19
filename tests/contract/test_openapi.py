"""The HTTP API's OpenAPI document, as a reviewed snapshot: a change to the API shows up here as
a diff of ``openapi.json`` to review. Regenerate it with ``MLGATE_UPDATE_SNAPSHOTS=1``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest

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


def _validator(document: dict, name: str) -> jsonschema.Validator:
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                            "components": document["components"]})


@pytest.mark.parametrize("body, valid", [
    ({}, False),  # schema-valid before issue 13, and answered 400
    ({"instances": []}, False),
    ({"entities": []}, False),
    ({"instances": [{"a": 1}], "entities": [{"id": 1}]}, False),
    ({"instances": [{"a": 1}], "features": {"b": 2}}, False),
    ({"entities": [{}]}, False),
    ({"entities": [{"id": -1}]}, True),  # int64 keys: negative ids too
    ({"entities": [{"id": 2**63}]}, False),
    ({"entities": [{"id": "c-19"}]}, True),  # string keys
    ({"entities": [{"id": ""}]}, False),
    ({"entities": [{"id": "a\nb"}]}, False),
    ({"entities": [{"id": 1.5}]}, False),
    ({"instances": [{"a": 1e39}]}, False),
    ({"instances": [{"a": "1"}]}, False),
    ({"instances": [{"a": 1}], "timeout_ms": 0}, False),
    ({"instances": [{"a": 1}] * 1001}, False),  # limits.max_instances
    ({"instances": [{"a": 1.5, "b": True, "c": None}], "timeout_ms": 100}, True),
    ({"entities": [{"id": 1}, {"id": 2}], "features": [{"b": 1}, {"b": 2}]}, True),
    ({"entities": [{"id": 1}]}, True),
])
def test_the_predict_body_schema_allows_only_bodies_the_server_can_take(body, valid):
    assert _validator(current(), "PredictRequest").is_valid(body) is valid


def test_every_error_status_is_documented_with_the_error_body():
    for path, operations in current()["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                # readiness answers 503 with its own body, not an error
                if int(status) >= 400 and path != "/readyz" and not path.endswith("/ready"):
                    assert "ErrorResponse" in json.dumps(response), (method, path, status)
