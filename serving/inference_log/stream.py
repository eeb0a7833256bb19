"""The inference log's Redis streams: their keys and the shape of an entry (a contract between
the gateway, which writes, and ``mlgate log compact``, which reads; both sides use this module).

One stream per model and kind: ``<prefix>:log:{<model>}`` for predictions, ``<prefix>:labels:{<model>}``
for feedback. An entry holds a batch of records as one JSON document (field ``r``), so a replica
pays one XADD per batch, not per row; the entry's id orders batches and is how the compactor
resumes. A prediction record is columnar, as the pipeline had it (no per-row work on the hot path)::

    {"id": request id, "t": epoch µs, "ms": latency ms, "ver": version, "var": variant,
     "cl": client id, "st": "ok" or an error code,
     "keys": [{key: value, ...} per row] or null,   # entity keys as the caller sent them
     "in": {input name: [value per row]} or null,   # request-time inputs and stored features used
     "out": [{output: value, "source": ..., "fallback_reason": ...} per row]}

A label record: ``{"id": request id, "row": int or null (every row), "y": number, "t": epoch µs,
"src": "api" | "file", "cl": client id}``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import orjson

FORMAT = b"1"
FIELD = b"r"
KINDS = ("log", "labels")


def stream_key(prefix: str, kind: str, model: str) -> str:
    """The stream of ``kind`` (``log`` or ``labels``) for ``model``; the model name is the key's
    hash tag, so a model's two streams and its compaction checkpoints share a cluster slot."""
    if kind not in KINDS:
        raise ValueError(f"unknown stream kind {kind!r}")
    return f"{prefix}:{kind}:{{{model}}}"


def checkpoint_key(prefix: str, kind: str, model: str) -> str:
    """Hash of the compactor's progress on a stream (``done``: last entry id written to Parquet;
    ``pending``: the id range of a compaction in progress, redone exactly if it died)."""
    return f"{stream_key(prefix, kind, model)}:compacted"


def models_key(prefix: str) -> str:
    """Set of the models that have streams: the compactor's list of work."""
    return f"{prefix}:log:models"


def encode(records: Iterable[dict[str, Any]], default: Callable[[Any], Any] | None = None) -> dict[bytes, bytes]:
    """One stream entry's fields for a batch of records (numeric numpy arrays and scalars
    allowed; ``default`` converts anything else orjson cannot encode)."""
    return {b"v": FORMAT, FIELD: orjson.dumps(list(records), default=default, option=orjson.OPT_SERIALIZE_NUMPY)}


def decode(fields: dict[bytes, bytes]) -> list[dict[str, Any]]:
    """The records of one entry (an entry of another format version is refused, not guessed)."""
    version = fields.get(b"v")
    if version != FORMAT:
        raise ValueError(f"inference log entry of format {version!r}, this build reads {FORMAT!r}")
    return orjson.loads(fields[FIELD])
