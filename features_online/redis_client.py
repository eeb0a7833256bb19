"""Redis clients built from settings, in one place: sync (Spark writers, CLI) and asyncio (gateway)."""

from __future__ import annotations

from typing import Any

from serving.settings import RedisSettings


def _options(settings: RedisSettings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout_ms / 1000,
        "socket_timeout": settings.socket_timeout_ms / 1000,
        "max_connections": settings.max_connections,
    }
    if settings.password is not None:
        options["password"] = settings.password.get_secret_value()
    return options


def connect(settings: RedisSettings, *, socket_timeout_s: float | None = None):
    """A blocking client (``redis.Redis`` or ``redis.RedisCluster``)."""
    import redis

    options = _options(settings)
    if socket_timeout_s is not None:
        options["socket_timeout"] = socket_timeout_s
    if settings.cluster:
        options.pop("max_connections")
        return redis.RedisCluster.from_url(settings.url, **options)
    return redis.Redis.from_url(settings.url, **options)


def connect_async(settings: RedisSettings):
    """An asyncio client with a bounded pool (``redis.asyncio.Redis`` or ``RedisCluster``)."""
    import redis.asyncio as aioredis

    options = _options(settings)
    if settings.cluster:
        options.pop("max_connections")
        return aioredis.RedisCluster.from_url(settings.url, **options)
    return aioredis.Redis.from_url(settings.url, **options)
