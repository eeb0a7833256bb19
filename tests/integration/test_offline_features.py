"""The offline feature jobs of any repository, on real Spark (local), against a reference written
here in plain pandas from the definitions' words alone (never calling the code under test):

- an aggregation counts events with ``ref - window <= ts < ref`` that match its ``where``; a
  window without such events gives the feature's default; booleans count as 0/1;
- a view without aggregations takes the latest row with ``ref - ttl <= ts < ref``, a null value
  or no such row giving the default;
- a training set row's features are those as of its own time; an offline table's, those as of
  the build time, for every entity with events before it.

The repository (written into a temporary folder) covers every aggregation function, where
filters, an int, a string and a composite key, a SQL source with epoch-second times, a SQL and a
Python transformation and a TTL view.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from features_online import jobs, repository, spark_job
from features_online.errors import FeatureJobError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
T = pd.Timestamp(datetime(2026, 3, 14, 12, 0, 0, tzinfo=timezone.utc))  # whole seconds, as builds are
US, SEC, HOUR, DAY = (pd.Timedelta(microseconds=1), pd.Timedelta(seconds=1), pd.Timedelta(hours=1),
                      pd.Timedelta(days=1))
DURATION = {"1h": HOUR, "1d": DAY, "2d": 2 * DAY, "7d": 7 * DAY}
WHERE = {"amount > 50": lambda e: e.amount > 50, "flag": lambda e: e.flag}  # the SQL conditions, in pandas


def agg(name, function, window, dtype="double", default=0, column=None, where=None):
    aggregation = {"function": function, "window": window, **({"column": column} if column else {}),
                   **({"where": where} if where else {})}
    return {"name": name, "dtype": dtype, "default": default, "aggregation": aggregation}


DEFINITIONS = {
    "entities": [
        {"name": "user", "keys": [{"name": "user_id", "type": "int64"}]},
        {"name": "device", "keys": [{"name": "device_id", "type": "string"}]},
        {"name": "shop", "keys": [{"name": "shop_name", "type": "string"}, {"name": "region", "type": "int64"}]},
    ],
    "sources": [
        {"name": "events", "parquet": "data/events.parquet", "timestamp": "ts"},
        {"name": "events_epoch", "timestamp": "t_s",
         "sql": "SELECT device_id, amount, flag, CAST(unix_micros(ts) AS DOUBLE) / 1000000 AS t_s FROM events"},
        {"name": "profiles", "parquet": "data/profiles/*.parquet", "timestamp": "updated_at"},
    ],
    "views": [
        {"name": "user_agg", "entity": "user", "source": "events", "ttl": "2d", "features": [
            agg("n_1d", "count", "1d", "long"),
            agg("n_7d_big", "count", "7d", "long", -1, where="amount > 50"),
            agg("sum_7d", "sum", "7d", column="amount"),
            agg("mean_1d", "mean", "1d", default=-5, column="amount"),
            agg("min_7d", "min", "7d", "float", column="amount"),
            agg("max_1h", "max", "1h", column="amount"),
            agg("flag_share_7d", "mean", "7d", column="flag"),
            agg("flag_sum_7d", "sum", "7d", "int", column="flag"),
            agg("merchants_7d", "count_distinct", "7d", "int", column="merchant"),
            agg("since_last_7d", "seconds_since_last", "7d", default=1e9),
            agg("any_flag_7d", "max", "7d", "bool", False, column="flag"),
            agg("big_sum_1h", "sum", "1h", where="amount > 50", column="amount"),
        ]},
        {"name": "device_agg", "entity": "device", "source": "events_epoch", "ttl": "1d", "features": [
            agg("cnt_1d", "count", "1d", "long"),
            agg("flag_amount_7d", "sum", "7d", column="amount", where="flag"),
        ]},
        {"name": "shop_agg", "entity": "shop", "source": "events", "ttl": "1d",
         "transformation": {"sql": "SELECT shop_name, region, ts, amount * 2 AS amount2 FROM source "
                                   "WHERE category <> 'refund'"},
         "features": [agg("cnt_2d", "count", "2d", "long"), agg("amount2_max_2d", "max", "2d", column="amount2")]},
        {"name": "user_profile", "entity": "user", "source": "profiles", "ttl": "2d",
         "transformation": {"python": "offline_tfm_mod:enrich"},
         "features": [{"name": "tier", "dtype": "int", "default": 0},
                      {"name": "score10", "dtype": "double", "default": -1, "column": "score_x10"},
                      {"name": "vip", "dtype": "bool", "default": False}]},
    ],
}
TRANSFORM = '''
from pyspark.sql import functions as F


def times_ten(x):
    return None if x is None else x * 10


def enrich(frame):  # a Python UDF: the module must reach the executors, whose sys.path lacks its folder
    return frame.withColumn("score_x10", F.udf(times_ten, "double")(F.col("score")))
'''
SPEC = {v["name"]: v for v in DEFINITIONS["views"]}
KEYS = {"user_agg": ["user_id"], "user_profile": ["user_id"], "device_agg": ["device_id"],
        "shop_agg": ["shop_name", "region"]}
DEVICES = ["d-a", "d-b", "007", "Ω μ/≠"]


def edge_events() -> list[tuple]:
    """(user, offset from T, amount, flag, merchant, device, shop, region, category)"""
    return [
        (1, -DAY, 60.0, True, 1, "d-a", "s1", 1, "sale"),  # exactly on the 1-day edge: inside
        (1, -DAY - US, 70.0, False, 2, "d-a", "s1", 1, "sale"),  # a microsecond too old for 1d
        (1, -7 * DAY, 80.0, True, 3, "d-b", "s1", 1, "sale"),  # exactly on the 7-day edge: inside
        (1, -7 * DAY - US, 999.0, True, 9, "d-b", "s1", 1, "sale"),  # a microsecond too old: would be max
        (1, -HOUR, 55.0, False, 1, "007", "s1", 2, "refund"),  # exactly on the 1-hour edge
        (1, -HOUR - US, 51.0, True, 1, "007", "s1", 2, "sale"),
        (1, -SEC / 2, 10.0, False, 4, "d-a", "s2", 1, "sale"),  # the latest: 0.5 s since
        (1, pd.Timedelta(0), 500.0, True, 5, "d-a", "s2", 1, "sale"),  # at T: not yet
        (2, SEC, 20.0, False, 1, "d-b", "s2", 2, "sale"),  # only after T
        (3, -8 * DAY, 30.0, True, 1, "d-b", "s2", 2, "sale"),  # only too old for every window
        (4, -2 * DAY, 5.0, False, 2, "Ω μ/≠", "s1", 1, "refund"),  # in 7d, not in 1d, small
    ]


def random_events(rng) -> list[tuple]:
    rows = []
    for user in range(5, 10):  # users 1-4 have only the hand-picked events
        for _ in range(int(rng.integers(0, 10))):
            offset = pd.Timedelta(microseconds=int(rng.integers(-9 * 86_400 * 10**6, 2 * 86_400 * 10**6)))
            rows.append((user, offset, round(float(rng.uniform(1, 100)), 2), bool(rng.random() < 0.4),
                         int(rng.integers(1, 5)), DEVICES[int(rng.integers(0, 4))], f"s{int(rng.integers(1, 3))}",
                         int(rng.integers(1, 3)), "refund" if rng.random() < 0.2 else "sale"))
    return rows


@pytest.fixture(scope="module", autouse=True)
def few_partitions(spark):
    """Tiny data: two shuffle partitions instead of the session's default (restored after)."""
    before = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", "2")
    yield
    spark.conf.set("spark.sql.shuffle.partitions", before)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The repository folder, its raw data (pandas, as written) and the loaded repository."""
    root = tmp_path_factory.mktemp("offline-repo")
    (root / "data" / "profiles").mkdir(parents=True)
    (root / "mlgate.yaml").write_text("project: offline-test\n")
    (root / "features.yaml").write_text(yaml.safe_dump(DEFINITIONS, allow_unicode=True))
    (root / "offline_tfm_mod.py").write_text(TRANSFORM)
    rng = np.random.default_rng(12)
    events = pd.DataFrame(edge_events() + random_events(rng),
                          columns=["user_id", "offset", "amount", "flag", "merchant", "device_id", "shop_name",
                                   "region", "category"])
    events["ts"] = T + events.pop("offset")
    events = events.astype({"user_id": "int64", "merchant": "int64", "region": "int64"})
    events.to_parquet(root / "data" / "events.parquet", index=False, coerce_timestamps="us")
    profiles = pd.DataFrame([
        (1, -3 * DAY, 1, 0.1, False), (1, -DAY, 2, 0.2, True), (1, pd.Timedelta(0), 3, 0.3, True),
        (2, -5 * DAY, 7, 0.7, True),  # too old as of T (ttl 2d)
        (3, -HOUR, 4, None, True),  # the latest row has no score: default
        (3, -2 * HOUR, 5, 0.5, False),
        (5, -2 * DAY, 6, 0.6, True),  # exactly ttl old at T: served
    ], columns=["user_id", "offset", "tier", "score", "vip"])
    profiles["updated_at"] = T + profiles.pop("offset")
    profiles = profiles.astype({"user_id": "int64", "tier": "int32"})
    profiles.iloc[:4].to_parquet(root / "data" / "profiles" / "a.parquet", index=False, coerce_timestamps="us")
    profiles.iloc[4:].to_parquet(root / "data" / "profiles" / "b.parquet", index=False, coerce_timestamps="us")
    return {"root": root, "events": events, "profiles": profiles, "repo": repository.load(root)}


# -- the reference ---------------------------------------------------------------------------------

def typed(value, dtype: str):
    if dtype in ("long", "int"):
        return int(value)
    if dtype == "bool":
        return bool(value)
    return float(np.float32(value)) if dtype == "float" else float(value)


def view_rows(world, view: str) -> pd.DataFrame:
    """The view's rows as its definition describes them, computed in pandas."""
    if view == "user_profile":
        rows = world["profiles"].rename(columns={"updated_at": "ts"})
        return rows.assign(score_x10=rows.score * 10)
    rows = world["events"]
    if view == "shop_agg":
        rows = rows[rows.category != "refund"].assign(amount2=rows.amount * 2)
    return rows


