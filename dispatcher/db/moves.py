"""Every status change the store makes, each checked against ``models.TRANSITIONS``.

A status changes only through :func:`move`, which runs the named query registered for that
move. The query's SQL spells the statuses as literals (so the partial indexes on ``status``
stay usable); ``tests/unit/test_moves.py`` checks that each query's literals are exactly the
move's source and target statuses, and this module refuses at import any move that the
transitions table does not allow. So the rules live in one table, and the SQL is checked
against it instead of restating it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from dispatcher.models import TRANSITIONS, TaskStatus

if TYPE_CHECKING:
    from dispatcher.db.store import Tx

_P, _R = TaskStatus.PENDING, TaskStatus.IN_PROGRESS
_C, _F, _X = TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED


class Move(enum.Enum):
    """A named status change: (query name, source statuses, target status)."""

    CLAIM = ("move_claim", frozenset({_P}), _R)  # lease pending tasks to a worker
    COMPLETE = ("move_complete", frozenset({_R}), _C)  # the lease holder's result is stored
    FAIL = ("move_fail", frozenset({_R}), _F)  # the task raised, or its result was refused
    REQUEUE = ("move_requeue", frozenset({_R}), _P)  # dead worker, expired lease, released...
    GIVE_UP = ("move_give_up", frozenset({_R}), _F)  # a reclaim that used the last attempt
    CANCEL = ("move_cancel", frozenset({_P, _R}), _X)  # a user cancelled an unfinished task
    RETRY = ("move_retry", frozenset({_R}), _P)  # the task raised: again after a backoff
    QUARANTINE = ("move_quarantine", frozenset({_R}), _F)  # it killed K workers in a row
    TIME_OUT = ("move_time_out", frozenset({_R}), _F)  # it ran past its timeout_seconds
    RERUN = ("move_rerun", frozenset({_F, _X}), _P)  # a user put a failed/cancelled task back
    # One-statement forms (only backends with Store._at_once have them: PostgreSQL)
    CLAIM_AT_ONCE = ("move_claim_at_once", frozenset({_P}), _R)  # a known, idle worker's
    COMPLETE_AT_ONCE = ("move_complete_at_once", frozenset({_R}), _C)  # results, rows and all

    @property
    def query(self) -> str:
        """The name of the query that performs it (unique, so no two moves are one member)."""
        return self.value[0]

    @property
    def sources(self) -> frozenset[TaskStatus]:
        """The statuses this move starts from."""
        return self.value[1]

    @property
    def target(self) -> TaskStatus:
        """The status this move ends in."""
        return self.value[2]


def check_allowed(
    moves: Iterable[Move], transitions: Mapping[TaskStatus, frozenset[TaskStatus]]
) -> None:
    """Raise RuntimeError naming the first move that ``transitions`` does not allow."""
    for item in moves:
        illegal = [s.value for s in item.sources if item.target not in transitions[s]]
        if illegal:
            raise RuntimeError(f"move {item.name}: {illegal} -> {item.target.value} is not "
                               "an allowed transition (models.TRANSITIONS)")


AT_ONCE = frozenset({Move.CLAIM_AT_ONCE, Move.COMPLETE_AT_ONCE})
"""Moves only a backend with one-statement transactions provides (``Store._at_once``)."""

check_allowed(Move, TRANSITIONS)


def move(tx: Tx, which: Move, params: Mapping[str, Any]) -> list[Any]:
    """Perform one move; the rows its query returns (the tasks that moved)."""
    return tx.all(which.query, params)


def move_after_read(tx: Tx, read: str, read_params: Mapping[str, Any], which: Move,
                    params: Mapping[str, Any]) -> tuple[list[Any], list[Any]]:
    """Run a named read, then a move, in one round trip; the rows of each.

    The read sees the state before the move (statements run in order).
    """
    return tx.pair(read, read_params, which.query, params)
