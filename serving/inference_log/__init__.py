"""The inference log: what each answered request saw and said, off the hot path (recorder.py), in
one Redis stream per model (stream.py), compacted into Parquet by batch/log_table.py."""
