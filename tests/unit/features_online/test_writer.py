"""What a sync's partition writer makes of Arrow batches, without Redis: the HSET commands of
int64, string and composite keys (the layout's fields, in the layout's buckets) and the values of
every dtype, nulls as defaults; a row without a key fails."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from features_online import layout
from features_online.definitions import Entity, EntityKey, Feature, FeatureView
from features_online.redis_client import ClientSpec
from features_online.writer import PartitionWriter

FEATURES = (Feature("spend", "double", 1.5), Feature("ratio", "float", 0.25), Feature("clicks", "long", -1),
            Feature("visits", "int", 7), Feature("vip", "bool", True))
USER = Entity("user", (EntityKey("user_id"),))
SHOP = Entity("shop", (EntityKey("shop_code", "string"),))
PAIR = Entity("user_shop", (EntityKey("user_id"), EntityKey("shop_code", "string")))
CODES = ["{a}", "b\r\nc", "ü ß", "", "x:1", "{", "}"]


def parse_commands(blob: bytes) -> list[list[bytes]]:
    from tests.unit.features_online.test_wire import parse_commands  # imports redis-py, pandas: lazily

    return parse_commands(blob)


def view(entity: Entity) -> FeatureView:
    return FeatureView("v", entity, FEATURES, timedelta(hours=1), buckets=4)


def batch(keys: dict, n: int) -> pa.RecordBatch:
    nulls = [i % 3 == 1 for i in range(n)]  # every third row from the second: null features
    return pa.record_batch({
        **keys, "as_of_ms": pa.array(np.arange(n) + 1_000, pa.int64()),
        "spend": pa.array([None if z else i * 0.5 for i, z in enumerate(nulls)], pa.float64()),
        "ratio": pa.array([None if z else i / 4 for i, z in enumerate(nulls)], pa.float32()),
        "clicks": pa.array([None if z else 2**60 + i for i, z in enumerate(nulls)], pa.int64()),
        "visits": pa.array([None if z else -i for i, z in enumerate(nulls)], pa.int32()),
        "vip": pa.array([None if z else i % 2 == 0 for i, z in enumerate(nulls)], pa.bool_()),
        "ignored": pa.array(["x"] * n)})


def written(v: FeatureView, data: pa.RecordBatch) -> dict[bytes, tuple[int, bytes]]:
    writer = PartitionWriter(ClientSpec("redis://127.0.0.1:1/0", False), v, "p", 1, 3, 60)
    keys = [k.encode() for k in layout.bucket_keys("p", v, 1)]
    from features_online.writer import _feature, _ids

    records = layout.encode_records(v, _ids(data, "as_of_ms"), {f.name: _feature(data.column(f.name), f)
                                                               for f in v.features})
    out = {}
    for bucket, chunks, rows in writer.commands(data, keys, records):
        [args] = parse_commands(b"".join(bytes(c) for c in chunks))
        assert args[1] == keys[bucket] and len(args) == 2 + 2 * rows <= 2 + 2 * 3
        out.update({f: (bucket, value) for f, value in zip(args[2::2], args[3::2])})
    return out


def check_values(v: FeatureView, out: dict, fields: list[bytes]) -> None:
    records, present = layout.decode(v, [out[f][1] for f in fields])
    assert present.all() and records["as_of_ms"].tolist() == [1_000 + i for i in range(len(fields))]
    for i in range(len(fields)):
        null = i % 3 == 1
        assert records["spend"][i] == (1.5 if null else i * 0.5)
        assert records["ratio"][i] == np.float32(0.25 if null else i / 4)
        assert records["clicks"][i] == (-1 if null else 2**60 + i)  # exact: no float round trip
        assert records["visits"][i] == (7 if null else -i)
        assert records["vip"][i] == (1 if null else int(i % 2 == 0))


def test_int64_keys_take_the_fast_path():
    v = view(USER)
    ids = [5, -3, 2**40, 0, 17, 8, 9]
    out = written(v, batch({"user_id": pa.array(ids, pa.int64())}, len(ids)))
    fields = layout.fields(np.array(ids))
    assert {f: b for f, (b, _) in out.items()} == dict(zip(fields, layout.bucket_of(v, np.array(ids)).tolist()))
    check_values(v, out, fields)


@pytest.mark.parametrize("arrow_type", [pa.string(), pa.large_string()])
def test_string_keys_are_their_utf8_bytes_in_their_crc32_bucket(arrow_type):
    v = view(SHOP)
    column = pa.array(["pad", *CODES], arrow_type).slice(1)  # an offset into the buffers, as Spark slices
    out = written(v, batch({"shop_code": column}, len(CODES)))
    fields = [c.encode() for c in CODES]
    assert {f: b for f, (b, _) in out.items()} == dict(zip(fields, layout.bucket_of(v, fields).tolist()))
    check_values(v, out, fields)


def test_composite_keys_are_length_prefixed_parts():
    v = view(PAIR)
    ids = list(range(len(CODES)))
    out = written(v, batch({"user_id": pa.array(ids, pa.int32()), "shop_code": pa.array(CODES)}, len(CODES)))
    fields = layout.encode_fields(PAIR, {"user_id": ids, "shop_code": CODES})
    assert fields[1] == b"1:14:b\r\nc"
    assert {f: b for f, (b, _) in out.items()} == dict(zip(fields, layout.bucket_of(v, fields).tolist()))
    check_values(v, out, fields)


@pytest.mark.parametrize("entity,keys", [
    (USER, {"user_id": pa.array([1, None, 3], pa.int64())}),
    (SHOP, {"shop_code": pa.array(["a", None, "c"])}),
    (PAIR, {"user_id": pa.array([1, 2, 3], pa.int64()), "shop_code": pa.array(["a", "b", None])}),
])
def test_a_row_without_its_key_fails_the_batch(entity, keys):
    v = view(entity)
    with pytest.raises(ValueError, match=r"1 of 3 rows have no (user_id|shop_code) \(null\)"):
        written(v, batch(keys, 3))


@pytest.mark.parametrize("arrow_type", [pa.string(), pa.large_string(), pa.dictionary(pa.int32(), pa.string())])
def test_a_string_key_longer_than_its_max_length_fails_the_batch(arrow_type):
    """The gateway refuses such keys in requests: rows stored under them could never be read."""
    short = view(Entity("shop", (EntityKey("shop_code", "string", max_length=4),)))
    codes = pa.array(["ab", "é" * 3, "abcd"]).cast(arrow_type)  # 6 UTF-8 bytes in 3 characters
    with pytest.raises(ValueError, match=r"1 of 3 rows have a shop_code longer than its max_length \(4 bytes\)"):
        written(short, batch({"shop_code": codes}, 3))
    assert len(written(short, batch({"shop_code": pa.array(["ab", "éé", "abcd"]).cast(arrow_type)}, 3))) == 3


def test_the_writer_never_imports_pandas(tmp_path):
    """A cold Spark worker would pay about half a second for it. The batch comes from an Arrow
    IPC file, as a worker's come from Spark (building it from Python lists imports pandas)."""
    data = batch({"user_id": pa.array([1, 2], pa.int64()), "shop_code": pa.array(["a", None]).fill_null("b")}, 2)
    with pa.ipc.new_file(str(tmp_path / "b.arrow"), data.schema) as sink:
        sink.write_batch(data)
    root = Path(__file__).resolve().parents[3]
    code = ("import sys, pyarrow as pa\n"
            "from datetime import timedelta\n"
            "from features_online import layout\n"
            "from features_online.definitions import Entity, EntityKey, Feature, FeatureView\n"
            "from features_online.redis_client import ClientSpec\n"
            "from features_online.writer import PartitionWriter, _feature\n"
            "v = FeatureView('v', Entity('e', (EntityKey('user_id'), EntityKey('shop_code', 'string'))),\n"
            "                (Feature('ratio', 'float', 0.0), Feature('vip', 'bool', True)), timedelta(hours=1))\n"
            f"data = pa.ipc.open_file({str(tmp_path / 'b.arrow')!r}).get_batch(0)\n"
            "records = layout.encode_records(v, 5, {f.name: _feature(data.column(f.name), f) for f in v.features})\n"
            "keys = [k.encode() for k in layout.bucket_keys('p', v, 1)]\n"
            "w = PartitionWriter(ClientSpec('redis://127.0.0.1:1/0', False), v, 'p', 1, 10, 60)\n"
            "assert sum(rows for _, _, rows in w.commands(data, keys, records)) == 2\n"
            "assert 'pandas' not in sys.modules, 'pandas imported'\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
