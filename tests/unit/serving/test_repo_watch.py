"""The repository watcher (serving.repo_watch) against an in-memory stand-in for redis-py's
asyncio client: a newly applied repository is handed over once, a repository that cannot be read
is logged once while the last one keeps serving, and a hand-over that failed is tried again."""

from __future__ import annotations

import asyncio
import logging

import pytest

from features_online import repository
from features_online.repository import Repository
from serving.repo_watch import RepositoryWatcher

PREFIX = "w"
KEY = repository.repo_key(PREFIX)


def compiled(project: str, ttl: str = "1h") -> Repository:
    return repository.compile_spec(repository.validate({
        "project": project,
        "entities": [{"name": "account", "keys": [{"name": "account_id", "type": "string"}]}],
        "sources": [{"name": "events", "parquet": "/data/events", "timestamp": "ts"}],
        "views": [{"name": "account_activity", "entity": "account", "source": "events", "ttl": ttl,
                   "features": [{"name": "events_7d", "aggregation": {"function": "count", "window": "7d"}}]}],
        "models": [{"name": "churn", "entities": ["account"]}]}))


class Store:
    """Redis hashes, through the sync calls ``repository.apply`` makes."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[bytes, bytes]] = {}

    def hset(self, key, mapping):
        self.hashes[key] = {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in mapping.items()}

    def hgetall(self, key):
        return dict(self.hashes.get(key, {}))


class Client:
    """The same hashes through redis-py's asyncio API, as a gateway reads them; ``error``: what
    every command raises (Redis away)."""

    def __init__(self, store: Store) -> None:
        self.store, self.error = store, None

    async def hget(self, key, field):
        if self.error is not None:
            raise self.error
        return self.store.hashes.get(key, {}).get(field.encode())

    async def hgetall(self, key):
        if self.error is not None:
            raise self.error
        return self.store.hgetall(key)


class Receiver:
    """``on_change``: records what it was handed; ``failures`` times it raises first."""

    def __init__(self, failures: int = 0) -> None:
        self.handed: list[Repository | None] = []
        self.failures = failures

    async def __call__(self, repo):
        if self.failures:
            self.failures -= 1
            raise RuntimeError("models could not be swapped")
        self.handed.append(repo)


def watcher(poll_s: float = 60.0, failures: int = 0):
    store = Store()
    client, receiver = Client(store), Receiver(failures)
    return RepositoryWatcher(client, PREFIX, poll_s, receiver), store, client, receiver


def checks(watch: RepositoryWatcher, n: int) -> list[bool]:
    async def run():
        return [await watch.check() for _ in range(n)]

    return asyncio.run(run())


def projects(receiver: Receiver) -> list[str | None]:
    return [repo.project if repo is not None else None for repo in receiver.handed]


def test_without_an_applied_repository_there_is_nothing_to_hand_over():
    """The replica starts on its settings' models (``catalog_of(settings, None)``) and stays so."""
    watch, _, _, receiver = watcher()
    assert checks(watch, 3) == [False, False, False]
    assert receiver.handed == [] and watch.digest is None


def test_an_applied_repository_is_handed_over_once_per_digest():
    watch, store, _, receiver = watcher()
    first = repository.apply(store, PREFIX, compiled("shop"))
    assert checks(watch, 3) == [True, False, False]
    assert projects(receiver) == ["shop"] and watch.digest == first.digest
    assert receiver.handed[0].views["account_activity"] == first.views["account_activity"]
    second = repository.apply(store, PREFIX, compiled("shop", ttl="3h"))
    assert checks(watch, 2) == [True, False]
    assert projects(receiver) == ["shop", "shop"] and watch.digest == second.digest != first.digest
    assert receiver.handed[1].views["account_activity"].ttl.total_seconds() == 3 * 3600


