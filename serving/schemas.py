"""Pydantic models of the HTTP API v1: they generate the OpenAPI schema.

The hot path validates requests with :mod:`serving.codec` against each model's signature (which
pydantic cannot know ahead of time); these models state the same contract for clients.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

F32_MAX = 3.4028234663852886e38
"""The largest finite feature value: inputs reach models as float32 at the narrowest."""
MAX_ENTITY_ID = 2**63 - 1
MAX_TIMEOUT_MS = 60_000
FeatureValue = Annotated[float, Field(ge=-F32_MAX, le=F32_MAX)] | bool | None
FeatureRow = dict[str, FeatureValue]
MIN_ENTITY_ID = -(2**63)
MAX_KEY_BYTES = 1024
"""The longest string key the schema admits; each key column's own ``max_length`` (the
repository's, 128 by default) is what the gateway enforces."""
KeyValue = Annotated[int, Field(ge=MIN_ENTITY_ID, le=MAX_ENTITY_ID)] | Annotated[
    str, Field(min_length=1, max_length=MAX_KEY_BYTES, pattern=r"^[^\x00-\x1f\x7f]+$")]
EntityKey = Annotated[dict[str, KeyValue], Field(min_length=1)]
TimeoutMs = Annotated[int | None, Field(
    None, ge=1, le=MAX_TIMEOUT_MS,
    description="This request's deadline in milliseconds (default: the gateway's "
                "limits.deadline_ms). Entity-keyed rows the online path cannot answer in time "
                "are answered from batch scores; otherwise 504.")]
FallbackReason = Literal["model_not_ready", "model_error", "deadline_exceeded", "feature_store_unavailable",
                         "features_missing", "features_stale"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InstancesRequest(_Strict):
    """Every feature spelled out, row by row."""

    instances: list[FeatureRow] = Field(
        min_length=1,
        description="Rows of named features (KServe v1 / TF Serving row format). Every feature of "
                    "the model's signature must be present; null only where the signature marks a "
                    "feature optional. NaN and Infinity are refused.",
        examples=[[{"amount": 42.5, "hour_of_day": 13}]])
    timeout_ms: TimeoutMs


class EntitiesRequest(_Strict):
    """Entity keys: the gateway looks the stored features up."""

    entities: list[EntityKey] = Field(
        min_length=1,
        description="Entity keys, e.g. [{\"user_id\": 42}] or [{\"courier_id\": \"c-19\", "
                    "\"restaurant_id\": \"r-7\"}]: the gateway reads the model's stored features "
                    "for each from the online store in one round trip. Each object holds exactly "
                    "the key columns of the model's entities: an int64 key as an integer, a string "
                    "key as 1 to max_length bytes of printable UTF-8 text.",
        examples=[[{"user_id": 42}]])
    features: FeatureRow | list[FeatureRow] | None = Field(
        None, description="The request-time features, one object for every entity or a list with "
                          "one object per entity. Omit it (or send null) only when the model takes "
                          "no request-time features.")
    timeout_ms: TimeoutMs


class PredictRequest(RootModel[InstancesRequest | EntitiesRequest]):
    """Exactly one of ``instances`` (every feature given) or ``entities`` (stored features
    looked up). The schema cannot know each model's feature names: a body it allows may still
    be refused by the model's signature (400 wrong or unknown feature, 422 missing feature)."""


class FeatureOrigin(BaseModel):
    source: Literal["online_store", "default"]
    status: Literal["fresh", "stale", "missing"]
    age_s: float | None = Field(None, description="Age of the stored values, seconds.")


class Prediction(BaseModel):
    model_config = ConfigDict(extra="allow")
    label: int | None = Field(None, description="Predicted class (classifiers).")
    probability: float | None = Field(None, description="Probability of the positive class "
                                                        "(binary classifiers).")
    source: Literal["online", "batch_fallback"] = Field(
        description="online: the model answered now; batch_fallback: the entity's precomputed "
                    "batch score (see fallback_reason).")
    model_version: str | None = Field(None, description="Registered model version that produced "
                                                        "this row (callers with the route or admin scope).")
    fallback_reason: FallbackReason | None = Field(
        None, description="batch_fallback rows: why the online path could not answer this row.")
    score_age_s: float | None = Field(None, description="batch_fallback rows: age of the batch score, "
                                                        "seconds.")
    features: dict[str, FeatureOrigin] | None = Field(
        None, description="Entity-keyed requests: per feature view, where this row's stored "
                          "features came from and how old they were.")


class PredictResponse(BaseModel):
    predictions: list[Prediction] = Field(description="One prediction per instance, in order.")
    model: str
    version: str | None = Field(None, description="Registered model version that answered "
                                                  "(callers with the route or admin scope).")
    alias: str | None = Field(None, description="Alias the version was resolved from, if any "
                                                "(callers with the route or admin scope).")
    variant: str | None = Field(None, description="Variant that answered: champion or canary (also "
                                                  "in the X-Mlgate-Variant header; callers with the "
                                                  "route or admin scope).")
    request_id: str


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable error code.")
    message: str = Field(description="What went wrong; safe to show, never echoes input values.")
    request_id: str
    retryable: bool = False


class ErrorResponse(BaseModel):
    error: ErrorBody


StrictScalar = str | float | bool
OipDatatype = Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                     "FP16", "FP32", "FP64", "BYTES"]


