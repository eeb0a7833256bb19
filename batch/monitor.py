"""``mlgate monitor``: drift and quality of a model's logged traffic against its training baseline.

For a window of the inference log (batch/log_table.py), per version present: Spark puts every
logged value in its bucket of the version's baseline (batch/baseline.py) and counts buckets per
column, so only a few counts per column leave the cluster, never raw rows. PSI (every column)
and a Jensen-Shannon distance (categorical ones) come from observability/drift.py's maths on
those counts. With labels, quality: AUC and precision for classifiers (``out_probability``,
``out_label``), MAE and RMSE for regressors (``out_prediction``). Results are appended to a
metrics table (``<root>/monitor/model=<name>/``), and the verdict of the version that answered
most rows becomes the model's latest status in Redis (serving/drift_status.py).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from batch import log_table
from observability.drift import Baseline, Column, js_of_counts, psi_of_counts
from serving.drift_status import PSI_DRIFT

WINDOW = re.compile(r"^([1-9][0-9]*)([mhd])$")
UNITS = {"m": "minutes", "h": "hours", "d": "days"}
PREDICTIONS = ("out_probability", "out_prediction")


def parse_window(text: str) -> timedelta:
    """``30m``, ``6h``, ``1d``."""
    found = WINDOW.match(text)
    if not found:
        raise ValueError(f"window {text!r}: use a number and m, h or d (30m, 6h, 1d)")
    return timedelta(**{UNITS[found.group(2)]: int(found.group(1))})


@dataclass
class VersionReport:
    version: str
    rows: int
    labelled_rows: int = 0
    features: dict[str, dict[str, Any]] = field(default_factory=dict)
    quality: dict[str, float] = field(default_factory=dict)
    missing_baseline: str | None = None

    def drifted(self, threshold: float) -> bool:
        return any(f["psi"] > threshold for f in self.features.values())


@dataclass
class MonitorResult:
    model: str
    start: datetime
    end: datetime
    computed_at: float
    threshold: float
    versions: list[VersionReport]

    @property
    def rows(self) -> int:
        return sum(v.rows for v in self.versions)

    def status(self) -> dict[str, Any] | None:
        """The status document of the version that answered most rows (None: no rows)."""
        judged = [v for v in self.versions if v.missing_baseline is None]
        if not judged:
            return None
        v = max(judged, key=lambda r: r.rows)
        return {"model": self.model, "version": v.version, "computed_at": self.computed_at,
                "window": {"start": self.start.timestamp(), "end": self.end.timestamp()},
                "rows": v.rows, "labelled_rows": v.labelled_rows, "drifted": v.drifted(self.threshold),
                "threshold": self.threshold, "features": v.features, "quality": v.quality}


def bucket_expr(name: str, column: Column, dtype: str):
    """A Spark expression: the bucket index of column ``name`` on ``column``'s buckets (the
    missing bucket last), as observability.drift.counts places a value."""
    from pyspark.sql import functions as F

    c = F.col(f"`{name}`")
    if column.kind == "numeric":
        value = c.cast("double")
        missing = value.isNull() | F.isnan(value)
        index = F.lit(0)
        for edge in column.edges[1:-1]:  # searchsorted(side="right"): edges <= value
            index = index + (value >= F.lit(float(edge))).cast("int")
        return F.when(missing, F.lit(len(column.edges) - 1)).otherwise(index)
    if dtype in ("double", "float"):  # observability.drift.category_text: 0.0 reads "0"
        missing = c.isNull() | F.isnan(c)
        text = F.when(c == F.floor(c), c.cast("bigint").cast("string")).otherwise(c.cast("string"))
    else:
        missing = c.isNull()
        text = c.cast("string")
    other = len(column.categories)
    index = F.lit(other)
    for i, category in reversed(list(enumerate(column.categories))):
        index = F.when(text == F.lit(category), F.lit(i)).otherwise(index)
    return F.when(missing, F.lit(other + 1)).otherwise(index)


def bucket_counts(frame, baseline: Baseline) -> dict[str, np.ndarray]:
    """Per baseline column present in ``frame``: its bucket counts (one Spark aggregation)."""
    from pyspark.sql import functions as F

    types = dict(frame.dtypes)
    present = {n: c for n, c in baseline.columns.items() if n in types}
    if not present:
        return {}
    pairs = F.array(*[F.struct(F.lit(n).alias("c"), bucket_expr(n, col, types[n]).alias("b"))
                      for n, col in present.items()])
    counted = (frame.select(F.explode(pairs).alias("p")).groupBy("p.c", "p.b").count().collect())
    out = {n: np.zeros(len(col.shares)) for n, col in present.items()}
    for row in counted:
        out[row["c"]][row["b"]] = row["count"]
    return out


def quality(frame) -> dict[str, float]:
    """Quality on labelled rows: AUC and precision (classifiers), MAE and RMSE (regressors)."""
    from pyspark.ml.evaluation import BinaryClassificationEvaluator
    from pyspark.sql import functions as F

    cols = set(frame.columns)
    if "out_probability" in cols:
        scored = frame.where(F.col("out_probability").isNotNull()).select(
            F.col("out_probability").cast("double").alias("score"), F.col("label").cast("double").alias("label"))
        out: dict[str, float] = {}
        classes = scored.agg(F.countDistinct("label").alias("n")).first()["n"]
        if classes == 2:  # AUC needs both classes
            # numBins=0: the exact curve (Spark's default bins the scores into 1,000 and is off
            # in the 6th decimal)
            out["auc"] = BinaryClassificationEvaluator(rawPredictionCol="score", labelCol="label",
                                                       metricName="areaUnderROC", numBins=0).evaluate(scored)
        if "out_label" in cols:
            row = frame.where(F.col("out_label") == 1).agg(
                F.count(F.lit(1)).alias("n"), F.sum((F.col("label") == 1).cast("int")).alias("tp")).first()
            if row["n"]:
                out["precision"] = row["tp"] / row["n"]
        return out
    if "out_prediction" in cols:
        err = F.col("out_prediction").cast("double") - F.col("label")
        row = frame.where(F.col("out_prediction").isNotNull()).agg(
            F.avg(F.abs(err)).alias("mae"), F.sqrt(F.avg(err * err)).alias("rmse")).first()
        return {k: float(row[k]) for k in ("mae", "rmse") if row[k] is not None}
    return {}


def report_version(log, labels, baseline: Baseline | None, version: str, rows: int) -> VersionReport:
    report = VersionReport(version, rows)
    if baseline is None:
        return report
    for name, c in bucket_counts(log, baseline).items():
        column = baseline.columns[name]
        figures: dict[str, Any] = {"psi": psi_of_counts(column, c), "kind": column.kind, "n": int(c.sum())}
        if column.kind == "categorical":
            figures["js"] = js_of_counts(column, c)
        report.features[name] = figures
    if labels is not None:
        joined = log_table.labelled(log, labels).cache()
        try:
            report.labelled_rows = joined.count()
            if report.labelled_rows:
                report.quality = quality(joined)
        finally:
            joined.unpersist()
    return report


def monitor(spark, root: str, model: str, load_baseline, *, window: timedelta, until: datetime | None = None,
            version: str | None = None, threshold: float = PSI_DRIFT) -> MonitorResult:
    """Judge ``model``'s log rows of ``[until - window, until)`` (answered rows only).
    ``load_baseline(version) -> Baseline`` (raises LookupError when the version has none)."""
    from pyspark.sql import functions as F

    end = until or datetime.now(timezone.utc)
    start = end - window
    result = MonitorResult(model, start, end, time.time(), threshold, [])
    log = log_table.read(spark, root, "log", model, start, end)
    if log is None:
        return result
    log = log.where(F.col("status") == "ok")
    if version is not None:
        log = log.where(F.col("version") == version)
    labels = log_table.read(spark, root, "labels", model)  # labels come in late: any time
    log = log.cache()  # read once, then counted per version, column and label join
    try:
        found = {r["version"]: r["count"] for r in log.groupBy("version").count().collect() if r["version"]}
        for v, rows in sorted(found.items(), key=lambda kv: -kv[1]):
            try:
                baseline, missing = load_baseline(v), None
            except LookupError as exc:
                baseline, missing = None, str(exc)
            report = report_version(log.where(F.col("version") == v), labels, baseline, v, rows)
            report.missing_baseline = missing
            result.versions.append(report)
    finally:
        log.unpersist()
    return result


def metric_rows(result: MonitorResult) -> list[dict[str, Any]]:
    """The metrics table's rows: one per version, column and metric (column ``*`` for the
    version's own figures: rows, labelled rows, drifted, quality)."""
    base = {"window_start": result.start, "window_end": result.end,
            "computed_at": datetime.fromtimestamp(result.computed_at, timezone.utc)}
    rows = []
    for v in result.versions:
        def add(column: str, metric: str, value: float) -> None:
            rows.append(dict(base, version=v.version, column=column, metric=metric, value=float(value)))

        add("*", "rows", v.rows)
        add("*", "labelled_rows", v.labelled_rows)
        if v.missing_baseline is None:
            add("*", "drifted", v.drifted(result.threshold))
        for name, figures in v.features.items():
            for metric in ("psi", "js"):
                if metric in figures:
                    add(name, metric, figures[metric])
        for metric, value in v.quality.items():
            add("*", metric, value)
    return rows


