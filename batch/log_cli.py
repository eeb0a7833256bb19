"""``mlgate log``: the inference log's commands (entry point ``mlgate.commands``).

``mlgate log compact`` moves the Redis streams into the Parquet table (batch/compact.py);
``mlgate log labels FILE --model NAME`` loads a bulk label file (CSV or Parquet) into the labels
table; ``mlgate log sql QUERY`` runs Spark SQL over the tables (views ``inference_log`` and
``inference_labels``).
"""

from __future__ import annotations

import argparse
import hashlib
import math
from pathlib import Path
from typing import Any

from serving.errors import UsageError
from serving.settings import Settings

LABEL_VALUE_COLUMNS = ("label", "value")


def cmd_log(args: argparse.Namespace, settings: Settings) -> int:
    return {"compact": _compact, "labels": _labels, "sql": _sql}[args.action](args, settings)


def _compact(args: argparse.Namespace, settings: Settings) -> int:
    from batch.compact import compact
    from features_online.redis_client import connect

    redis = settings.inference_log.redis or settings.redis
    client = connect(redis)
    try:
        done = compact(client, redis.prefix, settings.log_table, args.model or None)
    finally:
        client.close()
    if not done.rows:
        print("nothing to compact")
    for (kind, model), rows in sorted(done.rows.items()):
        print(f"{model}: {rows:,} {'prediction' if kind == 'log' else 'label'} rows -> "
              f"{settings.log_table}/{kind}/model={model}")
    return 0


def _labels(args: argparse.Namespace, settings: Settings) -> int:
    from batch.compact import write_labels

    if not args.model:
        raise UsageError("mlgate log labels FILE --model NAME: which model the labels are for")
    path = Path(args.arguments[0]) if args.arguments else None
    if path is None or not path.is_file():
        raise UsageError(f"mlgate log labels: no such file {path}")
    rows = label_file_rows(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    written = write_labels(settings.log_table, args.model, rows, digest)
    print(f"{len(rows):,} labels of {args.model} -> {', '.join(written)}")
    return 0


def label_file_rows(path: Path) -> list[dict[str, Any]]:
    """Label rows of a bulk file: columns ``request_id``, ``label`` or ``value``, optional ``row``
    and ``time`` (Unix seconds or an ISO time). Every row is checked; the first bad one is named."""
    import pandas as pd

    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype={"request_id": str})
    value = next((c for c in LABEL_VALUE_COLUMNS if c in frame.columns), None)
    if "request_id" not in frame.columns or value is None:
        raise UsageError(f"{path}: needs columns request_id and label (or value); has {', '.join(frame.columns)}")
    now = pd.Timestamp.now(tz="UTC")
    times = _times(frame["time"], path) if "time" in frame.columns else [now] * len(frame)
    rows = []
    for i, (rid, y, when) in enumerate(zip(frame["request_id"], frame[value], times)):
        row = frame["row"].iloc[i] if "row" in frame.columns else None
        if not isinstance(rid, str) or not rid or len(rid) > 128:
            raise UsageError(f"{path}: line {i + 1}: request_id must be text of 1-128 characters")
        try:
            y = float(y)
        except (TypeError, ValueError):
            raise UsageError(f"{path}: line {i + 1}: {value} {y!r} is not a number") from None
        if not math.isfinite(y):
            raise UsageError(f"{path}: line {i + 1}: {value} is not finite")
        if row is not None and (pd.isna(row) or int(row) < 0):
            row = None if pd.isna(row) else int(row)
            if row is not None:
                raise UsageError(f"{path}: line {i + 1}: row must be 0 or more")
        rows.append({"request_id": rid, "row": None if row is None else int(row), "label": y,
                     "ts": int(when.value // 1000), "source": "file", "client": None})
    return rows


def _times(column, path: Path) -> list:
    """Each ``time`` as a UTC timestamp: Unix seconds, or an ISO 8601 time (a column may mix them)."""
    import pandas as pd

    times = []
    for i, value in enumerate(column):
        if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
            times.append(pd.Timestamp.now(tz="UTC"))  # an empty cell: known now
            continue
        try:
            try:
                times.append(pd.Timestamp(float(value), unit="s", tz="UTC"))
            except (TypeError, ValueError):
                stamp = pd.Timestamp(str(value))
                times.append(stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC"))
        except (TypeError, ValueError, OverflowError) as exc:
            raise UsageError(f"{path}: line {i + 1}: time {value!r}: {exc}") from None
    return times


def _sql(args: argparse.Namespace, settings: Settings) -> int:
    from batch import log_table
    from features_online import jobs
    from features_online.progress import step

    if not args.arguments:
        raise UsageError('mlgate log sql "SELECT ... FROM inference_log": the query')
    with step("starting Spark"):
        spark = jobs.session(settings, debug=getattr(args, "debug", False))
    try:
        for kind, view in (("log", "inference_log"), ("labels", "inference_labels")):
            frame = log_table.read(spark, settings.log_table, kind)
            if frame is not None:
                frame.createOrReplaceTempView(view)
        spark.sql(" ".join(args.arguments)).show(args.limit, truncate=False)
    finally:
        spark.stop()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("log", help="the inference log: compact its Redis streams to Parquet, load label files, "
                                    "query it with Spark SQL")
    sp.add_argument("action", choices=("compact", "labels", "sql"))
    sp.add_argument("arguments", nargs="*", help="labels: the label file (CSV or Parquet); sql: the query")
    sp.add_argument("--model", action="append", help="compact: only this model (repeatable); labels: the model")
    sp.add_argument("--limit", type=int, default=50, help="sql: rows to show")
    sp.set_defaults(func=_dispatch)


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "labels" and args.model:
        if len(args.model) != 1:
            raise UsageError("mlgate log labels: one --model")
        args.model = args.model[0]
    return cmd_log(args, settings)
