"""Offline feature table (a Spark DataFrame, or a Parquet table the writers read) -> Redis,
written from inside Spark's partitions.

A full sync writes a new data version beside the live one, checks that Redis acknowledged every
row, then flips the view's pointer in one script: readers see the old version or the new one,
never a mix. The replaced version (and any version a dead sync left behind) is then expired after
a grace period. An incremental sync rewrites only the given entities, in place, in the live
version (one atomic HSET field each). Sync facts live in the view's meta hash (see layout.py).

A sync holds a short lease on its view (lease.py), so that a killed sync blocks the next one for
one lease at most. The flip, like every write of the meta hash, checks in the same script that
the lease is still the sync's own: a sync that lost it never flips.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator, Literal

from features_online import layout
from features_online.definitions import FeatureView
from features_online.errors import LeaseHeld, LeaseLost, SyncError
from features_online.lease import Lease
from features_online.parquet_pieces import ParquetTable
from features_online.redis_client import client_spec, connect
from features_online.settings import FeatureSettings, RedisSettings
from features_online.writer import PartitionWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncResult:
    view: str
    mode: Literal["full", "incremental"]
    version: int
    rows: int
    seconds: float
    retired: tuple[int, ...] = ()

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def key_ttl_s(view: FeatureView) -> int:
    """Keys outlive the view's TTL twice over: stale values stay readable (and flagged) for a
    while; a view whose syncs stopped long ago empties itself."""
    return int(view.ttl.total_seconds() * 2)


class FeatureSync:
    def __init__(self, redis: RedisSettings, features: FeatureSettings, view: FeatureView) -> None:
        self.redis = redis
        self.settings = features
        self.view = view
        self.client = connect(redis, socket_timeout_s=30)
        self.meta_key = layout.meta_key(redis.prefix, view)

    def meta(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.client.hgetall(self.meta_key).items()}

    def live_version(self) -> int | None:
        value = self.meta().get("version")
        return int(value) if value else None

    @contextmanager
    def _lease(self) -> Iterator[Lease]:
        """The view's sync lease for the length of the block, renewed in the background."""
        lease_s = self.settings.sync_lease_s
        # A client of its own that gives up well within a renewal interval and never resends on
        # its own (the sync's client waits 30 s for an answer, and redis-py's default retries
        # would hold one renewal for several socket timeouts): the lease retries by itself.
        client = connect(self.redis, socket_timeout_s=lease_s / 6, retries=0)
        lease = Lease(client, layout.lock_key(self.redis.prefix, self.view), lease_s)
        try:
            lease.acquire()
        except LeaseHeld as exc:
            client.close()
            raise SyncError(f"another sync of {self.view.name} is running: {exc}") from exc
        try:
            yield lease
        finally:
            lease.release()
            client.close()

    def _write(self, frame, version: int) -> int:
        """Write every row of ``frame`` into ``version`` in one Spark job; returns the row count.

        ``frame`` is a Spark DataFrame (each partition's rows reach the writer through
        ``mapInArrow``) or a :class:`ParquetTable` (each writer decodes its own row groups).
        The input is read once: each partition counts the rows it received and the rows Redis
        acknowledged (no separate ``count()`` pass)."""
        writer = PartitionWriter(client_spec(self.redis, socket_timeout_s=30), self.view, self.redis.prefix,
                                 version, self.settings.sync_batch_rows, key_ttl_s(self.view))
        try:
            if isinstance(frame, ParquetTable):
                counts = frame.map_partitions(writer.write_pieces)
            else:
                columns = frame.select(*writer.columns)  # key columns, as_of_ms, features
                counts = [(c["rows"], c["written"])
                          for c in columns.mapInArrow(writer, schema="rows long, written long").collect()]
        except Exception as exc:  # a failed Spark job: nothing flips
            raise SyncError(f"writing {self.view.name} v{version} failed: {exc}") from exc
        rows, written = sum(c[0] for c in counts), sum(c[1] for c in counts)
        if written != rows:
            raise SyncError(f"{self.view.name} v{version}: Redis acknowledged {written} of {rows} rows")
        return rows

    def full(self, frame, as_of: datetime, source: str, extra: dict[str, str] | None = None) -> SyncResult:
        """Write every row of ``frame`` as a new data version, verify, flip, retire the old one.
        ``extra`` facts (e.g. the model version of batch scores) go into the meta hash with it."""
        started = time.perf_counter()
        with self._lease() as lease:
            meta = self.meta()
            previous = int(meta["version"]) if meta.get("version") else None
            abandoned = int(meta["writing"]) if meta.get("writing") else None
            version = int(self.client.hincrby(self.meta_key, "next_version", 1))
            self._hset(lease, f"v{version} was not started", {"writing": version})
            expected = self._write(frame, version)
            if expected == 0:  # a table still being written, or an empty one: never make it live
                raise SyncError(f"{self.view.name} v{version}: the source holds no rows; the live "
                                "version stays")
            stored = self._stored(version)
            if stored != expected:  # duplicates in the input, or writes lost on the way
                raise SyncError(f"{self.view.name} v{version}: {stored} entities stored for {expected} rows")
            try:
                self._flip(lease, version, expected, as_of, source, extra or {})
            except SyncError:  # lease lost: a sync that took over no longer knows of this version
                self.retire(version)
                raise
            retired = tuple(v for v in (previous, abandoned) if v is not None and v != version)
            for old in retired:
                self.retire(old)
        return SyncResult(self.view.name, "full", version, expected, time.perf_counter() - started, retired)

    def incremental(self, frame, as_of: datetime, source: str) -> SyncResult:
        """Rewrite the rows of ``frame`` (changed entities) in the live version, in place."""
        started = time.perf_counter()
        with self._lease() as lease:
            meta = self.meta()
            if not meta.get("version"):
                raise SyncError(f"{self.view.name} has no live version: run a full sync first")
            if meta.get("fingerprint") != self.view.fingerprint:
                raise SyncError(f"{self.view.name}: the live version has another schema; run a full sync")
            version = int(meta["version"])
            expected = self._write(frame, version)
            # Lost lease: _hset refuses, because another sync may have run meanwhile and its newer
            # rows may have been overwritten in place (writers do not check the token).
            self._hset(lease, "the watermark stays; another sync may have run meanwhile and some of "
                              "its rows may now hold older values: run a full sync", {
                "watermark_ms": int(as_of.timestamp() * 1000), "incremental_rows": expected,
                "incremental_source": source, "finished_at_ms": int(time.time() * 1000)})
        return SyncResult(self.view.name, "incremental", version, expected, time.perf_counter() - started)

    def _stored(self, version: int) -> int:
        pipe = self.client.pipeline(transaction=False)
        for key in layout.bucket_keys(self.redis.prefix, self.view, version):
            pipe.hlen(key)
        return sum(pipe.execute())

    def _hset(self, lease: Lease, consequence: str, mapping: dict, drop: tuple[str, ...] = ()) -> None:
        """Write the meta hash only if ``lease`` is still ours (checked in the same script): a
        sync that lost it may run beside the one that took over, and must not touch the view."""
        try:
            lease.hset_if_held(self.meta_key, mapping, drop)
        except LeaseLost as exc:
            raise SyncError(f"{self.view.name}: {exc}; {consequence}") from exc

    def _flip(self, lease: Lease, version: int, rows: int, as_of: datetime, source: str,
              extra: dict[str, str]) -> None:
        """Point the view at ``version`` in one script, which also checks that the lease is ours:
        of two syncs that both believe they hold it, at most one flips."""
        as_of_ms = int(as_of.timestamp() * 1000)
        self._hset(lease, f"v{version} was not made live", {
            **{f"x_{k}": v for k, v in extra.items()},
            "version": version, "rows": rows, "as_of_ms": as_of_ms, "watermark_ms": as_of_ms,
            "source": source, "fingerprint": self.view.fingerprint,
            "finished_at_ms": int(time.time() * 1000)},
            drop=("writing", "incremental_rows", "incremental_source"))
        log.info("%s: v%d live (%d rows, as of %s)", self.view.name, version, rows,
                 datetime.fromtimestamp(as_of_ms / 1000, timezone.utc).isoformat())

    def retire(self, version: int) -> None:
        """Give every bucket of ``version`` a short TTL (readers holding the old pointer finish)."""
        pipe = self.client.pipeline(transaction=False)
        for key in layout.bucket_keys(self.redis.prefix, self.view, version):
            pipe.expire(key, self.settings.retire_grace_s)
        pipe.execute()
