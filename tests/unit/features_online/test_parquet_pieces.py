"""How a full sync splits a Parquet table between its writers, and what each writer reads back."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features_online import spark_daemon
from features_online.parquet_pieces import ParquetTable, read


def write(path, ids, row_group_size):
    table = pa.table({"id": pa.array(ids, pa.int64()), "x": pa.array(np.asarray(ids) * 0.5),
                      "other": pa.array(["s"] * len(ids))})
    pq.write_table(table, path, row_group_size=row_group_size)


def spark_like_table(folder):
    """Two part files (3 + 2 row groups of 10 rows) beside the files Spark leaves around them."""
    folder.mkdir()
    write(folder / "part-00000-a.snappy.parquet", range(0, 30), 10)
    write(folder / "part-00001-a.snappy.parquet", range(30, 50), 10)
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / ".part-00000-a.snappy.parquet.crc").write_bytes(b"x")
    return folder


def test_row_groups_are_shared_out_in_order_with_about_equal_rows(tmp_path):
    table = ParquetTable(None, str(spark_like_table(tmp_path / "t")), partitions=2)
    first, second = (tmp_path / "t" / "part-00000-a.snappy.parquet"), (tmp_path / "t" / "part-00001-a.snappy.parquet")
    assert table.pieces() == [[(str(first), (0, 1))], [(str(first), (2,)), (str(second), (0, 1))]]
    # every row group exactly once, whatever the number of writers; no empty share
    for n in (1, 3, 5, 8):
        shares = ParquetTable(None, str(tmp_path / "t"), partitions=n).pieces()
        groups = [(path, g) for share in shares for path, gs in share for g in gs]
        assert len(shares) == min(n, 5) and all(shares)
        assert groups == [(str(first), 0), (str(first), 1), (str(first), 2), (str(second), 0), (str(second), 1)]


def test_writers_read_every_row_once_and_only_the_columns_asked(tmp_path):
    shares = ParquetTable(None, str(spark_like_table(tmp_path / "t")), partitions=3).pieces()
    batches = [b for share in shares for b in read([share], ["id", "x"])]
    assert all(b.schema.names == ["id", "x"] for b in batches)
    ids = np.concatenate([b.column(0).to_numpy() for b in batches])
    assert ids.tolist() == list(range(50))


def test_a_single_file_is_a_table_and_missing_or_partitioned_paths_are_refused(tmp_path):
    write(tmp_path / "one.parquet", range(7), 3)
    assert ParquetTable(None, str(tmp_path / "one.parquet"), 2).pieces() == [
        [(str(tmp_path / "one.parquet"), (0,))], [(str(tmp_path / "one.parquet"), (1, 2))]]  # 3 + 4 rows
    with pytest.raises(FileNotFoundError):
        ParquetTable(None, str(tmp_path / "absent"), 2).pieces()
    (tmp_path / "p" / "day=1").mkdir(parents=True)
    write(tmp_path / "p" / "day=1" / "part-0.parquet", range(3), 3)
    (tmp_path / "p" / "_SUCCESS").write_bytes(b"")
    with pytest.raises(ValueError, match="partitioned"):
        ParquetTable(None, str(tmp_path / "p"), 2).pieces()


def test_spark_daemon_puts_installed_pyspark_before_sparks_zips(tmp_path):
    site = tmp_path / "site"
    (site / "pyspark").mkdir(parents=True)
    (site / "py4j").mkdir()
    zips = [str(tmp_path / "lib" / "pyspark.zip"), str(tmp_path / "lib" / "py4j-0.10.9.9-src.zip")]
    path = [*zips, "/work/app", str(site)]
    assert spark_daemon.installed_first(path) == ["/work/app", str(site), *zips]
    # pyspark only from the zips (a cluster image with SPARK_HOME): the path stays as it is
    assert spark_daemon.installed_first([*zips, "/work/app"]) == [*zips, "/work/app"]


def test_a_table_still_being_written_is_refused(tmp_path):
    (tmp_path / "t" / "_temporary" / "0").mkdir(parents=True)  # what Spark holds before its commit
    with pytest.raises(FileNotFoundError, match="_SUCCESS"):
        ParquetTable(None, str(tmp_path / "t"), 2).pieces()
    (tmp_path / "t" / "_SUCCESS").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no Parquet part files"):
        ParquetTable(None, str(tmp_path / "t"), 2).pieces()
