"""The feature store's settings sections: the online store (Redis), feature policies and Spark.

The gateway's one settings object (``serving.settings.Settings``) extends :class:`StoreSettings`,
so a feature job, the sync or the reader can be built and tested from these sections alone,
without the gateway. Nothing is read at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Section(BaseModel):
    """A settings section: unknown keys are refused, values never change after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RedisSettings(Section):
    url: str = "redis://127.0.0.1:6379/0"
    """Online store (features, fallback scores). ``rediss://`` for TLS."""
    password: SecretStr | None = None
    """Password (or put it in the URL); never logged."""
    cluster: bool = False
    """Talk to a Redis Cluster (keys carry hash tags: see features_online/layout.py)."""
    prefix: str = Field("mlg", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    """Namespace of every key mlgate writes."""
    max_connections: int = Field(64, gt=0)
    """Connection pool size of one gateway replica."""
    connect_timeout_ms: int = Field(200, gt=0)
    """Give up connecting after this long: Redis down must fail fast, never hang."""
    socket_timeout_ms: int = Field(500, gt=0)
    """Give up on an answer after this long (the request deadline may cut it shorter)."""


class FeatureSettings(Section):
    on_missing: Literal["default", "error", "fallback"] = "default"
    """Entity not in the online store (a never-seen customer is normal): serve the view's default
    values (marked ``status: "missing"`` per row), serve the row's batch score (503 if there is
    none fresh enough), or refuse with 422 ``features_missing``. A view's own ``on_missing``
    overrides it."""
    on_stale: Literal["default", "serve", "error", "fallback"] = "serve"
    """Values older than the view's TTL: serve them anyway (flagged stale per row), use defaults,
    refuse with 422 ``features_stale``, or serve the row's batch score. A view's own
    ``on_stale`` overrides it."""
    repository_poll_s: float = Field(2.0, gt=0)
    """How often a gateway checks whether a new feature repository was applied (``mlgate apply``):
    new views and models are served without a restart."""
    pointer_refresh_s: float = Field(1.0, gt=0)
    """How often the gateway re-reads which data version of each view is live."""
    retire_grace_s: int = Field(60, gt=0)
    """A replaced data version lives this long after a flip, so in-flight readers finish."""
    sync_batch_rows: int = Field(1000, gt=0)
    """Rows per Redis command in a sync."""
    sync_lease_s: float = Field(30.0, gt=0)
    """Length of the lease a sync holds on its view (so two syncs never run at once); the sync
    renews it every third of that. A sync killed without freeing it (SIGKILL, OOM, node loss)
    blocks the next one for at most this long; a sync that cannot renew it for this long (a
    stalled process, Redis out of reach) loses it and does not flip."""


class SparkSettings(Section):
    master: str = "local[*]"
    """Spark master for the feature, sync and batch jobs (any cluster works unchanged)."""
    shuffle_partitions: int = Field(8, gt=0)
    """spark.sql.shuffle.partitions: small by default, data sets here are small."""
    sync_partitions: int = Field(2, gt=0)
    """Parallel Redis writers in a sync (one per partition)."""


class StoreSettings(BaseSettings):
    """What the feature jobs and the online reader need: local state, Redis, policies, Spark.
    ``MLGATE_`` environment variables, nested with ``__`` (``MLGATE_REDIS__URL``)."""

    model_config = SettingsConfigDict(
        env_prefix="MLGATE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    state_dir: Path = Path(".mlgate")
    """Local state: demo data, offline tables, the SQLite MLflow store, artifacts, pid files."""
    redis: RedisSettings = RedisSettings()
    features: FeatureSettings = FeatureSettings()
    spark: SparkSettings = SparkSettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("state_dir")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        # Ray workers and Spark executors may run elsewhere than the launching shell.
        return path.expanduser().resolve()

    def without_secrets(self) -> dict[str, Any]:
        """These settings as JSON values with every secret left out, for a config that other
        processes read back (a Serve config's application args). A secret never travels as a
        value, nor as the mask JSON makes of it: each process reads its own from its environment
        (``MLGATE_REDIS__PASSWORD``, ``MLGATE_ADMIN__TOKEN``: a Kubernetes Secret, or the
        environment ``mlgate serve`` hands the Ray processes it starts)."""
        return self.model_dump(mode="json", exclude=_secret_fields(self) or None)

    @property
    def data_dir(self) -> Path:
        """Raw tables (Parquet): the lakehouse input of the feature and training jobs."""
        return self.state_dir / "data"

    @property
    def offline_dir(self) -> Path:
        """Offline feature tables written by the Spark feature job."""
        return self.state_dir / "features"


def _secret_fields(model: BaseModel) -> dict[str, Any]:
    """``model_dump``'s ``exclude`` for every secret set in ``model``, at any depth."""
    exclude: dict[str, Any] = {}
    for name, value in model:
        if isinstance(value, SecretStr):
            exclude[name] = True
        elif isinstance(value, BaseModel) and (inner := _secret_fields(value)):
            exclude[name] = inner
    return exclude
