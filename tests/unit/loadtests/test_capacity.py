"""The capacity model: linear where it should be, factors applied once, inputs checked (the
bytes/entity default against a real redis-server: tests/integration/test_entity_memory.py)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from loadtests import capacity
from loadtests.capacity import GB, Measured, Target, plan

M = Measured()
BASE = Target(rps=50_000, entities=200_000_000, views=2)


def test_double_rps_doubles_gateway_cores():
    # A rate that divides evenly, so ceil() does not hide the ratio.
    per_core = 1000 / M.gateway_cpu_ms_per_req * 0.7
    one = plan(replace(BASE, rps=per_core * 10), M)
    two = plan(replace(BASE, rps=per_core * 20), M)
    assert one.gateway_cores == 10
    assert two.gateway_cores == 20
    assert two.lookups_per_s == 2 * one.lookups_per_s
    assert two.http_bytes_in_per_s == 2 * one.http_bytes_in_per_s
    assert two.redis_bytes_per_s == 2 * one.redis_bytes_per_s


def test_headroom_is_applied_once():
    p = plan(replace(BASE, headroom=0.5), M)
    assert p.utilisation == 0.5
    assert p.gateway_cores == math.ceil(BASE.rps / (1000 / M.gateway_cpu_ms_per_req * 0.5))
    assert p.shards_for_ops == math.ceil(BASE.rps * BASE.views / (M.redis_ops_per_s_per_shard * 0.5))
    none = plan(replace(BASE, headroom=0.0), M)
    assert none.gateway_cores == math.ceil(BASE.rps / (1000 / M.gateway_cpu_ms_per_req))
    # memory carries no headroom: only its stated factors
    assert none.redis_total_bytes == p.redis_total_bytes


def test_memory_is_entities_views_bytes_and_factors():
    p = plan(BASE, M)
    live = BASE.entities * BASE.views * M.bytes_per_entity
    assert p.bytes_per_entity == M.bytes_per_entity  # measured at 12 features, used as is
    assert p.redis_live_bytes == pytest.approx(live)
    # one more copy of a view during its full sync, fragmentation, then (1 + replicas) copies
    peak = live * (BASE.views + 1) / BASE.views * M.fragmentation
    assert p.redis_peak_bytes_per_copy == pytest.approx(peak)
    assert p.redis_total_bytes == pytest.approx(peak * 2)
    assert plan(replace(BASE, replication=2), M).redis_total_bytes == pytest.approx(peak * 3)
    assert plan(replace(BASE, entities=BASE.entities * 2), M).redis_total_bytes == pytest.approx(peak * 4)


def test_more_features_cost_their_bytes_rounded_to_the_allocator():
    # 24 features: 201-byte records, a 224-byte allocation instead of 112 (measured: 280.5 B)
    assert capacity.bytes_per_entity(M, 24) == pytest.approx(M.bytes_per_entity + 112)
    assert capacity.jemalloc_class(109) == 112
    assert capacity.jemalloc_class(205) == 224
    assert capacity.jemalloc_class(257) == 320


def test_shards_are_the_larger_of_memory_and_ops():
    memory_bound = plan(BASE, M)  # 121 GB per copy / 25 GB: 5; 100k lookups/s: 2
    assert (memory_bound.shards_for_memory, memory_bound.shards_for_ops) == (5, 2)
    assert memory_bound.redis_shards == 5
    ops_bound = plan(replace(BASE, rps=1_000_000, entities=1_000_000), M)
    assert ops_bound.shards_for_ops > ops_bound.shards_for_memory
    assert ops_bound.redis_shards == ops_bound.shards_for_ops == math.ceil(2_000_000 / (M.redis_ops_per_s_per_shard * 0.7))
    assert ops_bound.redis_nodes == 2 * ops_bound.redis_shards
    small = replace(M, redis_shard_memory_bytes=10 * GB)
    assert plan(BASE, small).shards_for_memory == math.ceil(plan(BASE, M).redis_peak_bytes_per_copy / (10 * GB))


def test_p99_target_lowers_utilisation_and_impossible_ones_are_refused():
    loose = plan(replace(BASE, p99_ms=100), M)
    assert loose.utilisation == 0.7  # the headroom binds, not the latency
    tight = plan(replace(BASE, p99_ms=2 * M.gateway_p99_ms_unloaded), M)
    assert tight.utilisation == pytest.approx(0.5)
    assert tight.predicted_p99_ms == pytest.approx(2 * M.gateway_p99_ms_unloaded)
    assert tight.gateway_cores > loose.gateway_cores
    with pytest.raises(ValueError, match="no number of cores"):
        plan(replace(BASE, p99_ms=M.gateway_p99_ms_unloaded), M)


def test_sync_cores_scale_with_rows_and_window():
    one = plan(replace(BASE, entities=10**9), M)
    half = plan(replace(BASE, entities=10**9, sync_window_h=2), M)
    assert one.sync_rows_per_s == 2 * half.sync_rows_per_s
    assert one.spark_executor_cores == math.ceil(10**9 * 2 / 3600 / (M.sync_rows_per_s_per_core * 0.7))


def test_direct_ingress_uses_its_own_measurement_and_one_replica_per_pod():
    p = plan(replace(BASE, ingress="direct"), M)
    assert p.gateway_rps_per_core == pytest.approx(1000 / M.gateway_direct_cpu_ms_per_req)
    assert p.gateway_pods == p.gateway_cores


@pytest.mark.parametrize("bad", [dict(rps=0), dict(rps=-1), dict(entities=0), dict(views=0),
                                 dict(features_per_view=0), dict(headroom=1.0), dict(headroom=-0.1),
                                 dict(replication=-1), dict(sync_window_h=0), dict(p99_ms=0),
                                 dict(ingress="proxy")])
def test_invalid_targets_are_rejected(bad):
    with pytest.raises(ValueError):
        plan(replace(BASE, **bad), M)


def test_cli_prints_the_plan_and_json(capsys):
    assert capacity.main(["--rps", "50000", "--entities", "200_000_000", "--views", "2"]) == 0
    out = capsys.readouterr().out
    assert "Gateway (reuseport ingress): 44 cores = 11 pods x 4 replicas" in out
    assert "Redis shards: 5 primaries" in out and "Assumptions:" in out
    capacity.main(["--rps", "50000", "--entities", "200000000", "--views", "2", "--json"])
    import json

    data = json.loads(capsys.readouterr().out)
    assert data["plan"]["gateway_cores"] == 44 and data["plan"]["redis_shards"] == 5
    with pytest.raises(SystemExit):
        capacity.main(["--rps", "0", "--entities", "1", "--views", "1"])
