"""ModelTable's supervisors: a registry that cannot answer delays a version, never refuses it."""

from __future__ import annotations

import asyncio

import requests
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

from observability.metrics import GatewayMetrics
from serving.errors import ModelValidationError
from serving.models import InProcessModel, ModelTable
from serving.runtime.loader import resolve_version
from serving.settings import Settings
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
