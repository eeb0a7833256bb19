"""The gateway's side of the inference log: record answered requests without slowing them.

The pipeline calls :meth:`InferenceLog.record` after an answer is ready: it appends the request's
record (columns and answer objects the pipeline already holds, nothing copied or encoded) to a
per-model buffer and returns. A task of the replica's event loop writes the buffer to the model's
Redis stream every ``flush_interval_ms``, or sooner once ``batch_rows`` rows wait: one XADD per
``batch_rows`` rows, JSON-encoded there (serving/inference_log/stream.py).

Nothing blocks or fails a request. A full buffer drops the new record and counts it
(``dropped_buffer``); a stream the compactor has fallen behind on (``max_stream_entries``) drops
new batches and counts them (``dropped_backlog``) rather than trimming the oldest unread ones;
Redis down keeps batches for the next flush, within the same buffer bound. :meth:`close` (a
replica stopping gracefully, after its servers stopped taking requests) writes what is left,
for up to ``close_timeout_s``; anything it could not write is counted ``dropped_shutdown``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from observability.metrics import GatewayMetrics
from serving.inference_log import stream
from serving.settings import InferenceLogSettings

log = logging.getLogger(__name__)


class LabelsBacklogged(Exception):
    """The labels stream is full until the compactor empties it."""


class InferenceLog:
    def __init__(self, settings: InferenceLogSettings, client, prefix: str, metrics: GatewayMetrics) -> None:
        self.settings = settings
        self._client = client
        self._prefix = prefix
        self._metrics = metrics
        self._pending: dict[str, list[tuple[dict[str, Any], int]]] = {}
        self._rows = 0  # rows held: pending and not yet written
        self._backlogged: dict[str, bool] = {}
        self._known: set[str] = set()  # models already in the compactor's list
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._rates = {name: rate for name, rate in settings.models.items()}
        self._random = random.random

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mlgate-inference-log")

    def sampled(self, model: str) -> bool:
        """Whether to record this request of ``model`` (the model's share of requests)."""
        rate = self._rates.get(model, self.settings.sample)
        return rate >= 1.0 or (rate > 0.0 and self._random() < rate)

    def record(self, model: str, record: dict[str, Any], rows: int) -> None:
        """Hold one request's record (``rows`` answered rows) for the next write; never blocks."""
        rows = max(rows, 1)
        if self._rows + rows > self.settings.buffer_rows:
            self._count(model, "dropped_buffer", rows)
            return
        self._pending.setdefault(model, []).append((record, rows))
        self._rows += rows
        if self._rows >= self.settings.batch_rows:
            self._wake.set()

    @property
    def held_rows(self) -> int:
        return self._rows

    async def _run(self) -> None:
        interval = self.settings.flush_interval_ms / 1000
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # kept for the next round; never let the writer die
                log.warning("inference log write failed; retrying", exc_info=log.isEnabledFor(logging.DEBUG))
                await asyncio.sleep(interval)

    async def flush(self) -> None:
        """Write every held record (raises on a Redis error: the records stay held)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        try:
            await self._write(pending)
        except BaseException:
            for model, records in pending.items():  # first in the queue again, order kept
                self._pending[model] = records + self._pending.get(model, [])
            raise

    async def _write(self, pending: dict[str, list[tuple[dict[str, Any], int]]]) -> None:
        pipe = self._client.pipeline(transaction=False)
        plan: list[tuple[str, int, int, bool]] = []  # (model, rows, index of its XLEN, written)
        commands = 0
        for model, records in pending.items():
            key = stream.stream_key(self._prefix, "log", model)
            if model not in self._known:
                pipe.sadd(stream.models_key(self._prefix), model)
                commands += 1
            rows, written = sum(n for _, n in records), not self._backlogged.get(model, False)
            if written:
                commands += self._add_entries(pipe, key, records)
            pipe.xlen(key)  # after this batch: a stream at its bound takes no more from the next one
            plan.append((model, rows, commands, written))
            commands += 1
        results = await pipe.execute()
        self._known.update(pending)
        for model, rows, at, written in plan:
            self._rows -= rows
            self._count(model, "written" if written else "dropped_backlog", rows)
            length = int(results[at])
            backlogged = length >= self.settings.max_stream_entries
            if backlogged != self._backlogged.get(model, False):
                log.warning("inference log of %s: stream %s (%d entries); run `mlgate log compact`", model,
                            "full, new records dropped" if backlogged else "drained, writing again", length)
            self._backlogged[model] = backlogged

    async def add_labels(self, model: str, labels: list[dict[str, Any]]) -> None:
        """Record labels (feedback) at once, durably: the caller is told only once they are in
        Redis. Refused (raises :class:`LabelsBacklogged`) while the model's labels stream waits for
        compaction past ``max_stream_entries``: a caller can retry, a silent drop it could not."""
        key = stream.stream_key(self._prefix, "labels", model)
        if await self._client.xlen(key) >= self.settings.max_stream_entries:
            raise LabelsBacklogged(f"the labels of {model} wait for compaction (`mlgate log compact`)")
        pipe = self._client.pipeline(transaction=False)
        pipe.sadd(stream.models_key(self._prefix), model)
        for start in range(0, len(labels), self.settings.batch_rows):
            pipe.xadd(key, stream.encode(labels[start:start + self.settings.batch_rows]))
        await pipe.execute()

    def _add_entries(self, pipe, key: str, records: list[tuple[dict[str, Any], int]]) -> int:
        """XADDs of ``records`` in entries of about ``batch_rows`` rows; how many."""
        added, chunk, size = 0, [], 0
        for record, n in records:
            chunk.append(record)
            size += n
            if size >= self.settings.batch_rows:
                pipe.xadd(key, stream.encode(chunk, default=_plain))
                added, chunk, size = added + 1, [], 0
        if chunk:
            pipe.xadd(key, stream.encode(chunk, default=_plain))
            added += 1
        return added

    def _count(self, model: str, outcome: str, rows: int) -> None:
        m = self._metrics
        m.child(m.inference_log_rows, model, outcome).inc(rows)

    async def close(self) -> None:
        """Stop the writer and write what is held (a graceful stop: requests have stopped)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        try:
            async with asyncio.timeout(self.settings.close_timeout_s):
                while self._pending:
                    try:
                        await self.flush()
                    except (asyncio.TimeoutError, asyncio.CancelledError):
                        raise
                    except Exception:
                        log.warning("inference log: final write failed; retrying")
                        await asyncio.sleep(0.2)
        except TimeoutError:
            pass
        for model, records in self._pending.items():
            self._count(model, "dropped_shutdown", sum(n for _, n in records))
        if self._pending:
            log.error("inference log: %d rows could not be written before the replica stopped", self._rows)
        self._pending, self._rows = {}, 0
        await self._client.aclose()


def _plain(value: Any) -> Any:
    """What orjson cannot encode natively: numpy arrays of text (object dtype), numpy scalars."""
    tolist = getattr(value, "tolist", None)
    if tolist is not None:
        return tolist()
    raise TypeError(f"not JSON: {type(value).__name__}")