def test_a_repository_gone_from_the_store_keeps_serving_and_is_logged_once(caplog):
    """A flushed or emptied Redis is not an unapplied repository: the replicas keep their models;
    the same repository applied again changes nothing, another one is handed over."""
    watch, store, _, receiver = watcher()
    served = repository.apply(store, PREFIX, compiled("shop"))
    checks(watch, 1)
    del store.hashes[KEY]
    with caplog.at_level(logging.WARNING, logger="serving.repo_watch"):
        assert checks(watch, 3) == [False, False, False]
    assert projects(receiver) == ["shop"] and watch.digest == served.digest
    assert sum("gone from Redis" in r.message for r in caplog.records) == 1
    repository.apply(store, PREFIX, compiled("shop"))
    assert checks(watch, 1) == [False]
    repository.apply(store, PREFIX, compiled("shop", ttl="3h"))
    assert checks(watch, 1) == [True] and projects(receiver) == ["shop", "shop"]


def test_an_unreachable_store_is_logged_once_and_the_last_repository_keeps_serving(caplog):
    watch, store, client, receiver = watcher()
    served = repository.apply(store, PREFIX, compiled("shop"))
    checks(watch, 1)
    client.error = ConnectionError("connection refused")
    repository.apply(store, PREFIX, compiled("shop", ttl="5h"))  # applied meanwhile: not readable yet
    with caplog.at_level(logging.WARNING, logger="serving.repo_watch"):
        assert checks(watch, 3) == [False, False, False]
    assert [r.getMessage() for r in caplog.records] == [
        "cannot read the applied feature repository: ConnectionError (serving the last one)"]
    assert projects(receiver) == ["shop"] and watch.digest == served.digest
    client.error = None  # back: the repository applied meanwhile is handed over
    assert checks(watch, 1) == [True]
    assert receiver.handed[-1].views["account_activity"].ttl.total_seconds() == 5 * 3600


def test_a_problem_is_logged_again_once_it_went_away_and_came_back(caplog):
    watch, store, client, _ = watcher()
    repository.apply(store, PREFIX, compiled("shop"))
    with caplog.at_level(logging.WARNING, logger="serving.repo_watch"):
        for error in (TimeoutError(), TimeoutError(), None, TimeoutError()):
            client.error = error
            checks(watch, 1)
    assert len(caplog.records) == 2


def test_a_document_this_version_cannot_read_is_logged_with_why_and_skipped(caplog):
    watch, store, _, receiver = watcher()
    repository.apply(store, PREFIX, compiled("shop"))
    checks(watch, 1)
    store.hashes[KEY].update({b"document": b"{not json", b"digest": b"0123456789abcdef"})
    with caplog.at_level(logging.WARNING, logger="serving.repo_watch"):
        assert checks(watch, 2) == [False, False]
    (record,) = caplog.records
    assert record.getMessage().startswith("cannot read the applied feature repository: JSONDecodeError: ")
    assert projects(receiver) == ["shop"]


def test_a_failed_hand_over_is_tried_again_at_the_next_check():
    watch, store, _, receiver = watcher(failures=1)
    applied = repository.apply(store, PREFIX, compiled("shop"))

    async def run():
        with pytest.raises(RuntimeError, match="could not be swapped"):
            await watch.check()
        assert watch.digest is None  # not served: the next check hands it over again
        return await watch.check()

    assert asyncio.run(run()) is True
    assert projects(receiver) == ["shop"] and watch.digest == applied.digest


def test_the_watch_loop_polls_logs_a_failed_hand_over_and_retries_it(caplog):
    watch, store, _, receiver = watcher(poll_s=0.01, failures=2)
    repository.apply(store, PREFIX, compiled("shop"))

    async def run():
        watch.start()
        try:
            for _ in range(200):
                if receiver.handed:
                    break
                await asyncio.sleep(0.01)
        finally:
            watch.close()

    with caplog.at_level(logging.ERROR, logger="serving.repo_watch"):
        asyncio.run(run())
    assert projects(receiver) == ["shop"]
    assert [r.getMessage() for r in caplog.records] == ["applying the new feature repository failed"] * 2
