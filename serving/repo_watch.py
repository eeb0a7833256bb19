"""Keeps a gateway replica on the applied feature repository: ``mlgate apply`` records it in
Redis with a digest; every ``features.repository_poll_s`` the replica reads the digest (one HGET)
and, when it changed, the whole repository, and hands it over. No restart, no image rebuild.

A repository that cannot be read or compiled (a newer mlgate wrote it, or it was edited by hand)
is logged once and skipped: the replica keeps serving the last one it could. So is a repository
that vanished from Redis (a flush, a restart without persistence): losing the store's data must
not make every replica drop its models; applying a repository is how models are removed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from features_online import repository
from features_online.repository import Repository

log = logging.getLogger(__name__)

OnChange = Callable[[Repository | None], Awaitable[None]]


class RepositoryWatcher:
    def __init__(self, client: Any, prefix: str, poll_s: float, on_change: OnChange) -> None:
        self._client = client  # asyncio redis-py client
        self._key = repository.repo_key(prefix)
        self._poll_s = poll_s
        self._on_change = on_change
        self._task: asyncio.Task | None = None
        self._failing: str | None = None
        self.digest: str | None = None
        """The digest of the repository served now (None: none applied, or none read yet)."""

    async def check(self) -> bool:
        """Read the applied digest; on a change, the repository, and hand it over. True when a
        new repository was handed over."""
        try:
            raw = await self._client.hget(self._key, "digest")
            digest = raw.decode() if isinstance(raw, bytes) else raw
            if digest == self.digest:
                self._failing = None
                return False
            if digest is None and self.digest is not None:  # flushed or restarted empty, not unapplied
                self._note("it is gone from Redis (flushed, or restarted without persistence): apply it again")
                return False
            repo = repository.from_hash(await self._client.hgetall(self._key)) if digest else None
        except Exception as exc:  # Redis away, or a document this version cannot read
            self._note(f"{type(exc).__name__}: {exc}" if isinstance(exc, ValueError) else type(exc).__name__)
            return False
        self._failing = None
        await self._on_change(repo)
        self.digest = digest
        log.info("serving feature repository %s (digest %s)", repo.project if repo else "-", digest)
        return True

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="feature-repository")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                await self.check()
            except Exception:  # the hand-over failed: try again at the next poll
                log.exception("applying the new feature repository failed")

    def _note(self, problem: str) -> None:
        if problem != self._failing:
            log.warning("cannot read the applied feature repository: %s (serving the last one)", problem)
        self._failing = problem

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
