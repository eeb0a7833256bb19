"""The feature jobs as the CLI runs them, for any feature repository: build a view's offline
table, sync it to Redis, and point-in-time training sets. Paths and Spark come from
:class:`StoreSettings`; the repository from a folder, or the one applied to the online store."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

from features_online import repository, spark_job
from features_online.definitions import FeatureView
from features_online.errors import FeatureJobError, OfflineTableMissing, SyncError
from features_online.parquet_pieces import ParquetTable
from features_online.redis_client import address, connect
from features_online.repository import Repository, RepositoryError
from features_online.settings import StoreSettings
from features_online.sync import FeatureSync, SyncResult

log = logging.getLogger(__name__)


def spark_log(settings: StoreSettings) -> Path:
    return settings.state_dir / "logs" / "spark.log"


def session(settings: StoreSettings, debug: bool = False):
    """The commands' Spark session. Spark's log4j lines and the JVM's warnings go to
    ``<state_dir>/logs/spark.log``, not the terminal; with ``debug``, to the terminal."""
    spark = spark_job.spark_session(settings.spark.master, shuffle_partitions=settings.spark.shuffle_partitions,
                                    log_file=None if debug else spark_log(settings))
    spark.sparkContext.setLogLevel("WARN")
    return spark


def load_repository(settings: StoreSettings, path: Path | str | None = None) -> Repository:
    """The repository in folder ``path``, else the one applied to the online store."""
    if path is not None:
        try:
            return repository.load(path)
        except RepositoryError as exc:
            raise FeatureJobError(f"invalid feature repository: {exc}") from None
    import redis

    client = connect(settings.redis)
    try:
        applied = repository.applied(client, settings.redis.prefix)
    except redis.RedisError as exc:
        raise FeatureJobError(f"cannot read the applied feature repository from {_where(settings)} "
                              f"({type(exc).__name__}): start Redis, or pass --repo PATH") from exc
    finally:
        client.close()
    if applied is None:
        raise FeatureJobError(f"no feature repository applied to {_where(settings)} (prefix "
                              f"{settings.redis.prefix!r}): run `mlgate apply PATH`, or pass --repo PATH")
    return applied


def _where(settings: StoreSettings) -> str:
    return address(settings.redis)


def views(repo: Repository, names: list[str] | tuple[str, ...] | None = None,
          online_only: bool = True) -> list[FeatureView]:
    """The views named (all online views of ``repo`` if none are), refusing unknown names."""
    if not names:
        chosen = [v for v in repo.views.values() if v.online or not online_only]
        if not chosen:
            raise FeatureJobError("the repository has no online views")
        return chosen
    unknown = [n for n in names if n not in repo.views]
    if unknown:
        raise FeatureJobError(f"no view {', '.join(map(repr, unknown))} in the repository "
                              f"(views: {', '.join(sorted(repo.views)) or 'none'})")
    offline_only = [n for n in names if online_only and not repo.views[n].online]
    if offline_only:
        raise FeatureJobError(f"{', '.join(offline_only)}: offline-only views (online: false) are not synced")
    return [repo.views[n] for n in names]


def build(settings: StoreSettings, spark, repo: Repository, view: FeatureView,
          as_of: datetime | None = None) -> tuple[Path, datetime]:
    """Write ``view``'s offline table as of ``as_of`` (default: just after its latest event)."""
    as_of = as_of or spark_job.default_as_of(spark, repo, view)
    frame = spark_job.build(spark, repo, view, as_of)
    path = spark_job.write_offline(frame, spark_job.offline_path(settings.offline_dir, view, as_of))
    log.info("built %s as of %s: %s", view.name, as_of.isoformat(), path)
    return path, as_of


def latest_table(settings: StoreSettings, view: FeatureView) -> tuple[Path, datetime]:
    # complete tables only: Spark writes _SUCCESS once every part file is in place
    tables = sorted(t for t in (settings.offline_dir / view.name / f"v{view.version}").glob("as_of=*")
                    if (t / "_SUCCESS").exists())
    if not tables:
        raise OfflineTableMissing(f"no offline table for {view.name} (schema {view.version}): "
                                  "run `mlgate features build`")
    stamp = tables[-1].name.split("=", 1)[1]
    return tables[-1], datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)


def sync(settings: StoreSettings, spark, repo: Repository, view: FeatureView, mode: str = "full") -> SyncResult:
    """Push ``view``'s latest offline table to Redis: all of it, or only entities with new events."""
    path, as_of = latest_table(settings, view)
    syncer = FeatureSync(settings.redis, settings.features, view)
    if mode == "incremental":
        watermark = syncer.meta().get("watermark_ms")
        if watermark is None:
            raise SyncError(f"{view.name} was never synced: run a full sync first")
        since = datetime.fromtimestamp(int(watermark) / 1000, timezone.utc)
        changed = spark_job.changed_since(spark, repo, view, since, as_of)
        frame = spark.read.parquet(str(path)).join(changed, list(view.entity.key_names), "left_semi")
        frame = spark_job.writer_partitions(frame, settings.spark.sync_partitions)
        result = syncer.incremental(frame, as_of, str(path))
    else:  # the whole table as written: the writers read its row groups themselves
        result = syncer.full(ParquetTable(spark, str(path), settings.spark.sync_partitions), as_of, str(path))
    log.info("%s sync of %s: %d rows in %.1fs (%.0f rows/s)", result.mode, view.name, result.rows,
             result.seconds, result.rows_per_s)
    return result


def read_entities(spark, path: Path | str, text_columns: tuple[str, ...] = ()):
    """An entity table from Parquet or CSV (with a header). CSV columns are typed by inference,
    except ``text_columns`` (string keys: "007" is not 7)."""
    from pyspark.sql import types as T

    path = Path(path)
    if not path.exists():
        raise FeatureJobError(f"{path}: no such file")
    if path.suffix.lower() == ".parquet" or path.is_dir():
        return spark.read.parquet(str(path))
    if path.suffix.lower() != ".csv":
        raise FeatureJobError(f"{path}: entity tables are .parquet or .csv")
    frame = spark.read.csv(str(path), header=True, inferSchema=True)
    if not any(f.name in text_columns and not isinstance(f.dataType, T.StringType) for f in frame.schema.fields):
        return frame
    schema = T.StructType([T.StructField(f.name, T.StringType() if f.name in text_columns else f.dataType, True)
                           for f in frame.schema.fields])
    return spark.read.csv(str(path), header=True, schema=schema)


def training_set(spark, repo: Repository, entities, features, timestamp: str = "event_timestamp",
                 output: Path | str | None = None):
    """A point-in-time training set (a Spark DataFrame; also written as Parquet to ``output``).

    ``entities``: a Spark DataFrame, a pandas DataFrame or a .parquet/.csv path with the key
    columns, the time column and any labels; ``features``: ``view__feature`` or view names."""
    import pandas as pd

    features = list(features)
    if isinstance(entities, (str, Path)):
        text = tuple(k.name for v in spark_job.requested(repo, features)
                     for k in repo.views[v].entity.keys if k.type == "string")
        entities = read_entities(spark, entities, text)
    elif isinstance(entities, pd.DataFrame):
        entities = spark.createDataFrame(entities)
    frame = spark_job.training_set(spark, repo, entities, features, timestamp)
    if output is not None:
        frame.write.mode("overwrite").parquet(str(output))
        frame = spark.read.parquet(str(output))
    return frame
