"""The feature store's errors: what the sync, the jobs and the online reader raise.

Each message says what went wrong and, where there is something to do, what; none carries an
exception type name or a stored value, so callers may show it. The gateway maps
:class:`StoreUnavailable` onto its own taxonomy (503 ``dependency_unavailable`` or a fallback);
the command line prints any :class:`FeatureStoreError` as one line.
"""

from __future__ import annotations


class FeatureStoreError(Exception):
    """An expected failure of the feature store, with a message safe to show."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class StoreUnavailable(FeatureStoreError):
    """The online store did not answer: unreachable, refused, or not within the time allowed."""

    def __init__(self, message: str, reason: str = "unavailable") -> None:
        super().__init__(message)
        self.reason = reason
        """``timeout`` or ``unavailable``: the label of ``mlgate_feature_store_errors_total``."""


class OfflineTableMissing(FeatureStoreError, FileNotFoundError):
    """No complete offline table where one is expected."""


class SyncError(FeatureStoreError):
    """A sync that did not complete; the live version is untouched."""


class LeaseError(FeatureStoreError):
    """The lease is not ours."""


class LeaseHeld(LeaseError):
    """Someone else holds the lease: says when it runs out if its holder stops renewing it."""

    def __init__(self, key: str, expires_in_ms: int) -> None:
        self.key, self.expires_in_ms = key, expires_in_ms
        if expires_in_ms >= 0:
            when = (f"it expires in {expires_in_ms / 1000:.1f} s unless its holder renews it "
                    "(a dead holder's lease runs out by itself)")
        else:  # PTTL -1: set by hand, or an old lock without a TTL
            when = "it has no expiry: delete it once you know no sync runs"
        super().__init__(f"{key} is a lease held by another sync; {when}")


class LeaseLost(LeaseError):
    """Our lease ran out or was taken over while we held it."""


class FeatureJobError(FeatureStoreError):
    """An offline feature job cannot run as asked: a source that cannot be read, a transformation
    that fails, a column or view that does not exist, no repository applied."""
