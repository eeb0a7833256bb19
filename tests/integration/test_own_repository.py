"""A new user's own data and model, served by following the README's "Your own model in ten
minutes" and nothing else: `mlgate init`, edit the YAML, `plan`, `apply`, `features build` and
`sync`, `features training-set`, train and register an ONNX model (the user's code), `serve`,
and an entity-keyed predict. Neither example's data, definitions nor model is used: the entity
has string keys, the model is a plain skl2onnx regressor with the output name skl2onnx gives it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from serving.settings import Settings
from tests.integration.conftest import RedisServer, gateway_env, run_cli

pytestmark = pytest.mark.integration

MODEL = "basket-value"
VIEW = "account_activity"  # the scaffold's view: its three features, untouched
REQUEST = "basket_size"  # a request-time input the caller sends


def events(rng: np.random.Generator, accounts: list[str], end: pd.Timestamp) -> pd.DataFrame:
    n = 4_000
    return pd.DataFrame({
        "account_id": rng.choice(accounts, n),
        "ts": end - pd.to_timedelta(rng.uniform(0, 20 * 86_400, n), unit="s"),
        "amount": np.round(rng.lognormal(3.0, 0.8, n), 2),
    }).sort_values("ts").reset_index(drop=True)


def expected_features(frame: pd.DataFrame, account: str, as_of: pd.Timestamp) -> dict[str, float]:
    """The scaffold's features of ``account`` as of ``as_of``, computed here in pandas."""
    if as_of.tzinfo is None:  # Spark's Parquet timestamps come back naive, in UTC (the jobs' zone)
        as_of = as_of.tz_localize("UTC")
    mine = frame[(frame.account_id == account) & (frame.ts < as_of)]

    def within(days: int) -> pd.DataFrame:
        return mine[mine.ts >= as_of - pd.Timedelta(days=days)]

    return {f"{VIEW}__events_1d": float(len(within(1))),
            f"{VIEW}__amount_sum_7d": float(within(7).amount.sum()),
            f"{VIEW}__amount_max_30d": float(within(30).amount.max()) if len(within(30)) else 0.0}