def reference(world, view: str, key: tuple, ref: pd.Timestamp) -> dict:
    spec = SPEC[view]
    rows = view_rows(world, view)
    for column, value in zip(KEYS[view], key):
        rows = rows[rows[column] == value]
    out = {}
    for f in spec["features"]:
        a = f.get("aggregation")
        if a is None:  # the latest row within the TTL
            recent = rows[(rows.ts < ref) & (rows.ts >= ref - DURATION[spec["ttl"]])]
            value = recent.sort_values("ts").iloc[-1][f.get("column", f["name"])] if len(recent) else None
            out[f["name"]] = typed(f["default"] if value is None or pd.isna(value) else value, f["dtype"])
            continue
        window = rows[(rows.ts >= ref - DURATION[a["window"]]) & (rows.ts < ref)]
        if "where" in a:
            window = window[WHERE[a["where"]](window)]
        if window.empty:
            out[f["name"]] = typed(f["default"], f["dtype"])
            continue
        col = window[a["column"]] if "column" in a else None
        value = {"count": lambda: len(window) if col is None else int(col.notna().sum()),
                 "sum": lambda: col.astype(float).sum(), "mean": lambda: col.astype(float).mean(),
                 "min": lambda: col.astype(float).min(), "max": lambda: col.astype(float).max(),
                 "count_distinct": lambda: col.nunique(),
                 "seconds_since_last": lambda: (ref - window.ts.max()).total_seconds()}[a["function"]]()
        out[f["name"]] = typed(value, f["dtype"])
    return out


