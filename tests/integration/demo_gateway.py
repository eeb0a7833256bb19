"""The session's demo gateway, shared by the modules that only call it (test_gateway,
test_gateway_protocols): `mlgate data`, then `mlgate demo --detach` on free ports over a private
password-protected Redis behind TLS, with an admin token set, as in production (secrets from the
environment, as a Kubernetes Secret gives them). A gateway takes ~100 s to bring up on two cores,
so it starts once; the conftest stops it as soon as the last test using it is done."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pandas as pd
import pytest

from examples.fraud.train import FEATURE_NAMES
from serving.settings import Settings
from tests.integration.conftest import (DEMO_COURIERS, DEMO_CUSTOMERS, RedisServer, free_port, gateway_env,
                                        run_cli)

MODEL = "fraud-detector"
PYFUNC = "fraud-pyfunc"
REDIS_PASSWORD = "redis-secret-4a1f"
ADMIN_TOKEN = "admin-secret-0b7e-2c9d"


def register_sklearn_model(settings: Settings, table: pd.DataFrame) -> None:
    """A non-ONNX model (sklearn flavour) registered as fraud-pyfunc@champion."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    x = table[FEATURE_NAMES]
    model = LogisticRegression(max_iter=500).fit(x, table["label"])
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    experiment = client.create_experiment("gateway-tests", artifact_location=settings.artifact_root)
    with mlflow.start_run(experiment_id=experiment):
        mlflow.sklearn.log_model(model, name="model", signature=infer_signature(x, model.predict(x)),
                                 input_example=x.head(3), registered_model_name=PYFUNC)
    client.set_registered_model_alias(PYFUNC, "champion", "1")


class DemoGateway:
    """Started by the fixture; ``stop`` is idempotent (the conftest's hook or the fixture's end)."""

    def __init__(self, state: Path, redis: RedisServer, spark) -> None:
        from examples.fraud.runner import training_data

        self.redis = redis
        self.env = gateway_env(state, redis.url, MLGATE_LIMITS__DEADLINE_MS="1000",
                               MLGATE_REDIS__PASSWORD=REDIS_PASSWORD, MLGATE_ADMIN__TOKEN=ADMIN_TOKEN,
                               MLGATE_FEATURES__ON_MISSING="default",  # the fallback policy has its own tests
                               MLGATE_PROTOCOLS__GRPC__ENABLED="true",
                               MLGATE_PROTOCOLS__GRPC__PORT=str(free_port()),
                               # the inference log (on in the demo) holds every row until the graceful
                               # stop: test_gateway_stop.py shows the stop writes them all
                               MLGATE_INFERENCE_LOG__FLUSH_INTERVAL_MS="3600000",
                               MLGATE_INFERENCE_LOG__BATCH_ROWS="40000",
                               MLGATE_REGISTRY__POLL_S="1",  # a retrained challenger is picked up sooner
                               MLGATE_MODELS=json.dumps([{"name": MODEL}, {"name": PYFUNC, "placement": "deployment",
                                                                          "allow_pyfunc": True}]))
        self.base = f"http://127.0.0.1:{self.env['MLGATE_HTTP__PORT']}"
        self.grpc = f"127.0.0.1:{self.env['MLGATE_PROTOCOLS__GRPC__PORT']}"
        small = ["--customers", str(DEMO_CUSTOMERS), "--couriers", str(DEMO_COURIERS)]
        done = run_cli(["data", *small], self.env)
        assert done.returncode == 0, done.stderr[-3000:]
        self.settings = Settings(state_dir=state, mlflow_tracking_uri=None,
                                 redis={"url": redis.url, "password": REDIS_PASSWORD})
        self.table = training_data(self.settings, spark)
        register_sklearn_model(self.settings, self.table)
        self.running = True
        demo = run_cli(["demo", "--detach", *small], self.env)
        if demo.returncode != 0:
            self.stop()
            log = state / "logs" / "gateway.log"
            pytest.fail(f"demo failed:\n{demo.stdout[-2000:]}\n{demo.stderr[-2000:]}\n"
                        f"{log.read_text()[-4000:] if log.exists() else ''}")
        self.demo_stdout = demo.stdout

    def __getitem__(self, key: str):  # the dict-style access the tests were written with
        return {"base": self.base, "settings": self.settings, "table": self.table,
                "demo_stdout": self.demo_stdout, "env": self.env}[key]

    def stop(self) -> None:
        if self.running:
            self.running = False
            run_cli(["stop"], self.env, timeout=120)
            self.redis.stop()

    def is_up(self) -> bool:
        try:
            return httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