def write_metrics(spark, root: str, result: MonitorResult) -> str | None:
    """Append the result to ``<root>/monitor/model=<name>`` (Parquet; ``model`` is the partition)."""
    rows = metric_rows(result)
    if not rows:
        return None
    path = f"{root.rstrip('/')}/monitor/model={result.model}"
    schema = ("version string, window_start timestamp, window_end timestamp, computed_at timestamp, "
              "column string, metric string, value double")
    names = ["version", "window_start", "window_end", "computed_at", "column", "metric", "value"]
    spark.createDataFrame([tuple(r[n] for n in names) for r in rows], schema).coalesce(1) \
        .write.mode("append").parquet(path)
    return path


def render(result: MonitorResult) -> str:
    """The result as a readable table."""
    span = f"{result.start:%Y-%m-%d %H:%M} .. {result.end:%Y-%m-%d %H:%M} UTC"
    if not result.versions:
        return f"{result.model}: no logged rows in {span}: nothing to judge (status left as it was)"
    lines = [f"{result.model}: {result.rows:,} rows in {span}, drift over PSI {result.threshold:g}"]
    for v in result.versions:
        head = f"  version {v.version}: {v.rows:,} rows, {v.labelled_rows:,} labelled"
        if v.missing_baseline is not None:
            lines.append(f"{head}; not judged: {v.missing_baseline}")
            continue
        lines.append(f"{head}; {'DRIFTED' if v.drifted(result.threshold) else 'stable'}")
        lines.append(f"    {'column':<32} {'kind':<12} {'psi':>8} {'js':>8}")
        for name, f in sorted(v.features.items(), key=lambda kv: -kv[1]["psi"]):
            js = f"{f['js']:.4f}" if "js" in f else "-"
            flag = "  <- drift" if f["psi"] > result.threshold else ""
            lines.append(f"    {name:<32} {f['kind']:<12} {f['psi']:>8.4f} {js:>8}{flag}")
        for metric, value in v.quality.items():
            lines.append(f"    quality {metric}: {value:.4f}")
    return "\n".join(lines)
