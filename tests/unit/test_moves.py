"""Every status change of the store matches the allowed transitions, on both backends."""

from __future__ import annotations

import re

import pytest

from dispatcher.db import postgres, sqlite
from dispatcher.db.moves import AT_ONCE, Move, check_allowed
from dispatcher.models import TRANSITIONS, TaskStatus

STATUS = "|".join(re.escape(s.value) for s in TaskStatus)
SETS = re.compile(rf"SET\s+status\s*=\s*'({STATUS})'", re.I)
FROM_ONE = re.compile(rf"status\s*=\s*'({STATUS})'(?!\s*,)", re.I)
FROM_MANY = re.compile(r"status\s+IN\s*\(([^)]*)\)", re.I)


def sources_in(where: str) -> set[str]:
    found = set(FROM_ONE.findall(where))
    for group in FROM_MANY.findall(where):
        found |= {part.strip().strip("'") for part in group.split(",")}
    return found


GUARD = re.compile(r"\bguard AS \((?:[^()]|\((?:[^()]|\([^()]*\))*\))*\)", re.S)
"""A CTE named ``guard``: it reads other rows to decide whether the move runs at all (a claim
only for an idle worker); the statuses it reads are not the move's sources."""


def without_guard(sql: str) -> str:
    return GUARD.sub("guard AS (...)", sql)


@pytest.mark.parametrize("queries", [sqlite.QUERIES, postgres.QUERIES], ids=["sqlite", "postgres"])
@pytest.mark.parametrize("move", list(Move), ids=lambda m: m.name)
def test_each_move_query_changes_exactly_its_statuses(queries: dict[str, str], move: Move) -> None:
    if move in AT_ONCE and queries is sqlite.QUERIES:
        assert move.query not in queries  # SQLite runs these operations as transactions
        return
    sql = without_guard(queries[move.query])
    assert SETS.findall(sql) == [move.target.value], sql
    where = sql[sql.upper().index("WHERE"):]
    assert sources_in(where) == {s.value for s in move.sources}, sql
    assert all(move.target in TRANSITIONS[source] for source in move.sources)


@pytest.mark.parametrize("queries", [sqlite.QUERIES, postgres.QUERIES], ids=["sqlite", "postgres"])
def test_no_other_query_sets_a_status(queries: dict[str, str]) -> None:
    moves = {move.query for move in Move if move not in AT_ONCE or queries is postgres.QUERIES}
    setting = {name for name, sql in queries.items() if SETS.search(sql)}
    assert setting == moves


def test_both_backends_name_the_same_queries() -> None:
    only_postgres = {"clock", "begin", "no_flush_wait", "commit", "sweep_lock", "migrate_lock",
                     "notify", "listen", "status_fold", "submit_one_at_once", "submit_at_once",
                     *(move.query for move in AT_ONCE)}
    only_sqlite = {"last_insert_id", "integrity_check"}
    assert set(sqlite.QUERIES) - only_sqlite == set(postgres.QUERIES) - only_postgres


def test_a_move_the_transitions_forbid_is_refused() -> None:
    stricter = {**TRANSITIONS, TaskStatus.PENDING: frozenset({TaskStatus.IN_PROGRESS})}
    with pytest.raises(RuntimeError, match="move CANCEL: .*pending.* not an allowed"):
        check_allowed(Move, stricter)


def test_a_guard_is_cut_out_whole() -> None:
    sql = postgres.QUERIES[Move.CLAIM_AT_ONCE.query]
    assert "'in-progress') AS known_idle" not in without_guard(sql)
    assert without_guard(sql).count("guard AS (...)") == 1
