"""The errors a store raises on purpose; routes turn each into one HTTP status."""

from __future__ import annotations


class StoreError(Exception):
    """Base of the errors the store raises on purpose."""


class StorageUnavailable(StoreError):
    """The database is locked, unreachable, or its disk is full; retry later (503)."""


class NotFound(StoreError):
    """No task with that id (404)."""


class StaleLease(StoreError):
    """The caller does not hold the task at that attempt, or the move is not allowed (409)."""

    def __init__(self, message: str, code: str = "stale_lease") -> None:
        super().__init__(message)
        self.code = code


class IdempotencyConflict(StoreError):
    """An idempotency key reused for a different submission (409)."""


class QuotaExceeded(StoreError):
    """A client has as many pending tasks as it may (429)."""
