"""ModelTable's supervisors: a registry that cannot answer delays a version, never refuses it;
models added and removed while serving (a newly applied repository's)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

from observability.metrics import GatewayMetrics
from serving.errors import ModelNotFound, ModelNotReady, ModelValidationError
from serving.models import InProcessModel, ModelTable
from serving.routing import CANARY, CHAMPION
from serving.runtime.loader import resolve_version
from serving.settings import ModelSettings, Settings
from tests.unit.conftest import ToyRuntime, make_spec


class FlakyRegistry:
    """An MLflow client whose first answers are failures to answer, then v3 of ``toy``."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.calls = 0

    def get_model_version(self, name, version="3"):
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return type("MV", (), {"version": 3, "tags": {}})()

    def get_model_version_by_alias(self, name, alias):
        return self.get_model_version(name)


def run_table(factory, resolver=None, wait_s=0.3):
    """Start a table for model ``toy`` (champion only), let it work ``wait_s``; its champion."""
    settings = Settings(models=[{"name": "toy", "routing": {"canary": None}}],
                        registry={"poll_s": 0.01})
    metrics = GatewayMetrics()

    async def main():
        table = ModelTable(settings, metrics, lambda m: InProcessModel(factory(m), metrics),
                           resolver=resolver, retry_initial_s=0.01, retry_max_s=0.02)
        table.start()
        await asyncio.sleep(wait_s)
        champion = table.state("toy")
        state = (champion.version, set(champion.rejected), champion.error)
        table.close()
        return state

    return asyncio.run(main())


def test_a_registry_that_fails_twice_delays_the_version_and_rejects_nothing():
    registry = FlakyRegistry(MlflowException("database is locked", error_code=TEMPORARILY_UNAVAILABLE),
                             requests.ConnectionError("connection refused"))

    def factory(model):  # what load_model does first: ask the registry
        version, _, _ = resolve_version(registry, model)
        return ToyRuntime(make_spec(version=version))

    version, rejected, error = run_table(factory, resolver=lambda m: "3")
    assert registry.calls == 3
    assert (version, rejected, error) == ("3", set(), None)


def test_a_resolver_that_cannot_reach_the_registry_is_retried():
    registry = FlakyRegistry(MlflowException("API request to http://mlflow failed with exception "
                                             "HTTPConnectionPool: Max retries exceeded"),
                             TimeoutError("timed out"))
    version, rejected, _ = run_table(lambda m: ToyRuntime(make_spec(version="3")),
                                     resolver=lambda m: resolve_version(registry, m)[0])
    assert registry.calls >= 3 and (version, rejected) == ("3", set())


def test_a_validation_failure_still_rejects_the_version_for_good():
    calls = []

    def factory(model):
        calls.append(model.version)
        raise ModelValidationError("scoring the input example failed: boom")

    version, rejected, error = run_table(factory, resolver=lambda m: "3")
    assert calls == ["3"]  # polled many times since, never loaded again
    assert (version, rejected, error) == (None, {"3"}, "scoring the input example failed: boom")


# -- models added and removed while serving (a newly applied repository) -------------------------

def serve(scenario, models=("toy",), routing=None):
    """Run ``scenario(table, metrics, closing)`` over a table of ``models`` (champions, plus a
    canary per ``routing``) whose backends are toy runtimes named after their model, polling a
    registry where every alias points at v3; ``closing``
    collects the backends handed over to be closed once calls in flight are done."""
    settings = Settings(registry={"poll_s": 0.01})
    metrics = GatewayMetrics()
    closing: list = []

    def factory(model):
        return InProcessModel(ToyRuntime(make_spec(name=model.name, version=model.version or "3")), metrics)

    async def main():
        served = [ModelSettings(name=name, routing=routing or {}) for name in models]
        table = ModelTable(settings, metrics, factory, resolver=lambda m: m.version or "3", retry_initial_s=0.01,
                           models=served)
        table._close_later = closing.append  # instead of closing 30 s later
        table.start()
        try:
            return await scenario(table, metrics, closing)
        finally:
            table.close()

    return asyncio.run(main())


