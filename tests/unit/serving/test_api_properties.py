"""Property-based: whatever JSON (or bytes) a caller sends, the codec refuses it with a 4xx error
or decodes it, and the HTTP app answers 2xx or 4xx, never 5xx (issue 13, item 5).

Bodies come from arbitrary JSON values (``recursive``), bodies shaped like the real envelope with
arbitrary contents, and rows or entity keys the model takes with one part spoiled, which get past
the envelope checks into decoding. The admin PATCH gets the same treatment."""

from __future__ import annotations

import asyncio
import json
import warnings
from datetime import timedelta

import httpx
import numpy as np
import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from features_online.definitions import Entity, EntityKey, Feature, FeatureView
from observability.metrics import GatewayMetrics
from serving import codec
from serving.errors import MlgateError
from serving.http.app import build_app
from serving.models import InProcessModel, ModelTable
from serving.pipeline import Pipeline
from serving.runtime.base import FeatureSpec
from serving.schemas import ErrorResponse, PredictResponse
from serving.settings import Settings
from tests.unit.conftest import ToyRuntime, make_spec

MAX_INSTANCES = 5
SPEC = make_spec()  # amount double, count long, is_online boolean, score double (optional)
# A model reading two views: one keyed by an int64 id, one by a string code of at most 8 bytes.
ACCOUNT = Entity("account", (EntityKey("account_id"),))
MERCHANT = Entity("merchant", (EntityKey("merchant_code", "string", max_length=8),))
VIEWS = {"account_activity": FeatureView("account_activity", ACCOUNT, (Feature("events_7d", "long", 0),),
                                         timedelta(hours=1)),
         "merchant_stats": FeatureView("merchant_stats", MERCHANT, (Feature("refund_rate", "double", 0.0),),
                                       timedelta(hours=1))}
STORED_SPEC = make_spec(inputs=(FeatureSpec("amount", "double"),
                                FeatureSpec("account_activity__events_7d", "long"),
                                FeatureSpec("merchant_stats__refund_rate", "double")))
FEATURES = [f.name for f in SPEC.inputs]
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.text(max_size=8)
           | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=16)
edges = st.sampled_from([0, 1, -1, 2**31, 2**53 + 1, 2**63, -2**63 - 1, 0.5, 1e38, 3.5e38, -1e300])
feature_values = scalars | edges | st.lists(scalars, max_size=2)
# Rows with the model's own feature names (some left out, some extra) reach the type checks.
rows = st.fixed_dictionaries({}, optional={name: feature_values for name in [*FEATURES, "extra"]}) \
    | st.dictionaries(st.text(max_size=8), feature_values, max_size=5)
key_texts = st.text(max_size=10) | st.sampled_from(["", "é" * 4, "é" * 5, "a\nb", "\x00", "\ud800", "😀😀"])
entity_keys = json_values | st.fixed_dictionaries(
    {}, optional={"account_id": feature_values, "merchant_code": feature_values | key_texts,
                  "other_id": feature_values})
timeouts = st.sampled_from([None, 0, -1, 60_001, 1.5, "100", True, 5_000, 60_000])
envelopes = st.fixed_dictionaries({}, optional={
    "instances": st.lists(rows, max_size=MAX_INSTANCES + 2) | json_values,
    "entities": st.lists(entity_keys, max_size=MAX_INSTANCES + 2) | json_values,
    "features": rows | st.lists(rows, max_size=3) | json_values,
    "timeout_ms": timeouts,
    "other": json_values,
})
valid_rows = st.fixed_dictionaries({
    "amount": st.floats(-1e30, 1e30) | st.integers(-2**53, 2**53), "count": st.integers(-2**53, 2**53),
    "is_online": st.booleans(), "score": st.none() | st.floats(-1e30, 1e30)})


@st.composite
def near_valid_rows(draw):
    """A row the toy model takes, with at most one feature's value (or presence) spoiled."""
    row = draw(valid_rows)
    spoil = draw(st.sampled_from([None, None, *FEATURES, "extra"]))
    if spoil is not None and draw(st.booleans()):
        row.pop(spoil, None)
    elif spoil is not None:
        row[spoil] = draw(feature_values)
    return row


near_valid = st.fixed_dictionaries(
    {"instances": st.lists(near_valid_rows(), min_size=1, max_size=MAX_INSTANCES)},
    optional={"timeout_ms": st.sampled_from([5_000, 60_000, None])})
# Entity keys the stored-feature spec takes, so that 'features' (any shape) is what is judged.
near_valid_entities = st.integers(1, 3).flatmap(lambda n: st.fixed_dictionaries(
    {"entities": st.lists(st.fixed_dictionaries({"account_id": st.integers(-2**63, 2**63 - 1),
                                                 "merchant_code": key_texts}),
                          min_size=n, max_size=n)},
    optional={"features": json_values | rows | st.lists(rows | json_values, min_size=n, max_size=n)}))
