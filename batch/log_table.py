"""The inference log's Parquet table: its layout, its columns, and how Spark reads it.

Two tables under one root (``Settings.log_table``), partitioned by model and day (UTC)::

    <root>/log/model=<name>/date=<YYYY-MM-DD>/part-<first entry id>-<last entry id>.parquet
    <root>/labels/model=<name>/date=<YYYY-MM-DD>/part-....parquet

File names come from the Redis stream entry ids they hold, so compacting the same entries again
rewrites the same file instead of adding a copy (batch/compact.py).

Prediction rows, one per answered row::

    request_id string, row int (index in the request), ts timestamp (UTC), version string,
    variant string, client string, status string ("ok" or the error code), source string
    ("online", "batch_fallback"), fallback_reason string, latency_ms double,
    key_<entity key>      as sent (int64 or string)
    in_<model input>      double (numbers and booleans) or string: request-time inputs and the
                          stored features the model was given
    out_<model output>    double or string (label, probability, prediction, ...)

Label rows: ``request_id, row (null: every row of the request), label double, ts, source
("api", "file"), client``. Join on ``request_id`` (and ``row`` when set): :func:`labelled`.

Numbers are written as doubles whatever their JSON type, so files of different days (an input
that was 3 then 3.5) always merge into one Spark schema.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable

KEY, INPUT, OUTPUT = "key_", "in_", "out_"
META = ("request_id", "row", "ts", "version", "variant", "client", "status", "source", "fallback_reason",
        "latency_ms")
OUTPUT_META = ("source", "fallback_reason", "model_version", "features", "score_age_s")
"""Fields of a prediction that are not model outputs (``model_version`` is the row's version)."""
LABEL_COLUMNS = ("request_id", "row", "label", "ts", "source", "client")


def partition(root: str, kind: str, model: str, day: str) -> str:
    return f"{root.rstrip('/')}/{kind}/model={model}/date={day}"


def day_of(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1e6, timezone.utc).strftime("%Y-%m-%d")


def prediction_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat rows (one per answered row; one with ``row`` 0 and no outputs for a failed request)
    from the stream's columnar records (serving/inference_log/stream.py)."""
    rows: list[dict[str, Any]] = []
    for r in records:
        out = r.get("out") or [None]
        keys = r.get("keys") or []
        inputs = r.get("in") or {}
        base = {"request_id": r["id"], "ts": r["t"], "version": r.get("ver") or None, "variant": r.get("var"),
                "client": r.get("cl"), "status": r.get("st", "ok"), "latency_ms": r.get("ms")}
        for i, answer in enumerate(out):
            row = dict(base, row=i)
            if i < len(keys) and isinstance(keys[i], dict):
                for name, value in keys[i].items():
                    row[KEY + name] = value
            for name, values in inputs.items():
                if i < len(values):
                    row[INPUT + name] = values[i]
            if answer is not None:
                row["source"] = answer.get("source")
                row["fallback_reason"] = answer.get("fallback_reason")
                if answer.get("model_version"):
                    row["version"] = str(answer["model_version"])
                for name, value in answer.items():
                    if name not in OUTPUT_META:
                        row[OUTPUT + name] = value
            rows.append(row)
    return rows


def label_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"request_id": r["id"], "row": r.get("row"), "label": float(r["y"]), "ts": r["t"],
             "source": r.get("src", "api"), "client": r.get("cl")} for r in records]


def arrow_table(rows: list[dict[str, Any]], kind: str):
    """A pyarrow table of flat rows: ``ts`` as a UTC timestamp, numbers and booleans of the
    ``key_``/``in_``/``out_`` columns as doubles (keys keep int64), text as strings."""
    import pyarrow as pa

    names: dict[str, None] = dict.fromkeys(META if kind == "log" else LABEL_COLUMNS)
    for row in rows:
        names.update(dict.fromkeys(row))
    columns = {}
    for name in names:
        values = [row.get(name) for row in rows]
        columns[name] = _array(name, values)
    return pa.table(columns)


def _array(name: str, values: list[Any]):
    import pyarrow as pa

    if name == "ts":
        return pa.array(values, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    if name == "row":
        return pa.array(values, pa.int64())
    if name in ("latency_ms", "label"):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    present = [v for v in values if v is not None]
    if not name.startswith((KEY, INPUT, OUTPUT)) or any(isinstance(v, str) for v in present):
        return pa.array([None if v is None else str(v) for v in values], pa.string())
    if name.startswith(KEY) and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.array(values, pa.int64())
    if all(isinstance(v, (int, float)) for v in present):  # bool is an int
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    return pa.array([None if v is None else str(v) for v in values], pa.string())


def read(spark, root: str, kind: str = "log", model: str | None = None, since: datetime | None = None,
         until: datetime | None = None):
    """The table as a Spark DataFrame (``model`` and ``date`` columns from the partitions), for
    one model and a ``[since, until)`` window if given; None when nothing was compacted yet."""
    from pyspark.sql import functions as F

    base = f"{root.rstrip('/')}/{kind}"
    path = f"{base}/model={model}" if model is not None else base
    if not _exists(spark, path):
        return None
    frame = spark.read.option("mergeSchema", "true").option("basePath", base).parquet(path)
    if since is not None:
        frame = frame.where((F.col("date") >= since.strftime("%Y-%m-%d")) & (F.col("ts") >= F.lit(since)))
    if until is not None:
        frame = frame.where((F.col("date") <= until.strftime("%Y-%m-%d")) & (F.col("ts") < F.lit(until)))
    return frame


def labelled(log, labels):
    """``log`` rows with their ``label`` (inner join on the request id; a label without ``row``
    applies to every row of its request; the newest label of a row wins)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    l = labels.select("request_id", F.col("row").alias("label_row"), "label", F.col("ts").alias("label_ts"))
    joined = log.join(l, (log.request_id == l.request_id) & (l.label_row.isNull() | (l.label_row == log.row)))
    joined = joined.drop(l.request_id)
    newest = Window.partitionBy("request_id", "row").orderBy(F.col("label_ts").desc())
    return (joined.withColumn("_n", F.row_number().over(newest)).where("_n = 1")
            .drop("_n", "label_row", "label_ts"))


def _exists(spark, path: str) -> bool:
    jvm = spark._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    return hpath.getFileSystem(spark._jsc.hadoopConfiguration()).exists(hpath)