def same(got, want) -> bool:
    if isinstance(want, bool) or isinstance(want, int):
        return got == want and type(want)(got) == want
    return got == pytest.approx(want, rel=1e-6, abs=1e-9)


def compare(got: dict, want: dict, where: str) -> list[str]:
    return [f"{where}.{name}: spark {got[name]!r}, reference {value!r}"
            for name, value in want.items() if not same(got[name], value)]


# -- the offline table -----------------------------------------------------------------------------

@pytest.mark.parametrize("view_name", list(SPEC))
def test_build_equals_the_reference_for_every_entity_seen_before_the_time(spark, world, view_name):
    repo, view = world["repo"], world["repo"].views[view_name]
    frame = spark_job.build(spark, repo, view, T.to_pydatetime()).toPandas()
    keys = KEYS[view_name]
    assert list(frame.columns) == [*keys, "as_of_ms", *view.feature_names]
    rows = view_rows(world, view_name)
    seen = sorted(rows[rows.ts < T][keys].drop_duplicates().itertuples(index=False, name=None))
    assert sorted(frame[keys].itertuples(index=False, name=None)) == seen
    assert (frame.as_of_ms == int(T.timestamp()) * 1000).all()
    problems = []
    for record in frame.to_dict("records"):
        key = tuple(record[k] for k in keys)
        problems += compare(record, reference(world, view_name, key, T), f"{key}")
    assert problems == []


