"""The floor of loadtests/bench_gateway.py: the least a server must do to answer what mlgate does.

One HMGET of the entity's record from the live version's bucket hash (redis.asyncio), decoded with
features_online.layout, the request-time values and the stored ones put into one float32 row in
signature order, one onnxruntime call (the same session options as mlgate: 1 thread, no
spinning). No validation, metrics, deadlines, provenance or fallback. Configured by environment:

    FLOOR_REDIS_URL=redis://127.0.0.1:PORT/0 FLOOR_ONNX=/path/model.onnx FLOOR_INPUTS=a,b,... \
        uvicorn loadtests.floor_app:app --port 8300 --workers 1
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager

import numpy as np
import onnxruntime as ort
import orjson
import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.responses import Response

from features_online import layout
from examples.fraud.train import VIEW  # the example's view, as examples/fraud/features.yaml defines it

PREFIX = "mlg"
INPUTS = os.environ["FLOOR_INPUTS"].split(",")
# (stored?, name): where each model input comes from, in signature order
SOURCES = [(n.startswith(VIEW.name + "__"), n.split("__", 1)[-1]) for n in INPUTS]

_opts = ort.SessionOptions()
_opts.intra_op_num_threads = 1
_opts.inter_op_num_threads = 1
_opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
_opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
SESSION = ort.InferenceSession(os.environ["FLOOR_ONNX"], _opts, providers=["CPUExecutionProvider"])
INPUT = SESSION.get_inputs()[0].name
OUTPUTS = [o.name for o in SESSION.get_outputs()]  # label, probability
state: dict = {}


@asynccontextmanager
async def lifespan(_app: FastAPI):
    client = aioredis.Redis.from_url(os.environ["FLOOR_REDIS_URL"])
    meta = await client.hgetall(layout.meta_key(PREFIX, VIEW))
    state.update(redis=client, version=int(meta[b"version"]))  # live version, read once
    yield
    await client.aclose()


app = FastAPI(lifespan=lifespan)


@app.get("/healthz")
async def healthz() -> Response:
    return Response(b"ok", media_type="text/plain")


@app.post("/v1/models/fraud-detector/predict")
async def predict(request: Request) -> Response:
    body = orjson.loads(await request.body())
    customer = int(body["entities"][0]["customer_id"])
    given = body["features"]
    key = layout.bucket_key(PREFIX, VIEW, state["version"], customer % VIEW.buckets)
    records, _present = layout.decode(VIEW, await state["redis"].hmget(key, [layout.field(customer)]))
    row = np.array([[records[name][0] if stored else given[name] for stored, name in SOURCES]],
                   dtype=np.float32)
    out = dict(zip(OUTPUTS, SESSION.run(OUTPUTS, {INPUT: row})))
    answer = {"predictions": [{"label": int(out["label"][0]), "probability": float(out["probability"][0])}]}
    return Response(orjson.dumps(answer), media_type="application/json")