def run_ok(args: list[str], env: dict[str, str], timeout: float = 600) -> str:
    done = run_cli(args, env, timeout=timeout)
    assert done.returncode == 0, f"mlgate {' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_own_parquet_and_own_onnx_model_to_entity_keyed_predictions(tmp_path):
    import mlflow
    import mlflow.onnx
    import onnxruntime as ort
    from mlflow import MlflowClient
    from mlflow.models import infer_signature
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LinearRegression

    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed")
    redis_server = RedisServer(tmp_path)  # the test's own Redis: its applied repository is its own
    redis_server.start()
    state, repo = tmp_path / "state", tmp_path / "shop"
    env = gateway_env(state, redis_server.url, MLGATE_SPARK__SHUFFLE_PARTITIONS="2")
    gateway = None
    try:
        # 1. init, then the user's own data where the scaffold's source points, and one edit
        run_ok(["init", str(repo)], env)
        rng = np.random.default_rng(5)
        accounts = [f"acct-{rng.integers(0, 2**48):012x}" for _ in range(150)]
        end = pd.Timestamp.now(tz="UTC").floor("s")
        frame = events(rng, accounts, end)
        (repo / "data").mkdir()
        frame.to_parquet(repo / "data" / "events.parquet", coerce_timestamps="us", allow_truncated_timestamps=True)
        models = yaml.safe_load((repo / "models.yaml").read_text())
        models["models"][0]["name"] = MODEL  # the scaffold's model, renamed: the one edit
        (repo / "models.yaml").write_text(yaml.safe_dump(models))

        # 2. plan, apply, build and sync every online view (from the applied repository)
        assert "account_activity" in run_ok(["plan", str(repo)], env)
        run_ok(["apply", str(repo)], env)
        run_ok(["features", "build"], env)
        run_ok(["features", "sync"], env)

        # 3. a point-in-time training set from the user's own labels
        labels = pd.DataFrame({"account_id": rng.choice(accounts, 600),
                               "event_timestamp": end - pd.to_timedelta(rng.uniform(0, 10 * 86_400, 600), unit="s"),
                               REQUEST: rng.integers(1, 9, 600).astype("float64")})
        labels.to_parquet(tmp_path / "labels.parquet", coerce_timestamps="us", allow_truncated_timestamps=True)
        run_ok(["features", "training-set", "--repo", str(repo), "--entities", str(tmp_path / "labels.parquet"),
                "--features", VIEW, "--output", str(tmp_path / "training.parquet")], env)
        table = pd.read_parquet(tmp_path / "training.parquet")
        inputs = [REQUEST, f"{VIEW}__events_1d", f"{VIEW}__amount_sum_7d", f"{VIEW}__amount_max_30d"]
        assert len(table) == len(labels) and set(inputs) <= set(table.columns)
        row = table.iloc[0]  # point in time: the training set agrees with an independent computation
        want = expected_features(frame, row["account_id"], pd.Timestamp(row["event_timestamp"]))
        assert {k: float(row[k]) for k in want} == pytest.approx(want)

        # 4. the user's model: their own code, any ONNX model whose signature names the inputs
        y = 2.0 * table[REQUEST] + 0.01 * table[f"{VIEW}__amount_sum_7d"] + rng.normal(0, 0.1, len(table))
        x = table[inputs].astype({f"{VIEW}__events_1d": "int64"})
        model = LinearRegression().fit(x.to_numpy(np.float32), y)
        onnx_model = convert_sklearn(model, initial_types=[("input", FloatTensorType([None, len(inputs)]))],
                                     target_opset=17)
        settings = Settings(state_dir=state, mlflow_tracking_uri=None)
        mlflow.set_tracking_uri(settings.tracking_uri)
        mlflow.set_registry_uri(settings.tracking_uri)
        example = x.head(3).reset_index(drop=True)
        signature = infer_signature(example, pd.DataFrame({"variable": model.predict(example.to_numpy(np.float32))
                                                           .astype(np.float32)}))
        with mlflow.start_run():
            info = mlflow.onnx.log_model(onnx_model, name="model", signature=signature, input_example=example,
                                         registered_model_name=MODEL)
        MlflowClient().set_registered_model_alias(MODEL, "champion", str(info.registered_model_version))

        # 5. serve, and predict by account id
        gateway = subprocess.Popen([sys.executable, "-m", "serving.cli", "serve"], env={**os.environ, **env},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        base = f"http://127.0.0.1:{env['MLGATE_HTTP__PORT']}"
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(f"{base}/v1/models/{MODEL}", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert gateway.poll() is None, "the gateway exited"
            assert time.monotonic() < deadline, f"the gateway did not serve {MODEL} within 240 s"
            time.sleep(2)
        account = frame.account_id.iloc[-1]  # active until the end: fresh features
        r = httpx.post(f"{base}/v1/models/{MODEL}/predict", timeout=30,
                       json={"entities": [{"account_id": account}], "features": {REQUEST: 3.0}})
        assert r.status_code == 200, r.text
        (answer,) = r.json()["predictions"]
        assert answer["features"][VIEW]["source"] == "online_store"
        as_of = frame.ts.max().floor("s") + pd.Timedelta(seconds=1)  # the build's default as-of time
        stored = expected_features(frame, account, as_of)
        session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
        local = session.run(None, {"input": np.array([[3.0] + [stored[n] for n in inputs[1:]]], np.float32)})[0]
        got = answer["variable"][0] if isinstance(answer["variable"], list) else answer["variable"]
        assert got == pytest.approx(float(local.reshape(-1)[0]), rel=1e-5)

        # a never-seen account is answered with the view's defaults, marked missing
        r = httpx.post(f"{base}/v1/models/{MODEL}/predict", timeout=30,
                       json={"entities": [{"account_id": "acct-never-seen"}], "features": {REQUEST: 3.0}})
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0]["features"][VIEW]["status"] == "missing"
    finally:
        if gateway is not None:
            run_cli(["stop"], env, timeout=120)
            if gateway.poll() is None:
                os.killpg(gateway.pid, signal.SIGINT)  # its own session: the gateway and its children
                try:
                    gateway.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(gateway.pid, signal.SIGKILL)
        redis_server.stop()