def test_the_edges_did_what_they_are_there_for(world):
    """The hand-picked events pin the reference itself (worked out by hand from the words above)."""
    assert reference(world, "user_agg", (1,), T) == {
        "n_1d": 4, "n_7d_big": 5, "sum_7d": 326.0, "mean_1d": 44.0, "min_7d": 10.0, "max_1h": 55.0,
        "flag_share_7d": 0.5, "flag_sum_7d": 3, "merchants_7d": 4, "since_last_7d": 0.5, "any_flag_7d": True,
        "big_sum_1h": 55.0}
    assert reference(world, "user_agg", (3,), T) == {f["name"]: f["default"] for f in SPEC["user_agg"]["features"]}
    assert reference(world, "user_profile", (1,), T) == {"tier": 2, "score10": 2.0, "vip": True}
    assert reference(world, "user_profile", (2,), T) == {"tier": 0, "score10": -1.0, "vip": False}
    assert reference(world, "user_profile", (3,), T) == {"tier": 4, "score10": -1.0, "vip": True}
    assert reference(world, "user_profile", (5,), T)["tier"] == 6


def test_default_as_of_is_the_second_after_the_latest_event_and_changed_since_takes_edges(spark, world):
    repo = world["repo"]
    events = world["events"]
    latest = events.ts.max()
    assert spark_job.default_as_of(spark, repo, repo.views["user_agg"]) == (latest.floor("s") + SEC).to_pydatetime()
    since, until = T - DAY, T  # user 1's events at T - 1 day (in) and at T (out)
    got = spark_job.changed_since(spark, repo, repo.views["shop_agg"], since.to_pydatetime(),
                                  until.to_pydatetime()).toPandas()
    rows = view_rows(world, "shop_agg")
    rows = rows[(rows.ts >= since) & (rows.ts < until)]
    assert sorted(got.itertuples(index=False, name=None)) == sorted(
        rows[["shop_name", "region"]].drop_duplicates().itertuples(index=False, name=None))


# -- training sets ---------------------------------------------------------------------------------

def entity_rows(world) -> pd.DataFrame:
    """Labelled rows at edges (event times exactly, a microsecond around them) and at random."""
    events = world["events"]
    rng = np.random.default_rng(5)
    rows = []
    for i, event in enumerate(events.itertuples()):
        for shift in (pd.Timedelta(0), US, -US) if i < 11 else (pd.Timedelta(0),):
            rows.append((event.user_id, event.device_id, event.shop_name, event.region, event.ts + shift))
    for _ in range(15):
        rows.append((int(rng.integers(1, 8)), DEVICES[int(rng.integers(0, 4))], "s2", int(rng.integers(1, 3)),
                     T + pd.Timedelta(microseconds=int(rng.integers(-3 * 86_400 * 10**6, 86_400 * 10**6)))))
    rows += [(1, "d-a", "s1", 1, T + DAY), (1, "d-a", "s1", 1, T + 7 * DAY)]  # windows edge at an event
    frame = pd.DataFrame(rows, columns=["user_id", "device_id", "shop_name", "region", "event_timestamp"])
    frame["label"] = np.arange(len(frame)) % 2
    return frame


