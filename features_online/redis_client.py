"""Redis clients built from settings, in one place: sync (Spark writers, CLI) and asyncio (gateway).

Spark's Python workers get a :class:`ClientSpec` (plain data) rather than the settings object, so a
cold worker never imports pydantic or the settings module.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from features_online import wire

if TYPE_CHECKING:
    from features_online.settings import RedisSettings


CLUSTER_RETRIES = 1
"""How often the gateway's cluster client resends a command whose node failed (see
:func:`connect_async`)."""


@dataclass(frozen=True)
class ClientSpec:
    """Everything needed to open a blocking client, picklable into Spark tasks."""

    url: str
    cluster: bool
    options: dict[str, Any] = field(default_factory=dict)


def address(settings: RedisSettings) -> str:
    """The store's address for messages: scheme, host and port, without any password the URL carries."""
    parts = urlsplit(settings.url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}"


def _options(settings: RedisSettings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout_ms / 1000,
        "socket_timeout": settings.socket_timeout_ms / 1000,
        "max_connections": settings.max_connections,
    }
    if settings.password is not None:
        options["password"] = settings.password.get_secret_value()
    return options


def client_spec(settings: RedisSettings, *, socket_timeout_s: float | None = None) -> ClientSpec:
    options = _options(settings)
    if socket_timeout_s is not None:
        options["socket_timeout"] = socket_timeout_s
    if settings.cluster:
        options.pop("max_connections")
    return ClientSpec(settings.url, settings.cluster, options)


def connect_spec(spec: ClientSpec):
    """A blocking client (``redis.Redis`` or ``redis.RedisCluster``) from a :class:`ClientSpec`."""
    import redis

    if spec.cluster:
        return redis.RedisCluster.from_url(spec.url, **spec.options)
    return redis.Redis.from_url(spec.url, **spec.options)


def connect(settings: RedisSettings, *, socket_timeout_s: float | None = None, retries: int | None = None):
    """A blocking client (``redis.Redis`` or ``redis.RedisCluster``). ``retries``: how often a
    command that timed out or lost its connection is sent again (None: redis-py's default, which
    can hold one call for many socket timeouts)."""
    spec = client_spec(settings, socket_timeout_s=socket_timeout_s)
    if retries is not None:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        spec = ClientSpec(spec.url, spec.cluster, {**spec.options, "retry": Retry(NoBackoff(), retries)})
    return connect_spec(spec)


def connect_async(settings: RedisSettings):
    """An asyncio client with a bounded pool (``redis.asyncio.Redis`` or ``RedisCluster``).

    On a cluster, a command that lost its node (killed, partitioned, failing over) is sent again
    once, at once (one broken pooled connection costs no answer): redis-py would resend it up to
    10 times with backoff, spending the whole request deadline on a shard that cannot answer and
    leaving the batch-score fallback only its reserve (loadtests/RESULTS.md, "Redis Cluster
    failover"). The failure still asks for a slot-map refresh, which the next command runs (at
    most once a second), so reads recover once the replica has taken over, nobody acting; MOVED
    and ASK are followed within an attempt."""
    import redis.asyncio as aioredis

    options = _options(settings)
    if settings.cluster:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        options.pop("max_connections")
        return aioredis.RedisCluster.from_url(settings.url, retry=Retry(NoBackoff(), CLUSTER_RETRIES), **options)
    pool = aioredis.ConnectionPool.from_url(settings.url, **options)
    pool.connection_class = _linear_packing(pool.connection_class)  # no connection exists yet
    return aioredis.Redis.from_pool(pool)


@functools.cache
def _linear_packing(connection_class: type) -> type:
    """``connection_class`` (TCP, TLS or Unix socket) packing commands with :func:`wire.pack`: redis-py's
    own packer takes twice as long for the reader's 200-argument script call (100 entities)."""
    return type(f"Linear{connection_class.__name__}", (wire.LinearPacking, connection_class), {})
