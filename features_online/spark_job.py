"""The Spark feature job: raw transactions (Parquet) -> per-customer features as of a time.

Runs on ``local[*]`` by default and on any Spark master unchanged. The output, the offline
feature table, is what both training and the Redis sync read, so the two cannot drift apart.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

from features_online.definitions import CUSTOMER_ACTIVITY, FeatureView

DAY_S = 86_400
US = 1_000_000  # event times and ages are exact integers of microseconds
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def spark_session(master: str = "local[*]", app: str = "mlgate-features", shuffle_partitions: int = 8,
                  log_file: Path | None = None):
    """A Spark session for the feature jobs. With ``log_file``, the JVM's stderr (log4j's console
    appender, the JVM's own warnings, the Python workers it forks) goes to that file instead of
    the terminal; without it, where this process's stderr goes (tests, ``--debug``)."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(master).appName(app)
    if master.startswith("local"):
        # Python workers must be this interpreter (the venv with pyarrow, redis, mlgate); on a
        # cluster the image decides.
        # PySpark reads this one from the environment when the context starts.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = (builder.config("spark.pyspark.python", sys.executable)
                   # its pyspark from site-packages (bytecode cached), not from Spark's zip
                   .config("spark.python.daemon.module", "features_online.spark_daemon"))
    builder = (builder
            .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config("spark.sql.execution.arrow.maxRecordsPerBatch", "50000")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.driver.memory", "4g"))
    if log_file is None:
        return builder.getOrCreate()
    with stderr_to(log_file):  # the JVM starts here and keeps the stderr it inherits
        return builder.getOrCreate()


@contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """File descriptor 2 of this process points at ``path`` (appended) inside the block: what
    starts a child process here (the Spark JVM) hands it that file as its stderr for good."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as log:
            os.dup2(log.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def offline_path(root: Path, view: FeatureView, as_of: datetime) -> Path:
    return root / view.name / f"v{view.version}" / f"as_of={as_of.strftime('%Y%m%dT%H%M%SZ')}"


def default_as_of(spark, transactions_path: str) -> datetime:
    """One second after the latest event, whole seconds: the build then sees every event."""
    from pyspark.sql import functions as F

    latest = spark.read.parquet(transactions_path).agg(F.max(F.unix_timestamp("ts"))).first()[0]
    return datetime.fromtimestamp(int(latest) + 1, timezone.utc)


def features_at(spark, transactions_path: str, spine, view: FeatureView = CUSTOMER_ACTIVITY):
    """Point-in-time features for each row of ``spine`` (columns ``row_id``, the entity key and
    ``ref_s``, epoch seconds): aggregates over the entity's events with ``ref_s - 30d <= ts < ref_s``.

    The one definition of the view's features: the serving snapshot (one row per customer, all
    at the same ``ref_s``) and the training table (one row per labelled transaction, at its own
    time) both come from here, so training and serving compute features the same way.
    Returns ``row_id``, the entity key, ``as_of_ms`` and the view's features (defaults filled).
    Event times keep their microseconds: ``seconds_since_last_txn`` of an event at ``ref_s - 0.5``
    is 0.5, not the 1.0 a whole-second event time would give.
    """
    from pyspark.sql import functions as F

    if view is not CUSTOMER_ACTIVITY:
        raise ValueError(f"no Spark definition for view {view.name!r}")
    key = view.entity.key
    tx = spark.read.parquet(transactions_path).select(
        F.col(key).cast("long").alias(key), F.unix_micros(F.col("ts").cast("timestamp")).alias("ts_us"),
        "amount", "merchant_id", "is_foreign", "is_online")
    joined = (spine.join(tx, key)
              .withColumn("age_us", F.col("ref_s") * US - F.col("ts_us"))
              .where((F.col("age_us") > 0) & (F.col("age_us") <= 30 * DAY_S * US)))

    def within(days: int, value):
        return F.when(F.col("age_us") <= days * DAY_S * US, value)

    aggregates = []
    for d in (1, 7, 30):
        aggregates.append(F.count(within(d, F.lit(1))).alias(f"txn_count_{d}d"))
        aggregates.append(F.sum(within(d, F.col("amount"))).alias(f"amount_sum_{d}d"))
    aggregates += [
        F.avg("amount").alias("amount_mean_30d"),
        F.max("amount").alias("amount_max_30d"),
        F.countDistinct("merchant_id").alias("distinct_merchants_30d"),
        F.avg(F.col("is_foreign").cast("double")).alias("foreign_share_30d"),
        F.avg(F.col("is_online").cast("double")).alias("online_share_30d"),
        (F.min("age_us") / US).alias("seconds_since_last_txn"),
    ]
    activity = joined.groupBy("row_id").agg(*aggregates)
    columns = [F.col("row_id"), F.col(key).cast("long").alias(key),
               (F.col("ref_s") * 1000).cast("long").alias("as_of_ms")]
    for f in view.features:
        cast = "long" if f.dtype == "long" else "double"
        columns.append(F.coalesce(F.col(f.name).cast(cast), F.lit(f.default).cast(cast)).alias(f.name))
    return spine.join(activity, "row_id", "left").select(*columns)


def build(spark, transactions_path: str, customers_path: str, as_of: datetime,
          view: FeatureView = CUSTOMER_ACTIVITY):
    """The serving snapshot: every known customer's features from events before ``as_of``."""
    from pyspark.sql import functions as F

    key = view.entity.key
    spine = spark.read.parquet(customers_path).select(
        F.col(key).cast("long").alias("row_id"), F.col(key).cast("long").alias(key),
        F.lit(int(as_of.timestamp())).cast("long").alias("ref_s"))
    return features_at(spark, transactions_path, spine, view).drop("row_id")


