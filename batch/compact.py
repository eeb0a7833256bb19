"""``mlgate log compact``: the inference log's Redis streams into its Parquet table.

For each model with a stream (the set ``<prefix>:log:models``) and each kind (``log``, ``labels``):
read entries after the last one compacted, in pages of ``page`` entries; write each page's rows
as one Parquet file per day (batch/log_table.py names it by the page's first and last entry
ids); then record the page as done and delete its entries from the stream. Exactly once, without
a transaction across Redis and the file system: the page's id range is recorded (``pending``)
before its files are written, so a compactor that dies part way redoes exactly that range and
overwrites the same files, and the entries leave the stream only once their files exist.
Two compactors never work on one stream at once (a lease per stream).

A copy with no shuffle and no join: it runs in the command's own process with pyarrow, not as a
Spark application (a JVM start per run, and Spark's own file names would make a redone page a
duplicate). Spark reads the result: ``mlgate log sql``, ``mlgate monitor``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from batch import log_table
from serving.errors import CommandFailed
from serving.inference_log import stream

log = logging.getLogger(__name__)

PAGE = 2_000
"""Stream entries per page (an entry holds up to ``inference_log.batch_rows`` rows)."""
LEASE_S = 300


@dataclass
class Compacted:
    """What one run wrote: rows per (kind, model), and the files."""

    rows: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    files: list[str] = field(default_factory=list)


def compact(client, prefix: str, root: str, models: list[str] | None = None, page: int = PAGE) -> Compacted:
    """Compact every stream of ``models`` (default: every model that has one)."""
    if models is None:
        models = sorted(m.decode() if isinstance(m, bytes) else m for m in client.smembers(stream.models_key(prefix)))
    done = Compacted()
    for model in models:
        for kind in stream.KINDS:
            compact_stream(client, prefix, root, kind, model, page, done)
    return done


def compact_stream(client, prefix: str, root: str, kind: str, model: str, page: int = PAGE,
                   done: Compacted | None = None) -> Compacted:
    done = done if done is not None else Compacted()
    key = stream.stream_key(prefix, kind, model)
    checkpoint = stream.checkpoint_key(prefix, kind, model)
    lease = f"{checkpoint}:lease"
    token = secrets.token_hex(8)
    if not client.set(lease, token, nx=True, ex=LEASE_S):
        raise CommandFailed(f"another compactor is working on {key}: try again once it is done")
    try:
        while True:
            pending = client.hget(checkpoint, "pending")
            if pending:  # a page an earlier run began: exactly that range again
                first, last = pending.decode().split(" ")
                entries = client.xrange(key, first, last)
            else:
                after = client.hget(checkpoint, "done")
                entries = client.xrange(key, "(" + after.decode() if after else "-", "+", count=page)
                if not entries:
                    break
                first, last = _id(entries[0][0]), _id(entries[-1][0])
                client.hset(checkpoint, "pending", f"{first} {last}")
            if entries:
                _write_page(root, kind, model, first, last, entries, done)
            client.hset(checkpoint, "done", last)
            client.hdel(checkpoint, "pending")
            client.xtrim(key, minid=_after(last), approximate=False)  # this page, and any a crash left
            client.expire(lease, LEASE_S)  # still working
            if not pending and len(entries) < page:
                break
    finally:
        if client.get(lease) == token.encode():
            client.delete(lease)
    return done


def _write_page(root: str, kind: str, model: str, first: str, last: str, entries, done: Compacted) -> None:
    import pyarrow.parquet as pq

    records: list[dict[str, Any]] = []
    for _, fields in entries:
        records.extend(stream.decode(fields))
    rows = log_table.prediction_rows(records) if kind == "log" else log_table.label_rows(records)
    by_day: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_day[log_table.day_of(row["ts"])].append(row)
    fs, base = _filesystem(root)
    for day, day_rows in sorted(by_day.items()):
        folder = log_table.partition(base, kind, model, day)
        fs.create_dir(folder, recursive=True)
        path = f"{folder}/part-{first}-{last}.parquet"
        pq.write_table(log_table.arrow_table(day_rows, kind), path, filesystem=fs)
        done.files.append(path)
    done.rows[(kind, model)] += len(rows)


def _filesystem(root: str):
    """The pyarrow file system of ``root`` (a local folder, or a URL such as ``s3://bucket/log``)."""
    from pyarrow import fs

    if "://" in root and not root.startswith("file://"):
        return fs.FileSystem.from_uri(root)
    path = root[len("file://"):] if root.startswith("file://") else root
    return fs.LocalFileSystem(), path


def _after(entry_id: str) -> str:
    """The smallest stream id above ``entry_id`` (XTRIM MINID keeps ids at or above it)."""
    ms, seq = entry_id.split("-")
    return f"{ms}-{int(seq) + 1}"


def _id(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def write_labels(root: str, model: str, rows: list[dict[str, Any]], name: str) -> list[str]:
    """Label rows of a bulk file straight into the labels table, one file per day named after
    the input (``name``: loading the same file again rewrites, never duplicates)."""
    import pyarrow.parquet as pq

    by_day: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_day[log_table.day_of(row["ts"])].append(row)
    fs, base = _filesystem(root)
    paths = []
    for day, day_rows in sorted(by_day.items()):
        folder = log_table.partition(base, "labels", model, day)
        fs.create_dir(folder, recursive=True)
        path = f"{folder}/file-{name}.parquet"
        pq.write_table(log_table.arrow_table(day_rows, "labels"), path, filesystem=fs)
        paths.append(path)
    return paths


def now_micros() -> int:
    return time.time_ns() // 1000
