"""Batch scoring throughput: mlgate's Spark scorer against mlflow.pyfunc.spark_udf, same run.

    python loadtests/bench_batch.py --rows 1000000          # after `make demo` (needs the model)
    python loadtests/bench_batch.py --model NAME@ALIAS --repo PATH

Both score the same registered model (``--model``; its views from ``--repo`` or the applied
repository) over the same cached Spark DataFrame of ``--rows`` synthetic entities (the scoring
frame's columns: key columns, as-of, one column per stored input; request-time inputs at their
training medians) and are forced with Spark's ``noop`` writer, so the timing is the scoring:
no Parquet read, no output write, no Redis sync. What each row includes:

- mlgate: ``batch.score.scored`` as `mlgate batch score` runs it, inside
  ``arrow_for_scoring`` (Spark's per-row Arrow byte check off for the length of the job); and
  once more with the registered graph as it is (not specialised to the request-time values,
  every stored input shipped), so the specialisation's share is visible.
- spark_udf: ``mlflow.pyfunc.spark_udf`` with the session as mlgate configures it (Arrow
  batches of 50,000 records), as a user would call it; and once more inside the same
  ``arrow_for_scoring``, so that setting's share of the gap is visible.
- two no-model rows: the same Arrow batches through a Python worker and back with no model;
  every stored column with the session's settings (the row earlier results reported), and
  mlgate's own input (keys, as-of, the float32 inputs the graph reads) with its setting: Spark's
  share of the time.

spark_udf is run for models with 1-D ``label`` and ``probability`` outputs (the result type it is
given); for other models its rows read nan.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import pandas as pd

from batch.cli import load_repository
from batch.frame import FramePlan
from batch.score import arrow_for_scoring, model_columns, parse_ref, plan, scored
from features_online import jobs
from serving.settings import Settings


def synthetic_table(frame: FramePlan, rows: int, seed: int = 0) -> pd.DataFrame:
    """A scoring frame of ``rows`` entities with plausible values (``batch.frame.build_frame``'s
    columns: keys, as-of, one column per stored input)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(1, rows + 1, dtype=np.int64)
    data = {k.name: ids if k.type == "int64" else [f"{k.name}-{i}" for i in ids] for k in frame.entity.keys}
    data["as_of_ms"] = np.full(rows, int(time.time() * 1000), dtype=np.int64)
    for vi in frame.views:
        for name in vi.features:
            values = rng.gamma(2.0, 20.0, rows)
            integral = vi.view.feature(name).dtype in ("long", "int")
            data[vi.view.qualified(name)] = values.astype(np.int64) if integral else values
    return pd.DataFrame(data)


def timed(action, repeat: int) -> float:
    """Best of ``repeat`` runs: the first pays for Python worker start-up and JIT warm-up."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best


def spark_udf_frame(spark, settings, scoring, frame):
    """The same rows scored by mlflow.pyfunc.spark_udf, as a user would call it."""
    import mlflow
    import mlflow.pyfunc
    from pyspark.sql import functions as F

    mlflow.set_tracking_uri(settings.tracking_uri)  # spark_udf resolves models:/ globally
    mlflow.set_registry_uri(settings.tracking_uri)
    inputs = [F.col(scoring.stored[f.name]).alias(f.name) if f.name in scoring.stored
              else F.lit(scoring.request_defaults[f.name]).cast("long" if f.dtype == "long" else "double")
              .alias(f.name) for f in scoring.spec.inputs]
    udf = mlflow.pyfunc.spark_udf(spark, f"models:/{scoring.spec.name}/{scoring.spec.version}",
                                  result_type="label long, probability double", env_manager="local")
    return frame.select(*scoring.key_names, *inputs).withColumn(
        "score", udf(*[F.col(f.name) for f in scoring.spec.inputs]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--model", default="fraud-detector@champion")
    p.add_argument("--repo", help="feature repository folder (default: the applied one)")
    p.add_argument("--partitions", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3, help="best of this many runs per scorer")
    args = p.parse_args()

    settings = Settings()
    # entity_table: the rows are synthetic, whatever the model's entities
    job = plan(settings, parse_ref(args.model), load_repository(settings, args.repo), entity_table=True)
    scoring = job.scoring
    spark = jobs.session(settings)
    frame = spark.createDataFrame(synthetic_table(job.frame, args.rows)).repartition(args.partitions).cache()
    frame.count()
    carried = [*scoring.key_names, "as_of_ms"]
    carried_schema = ", ".join([*(f"`{k}` {'bigint' if t == 'int64' else 'string'}" for k, t in scoring.keys),
                                "as_of_ms bigint"])

    def passthrough(batches):  # the same Arrow round trip with no model: Spark's own share
        for batch in batches:
            yield batch.select(carried)

    def noop(df):
        return lambda: timed(lambda: df.write.format("noop").mode("overwrite").save(), args.repeat)

    def in_our_job(measure):  # mlgate's Arrow setting, only for the length of the measurement
        def run():
            with arrow_for_scoring(spark):
                return measure()
        return run

    floor = noop(frame.mapInArrow(passthrough, schema=carried_schema))()
    our_floor = in_our_job(noop(model_columns(frame, scoring).mapInArrow(passthrough, schema=carried_schema)))()
    ours = in_our_job(noop(scored(frame, scoring)))()
    ours_registered = in_our_job(noop(scored(frame, replace(scoring, graph=None, unread=frozenset()))))()
    theirs = theirs_tuned = float("nan")
    if scoring.outputs.score == "probability":
        theirs_df = spark_udf_frame(spark, settings, scoring, frame)
        theirs = noop(theirs_df)()
        theirs_tuned = in_our_job(noop(theirs_df))()

    print(f"model {scoring.spec.name} v{scoring.spec.version}, {args.rows:,} rows, "
          f"{args.partitions} partitions, Spark {spark.version}, local[*] on this machine\n")
    rows = [("mlgate batch (mapInArrow + ORT)", ours),
            ("mlgate batch, registered graph not specialised", ours_registered),
            ("mlflow.pyfunc.spark_udf, session as configured", theirs),
            ("mlflow.pyfunc.spark_udf, with mlgate's Arrow setting", theirs_tuned),
            ("Arrow round trip, no model: every stored column", floor),
            ("Arrow round trip, no model: mlgate's input and setting", our_floor)]
    print(f"| {'scorer':<54} | seconds | rows/s     |")
    print(f"|{'-' * 56}|---------|------------|")
    for name, seconds in rows:
        print(f"| {name:<54} | {seconds:7.2f} | {args.rows / seconds:10,.0f} |")
    print(f"\nmlgate / spark_udf: {theirs / ours:.2f}x (target: at least 3x); against spark_udf with "
          f"mlgate's Arrow setting: {theirs_tuned / ours:.2f}x; registered graph not specialised: "
          f"{theirs / ours_registered:.2f}x. Best of {args.repeat} runs each. "
          "mlgate's Arrow setting: spark.sql.execution.arrow.maxBytesPerBatch at Int.MaxValue for "
          "the length of the job (batch.score.arrow_for_scoring).")
    spark.stop()


if __name__ == "__main__":
    main()
