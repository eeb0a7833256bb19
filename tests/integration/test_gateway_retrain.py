"""The loop's last step on the running demo gateway: a drift verdict in Redis (as `mlgate monitor`
writes it), `mlgate retrain --model fraud-detector --if-drift` through the real command (the
repository's training entry point, Spark, MLflow), and the gateway serving the new version as
its canary at 0 % with nobody acting: the champion still answers everyone, and the lineage the
API shows names the retrain. Runs after test_gateway_contract.py (which needs a gateway without a
canary) and before test_gateway_stop.py."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest

from examples.fraud.train import FEATURE_NAMES
from serving import drift_status
from tests.integration.conftest import run_cli
from tests.integration.demo_gateway import ADMIN_TOKEN, MODEL

pytestmark = pytest.mark.integration


def test_retrain_if_drift_registers_a_challenger_the_gateway_serves_as_canary(demo_gateway):
    gateway = demo_gateway
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    champion = httpx.get(f"{gateway.base}/v1/models/{MODEL}", headers=admin, timeout=30).json()["version"]
    verdict = {"model": MODEL, "version": champion, "computed_at": time.time(), "window": {"start": 0, "end": 1},
               "rows": 1000, "labelled_rows": 0, "drifted": True, "threshold": drift_status.PSI_DRIFT,
               "features": {"in_amount": {"psi": 0.8, "kind": "numeric", "n": 1000}}, "quality": {}}
    drift_status.write(gateway.redis.client(), gateway.settings.redis.prefix, verdict)

    done = run_cli(["retrain", "--model", MODEL, "--if-drift"], gateway.env, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    from mlflow import MlflowClient

    registry = MlflowClient(tracking_uri=gateway.settings.tracking_uri, registry_uri=gateway.settings.tracking_uri)
    challenger = str(registry.get_model_version_by_alias(MODEL, "challenger").version)
    assert challenger != champion
    assert str(registry.get_model_version_by_alias(MODEL, "champion").version) == champion

    body = orjson.dumps({"instances": gateway.table[FEATURE_NAMES].head(1).to_dict("records")},
                        option=orjson.OPT_SERIALIZE_NUMPY)
    deadline = time.monotonic() + 90
    while True:  # the canary follows the alias (registry.poll_s), then loads and validates it
        r = httpx.post(f"{gateway.base}/v1/models/{MODEL}/predict", content=body, timeout=30,
                       headers={"content-type": "application/json", "x-mlgate-variant": "canary", **admin})
        if r.status_code == 200 and r.json()["version"] == challenger:
            break
        assert time.monotonic() < deadline, f"canary not serving v{challenger}: {r.status_code} {r.text[:300]}"
        time.sleep(1)
    routed = httpx.post(f"{gateway.base}/v1/models/{MODEL}/predict", content=body, timeout=30,
                        headers={"content-type": "application/json", **admin}).json()
    assert routed["variant"] == "champion" and routed["version"] == champion  # the canary is at 0 %
    detail = httpx.get(f"{gateway.base}/v1/models/{MODEL}", headers=admin, timeout=30).json()
    assert detail["drift"]["drifted"] is True
    canary = next(v for v in detail["variants"] if v["variant"] == "canary")
    assert canary["version"] == challenger and canary["trigger"] == "drift"
    assert canary["parent_version"] == champion and canary["drift"]
