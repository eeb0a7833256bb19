"""The gateway's reader of versioned views, feature views and batch-score views alike: one Redis
round trip per request, whatever it asks.

Which data version of each view is live is kept in memory and refreshed in the background (every
``pointer_refresh_s``); a request reads with the versions it saw at its start, so it can never mix
two versions, and a replaced version outlives the refresh interval (``retire_grace_s``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from redis.exceptions import NoScriptError

from features_online import layout
from features_online.definitions import FeatureView
from features_online.errors import StoreUnavailable
from features_online.redis_client import connect_async
from features_online.settings import FeatureSettings, RedisSettings
from observability.metrics import GatewayMetrics

log = logging.getLogger(__name__)


# KEYS[i] is the bucket hash of the entity in ARGV[i]; absent fields come back as nil.
GET_MANY = """
local values = {}
for i = 1, #KEYS do
  values[i] = redis.call('HGET', KEYS[i], ARGV[i])
end
return values
"""
GET_MANY_SHA = hashlib.sha1(GET_MANY.encode()).hexdigest()


@dataclass(frozen=True)
class LiveVersion:
    version: int
    as_of_ms: int
    watermark_ms: int
    rows: int
    extra: Mapping[str, str] = field(default_factory=dict)
    """Facts the writer attached (meta fields ``x_*``), e.g. the model version of batch scores."""
    keys: tuple[bytes, ...] = ()
    """The version's bucket keys, by bucket, encoded (built once per version, not per request)."""
    view: FeatureView | None = None
    """The schema the data was written with: the view's newest definition, or an older schema
    version of it that keeps serving until the newest has been synced."""


@dataclass(frozen=True)
class ViewRead:
    """What the store holds for the requested entities of one view, row-aligned."""

    view: FeatureView  # the schema version read (its features may be fewer than the newest's)
    records: np.ndarray  # structured, layout.record_dtype(view); zeros where absent
    present: np.ndarray  # bool
    age_s: np.ndarray  # float, NaN where absent

    @property
    def stale(self) -> np.ndarray:
        return self.present & (self.age_s > self.view.ttl.total_seconds())


Schemas = Mapping[str, "FeatureView | tuple[FeatureView, ...]"]
"""Views by name: one definition, or its schema versions newest first."""


