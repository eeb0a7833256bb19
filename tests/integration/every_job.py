"""Every Spark job of mlgate in one session, in the order a user runs them, with what each left
behind written to one folder: the feature build as of an earlier time and a full sync, a build as
of now and an incremental sync, a point-in-time training set, batch scoring (and its sync).

test_spark_cluster.py runs it twice on the same input and compares the folders: in its own process
on the suite's ``local[2]`` session, and as ``python -m tests.integration.every_job`` with the
settings read from the environment and the session built by ``jobs.session``, as the CLI commands
do (``MLGATE_SPARK__MASTER=spark://...``). One session, not one CLI command per job: on a cluster
every command is an application with a driver and an executor JVM that start cold (measured on the
busy 2-core test machine: 21-47 s a command, 4 minutes for the six; in one session, under 2), and
the commands add nothing to these functions but argument parsing and the session that
``jobs.session`` builds here too; the local-mode CLI tests cover the parsing.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from batch.score import score
from features_online import jobs, layout
from features_online.definitions import FeatureView, score_view
from features_online.redis_client import connect
from features_online.settings import RedisSettings
from serving.settings import Settings

MANIFEST = "manifest.json"


def live_records(redis: RedisSettings, view: FeatureView) -> tuple[dict[str, str], pd.DataFrame]:
    """The view's meta hash, and every record of its live version decoded (one row per entity
    field, sorted): what a reader gets for any entity."""
    client = connect(redis)
    try:
        meta = {k.decode(): v.decode() for k, v in client.hgetall(layout.meta_key(redis.prefix, view)).items()}
        fields: dict[bytes, bytes] = {}
        for key in layout.bucket_keys(redis.prefix, view, int(meta["version"])):
            fields.update(client.hgetall(key))
    finally:
        client.close()
    records = pd.DataFrame(np.frombuffer(b"".join(fields.values()), layout.record_dtype(view)))
    records.insert(0, "field", [f.decode() for f in fields])
    return meta, records.sort_values("field").reset_index(drop=True)


def run(settings: Settings, spark, model: str, entities: Path, first_as_of: datetime, out: Path) -> dict:
    """Run every job into ``settings``' state folder and Redis prefix; write the results' places,
    the Redis contents after each sync and the session's facts to ``out/manifest.json``."""
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"seconds": {}, "tables": [], "redis": {}}
    repo = jobs.load_repository(settings)  # the applied one, as the commands read it
    (view,) = jobs.views(repo)

    def timed(name: str, job, *args):
        started = time.perf_counter()
        result = job(*args)
        manifest["seconds"][name] = round(time.perf_counter() - started, 2)
        return result

    def captured(name: str, view: FeatureView) -> None:
        meta, records = live_records(settings.redis, view)
        records.to_parquet(out / f"redis-{name}.parquet")
        manifest["redis"][name] = meta

    manifest["tables"].append(str(timed("build", jobs.build, settings, spark, repo, view, first_as_of)[0]))
    timed("full sync", jobs.sync, settings, spark, repo, view, "full")
    captured("full", view)
    manifest["tables"].append(str(timed("build again", jobs.build, settings, spark, repo, view)[0]))
    timed("incremental sync", jobs.sync, settings, spark, repo, view, "incremental")
    captured("incremental", view)
    timed("training set", jobs.training_set, spark, repo, str(entities), [view.name], "event_timestamp",
          out / "training.parquet")
    timed("batch score", score, settings, spark, model, str(out / "scores"), repo)
    captured("scores", score_view(model.split("/")[0], repo.model_entities(model.split("/")[0]),
                                  timedelta(seconds=settings.fallback.max_age_s)))
    sc = spark.sparkContext
    # the driver's block manager and every executor's: more than one means executors ran the work
    manifest.update(master=sc.master, app_id=sc.applicationId,
                    block_managers=sc._jsc.sc().getExecutorMemoryStatus().size())
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv: list[str]) -> int:
    """``every_job OUT MODEL ENTITIES FIRST_AS_OF``: the settings (state folder, Redis, Spark
    master) from the environment, the session as the CLI builds it."""
    out, model, entities, first_as_of = argv
    settings = Settings()
    spark = jobs.session(settings)
    try:
        run(settings, spark, model, Path(entities), datetime.fromisoformat(first_as_of), Path(out))
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
