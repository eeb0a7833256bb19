"""The demo's traffic generator: drifted rows differ from the recent ones the way the loop's
monitor is meant to notice (amounts x3, night hours, more foreign and online purchases)."""

from __future__ import annotations

from examples import traffic
from examples.fraud import data
from serving.settings import Settings


def test_drifted_rows_shift_the_inputs(tmp_path):
    settings = Settings(state_dir=tmp_path, mlflow_tracking_uri=None)
    data.write(data.generate(n_customers=200, seed=3), tmp_path / "data" / "fraud")
    plain = traffic.fraud_rows(settings, 500, seed=1)
    drifted = traffic.fraud_rows(settings, 500, drift=True, seed=1)
    assert len(drifted) == 500 and (drifted["customer_id"] == plain["customer_id"]).all()
    assert (drifted["amount"] == plain["amount"] * 3).all()
    assert drifted["hour_of_day"].between(0, 4).all()
    assert drifted["is_foreign"].mean() > max(0.3, plain["is_foreign"].mean())
    assert drifted["is_online"].mean() > max(0.6, plain["is_online"].mean())
    assert (drifted.loc[drifted["is_online"] == 1, "distance_from_home_km"] == 0).all()


def test_send_posts_entity_rows_in_batches(tmp_path, monkeypatch):
    import json

    import httpx

    settings = Settings(state_dir=tmp_path, mlflow_tracking_uri=None)
    data.write(data.generate(n_customers=100, seed=3), tmp_path / "data" / "fraud")
    bodies = []

    def answer(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200 if len(bodies) < 3 else 503, json={})

    real = httpx.Client
    monkeypatch.setattr(httpx, "Client", lambda **kw: real(transport=httpx.MockTransport(answer), **kw))
    counts = traffic.send(settings, "fraud-detector", traffic.fraud_rows(settings, 120, drift=True), batch_rows=50)
    assert counts == {"answered": 100, "refused": 20}
    assert [len(b["entities"]) for b in bodies] == [50, 50, 20]
    assert set(bodies[0]["features"][0]) >= {"amount", "hour_of_day", "is_foreign"}
