"""The Spark feature jobs of any feature repository: a view's features as of any times.

:func:`features_at` is the one definition of a view's values: the offline table that the Redis
sync serves (:func:`build`: every entity as of one time) and a point-in-time training set
(:func:`training_set`: each labelled row as of its own time) both come from it, so training and
serving compute features the same way. Runs on ``local[*]`` by default and on any Spark master
unchanged. Sources and events: :mod:`features_online.offline`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable

from features_online import offline
from features_online.definitions import SEPARATOR, FeatureView
from features_online.errors import FeatureJobError
from features_online.offline import TS, US, micros, source_frame  # noqa: F401  (source_frame: API)
from features_online.repository import Repository, parse_duration

SPARK_TYPES = {"double": "double", "float": "float", "long": "bigint", "int": "int", "bool": "boolean"}
REF = "ref_us"
"""A spine's reference time: epoch microseconds; values come from events strictly before it."""


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



# -- where tables go, and when --------------------------------------------------------------------

def offline_path(root: Path, view: FeatureView, as_of: datetime) -> Path:
    return root / view.name / f"v{view.version}" / f"as_of={as_of.strftime('%Y%m%dT%H%M%SZ')}"


def default_as_of(spark, repo: Repository, view: FeatureView) -> datetime:
    """One second after the view's latest event, whole seconds: a build then sees every event.
    A view without event times: now (whole seconds)."""
    from pyspark.sql import functions as F

    if offline.timestamp_column(repo, view) is None:
        return datetime.now(timezone.utc).replace(microsecond=0)
    latest = offline.events(spark, repo, view).agg(F.max(TS)).first()[0]
    if latest is None:
        raise FeatureJobError(f"view {view.name!r} has no events: nothing to build")
    return datetime.fromtimestamp(int(latest) // US + 1, timezone.utc)


def changed_since(spark, repo: Repository, view: FeatureView, since: datetime, until: datetime):
    """The entity keys with events in [since, until): what an incremental sync refreshes.

    A table as of ``since`` holds the events before ``since`` (:func:`features_at`), one as of
    ``until`` those before ``until``: the events it adds are exactly these, one exactly at
    ``until`` included in the next refresh, never in this one. A view without event times:
    every key (any row may have changed)."""
    from pyspark.sql import functions as F

    frame = offline.events(spark, repo, view)
    if offline.timestamp_column(repo, view) is not None:
        frame = frame.where((F.col(TS) >= F.lit(micros(since))) & (F.col(TS) < F.lit(micros(until))))
    return frame.select(*view.entity.key_names).distinct()


# -- the values -----------------------------------------------------------------------------------

def features_at(spark, repo: Repository, view: FeatureView, spine, events=None):
    """The view's features for each row of ``spine`` as of its ``ref_us`` (epoch microseconds).

    ``spine`` has the entity's key columns and ``ref_us`` (and any others, e.g. ``row_id``, which
    pass through). Returns the spine's columns, ``as_of_ms`` (``ref_us`` in whole milliseconds)
    and one column per feature, of the feature's dtype, its default where there is no value.
    Aggregations count events with ``ref - window <= ts < ref`` (and the feature's ``where``);
    a window without such events gives the default. A view without aggregations takes each
    value from the latest row with ``ref - ttl <= ts < ref``. ``events``: the view's events
    (:func:`offline.events`) if the caller has them already.
    """
    from pyspark.sql import functions as F

    keys = list(view.entity.key_names)
    events = offline.events(spark, repo, view) if events is None else events
    missing = [c for c in (*keys, REF) if c not in spine.columns]
    if missing:
        raise FeatureJobError(f"view {view.name!r}: the spine lacks {missing}")
    points = spine.select(*_typed_keys(view), F.col(REF).cast("long").alias(REF)).distinct()
    specs = list(view.spec.get("features") or ())
    if len(specs) != len(view.features):
        raise FeatureJobError(f"view {view.name!r} has no offline definition (apply it from its repository)")
    aggregated = specs[0].get("aggregation") is not None
    values = (_aggregated(view, specs, events, points) if aggregated
              else _latest(repo, view, specs, events, points))
    joined = spine.join(values, on=[*keys, REF], how="left")
    out = [F.col(f"`{c}`") for c in spine.columns]
    out.append(F.expr(f"{REF} div 1000").alias("as_of_ms"))
    for i, feature in enumerate(view.features):
        out.append(_with_default(F.col(f"_f{i}"), feature.dtype, feature.default).alias(feature.name))
    return joined.select(*out)


def _typed_keys(view: FeatureView):
    from pyspark.sql import functions as F

    return [F.col(k.name).cast("long" if k.type == "int64" else "string").alias(k.name) for k in view.entity.keys]


def _with_default(column, dtype: str, default):
    from pyspark.sql import functions as F

    kind = SPARK_TYPES[dtype]
    return F.coalesce(column.cast(kind), F.lit(default).cast(kind))


def _column(events, name: str, view: FeatureView):
    from pyspark.sql import functions as F

    if name not in events.columns:
        raise FeatureJobError(f"view {view.name!r}: no column {name!r} in its rows "
                              f"(columns: {', '.join(c for c in events.columns if c != TS)})")
    return F.col(f"`{name}`")


def _aggregated(view: FeatureView, specs: list, events, points):
    """keys, ref_us, ``_f<i>``: each aggregation over its window (null where the window is empty)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    keys = list(view.entity.key_names)
    windows, selected = [], [F.col(k) for k in keys] + [F.col(TS)]
    for i, spec in enumerate(specs):
        agg = spec["aggregation"]
        windows.append(parse_duration(agg["window"]) // timedelta(microseconds=1))
        if agg.get("column"):
            value = _column(events, agg["column"], view)
            numeric = agg["function"] in ("sum", "mean", "min", "max")
            if numeric and isinstance(events.schema[agg["column"]].dataType, T.BooleanType):
                value = value.cast("double")
        else:
            value = F.lit(1)
        where = F.coalesce(F.expr(agg["where"]), F.lit(False)) if agg.get("where") else F.lit(True)
        selected += [value.alias(f"_v{i}"), where.alias(f"_w{i}")]
    ts, ref = F.col(TS), F.col(REF)
    pairs = (points.join(events.select(*selected), on=keys)
             .where((ts < ref) & (ts >= ref - F.lit(max(windows)))))
    functions = {"count": F.count, "sum": F.sum, "mean": F.avg, "min": F.min, "max": F.max,
                 "count_distinct": F.count_distinct}
    aggregates = []
    for i, spec in enumerate(specs):
        name = spec["aggregation"]["function"]
        inside = (ts >= ref - F.lit(windows[i])) & F.col(f"_w{i}")
        if name == "seconds_since_last":
            value = (F.first(ref) - F.max(F.when(inside, ts))) / F.lit(float(US))
        else:
            value = functions[name](F.when(inside, F.col(f"_v{i}")))
        aggregates.append(F.when(F.count(F.when(inside, F.lit(1))) > 0, value).alias(f"_f{i}"))
    return pairs.groupBy(*keys, REF).agg(*aggregates)


def _latest(repo: Repository, view: FeatureView, specs: list, events, points):
    """keys, ref_us, ``_f<i>``: the values of the latest row with ``ref - ttl <= ts < ref``."""
    from pyspark.sql import functions as F

    keys = list(view.entity.key_names)
    values = [_column(events, spec.get("column") or spec["name"], view).alias(f"_v{i}")
              for i, spec in enumerate(specs)]
    pairs = points.join(events.select(*keys, TS, *values), on=keys)
    if offline.timestamp_column(repo, view) is not None:
        ts, ref = F.col(TS), F.col(REF)
        ttl_us = view.ttl // timedelta(microseconds=1)
        pairs = pairs.where((ts < ref) & (ts >= ref - F.lit(ttl_us)))
    # the row with the latest time (ties: the largest values, so the choice never varies)
    latest = F.max(F.struct(F.col(TS), *[F.col(f"_v{i}") for i in range(len(specs))])).alias("_row")
    return (pairs.groupBy(*keys, REF).agg(latest)
            .select(*keys, REF, *[F.col(f"_row._v{i}").alias(f"_f{i}") for i in range(len(specs))]))


def build(spark, repo: Repository, view: FeatureView, as_of: datetime):
    """The offline table as of ``as_of``: key columns, ``as_of_ms`` and the features of every
    entity with events before ``as_of`` (a view without event times: every entity it has)."""
    from pyspark.sql import functions as F

    events = offline.events(spark, repo, view)
    ref = micros(as_of)
    seen = events.where(F.col(TS) < F.lit(ref)) if offline.timestamp_column(repo, view) else events
    spine = seen.select(*view.entity.key_names).distinct().withColumn(REF, F.lit(ref))
    return (features_at(spark, repo, view, spine, events)
            .select(*view.entity.key_names, "as_of_ms", *view.feature_names))


# -- point-in-time training sets ------------------------------------------------------------------

def requested(repo: Repository, features: Iterable[str]) -> dict[str, list[str]]:
    """``view__feature`` and bare view names (all its features) -> {view: [feature, ...]}."""
    wanted: dict[str, list[str]] = {}
    for name in features:
        name = name.strip()
        view_name, _, feature = name.partition(SEPARATOR)
        view = repo.views.get(view_name)
        if view is None:
            raise FeatureJobError(f"{name!r}: no view {view_name!r} in the repository "
                                  f"(views: {', '.join(sorted(repo.views)) or 'none'})")
        if feature and feature not in view.feature_names:
            raise FeatureJobError(f"{name!r}: view {view_name!r} has no feature {feature!r}")
        chosen = wanted.setdefault(view_name, [])
        chosen += [f for f in ([feature] if feature else view.feature_names) if f not in chosen]
    if not wanted:
        raise FeatureJobError("no features requested")
    return wanted


def training_set(spark, repo: Repository, entity_df, features: Iterable[str], timestamp: str = "event_timestamp"):
    """``entity_df`` with one column per requested feature (``view__feature``), each as of its
    row's ``timestamp`` (a timestamp, or epoch seconds): point-in-time correct, computed by
    :func:`features_at` as the served tables are. ``entity_df`` needs the key columns of every
    requested view's entity; its key columns come back typed as the entities declare them.
    A row without a key or a time gets the defaults."""
    from pyspark.sql import functions as F

    wanted = requested(repo, features)
    if timestamp not in entity_df.columns:
        raise FeatureJobError(f"the entity table has no time column {timestamp!r} "
                              f"(columns: {', '.join(entity_df.columns)})")
    ref = "__mlgate_ref_us"
    frame = entity_df.withColumn(ref, offline.event_micros(entity_df, timestamp))
    added: list[str] = []
    for view_name, names in wanted.items():
        view = repo.views[view_name]
        keys = list(view.entity.key_names)
        missing = [k for k in keys if k not in entity_df.columns]
        if missing:
            raise FeatureJobError(f"view {view_name!r} needs the key columns {missing} of entity "
                                  f"{view.entity.name!r} in the entity table")
        clash = [view.qualified(n) for n in names if view.qualified(n) in entity_df.columns]
        if clash:
            raise FeatureJobError(f"the entity table already has columns {clash}")
        frame = frame.withColumns({k.name: c for k, c in zip(view.entity.keys, _typed_keys(view))})
        spine = frame.select(*keys, F.col(ref).alias(REF)).where(F.col(REF).isNotNull()).distinct()
        values = features_at(spark, repo, view, spine).select(
            *keys, F.col(REF).alias(ref), *[F.col(n).alias(view.qualified(n)) for n in names])
        frame = frame.join(values, on=[*keys, ref], how="left")
        for n in names:  # rows without a key or a time matched nothing: defaults too
            feature = view.feature(n)
            frame = frame.withColumn(view.qualified(n), _with_default(F.col(view.qualified(n)),
                                                                      feature.dtype, feature.default))
        added += [view.qualified(n) for n in names]
    return frame.select(*[F.col(f"`{c}`") for c in entity_df.columns], *added)


# -- writing --------------------------------------------------------------------------------------

def write_offline(frame, path: Path) -> Path:
    frame.write.mode("overwrite").parquet(str(path))
    return path


def writer_partitions(frame, n: int):
    """``frame`` in ``n`` partitions for the Redis writers: merged without a shuffle when the input
    has at least ``n`` (a Spark-written table has a partition per file or row group), spread by
    a shuffle only when it has fewer."""
    return frame.coalesce(n) if frame.rdd.getNumPartitions() >= n else frame.repartition(n)


def parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