class ViewReader:
    """Reads the live data version of each of its views (features, or a model's batch scores).

    A view may come with older schema versions of itself (:meth:`set_views`): the newest one that
    has a synced data version is served, so a schema change never leaves a gap."""

    def __init__(self, redis: RedisSettings, features: FeatureSettings, views: Schemas,
                 metrics: GatewayMetrics) -> None:
        self._redis_settings = redis
        self._settings = features
        self._metrics = metrics
        self._client = None
        self._views: dict[str, tuple[FeatureView, ...]] = {}
        self._live: dict[str, LiveVersion | None] = {}
        self._task: asyncio.Task | None = None
        self._mismatched: set[str] = set()
        self.set_views(views)

    @property
    def client(self):
        if self._client is None:  # created on the serving loop, lazily
            self._client = connect_async(self._redis_settings)
        return self._client

    def live(self, view: str) -> LiveVersion | None:
        return self._live.get(view)

    def views(self) -> dict[str, FeatureView]:
        """The newest definition of every view read."""
        return {name: schemas[0] for name, schemas in self._views.items()}

    def set_views(self, views: Schemas) -> None:
        """Read these views from now on (a newly applied repository): views no longer named are
        dropped, new ones are read after the next refresh, and a view whose newest schema changed
        keeps serving its last live version until the refresh finds which one to serve."""
        self._views = {name: (v,) if isinstance(v, FeatureView) else tuple(v) for name, v in views.items()}
        self._live = {name: self._live.get(name) for name in self._views}

    def add_view(self, view: FeatureView) -> None:
        """Serve one more view (e.g. a model's batch scores); picked up at the next refresh."""
        if view.name not in self._views:
            self._views[view.name] = (view,)
            self._live[view.name] = None

    async def start(self) -> None:
        try:
            await self.refresh()
        except StoreUnavailable as exc:
            log.error("online store not reachable at start: %s (will keep trying)", exc.message)
        self._task = asyncio.create_task(self._refresh_forever(), name="feature-pointers")

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.pointer_refresh_s)
            try:
                await self.refresh()
            except StoreUnavailable:
                pass  # reads report it; keep the last known pointers

    async def refresh(self) -> None:
        """Re-read the meta hash of every schema version of every view: which one serves, its
        live data version, freshness."""
        wanted = [(name, view) for name, schemas in self._views.items() for view in schemas]
        prefix = self._redis_settings.prefix
        try:
            async with asyncio.timeout(self._redis_settings.socket_timeout_ms / 1000):
                pipe = self.client.pipeline(transaction=False)
                for _, view in wanted:
                    pipe.hgetall(layout.meta_key(prefix, view))
                metas = await pipe.execute()
        except Exception as exc:
            self._metrics.feature_store_errors.labels("refresh").inc()
            log.debug("meta refresh failed: %r", exc)
            raise StoreUnavailable("online store unreachable", "refresh") from None
        now_ms = time.time() * 1000
        found: dict[str, LiveVersion | None] = {}
        for (name, view), raw in zip(wanted, metas):
            if found.get(name) is not None:
                continue  # a newer schema version of this view is live
            meta = {k.decode(): v.decode() for k, v in raw.items()}
            found[name] = self._live_version(name, view, meta)
        for name, live in found.items():
            if name not in self._live:
                continue  # dropped by set_views meanwhile
            self._live[name] = live
            if live is not None:
                self._metrics.feature_version.labels(name).set(live.version)
                self._metrics.feature_age.labels(name).set((now_ms - live.watermark_ms) / 1000)

    def _live_version(self, name: str, view: FeatureView, meta: dict[str, str]) -> LiveVersion | None:
        if not meta.get("version"):
            return None
        if meta.get("fingerprint") != view.fingerprint:
            if name not in self._mismatched:
                log.error("view %s: the synced schema differs from this gateway's definition; "
                          "not serving it", name)
                self._mismatched.add(name)
            return None
        self._mismatched.discard(name)
        version, previous = int(meta["version"]), self._live.get(name)
        keys = (previous.keys if previous is not None and previous.version == version and previous.view == view
                else tuple(k.encode() for k in layout.bucket_keys(self._redis_settings.prefix, view, version)))
        return LiveVersion(version, int(meta["as_of_ms"]), int(meta.get("watermark_ms", meta["as_of_ms"])),
                           int(meta.get("rows", 0)), {k[2:]: v for k, v in meta.items() if k.startswith("x_")},
                           keys, view)

    async def read(self, ids_by_view: Mapping[str, layout.RowKeys], timeout_s: float) -> dict[str, ViewRead]:
        """Values of the given entities for each view, in one round trip. Views with no live
        version read as all-absent. Each view's rows are given as int64 ids (a single ``int64``
        key) or as encoded fields (:func:`features_online.layout.encode_fields`).

        One command for all views: a script doing one HGET per row (keys may repeat), cheaper to
        send and parse than one HMGET per bucket touched (about 50 for 100 entities), and than one
        script call per view (each its own command in a pipeline). A request whose rows all sit
        in one bucket of one view (one entity, typically) is one plain HMGET, cheaper than a
        script; on a Redis Cluster, whose scripts cannot span slots, one HMGET per bucket.
        """
        # (view name, row positions or None for all rows, command args) per command; the one
        # script call of several views has name None and its rows cut by ``spans``
        plan: list[tuple[str | None, Any, tuple]] = []
        spans: list[tuple[str, int, int]] = []  # (view, first, end) of the script's reply
        live = {name: self._live.get(name) for name in ids_by_view}
        wanted = []  # (view name, bucket per row, field per row, the version's bucket keys)
        for name, ids in ids_by_view.items():
            version = live[name]
            if version is None or not len(ids):
                continue
            if isinstance(ids, np.ndarray) and len(ids) == 1:  # the common call: no array work
                entity = int(ids[0])
                wanted.append((name, [entity % version.view.buckets], [layout.field(entity)], version.keys))
                continue
            wanted.append((name, layout.bucket_of(version.view, ids).tolist(), layout.fields(ids), version.keys))
        if not self._redis_settings.cluster and (len(wanted) > 1 or (wanted and len(set(wanted[0][1])) > 1)):
            keys, fields = [], []
            for name, buckets, view_fields, bucket_keys in wanted:
                spans.append((name, len(fields), len(fields) + len(view_fields)))
                keys += [bucket_keys[b] for b in buckets]  # bytes: redis-py sends them as they are
                fields += view_fields
            plan.append((None, None, ("EVALSHA", GET_MANY_SHA, len(keys), *keys, *fields)))
        else:
            for name, buckets, view_fields, bucket_keys in wanted:
                distinct = sorted(set(buckets))
                if len(distinct) == 1:
                    plan.append((name, None, ("HMGET", bucket_keys[distinct[0]], *view_fields)))
                    continue
                by_bucket = np.asarray(buckets)
                for bucket in distinct:
                    rows = np.flatnonzero(by_bucket == bucket)
                    plan.append((name, rows, ("HMGET", bucket_keys[bucket], *[view_fields[r] for r in rows.tolist()])))
        replies = []
        if plan:
            try:
                replies = await self._within(self._execute([command for _, _, command in plan]), timeout_s)
            except Exception as exc:
                timeout = isinstance(exc, TimeoutError)
                reason = "timeout" if timeout else "unavailable"
                self._metrics.feature_store_errors.labels(reason).inc()
                if not timeout:
                    log.debug("online store read failed: %r", exc)  # counted; per request, so not at INFO
                raise StoreUnavailable("online store did not answer in time" if timeout
                                       else "online store unreachable", reason) from None
        values: dict[str, list] = {}
        for (name, rows, _), reply in zip(plan, replies):
            if name is None:  # the one script call: each view's rows in order
                for view_name, first, end in spans:
                    values[view_name] = reply[first:end]
                continue
            if rows is None:  # one command for the whole view, row-aligned
                values[name] = reply
                continue
            slots = values.setdefault(name, [None] * len(ids_by_view[name]))
            for row, value in zip(rows.tolist(), reply):
                slots[row] = value
        for name, ids in ids_by_view.items():  # views with no live version
            values.setdefault(name, [None] * len(ids))
        now_ms = time.time() * 1000
        result = {}
        for name, slots in values.items():
            view = live[name].view if live.get(name) is not None else self._views[name][0]
            records, present = layout.decode(view, slots)
            age = np.where(present, (now_ms - records["as_of_ms"]) / 1000, np.nan)
            result[name] = ViewRead(view, records, present, age)
        return result

    async def _within(self, work, timeout_s: float):
        """``work``'s result, or TimeoutError once ``timeout_s`` has passed, whatever the client
        does when cancelled.

        A single Redis's client stops at once, so ``asyncio.timeout`` does. redis-py's cluster
        client does not always: while the cluster answered ``CLUSTERDOWN`` (a failover under
        way), reads given a few milliseconds were measured ending ~0.28 s later with an error of
        their own instead of the cancellation (its 0.25 s pause and slot-map refresh on that
        error; tests/integration/test_redis_cluster.py). On a cluster
        the work therefore runs as a task of its own that is cancelled and left to end by itself
        (its outcome dropped), so a request's deadline holds."""
        if not self._redis_settings.cluster:
            async with asyncio.timeout(timeout_s):
                return await work
        task = asyncio.ensure_future(work)
        try:
            done, _ = await asyncio.wait((task,), timeout=timeout_s)
        except BaseException:  # the caller was cancelled: so is the work
            task.cancel()
            task.add_done_callback(_drop_outcome)
            raise
        if not done:
            task.cancel()
            task.add_done_callback(_drop_outcome)
            raise TimeoutError
        return task.result()

    async def _execute(self, commands: list[tuple]) -> list:
        """One round trip: the command alone, or several in one pipeline. The read script is
        called by its SHA (a script object would ask SCRIPT EXISTS first: a second round trip);
        if Redis does not know it (first use, restart), it is loaded and the commands sent
        again, once."""
        for attempt in (0, 1):
            try:
                if len(commands) == 1:  # no pipeline object for the usual single command
                    return [await self.client.execute_command(*commands[0])]
                pipe = self.client.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)
                return await pipe.execute()
            except NoScriptError:
                if attempt:
                    raise
                await self.client.script_load(GET_MANY)
        return []

    async def sample_entity(self, view_name: str) -> dict[str, Any] | None:
        """The keys of some entity of the live version (for example requests), or None."""
        live = self._live.get(view_name)
        if live is None:
            return None
        view = live.view
        for bucket in range(view.buckets):
            key = layout.bucket_key(self._redis_settings.prefix, view, live.version, bucket)
            found = await self.client.hrandfield(key)
            if found is not None:
                return layout.decode_field(view.entity, found)
        return None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._client is not None:
            await self._client.aclose()


def _drop_outcome(task: asyncio.Task) -> None:
    """Retrieve an abandoned read's outcome, so that asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()
