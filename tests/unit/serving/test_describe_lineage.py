"""``GET /v1/models/{name}`` with lineage: each serving variant's version, lineage tags, metrics
and approval from a fake registry; a failing registry or no Redis gives nulls, never a 500; a
caller that may not see versions gets none of it."""

from __future__ import annotations

import asyncio

import httpx

from observability.metrics import GatewayMetrics
from serving.http.app import build_app
from serving.lineage import LineageCache
from serving.models import InProcessModel, ModelTable
from serving.pipeline import Pipeline
from serving.schemas import ModelDetail
from serving.settings import Settings
from tests.unit.conftest import ToyRuntime

LINEAGE = {"trigger": "drift", "parent_version": "2", "data_snapshot": {"sources": {}},
           "feature_views": {"v": "abcd1234"}, "drift": {"psi": {"x": 0.4}},
           "metrics": {"auc": 0.91}, "approved_by": "ana"}


def describe(fetch, host: str | None = None) -> dict:
    settings = Settings(models=[{"name": "toy"}])
    metrics = GatewayMetrics()
    calls = []

    def counted(model, version):
        calls.append((model, version))
        return fetch(model, version)

    async def main():
        table = ModelTable(settings, metrics, lambda m: InProcessModel(ToyRuntime(), metrics), retry_initial_s=0.01)
        table.start()
        await asyncio.wait_for(table.wait_ready(), 5)
        app = build_app(Pipeline(settings, table, metrics), host=host, lineage=LineageCache(counted))
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            try:
                first = await client.get("/v1/models/toy")
                await client.get("/v1/models/toy")
                return first, calls
            finally:
                table.close()

    return asyncio.run(main())


def test_trusted_callers_see_each_variant_lineage_cached_per_version():
    response, calls = describe(lambda model, version: LINEAGE)
    assert response.status_code == 200
    body = response.json()
    ModelDetail.model_validate(body)
    # the toy loads v3 for every variant (the default canary too): one registry call for both
    assert [v["variant"] for v in body["variants"]] == ["champion", "canary"]
    assert body["variants"][0] == {"variant": "champion", "version": "3", "alias": "champion", **LINEAGE}
    assert body["drift"] is None  # no online store here
    assert calls == [("toy", "3")]  # the second variant and describe came from the cache


def test_a_failing_registry_degrades_to_nulls():
    def down(model, version):
        raise ConnectionError("registry down")

    response, _ = describe(down)
    assert response.status_code == 200
    assert response.json()["variants"][0] == {"variant": "champion", "version": "3", "alias": "champion"}


def test_callers_that_may_not_see_versions_get_no_lineage():
    response, calls = describe(lambda model, version: LINEAGE, host="0.0.0.0")
    assert response.status_code == 200
    assert "variants" not in response.json() and calls == []
