"""An offline Parquet table read by the sync's writers themselves, row groups split between them.

A full sync reads a whole table as it was written: no filter, no join. Reading it through a Spark
DataFrame makes the JVM decode the Parquet, turn the columnar batches into rows and the rows back
into Arrow for the Python workers (``mapInArrow``); on 2 cores that costs more CPU than the
encoding and the HSETs together, and a session's first such job also pays the JIT warm-up of the
Parquet, codegen and Arrow paths (loadtests/RESULTS.md). Here the driver only lists the files'
row groups (from the footers) and hands each Spark partition a share of them; each writer decodes
its row groups with pyarrow straight into the Arrow batches it encodes. Spark still runs the
partitions (``local[*]`` or a cluster whose executors see the same path), retries and fails them.

Runs on the driver (:meth:`ParquetTable.pieces`, :meth:`ParquetTable.map_partitions`) and in the
writers (:func:`read`): imports nothing heavier than pyarrow, and that only when called.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from features_online.errors import OfflineTableMissing

Piece = tuple[str, tuple[int, ...]]
"""One file and some of its row groups."""

READ_BATCH_ROWS = 50_000
"""Rows per Arrow batch a writer decodes at a time (as ``spark.sql.execution.arrow.maxRecordsPerBatch``)."""


@dataclass(frozen=True)
class ParquetTable:
    """A Spark-written (or any flat) Parquet table: a directory of part files, or one file."""

    spark: Any
    path: str
    partitions: int
    """Writers: at most this many Spark partitions, each with a contiguous share of row groups."""

    def files(self) -> list[str]:
        if os.path.isfile(self.path):
            return [self.path]
        if not os.path.isdir(self.path):
            raise OfflineTableMissing(f"no Parquet table at {self.path}")
        if not os.path.exists(os.path.join(self.path, "_SUCCESS")):  # Spark writes it last
            raise OfflineTableMissing(f"{self.path} has no _SUCCESS marker: its write is still running "
                                       "or failed")
        names = sorted(os.listdir(self.path))
        if any(os.path.isdir(os.path.join(self.path, n)) for n in names if not n.startswith(("_", "."))):
            raise ValueError(f"{self.path} is partitioned into folders: sync it as a DataFrame")
        # Spark writes part-*.parquet beside _SUCCESS and .crc files
        files = [os.path.join(self.path, n) for n in names if n.endswith(".parquet") and not n.startswith(("_", "."))]
        if not files:
            raise OfflineTableMissing(f"{self.path} holds no Parquet part files")
        return files

    def pieces(self) -> list[list[Piece]]:
        """Row groups in file order, cut into up to ``partitions`` shares of about equal rows."""
        import pyarrow.parquet as pq

        groups = []  # (file, row group, rows)
        for path in self.files():
            meta = pq.read_metadata(path)
            groups += [(path, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
        total = sum(rows for _, _, rows in groups)
        shares: list[list[tuple[str, int]]] = [[] for _ in range(self.partitions)]
        done = 0
        for path, group, rows in groups:
            # the share in which this row group's middle row falls
            share = min(self.partitions - 1, (done + rows // 2) * self.partitions // max(total, 1))
            shares[share].append((path, group))
            done += rows
        return [_by_file(share) for share in shares if share]

    def map_partitions(self, function: Callable[[Iterator[list[Piece]]], Iterable[Any]]) -> list[Any]:
        """Run ``function`` in one Spark task per share of row groups; what it yields, collected.

        A table without rows is one empty share: the function still runs, once, and reports zero
        rows (which :meth:`FeatureSync.full` refuses to make live)."""
        shares = self.pieces() or [[]]
        return self.spark.sparkContext.parallelize(shares, len(shares)).mapPartitions(function).collect()


def _by_file(share: list[tuple[str, int]]) -> list[Piece]:
    out: dict[str, list[int]] = {}
    for path, group in share:
        out.setdefault(path, []).append(group)
    return [(path, tuple(groups)) for path, groups in out.items()]


def read(shares: Iterable[list[Piece]], columns: list[str]) -> Iterator[Any]:
    """The given columns of every piece, as Arrow record batches (in a writer)."""
    import pyarrow.parquet as pq

    for share in shares:
        for path, groups in share:
            # one thread per writer: the writers already use every core
            yield from pq.ParquetFile(path).iter_batches(batch_size=READ_BATCH_ROWS, row_groups=list(groups),
                                                         columns=columns, use_threads=False)
