"""(d) of loadtests/bench_gateway.py: the naive way to put an MLflow model on Ray Serve.

A default ``@serve.deployment`` whose ``__call__`` turns the JSON body into a pandas DataFrame and
calls ``mlflow.pyfunc.load_model(...).predict``, reached through Ray Serve's default HTTP proxy
(run with RAY_SERVE_ENABLE_DIRECT_INGRESS=0). Runs until SIGTERM/SIGINT.

    RAY_SERVE_ENABLE_DIRECT_INGRESS=0 python loadtests/naive_serve.py MODEL_URI TRACKING_URI PORT
"""

from __future__ import annotations

import signal
import sys
import threading

import mlflow
import pandas as pd
import ray
from ray import serve
from starlette.requests import Request


@serve.deployment
class PyfuncModel:
    def __init__(self, model_uri: str, tracking_uri: str) -> None:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        self.model = mlflow.pyfunc.load_model(model_uri)

    async def __call__(self, request: Request) -> dict:
        body = await request.json()
        out = self.model.predict(pd.DataFrame(body["dataframe_records"]))
        return {"predictions": out.to_dict(orient="records")}


def main() -> None:
    model_uri, tracking_uri, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(PyfuncModel.bind(model_uri, tracking_uri), name="naive", route_prefix="/")
        print("ready", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
