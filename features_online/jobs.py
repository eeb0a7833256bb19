"""The feature jobs as the CLI runs them: build the offline table, sync it to Redis, and the
point-in-time features training reads. Paths and Spark come from :class:`StoreSettings`."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from features_online import spark_job
from features_online.definitions import CUSTOMER_ACTIVITY, FeatureView
from features_online.errors import OfflineTableMissing, SyncError
from features_online.parquet_pieces import ParquetTable
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


def _tx(settings: StoreSettings) -> str:
    return str(settings.data_dir / "transactions.parquet")


def build(settings: StoreSettings, spark, as_of: datetime | None = None,
          view: FeatureView = CUSTOMER_ACTIVITY) -> tuple[Path, datetime]:
    """Write the offline feature table as of ``as_of`` (default: just after the latest event)."""
    as_of = as_of or spark_job.default_as_of(spark, _tx(settings))
    frame = spark_job.build(spark, _tx(settings), str(settings.data_dir / "customers.parquet"), as_of, view)
    path = spark_job.write_offline(frame, spark_job.offline_path(settings.offline_dir, view, as_of))
    log.info("built %s as of %s: %s", view.name, as_of.isoformat(), path)
    return path, as_of


def latest_table(settings: StoreSettings, view: FeatureView = CUSTOMER_ACTIVITY) -> tuple[Path, datetime]:
    # complete tables only: Spark writes _SUCCESS once every part file is in place
    tables = sorted(t for t in (settings.offline_dir / view.name / f"v{view.version}").glob("as_of=*")
                    if (t / "_SUCCESS").exists())
    if not tables:
        raise OfflineTableMissing(f"no offline table for {view.name}: run `mlgate features build`")
    stamp = tables[-1].name.split("=", 1)[1]
    return tables[-1], datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=spark_job.timezone.utc)


def sync(settings: StoreSettings, spark, mode: str = "full", view: FeatureView = CUSTOMER_ACTIVITY) -> SyncResult:
    """Push the latest offline table to Redis: all of it, or only entities with new events."""
    path, as_of = latest_table(settings, view)
    syncer = FeatureSync(settings.redis, settings.features, view)
    if mode == "incremental":
        watermark = syncer.meta().get("watermark_ms")
        if watermark is None:
            raise SyncError(f"{view.name} was never synced: run a full sync first")
        since = datetime.fromtimestamp(int(watermark) / 1000, spark_job.timezone.utc)
        changed = spark_job.changed_since(spark, _tx(settings), since, as_of, view.entity.key)
        frame = spark.read.parquet(str(path)).join(changed, view.entity.key, "left_semi")
        frame = spark_job.writer_partitions(frame, settings.spark.sync_partitions)
        result = syncer.incremental(frame, as_of, str(path))
    else:  # the whole table as written: the writers read its row groups themselves
        result = syncer.full(ParquetTable(spark, str(path), settings.spark.sync_partitions), as_of, str(path))
    log.info("%s sync of %s: %d rows in %.1fs (%.0f rows/s)", result.mode, view.name, result.rows,
             result.seconds, result.rows_per_s)
    return result


def training_features(settings: StoreSettings, spark, since: datetime,
                      view: FeatureView = CUSTOMER_ACTIVITY):
    """Point-in-time view features of every transaction after ``since`` (pandas, by row_id)."""
    return spark_job.transaction_features(spark, _tx(settings), since, view).toPandas()