async def loaded(table, name, variant=CHAMPION):
    for _ in range(200):
        backend = table.backend(name, variant)
        if backend is not None:
            return backend
        await asyncio.sleep(0.01)
    raise AssertionError(f"{name}/{variant} never loaded")


def ready(metrics, name):
    return metrics.registry.get_sample_value("mlgate_model_ready", {"model": name})


def test_the_models_given_are_served_instead_of_the_settings():
    async def scenario(table, metrics, _):
        await asyncio.wait_for(table.wait_ready(), 5)
        return table.names(), table.get("churn").spec.name

    assert serve(scenario, models=("churn",)) == (["churn"], "churn")


def test_a_model_added_while_serving_loads_and_serves():
    async def scenario(table, metrics, _):
        await asyncio.wait_for(table.wait_ready(), 5)
        assert "churn" not in table and ready(metrics, "churn") is None
        table.add(ModelSettings(name="churn"))
        assert "churn" in table and table.readiness() == (False, {"toy": True, "churn": False})
        assert ready(metrics, "churn") == 0
        with pytest.raises(ModelNotReady):
            table.get("churn")
        await asyncio.wait_for(table.wait_ready(), 5)
        assert table.get("churn").spec.name == "churn" and ready(metrics, "churn") == 1
        assert table.readiness() == (True, {"toy": True, "churn": True})
        with pytest.raises(ValueError, match="'churn' is served already"):
            table.add(ModelSettings(name="churn", version="4"))
        assert table.get("churn").spec.version == "3"  # the refused add changed nothing

    serve(scenario)


def test_a_model_added_before_start_loads_at_start():
    settings = Settings()
    metrics = GatewayMetrics()

    async def main():
        table = ModelTable(settings, metrics, lambda m: InProcessModel(ToyRuntime(make_spec(name=m.name)), metrics),
                           models=[])
        table.add(ModelSettings(name="churn"))
        await asyncio.sleep(0.05)
        assert table.state("churn").backend is None  # nothing loads before start
        table.start()
        try:
            await asyncio.wait_for(table.wait_ready(), 5)
            return table.get("churn").spec.name
        finally:
            table.close()

    assert asyncio.run(main()) == "churn"


def test_a_removed_model_is_no_longer_served_and_its_variants_retire():
    async def scenario(table, metrics, closing):
        champion, canary = await loaded(table, "toy"), await loaded(table, "toy", CANARY)
        tasks = [v.task for v in table.variants("toy").values()]
        table.remove("toy")
        assert "toy" not in table and table.names() == [] and table.readiness() == (False, {})
        with pytest.raises(ModelNotFound):
            table.get("toy")
        with pytest.raises(ModelNotFound):
            table.state("toy")
        assert ready(metrics, "toy") == 0
        await asyncio.sleep(0)
        assert all(task.cancelled() for task in tasks)  # no more registry polls or reloads
        assert sorted(map(id, closing)) == sorted(map(id, (champion, canary)))  # closed after a grace
        columns = {"amount": np.array([100.0]), "count": np.array([1]), "is_online": np.array([True]),
                   "score": np.array([0.5])}
        answer = await champion.predict(columns)  # a call already holding it finishes on it
        assert answer["label"].tolist() == [1]
        table.remove("toy")  # removing what is not served: nothing to do

    serve(scenario, routing={"canary": {"alias": "challenger", "weight": 10}})


def test_a_removed_model_can_be_added_again():
    async def scenario(table, metrics, _):
        await loaded(table, "toy")
        table.remove("toy")
        table.add(ModelSettings(name="toy", version="5"))
        return (await loaded(table, "toy")).spec.version, ready(metrics, "toy")

    assert serve(scenario) == ("5", 1)
