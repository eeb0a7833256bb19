"""Spark's Python worker daemon, started so that pyspark is imported from its installed package.

Spark puts ``$SPARK_HOME/python/lib/pyspark.zip`` (and py4j's zip) first on its Python workers'
path. Those zips hold sources only, and Python never caches bytecode for zip imports: every
session's daemon compiles pyspark's modules again before the first task runs (measured: 0.46 s
to import ``pyspark.daemon`` and ``pyspark.worker`` from the zip, 0.08 s from site-packages),
and its forked workers do the same for what they import later (the Arrow serializers). With a
pip-installed pyspark, the same version sits in site-packages with its bytecode cached; this
module moves the zips behind it on the path, then runs ``pyspark.daemon`` as Spark would.

Set as ``spark.python.daemon.module`` for local masters only (:func:`spark_job.spark_session`),
where the workers run this very interpreter. Without an installed pyspark and py4j beside the
zips, the path is left as it is.
"""

from __future__ import annotations

import os
import runpy
import sys


def installed_first(path: list[str]) -> list[str]:
    """``path`` with Spark's pyspark/py4j zips moved last, if both packages are also installed
    as directories on it; otherwise ``path`` unchanged."""
    zips = [p for p in path if p.endswith(".zip") and os.path.basename(p).startswith(("pyspark", "py4j"))]
    rest = [p for p in path if p not in zips]
    installed = all(any(p and os.path.isdir(os.path.join(p, name)) for p in rest) for name in ("pyspark", "py4j"))
    return rest + zips if zips and installed else path


if __name__ == "__main__":
    sys.path[:] = installed_first(sys.path)
    runpy.run_module("pyspark.daemon", run_name="__main__", alter_sys=True)
