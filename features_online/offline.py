"""A feature repository's offline data in Spark: sources, and the events a view is computed from.

A source is Parquet (a file, folder or glob), a table of the Spark catalog, or a Spark SQL query
in which the other sources are visible as temporary views under their names. A view's events are
its source, then its transformation if it declares one (Spark SQL over ``source`` and every
source by name, or a Python ``module:function`` from the repository folder), with the event time
as ``ts_us``: exact epoch microseconds, from a timestamp column or epoch seconds.
"""

from __future__ import annotations

import importlib
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from features_online.definitions import FeatureView
from features_online.errors import FeatureJobError
from features_online.repository import Repository

US = 1_000_000
TS = "ts_us"
"""The event-time column of a view's events: epoch microseconds (long)."""
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def micros(t: datetime) -> int:
    """``t`` (naive means UTC) as exact epoch microseconds."""
    t = t if t.tzinfo else t.replace(tzinfo=timezone.utc)
    return (t - EPOCH) // timedelta(microseconds=1)


def source_frame(spark, repo: Repository, name: str):
    """The DataFrame of source ``name`` (Parquet, a catalog table or SQL over other sources)."""
    return _source(spark, repo, name, ())


def _source(spark, repo: Repository, name: str, visiting: tuple[str, ...]):
    if name in visiting:
        raise FeatureJobError(f"source {name!r} refers to itself: {' -> '.join((*visiting, name))}")
    if name not in {s.name for s in repo.spec.sources}:
        raise FeatureJobError(f"unknown source {name!r}")
    source = repo.source(name)
    try:
        if source["parquet"]:
            return spark.read.parquet(source["parquet"])
        if source["table"]:
            return spark.table(source["table"])
        return _sql(spark, repo, source["sql"], (*visiting, name), {})
    except FeatureJobError:
        raise
    except Exception as exc:  # Spark's AnalysisException and friends: a bad path, table or query
        raise FeatureJobError(f"source {name!r} cannot be read: {_first_line(exc)}") from exc


def _sql(spark, repo: Repository, query: str, visiting: tuple[str, ...], extra: dict[str, Any]):
    """Run ``query`` with ``extra`` ({name: DataFrame}) and the sources it names as temp views.

    Only the sources whose names appear in the query are read. The DataFrame returned is
    analysed at once, so re-registering a name later does not change it."""
    for other in repo.spec.sources:
        if other.name not in extra and re.search(rf"\b{re.escape(other.name)}\b", query):
            _source(spark, repo, other.name, visiting).createOrReplaceTempView(other.name)
    for view_name, frame in extra.items():
        frame.createOrReplaceTempView(view_name)
    return spark.sql(query)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def timestamp_column(repo: Repository, view: FeatureView) -> str | None:
    """The view's event-time column: its own, else its source's (None: a snapshot without times)."""
    if view.spec.get("timestamp"):
        return view.spec["timestamp"]
    source = view.spec.get("source")
    return repo.source(source)["timestamp"] if source else None


def event_micros(frame, column: str):
    """Column ``column`` of ``frame`` as epoch microseconds: a timestamp (or date, or ISO text)
    keeps its microseconds; a number is epoch seconds (fractions down to the microsecond)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if column not in frame.columns:
        raise FeatureJobError(f"no event-time column {column!r} (columns: {', '.join(frame.columns)})")
    kind = frame.schema[column].dataType
    col = F.col(column)
    if isinstance(kind, (T.ByteType, T.ShortType, T.IntegerType, T.LongType)):
        return col.cast("long") * US
    if isinstance(kind, (T.FloatType, T.DoubleType, T.DecimalType)):
        return F.round(col.cast("double") * US).cast("long")
    return F.unix_micros(col.cast("timestamp"))


def transformed(spark, repo: Repository, view: FeatureView):
    """The view's source after its transformation (if any): the rows its features come from."""
    frame = source_frame(spark, repo, view.spec["source"])
    transformation = view.spec.get("transformation")
    if not transformation:
        return frame
    if transformation.get("sql"):
        try:
            return _sql(spark, repo, transformation["sql"], (), {"source": frame})
        except FeatureJobError:
            raise
        except Exception as exc:
            raise FeatureJobError(f"view {view.name!r}: its SQL transformation failed: {_first_line(exc)}") from exc
    function = python_function(repo, transformation["python"])
    result = function(frame)
    if not hasattr(result, "schema") or not hasattr(result, "columns"):
        raise FeatureJobError(f"view {view.name!r}: {transformation['python']} returned "
                              f"{type(result).__name__}, not a Spark DataFrame")
    return result


def python_function(repo: Repository, target: str):
    """``module:function``, imported with the repository folder first on ``sys.path``. A module
    of that name imported earlier from elsewhere (another repository) is imported afresh."""
    module_name, function_name = target.split(":", 1)
    if repo.root is not None:
        root = str(repo.root)
        if root not in sys.path:
            sys.path.insert(0, root)
        loaded = sys.modules.get(module_name)
        where = getattr(loaded, "__file__", None) if loaded is not None else None
        if where and not Path(where).resolve().is_relative_to(repo.root.resolve()):
            for name in [n for n in sys.modules if n == module_name or n.startswith(module_name + ".")]:
                del sys.modules[name]
            sys.path.remove(root)
            sys.path.insert(0, root)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise FeatureJobError(f"transformation {target}: cannot import {module_name!r} "
                              f"(looked in {repo.root} first): {exc}") from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        raise FeatureJobError(f"transformation {target}: {module_name} has no function {function_name!r}")
    if repo.root is not None and getattr(module, "__file__", None):
        # Python UDFs it defines travel to the executors by value: there the repository folder
        # is not on sys.path (nor, on a cluster, on the disk)
        from pyspark import cloudpickle

        cloudpickle.register_pickle_by_value(module)
    return function


def events(spark, repo: Repository, view: FeatureView):
    """The view's rows with typed key columns and ``ts_us`` (None without an event time):
    every column of the transformed source is kept (aggregations and filters read them)."""
    from pyspark.sql import functions as F

    frame = transformed(spark, repo, view)
    missing = [k for k in view.entity.key_names if k not in frame.columns]
    if missing:
        raise FeatureJobError(f"view {view.name!r}: its rows lack the key columns {missing} "
                              f"(columns: {', '.join(frame.columns)})")
    column = timestamp_column(repo, view)
    ts = event_micros(frame, column) if column else F.lit(None).cast("long")
    keys = [F.col(k.name).cast("long" if k.type == "int64" else "string").alias(k.name) for k in view.entity.keys]
    others = [F.col(f"`{c}`") for c in frame.columns if c not in view.entity.key_names and c != TS]
    return frame.select(*keys, ts.alias(TS), *others).where(
        F.expr(" AND ".join(f"`{k}` IS NOT NULL" for k in view.entity.key_names)))
