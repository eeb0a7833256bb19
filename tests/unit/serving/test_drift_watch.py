"""The drift watcher sets a replica's drift gauges from the monitor's status documents, once per
new verdict, and keeps them when Redis cannot answer."""

import asyncio

import orjson
from prometheus_client import generate_latest

from observability.metrics import GatewayMetrics
from serving import drift_status
from serving.drift_watch import DriftWatcher


class Store:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.down = False

    async def get(self, key):
        if self.down:
            raise ConnectionError("redis away")
        return self.data.get(key)


def status(computed_at: float, psi: float) -> dict:
    return {"model": "m", "version": "4", "computed_at": computed_at, "drifted": psi > 0.2,
            "features": {"in_x": {"psi": psi, "kind": "numeric", "n": 10}}, "quality": {"auc": 0.8}}


def test_gauges_follow_new_verdicts_and_survive_redis_down():
    store, metrics = Store(), GatewayMetrics()
    watcher = DriftWatcher(store, "p", lambda: ["m", "unmonitored"], metrics)

    def sample(name, **labels):
        return metrics.registry.get_sample_value(name, labels)

    async def scenario():
        store.data[drift_status.status_key("p", "m")] = orjson.dumps(status(100.0, 0.35))
        assert await watcher.check() == 1
        assert await watcher.check() == 0  # same verdict: nothing to set
        assert sample("mlgate_drift_psi", model="m", version="4", feature="in_x") == 0.35
        assert sample("mlgate_drift_detected", model="m", version="4") == 1
        assert sample("mlgate_model_quality", model="m", version="4", metric="auc") == 0.8
        assert sample("mlgate_monitor_last_run_timestamp_seconds", model="m") == 100.0
        store.down = True
        assert await watcher.check() == 0
        assert sample("mlgate_drift_psi", model="m", version="4", feature="in_x") == 0.35
        store.down = False
        store.data[drift_status.status_key("p", "m")] = orjson.dumps(status(200.0, 0.01))
        assert await watcher.check() == 1
        assert sample("mlgate_drift_detected", model="m", version="4") == 0

    asyncio.run(scenario())
    assert b"mlgate_drift_psi" in generate_latest(metrics.registry)
