"""``POST /v1/models/{name}/feedback``: labels for logged predictions.

A label names the request it belongs to (the ``request_id`` a predict answer carries, or the
``X-Request-ID`` the caller sent), optionally one row of it, and the true outcome. It goes to the
model's labels stream, beside its inference log; ``mlgate log compact`` writes both to Parquet,
where ``mlgate monitor`` joins them by request id. The answer (202) comes only once Redis has the
labels. Bodies are read like predict bodies (size, time and media type limits).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from serving import schemas
from serving.auth.authenticator import Authenticator
from serving.errors import DependencyUnavailable, InferenceLogDisabled, InvalidRequest
from serving.http.errors import json_response
from serving.http.openapi import errors
from serving.http.predict_route import PredictRoute
from serving.inference_log.recorder import LabelsBacklogged


def feedback_router(route: PredictRoute, auth: Authenticator) -> APIRouter:
    router = APIRouter()
    pipeline = route.pipeline

    @router.post("/v1/models/{name}/feedback", status_code=202, response_model=schemas.FeedbackAccepted,
                 responses=errors(400, 401, 403, 404, 408, 413, 415, 503,
                                  s403="No feedback scope", s404="Unknown model, or no inference log is kept",
                                  s503="The log store (Redis) is unavailable or its labels wait for compaction: "
                                       "nothing was recorded (see Retry-After)"),
                 openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                     "schema": {"anyOf": [{"$ref": "#/components/schemas/Feedback"},
                                          {"$ref": "#/components/schemas/FeedbackBatch"}]}}}}})
    async def feedback(name: str, request: Request) -> Response:
        """Record the true outcome of logged predictions (one label, or ``{"feedback": [...]}``)."""
        headers = dict(request.scope["headers"])
        principal = await auth.identify(headers)
        auth.require(principal, "feedback")
        pipeline.models.state(name)  # 404 for an unknown model
        if pipeline.log is None:
            raise InferenceLogDisabled()
        items = parse(await route.read_body(headers, request.receive))
        now = time.time()
        labels = [label_record(item, now, principal.id) for item in items]
        try:
            await pipeline.log.add_labels(name, labels)
        except LabelsBacklogged as exc:
            raise DependencyUnavailable(str(exc)) from None
        except Exception as exc:  # redis errors of any kind: nothing was acknowledged
            raise DependencyUnavailable(f"the log store is unavailable: {type(exc).__name__}") from None
        return json_response({"accepted": len(labels), "model": name}, 202)

    return router


def parse(body: bytes) -> list[schemas.Feedback]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("body is not valid JSON") from None
    try:
        if isinstance(document, dict) and "feedback" in document:
            return schemas.FeedbackBatch.model_validate(document).feedback
        return [schemas.Feedback.model_validate(document)]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidRequest(f"{where}: {first['msg']}") from None


def label_record(item: schemas.Feedback, now: float, client: str) -> dict[str, Any]:
    """The labels stream's record of one label (serving/inference_log/stream.py)."""
    if (item.label is None) == (item.value is None):
        raise InvalidRequest(f"request {item.request_id}: give exactly one of label and value")
    y = item.label if item.label is not None else item.value
    return {"id": item.request_id, "row": item.row, "y": float(y), "t": int((item.time or now) * 1e6),
            "src": "api", "cl": client}