def transaction_features(spark, transactions_path: str, since: datetime,
                         view: FeatureView = CUSTOMER_ACTIVITY):
    """Training rows: each transaction after ``since`` with the features as they were at the start
    of its second (``row_id`` = transaction_id). Whole seconds, as the serving snapshots' as-of
    times are: an earlier event of the same customer within the same second is not counted, a
    far smaller gap than the one between a served snapshot and the request that reads it."""
    from pyspark.sql import functions as F

    key = view.entity.key
    spine = (spark.read.parquet(transactions_path)
             .where(F.unix_timestamp("ts") > F.lit(int(since.timestamp())))
             .select(F.col("transaction_id").cast("long").alias("row_id"), F.col(key).cast("long").alias(key),
                     F.unix_timestamp("ts").alias("ref_s")))
    return features_at(spark, transactions_path, spine, view)


def write_offline(frame, path: Path) -> Path:
    frame.write.mode("overwrite").parquet(str(path))
    return path


def writer_partitions(frame, n: int):
    """``frame`` in ``n`` partitions for the Redis writers: merged without a shuffle when the input
    has at least ``n`` (a Spark-written table has a partition per file or row group), spread by
    a shuffle only when it has fewer."""
    return frame.coalesce(n) if frame.rdd.getNumPartitions() >= n else frame.repartition(n)


def changed_since(spark, transactions_path: str, since: datetime, until: datetime,
                  key: str = CUSTOMER_ACTIVITY.entity.key):
    """Entity keys with events in [since, until): what an incremental sync refreshes.

    A table as of ``since`` holds the events before ``since`` (:func:`features_at`), one as of
    ``until`` those before ``until``: the events it adds are exactly these, one exactly at
    ``until`` included in the next refresh, never in this one."""
    from pyspark.sql import functions as F

    since_us, until_us = ((t - EPOCH) // timedelta(microseconds=1) for t in (since, until))
    ts = F.unix_micros(F.col("ts").cast("timestamp"))
    return (spark.read.parquet(transactions_path)
            .where((ts >= F.lit(since_us)) & (ts < F.lit(until_us)))
            .select(F.col(key).cast("long").alias(key)).distinct())


def parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