def expected_row(world, row, wanted: dict[str, list[str]]) -> dict:
    out = {}
    for view, names in wanted.items():
        values = reference(world, view, tuple(getattr(row, k) for k in KEYS[view]), row.event_timestamp)
        out.update({f"{view}__{n}": values[n] for n in names})
    return out


def check_training_set(world, got: pd.DataFrame, entities: pd.DataFrame, wanted: dict[str, list[str]]):
    got = got.sort_values("label_id").reset_index(drop=True)
    assert len(got) == len(entities)
    problems = []
    for row, record in zip(entities.itertuples(), got.to_dict("records")):
        assert record["user_id"] == row.user_id and record["device_id"] == row.device_id
        problems += compare(record, expected_row(world, row, wanted), f"row {row.label_id}")
    assert problems == []


def test_training_set_is_point_in_time_correct_for_every_view(spark, world):
    entities = entity_rows(world)
    entities["label_id"] = np.arange(len(entities))
    features = ["user_agg", "device_agg__cnt_1d", "device_agg__flag_amount_7d", "shop_agg", "user_profile"]
    frame = spark_job.training_set(spark, world["repo"], spark.createDataFrame(entities), features)
    assert frame.columns[:8] == ["user_id", "device_id", "shop_name", "region", "event_timestamp", "label",
                                 "label_id", "user_agg__n_1d"]
    wanted = {"user_agg": [f["name"] for f in SPEC["user_agg"]["features"]],
              "device_agg": ["cnt_1d", "flag_amount_7d"], "shop_agg": ["cnt_2d", "amount2_max_2d"],
              "user_profile": ["tier", "score10", "vip"]}
    assert frame.columns[7:] == [f"{v}__{n}" for v, names in wanted.items() for n in names]
    check_training_set(world, frame.toPandas(), entities, wanted)


def test_training_set_refuses_unknown_features_and_missing_keys(spark, world):
    entities = spark.createDataFrame(pd.DataFrame({"user_id": [1], "event_timestamp": [T]}))
    with pytest.raises(FeatureJobError, match="no feature 'nope'"):
        spark_job.training_set(spark, world["repo"], entities, ["user_agg__nope"])
    with pytest.raises(FeatureJobError, match="device_id"):
        spark_job.training_set(spark, world["repo"], entities, ["device_agg"])
    with pytest.raises(FeatureJobError, match="time column 'when'"):
        spark_job.training_set(spark, world["repo"], entities, ["user_agg"], timestamp="when")


