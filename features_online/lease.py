"""A Redis lease: a lock that lasts only while its holder keeps renewing it.

A sync holds its view's lease from start to end. A lock with a long TTL outlives a sync that is
SIGKILLed, OOM-killed or loses its node, and refuses every later sync of the view for hours; a
short lease (``features.sync_lease_s``, 30 s) that a daemon thread renews every third of its
length is free again at most one lease after its holder died.

The price of a short lease: a holder that cannot renew for a whole lease (a stopped process, a
network partition) loses it while it still runs, and another sync may start. So a write that
must happen only under the lease (the version flip) goes through :meth:`Lease.hset_if_held`,
which compares the token and writes in one script: of two syncs, at most one can flip.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Mapping, Sequence

from features_online.errors import LeaseHeld, LeaseLost

log = logging.getLogger(__name__)

# Each script compares the holder's token first: never renew, free or write under another's lease.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
HSET_IF_HELD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local drop = tonumber(ARGV[2])
if drop > 0 then redis.call('HDEL', KEYS[2], unpack(ARGV, 3, 2 + drop)) end
redis.call('HSET', KEYS[2], unpack(ARGV, 3 + drop))
return 1
"""


class Lease:
    """The lease on ``key`` for ``lease_s`` seconds, renewed in the background until released.

    ``client`` should give up well within a third of the lease (a socket timeout of about a sixth,
    no automatic resends): a renewal that fails is tried again a quarter interval later, and one
    stuck for longer than the lease lets it run out."""

    def __init__(self, client, key: str, lease_s: float) -> None:
        self.client, self.key = client, key
        self.lease_ms = max(1, round(lease_s * 1000))
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._renewer: threading.Thread | None = None

    @property
    def lost(self) -> bool:
        """A renewal found the key gone or another holder's token in it."""
        return self._lost.is_set()

    def acquire(self) -> None:
        """Take the lease and start renewing it, or raise :class:`LeaseHeld`."""
        from redis import exceptions as redis_errors

        for _ in range(2):  # a second try when the holder's lease ended between SET and PTTL
            try:
                taken = self.client.set(self.key, self.token, nx=True, px=self.lease_ms)
            except (redis_errors.ConnectionError, redis_errors.TimeoutError):
                taken = False  # the SET may still have reached Redis: the GET below tells
            if taken or self.client.get(self.key) == self.token.encode():
                self._renewer = threading.Thread(target=self._renew_until_released, daemon=True,
                                                 name=f"lease {self.key}")
                self._renewer.start()
                return
            expires_in_ms = self.client.pttl(self.key)
            if expires_in_ms != -2:
                raise LeaseHeld(self.key, expires_in_ms)
        raise LeaseHeld(self.key, self.lease_ms)  # taken again at once: as long as a fresh lease

    def release(self) -> None:
        """Stop renewing, then free the lease if it is still ours (never another holder's)."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(self.lease_ms / 1000)
        try:
            self.client.eval(RELEASE, 1, self.key, self.token)
        except Exception as exc:  # not worth masking the caller's own error: the lease runs out
            log.warning("releasing the lease %s failed (%s); it runs out within %.1f s", self.key, exc,
                        self.lease_ms / 1000)

    def hset_if_held(self, key: str, mapping: Mapping[str, object], drop: Sequence[str] = ()) -> None:
        """Delete the fields ``drop`` of hash ``key`` and set ``mapping`` in it, in one step with
        the check that the lease is ours; raise :class:`LeaseLost` (nothing written) if not.
        ``key`` must share the lease key's cluster slot."""
        if not mapping:
            raise ValueError("hset_if_held needs at least one field to set")
        pairs = [part for item in mapping.items() for part in item]
        if not self.client.eval(HSET_IF_HELD, 2, self.key, key, self.token, len(drop), *drop, *pairs):
            self._lost.set()
            raise LeaseLost(f"the lease {self.key} ran out or was taken over (a renewal reached "
                            f"Redis too late or not at all); nothing was written")

    def _renew_until_released(self) -> None:
        interval_s = self.lease_ms / 3000
        wait_s = interval_s
        while not self._stop.wait(wait_s):
            try:
                renewed = self.client.eval(RENEW, 1, self.key, self.token, self.lease_ms)
            except Exception as exc:  # Redis slow or away: the lease may still hold; try again soon,
                wait_s = interval_s / 4  # not a whole interval later, when it may have run out
                log.warning("renewing the lease %s failed (%s); retrying in %.2f s", self.key, exc, wait_s)
                continue
            wait_s = interval_s
            if not renewed:
                self._lost.set()
                log.error("lost the lease %s: it ran out or another holder took it", self.key)
                return