# The predict body as bytes: any JSON, an envelope, NaN/Infinity literals, or any bytes at all.
bodies = (st.one_of(json_values, envelopes, near_valid, near_valid, near_valid_entities)
          .map(lambda v: json.dumps(v).encode())
          | st.sampled_from([b'{"instances": [{"amount": NaN}]}', b"[Infinity]", b"", b"\xff\xfe"])
          | st.binary(max_size=64))


def decode_body(body: bytes, entity_spec=STORED_SPEC) -> int:
    """What the codec makes of a body: 200 when it decodes, else the refusal's status. Entity-keyed
    bodies are read for ``entity_spec``, instances for the toy model's SPEC."""
    try:
        payload = codec.parse_json(body)
        codec.timeout_s(payload, 2.0)
        if codec.is_entity_keyed(payload):
            binding = codec.bind(entity_spec, VIEWS)
            keys, request_rows = codec.entity_rows(payload, binding, MAX_INSTANCES)
            assert all(len(keys.keys(e)) == len(payload["entities"]) for e in binding.entities)
            codec.decode(request_rows, binding.request_spec)
            return 200
        columns = codec.decode(codec.instances_of(payload, MAX_INSTANCES), SPEC)
    except MlgateError as exc:
        return exc.status
    assert list(columns) == FEATURES and {len(c) for c in columns.values()} == {len(payload["instances"])}
    return 200


@PROPERTY
@given(bodies)
def test_the_codec_decodes_or_refuses_with_a_4xx_any_body(body):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy overflow warning would be a bug here too
        status = decode_body(body)
    event(str(status))
    assert status == 200 or 400 <= status < 500


@PROPERTY
@given(st.lists(rows, min_size=1, max_size=MAX_INSTANCES))
def test_decoded_columns_hold_exactly_the_values_sent(instances):
    try:
        columns = codec.decode(instances, SPEC)
    except MlgateError as exc:
        assert 400 <= exc.status < 500
        return
    for feature in SPEC.inputs:
        sent = [row[feature.name] for row in instances]
        got = columns[feature.name].tolist()
        assert [None if isinstance(g, float) and np.isnan(g) else g for g in got] == sent


@pytest.fixture(scope="module")
def gateway():
    """One app over the toy model for every example: ``call(body) -> httpx.Response``."""
    config = Settings(models=[{"name": "toy"}], limits={"max_instances": MAX_INSTANCES},
                      http={"max_body_bytes": 4096})
    metrics = GatewayMetrics()

    async def start():
        table = ModelTable(config, metrics, lambda m: InProcessModel(ToyRuntime(), metrics))
        table.start()
        await asyncio.wait_for(table.wait_ready(), 5)
        transport = httpx.ASGITransport(app=build_app(Pipeline(config, table, metrics)),
                                        raise_app_exceptions=False)
        return table, httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000")

    async def stop(table, client):
        await client.aclose()
        table.close()

    with start_blocking_portal() as portal:
        table, client = portal.call(start)
        def call(body, path="/v1/models/toy/predict", method="POST", **kw):
            return portal.call(lambda: client.request(method, path, content=body, **kw))

        yield call
        portal.call(stop, table, client)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # the toy's sigmoid
@PROPERTY
@given(body=bodies, media=st.sampled_from([None, "application/json", "application/vnd.x+json", "text/plain"]))
def test_the_app_answers_any_body_with_2xx_or_4xx_never_5xx(gateway, body, media):
    r = gateway(body, headers={"content-type": media} if media else {})
    event(f"{r.status_code} {r.json().get('error', {}).get('code', 'ok')}")
    assert 200 <= r.status_code < 500, (r.status_code, r.text)
    if r.status_code == 200:
        PredictResponse.model_validate(r.json())
        assert decode_body(body, SPEC) == 200
    else:
        ErrorResponse.model_validate(r.json())
        if media != "text/plain":  # the app and the codec agree on what is refused, and how
            assert r.status_code == decode_body(body, SPEC)


changes = st.fixed_dictionaries({}, optional={
    "canary_weight": json_values | st.floats(-1, 101), "shadow_shares": json_values,
    "other": json_values}) | json_values


@PROPERTY
@given(st.one_of(changes.map(lambda v: json.dumps(v).encode()), st.binary(max_size=32)))
def test_the_admin_patch_answers_any_body_with_a_4xx_or_a_change(gateway, body):
    r = gateway(body, "/v1/admin/rollouts/toy", "PATCH", headers={"content-type": "application/json"})
    event(f"{r.status_code} {r.json().get('error', {}).get('code', 'ok')}")
    assert r.status_code in (200, 400, 404, 409), (r.status_code, r.text)