def test_the_cli_writes_a_training_set_from_a_csv(world, tmp_path):
    """``mlgate features training-set`` end to end, in its own process: a CSV whose string key
    "007" stays text and whose times are ISO text with microseconds."""
    entities = entity_rows(world).iloc[::3].reset_index(drop=True)
    entities["label_id"] = np.arange(len(entities))
    csv = tmp_path / "entities.csv"
    written = entities.copy()
    written["when"] = written.pop("event_timestamp").dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    written.to_csv(csv, index=False)
    out = tmp_path / "train.parquet"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLGATE_STATE_DIR": str(tmp_path / "state"),
           "MLGATE_SPARK__MASTER": "local[1]", "MLGATE_SPARK__SHUFFLE_PARTITIONS": "2"}
    run = subprocess.run([sys.executable, "-m", "serving.cli", "features", "training-set", "--repo",
                          str(world["root"]), "--entities", str(csv), "--timestamp-column", "when",
                          "--features", "user_agg__n_1d,user_agg__since_last_7d,device_agg,user_profile",
                          "--output", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"{len(entities)} rows" in run.stdout
    got = pd.read_parquet(out)
    assert got.device_id.dtype == object and "007" in set(got.device_id)
    check_training_set(world, got, entities, {"user_agg": ["n_1d", "since_last_7d"],
                                              "device_agg": ["cnt_1d", "flag_amount_7d"],
                                              "user_profile": ["tier", "score10", "vip"]})


# -- the jobs --------------------------------------------------------------------------------------

def test_jobs_build_writes_the_table_latest_table_finds(spark, world, tmp_path):
    from features_online.settings import StoreSettings

    settings = StoreSettings(state_dir=tmp_path)
    repo = world["repo"]
    view = repo.views["device_agg"]
    path, as_of = jobs.build(settings, spark, repo, view)
    assert as_of == (world["events"].ts.max().floor("s") + SEC).to_pydatetime()
    assert path == spark_job.offline_path(settings.offline_dir, view, as_of)
    assert path.parent.name == f"v{view.version}"
    assert jobs.latest_table(settings, view) == (path, as_of)
    table = pd.read_parquet(path)
    assert sorted(table.device_id) == sorted(DEVICES)


def test_load_repository_reads_a_folder_or_the_applied_one(world, redis_server, tmp_path):
    from features_online.settings import RedisSettings, StoreSettings

    settings = StoreSettings(state_dir=tmp_path, redis=RedisSettings(url=redis_server.url, prefix="offtest"))
    with pytest.raises(FeatureJobError, match="no feature repository applied"):
        jobs.load_repository(settings)
    assert jobs.load_repository(settings, world["root"]).digest == world["repo"].digest
    repository.apply(redis_server.client(), "offtest", world["repo"])
    assert jobs.load_repository(settings).digest == world["repo"].digest
    with pytest.raises(FeatureJobError, match="invalid feature repository"):
        jobs.load_repository(settings, tmp_path)


def test_incremental_sync_sends_the_rows_of_keys_with_events_since_the_watermark(spark, world, tmp_path,
                                                                                monkeypatch):
    """A composite-keyed view: the table's rows of exactly the (shop, region) pairs with events in
    [watermark, as_of) go to ``FeatureSync.incremental`` (the Redis side is the writer's tests')."""
    from features_online.settings import StoreSettings
    from features_online.sync import SyncResult

    sent = {}

    class Recorder:
        def __init__(self, redis, features, view):
            self.view = view

        def meta(self):
            return {"watermark_ms": str(int((T - DAY).timestamp() * 1000))}

        def incremental(self, frame, as_of, source):
            sent.update(rows=frame.toPandas(), as_of=as_of, source=source)
            return SyncResult(self.view.name, "incremental", 1, len(sent["rows"]), 1.0)

    monkeypatch.setattr(jobs, "FeatureSync", Recorder)
    settings = StoreSettings(state_dir=tmp_path)
    repo, view = world["repo"], world["repo"].views["shop_agg"]
    path, as_of = jobs.build(settings, spark, repo, view, T.to_pydatetime())
    assert jobs.sync(settings, spark, repo, view, "incremental").rows == len(sent["rows"]) > 0
    assert (sent["as_of"], sent["source"]) == (as_of, str(path))
    rows = view_rows(world, "shop_agg")
    changed = rows[(rows.ts >= T - DAY) & (rows.ts < T)][["shop_name", "region"]].drop_duplicates()
    assert sorted(sent["rows"][["shop_name", "region"]].itertuples(index=False, name=None)) == sorted(
        changed.itertuples(index=False, name=None))
    assert list(sent["rows"].columns) == ["shop_name", "region", "as_of_ms", "cnt_2d", "amount2_max_2d"]


def test_the_cli_refuses_before_spark_starts(world, tmp_path, monkeypatch, capsys):
    from serving import cli

    monkeypatch.setenv("MLGATE_STATE_DIR", str(tmp_path))
    assert cli.main(["features", "training-set", "--repo", str(world["root"])]) == 2
    assert "needs --entities, --features, --output" in capsys.readouterr().err
    assert cli.main(["features", "build", "--repo", str(tmp_path)]) == 1
    assert "invalid feature repository" in capsys.readouterr().err
    assert cli.main(["features", "sync", "--repo", str(world["root"]), "--view", "nope"]) == 1
    assert "no view 'nope'" in capsys.readouterr().err