class InferTensor(BaseModel):
    """An OIP v2 input tensor: ``data`` as JSON (flat or nested as ``shape``), or
    ``parameters.binary_data_size`` bytes of the binary section after the JSON."""

    name: str = Field(min_length=1, max_length=256)
    datatype: OipDatatype
    shape: list[Annotated[int, Field(ge=0)]] = Field(max_length=8)
    data: list[Any] | None = None
    parameters: dict[str, StrictScalar] | None = None


class InferOutputRequest(BaseModel):
    name: str
    parameters: dict[str, StrictScalar] | None = None


class InferRequest(BaseModel):
    """An OIP v2 infer request (``POST /v2/models/{m}/infer``)."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, max_length=256)
    parameters: dict[str, StrictScalar] | None = None
    inputs: list[InferTensor] = Field(min_length=1)
    outputs: list[InferOutputRequest] | None = Field(None, max_length=64)


class ProtocolErrorResponse(BaseModel):
    """An error of the Open Inference Protocol v2 and KServe v1 routes: their protocols' shape
    (``error``, a message) with mlgate's stable ``code`` beside it."""

    error: str
    code: str
    request_id: str


class MlflowErrorResponse(BaseModel):
    """An error of the MLflow and Databricks invocation routes: MLflow's shape (``error_code``,
    ``message``) with mlgate's stable ``code`` beside it."""

    error_code: str
    message: str
    code: str
    request_id: str


class FeatureSchema(BaseModel):
    name: str
    type: Literal["double", "float", "long", "integer", "boolean"]
    required: bool


class ModelSummary(BaseModel):
    name: str
    ready: bool
    version: str | None = None
    alias: str | None = None
    error: str | None = Field(None, description="Why the model is not ready, if it is not.")


class VariantLineage(BaseModel):
    """A serving variant's version and where it came from (MLflow tags ``mlgate.lineage.*``,
    its run's metrics); null where the registry did not say."""

    variant: str = Field(description="champion, canary or a shadow's name.")
    version: str
    alias: str | None = None
    trigger: Literal["drift", "manual", "initial"] | None = Field(None, description="Why it was trained.")
    parent_version: str | None = Field(None, description="What the serving alias pointed at when it was trained.")
    data_snapshot: dict[str, Any] | None = Field(None, description="Its training data: sources (path, "
                                                 "modified) and offline tables (as of).")
    feature_views: dict[str, str] | None = Field(None, description="Feature view schema versions, by view.")
    drift: dict[str, Any] | None = Field(None, description="Retrained on drift: the drift figures that "
                                         "triggered it (top columns' PSI).")
    metrics: dict[str, float] | None = Field(None, description="Offline metrics of its training run.")
    approved_by: str | None = Field(None, description="Who approved it for promotion, if anyone.")


class ModelDetail(ModelSummary):
    uri: str | None = None
    flavor: Literal["onnx", "pyfunc"] | None = None
    inputs: list[FeatureSchema] = []
    outputs: list[str] = []
    feature_views: list[str] = Field([], description="Views the model reads stored features from.")
    example_request: PredictRequest | None = Field(
        None, description="A ready-to-send body for POST /v1/models/{name}/predict.")
    variants: list[VariantLineage] | None = Field(
        None, description="Each variant serving a version, with its lineage (callers with the route or "
                          "admin scope).")
    drift: dict[str, Any] | None = Field(
        None, description="The model's latest drift and quality verdict (`mlgate monitor`): version, "
                          "window, drifted, threshold, per-feature PSI, quality (callers with the route "
                          "or admin scope).")


class ModelList(BaseModel):
    models: list[ModelSummary]


class Health(BaseModel):
    status: Literal["ok", "not_ready"]
    models: dict[str, bool] = {}


Percent = Annotated[float, Field(ge=0, le=100)]


class RolloutChange(_Strict):
    """Body of PATCH /v1/admin/rollouts/{model}: what to change; omitted fields stay."""

    # strict: "5" or true is not a weight; the schema says number, and so does the server
    model_config = ConfigDict(extra="forbid", strict=True)

    canary_weight: Percent | None = Field(None, description="Percent of routing keys answered by "
                                          "the canary. Also lifts a rollback halt.")
    shadow_shares: dict[str, Percent] | None = Field(None, description="Percent of requests mirrored, "
                                                     "by shadow name (0-100).")


class Feedback(_Strict):
    """One label: the true outcome of a logged prediction, joined to it by request id."""

    model_config = ConfigDict(extra="forbid", strict=True)

    request_id: str = Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$",
                            description="The X-Request-ID of the predict call (its answer's request_id).")
    label: Annotated[float, Field(ge=-F32_MAX, le=F32_MAX)] | bool | None = Field(
        None, description="The true class (classifiers) or value (regressors); or give value.")
    value: Annotated[float, Field(ge=-F32_MAX, le=F32_MAX)] | None = Field(
        None, description="Same as label, for regressors.")
    row: int | None = Field(None, ge=0, le=1_000_000, description="Which row of the request (default: every row).")
    time: Annotated[float, Field(ge=0, le=32_503_680_000)] | None = Field(
        None, description="When the outcome was known, Unix seconds (default: now).")


class FeedbackBatch(_Strict):
    """Several labels at once."""

    model_config = ConfigDict(extra="forbid", strict=True)

    feedback: list[Feedback] = Field(min_length=1, max_length=1000)


class FeedbackAccepted(BaseModel):
    accepted: int = Field(description="Labels recorded (durably in the log store).")
    model: str
