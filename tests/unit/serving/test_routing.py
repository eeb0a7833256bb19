"""Sticky canary assignment and shadow sampling: pure functions."""

from serving.routing import CANARY, CHAMPION, assign, mirrored, point, routing_key


def share(weight: float, n: int = 20_000) -> float:
    return sum(assign("fraud", str(k), weight) == CANARY for k in range(n)) / n


def test_canary_share_follows_the_weight():
    for weight in (1, 5, 25, 50, 90):
        # binomial standard error at n=20,000 is <= 0.35 %; 4 sigma
        assert abs(share(weight) - weight / 100) < 0.015, weight


def test_assignment_is_sticky_and_raising_the_weight_only_moves_champion_to_canary():
    keys = [str(k) for k in range(5_000)]
    before = {k: assign("fraud", k, 10) for k in keys}
    assert before == {k: assign("fraud", k, 10) for k in keys}
    after = {k: assign("fraud", k, 30) for k in keys}
    assert all(after[k] == CANARY for k in keys if before[k] == CANARY)
    lowered = {k: assign("fraud", k, 5) for k in keys}
    assert all(before[k] == CANARY for k in keys if lowered[k] == CANARY)


def test_weights_at_the_ends_and_models_split_independently():
    assert assign("fraud", "1", 0) == CHAMPION and assign("fraud", "1", 100) == CANARY
    keys = [str(k) for k in range(2_000)]
    a = [point("fraud", k) < 5_000 for k in keys]
    b = [point("churn", k) < 5_000 for k in keys]
    assert 0.4 < sum(x == y for x, y in zip(a, b)) / len(keys) < 0.6


def test_routing_key_prefers_the_header_then_the_first_entity():
    body = {"entities": [{"customer_id": 42}, {"customer_id": 7}]}
    assert routing_key(body, "abc") == "abc"
    assert routing_key(body, None) == "42"
    assert routing_key({"instances": [{}]}, None) is None
    assert routing_key([1, 2], None) is None


def test_mirrored_share():
    assert not mirrored(0) and mirrored(100)
    n = sum(mirrored(10) for _ in range(20_000))
    assert 1_700 < n < 2_300


def test_a_routing_secret_reshuffles_assignment_unpredictably_but_stays_sticky():
    keys = [str(k) for k in range(2000)]
    secret = b"a-secret-of-the-gateway"
    public = [assign("fraud", k, 30) for k in keys]
    keyed = [assign("fraud", k, 30, secret) for k in keys]
    assert keyed == [assign("fraud", k, 30, secret) for k in keys]  # sticky with the same secret
    assert 0.27 < keyed.count(CANARY) / len(keys) < 0.33  # still the weight
    differ = sum(a != b for a, b in zip(public, keyed)) / len(keys)
    assert 0.3 < differ < 0.5  # about 2 * 0.3 * 0.7 of keys: independent of the public hash
    assert point("fraud", "42") == point("fraud", "42", b"")
