"""GET /tasks: filters, cursor pagination, bad input, and the index behind every page."""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient

from dispatcher.db import postgres as pg_backend
from dispatcher.db import sqlite as sqlite_backend
from shared.config import Config
from tests.conftest import FakeClock
from tests.support.postgres import generic_plan

NOOP = {"task_type": "noop", "params": {}}
PRIMES = {"task_type": "primes", "params": {"limit": 10}}


def submit(client: FlaskClient, body: dict[str, Any]) -> int:
    resp = client.post("/submit-task", json=body)
    assert resp.status_code == 201, resp.json
    return resp.json["task_id"]


def listed(client: FlaskClient, **query: Any) -> list[int]:
    resp = client.get("/tasks", query_string=query)
    assert resp.status_code == 200, resp.json
    return [t["task_id"] for t in resp.json["tasks"]]


def walk(client: FlaskClient, between_pages: Any = None, **query: Any) -> list[int]:
    """Every id of a filtered list, page by page; ``between_pages`` runs after each page."""
    ids: list[int] = []
    cursor = None
    while True:
        page = client.get("/tasks", query_string={**query, **({"cursor": cursor} if cursor
                                                              else {})}).json
        ids += [t["task_id"] for t in page["tasks"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids
        if between_pages is not None:
            between_pages()


@pytest.fixture
def a_history(client: FlaskClient, clock: FakeClock) -> dict[str, Any]:
    """Tasks of two types created 10 s apart, some completed, one failed, one cancelled."""
    times, ids = [], []
    for i in range(12):
        times.append(clock())
        ids.append(submit(client, NOOP if i % 3 == 0 else PRIMES))
        clock.advance(10)
    leases = client.post("/get-task", json={"worker_id": "w1", "instance_id": "i1",
                                            "max_tasks": 4}).json["tasks"]
    for lease in leases[:3]:
        client.post("/submit-result", json={"worker_id": "w1", "task_id": lease["task_id"],
                                            "attempt": 1, "result": {}})
    client.post("/submit-result", json={"worker_id": "w1", "task_id": leases[3]["task_id"],
                                        "attempt": 1, "error": "boom", "retry": False})
    client.post(f"/task/{ids[-1]}/cancel", json={})
    return {"ids": ids, "times": times}


def test_filters_by_status_type_and_time(client: FlaskClient, a_history: dict[str, Any]) -> None:
    ids, times = a_history["ids"], a_history["times"]
    newest_first = ids[::-1]
    assert listed(client) == newest_first
    assert listed(client, status="") == newest_first  # an empty filter is no filter
    assert listed(client, status="completed") == ids[:3][::-1]
    assert listed(client, status="completed,failed") == ids[:4][::-1]
    repeated = client.get("/tasks?status=failed&status=cancelled").json["tasks"]
    assert [t["task_id"] for t in repeated] == [ids[-1], ids[3]]
    assert listed(client, status="failed") == [ids[3]]
    assert listed(client, task_type="noop") == [i for i in newest_first if ids.index(i) % 3 == 0]
    assert listed(client, task_type="noop", status="pending") == [ids[9], ids[6]]
    assert listed(client, created_after=times[5], created_before=times[8]) == [
        ids[7], ids[6], ids[5]]
    assert listed(client, created_after=times[10] + 1) == [ids[11]]
    assert listed(client, created_before=times[0]) == []
    assert listed(client, created_after=times[11] + 1) == []
    assert listed(client, task_type="wordcount") == []


def test_a_batch_created_at_one_instant_is_listed_whole(client: FlaskClient,
                                                         clock: FakeClock) -> None:
    before = submit(client, NOOP)
    clock.advance(5)
    batch = client.post("/submit-task", json={"tasks": [NOOP] * 7}).json["task_ids"]
    at = clock()
    clock.advance(5)
    after = submit(client, NOOP)
    assert listed(client, created_after=at, created_before=at + 1) == batch[::-1]
    assert listed(client, created_before=at + 1) == [*batch[::-1], before]
    assert listed(client, created_after=at) == [after, *batch[::-1]]
    assert listed(client, created_after=at, created_before=at + 1, limit=3) == batch[::-1][:3]


def test_pages_follow_the_cursor_and_stay_stable_under_inserts(
        client: FlaskClient, a_history: dict[str, Any]) -> None:
    expected = [i for i in a_history["ids"][::-1] if a_history["ids"].index(i) % 3 != 0]
    added: list[int] = []
    ids = walk(client, lambda: added.append(submit(client, PRIMES)), task_type="primes",
               limit=3)
    assert ids == expected  # no task twice, none skipped, none of the new ones mid-walk
    assert len(added) == 2
    assert walk(client, limit=5, task_type="primes", status="pending")[:2] == added[::-1]


def test_the_last_page_has_no_cursor(client: FlaskClient, a_history: dict[str, Any]) -> None:
    first = client.get("/tasks", query_string={"limit": 11}).json
    assert first["next_cursor"] is not None
    second = client.get("/tasks", query_string={"limit": 11,
                                                 "cursor": first["next_cursor"]}).json
    assert [t["task_id"] for t in second["tasks"]] == [a_history["ids"][0]]
    assert second["next_cursor"] is None
    assert client.get("/tasks", query_string={"limit": 12}).json["next_cursor"] is None


@pytest.mark.parametrize(("query", "field"), [
    ("status=bogus", "status"),
    ("status=pending,bogus", "status"),
    ("limit=0", "limit"),
    ("limit=1001", "limit"),
    ("limit=ten", "limit"),
    ("task_type=no%20spaces", "task_type"),
    ("created_after=yesterday", "created_after"),
    ("created_after=nan", "created_after"),
    ("created_before=inf", "created_before"),
    ("created_before=1e999", "created_before"),
    ("cursor=not-a-cursor!", "cursor"),
    ("cursor=dDEyYWI", "cursor"),  # well-formed base64 of something else
    ("cursor=eA", "cursor"),
])
def test_bad_filters_are_400_naming_the_field(client: FlaskClient, query: str,
                                              field: str) -> None:
    resp = client.get(f"/tasks?{query}")
    assert resp.status_code == 400, resp.json
    assert resp.json["error"]["message"].startswith(f"{field}:"), resp.json


# -- every page walks an index: the query plans -------------------------------------------------

PAGE_QUERIES = ("task_page", "task_page_status", "task_page_type_status", "task_page_owner",
                "first_id_created_from", "last_id_created_before", "purge_candidates",
                "group_parts")
PARAMS = {"before_id": 2**62, "min_id": 0, "after": -1e300, "before": 1e300, "limit": 101,
          "status": "failed", "task_type": "noop", "at": 5000.0, "group_id": 1,
          "owner": "0123456789ab"}


def sqlite_plans(path: Any) -> dict[str, str]:
    conn = sqlite3.connect(path)
    try:
        plans = {}
        for name in PAGE_QUERIES:
            params = {**PARAMS, "before": 5000.0} if name == "purge_candidates" else PARAMS
            sql = "EXPLAIN QUERY PLAN " + sqlite_backend.QUERIES[name]
            plans[name] = "\n".join(row[3] for row in conn.execute(sql, params))
        return plans
    finally:
        conn.close()


def postgres_plans(url: str) -> dict[str, str]:
    """Plans over 50,000 tasks with planner statistics (an empty table plans differently)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("""
            INSERT INTO tasks (task_type, params, status, max_attempts, created_at, finished_at,
                               owner)
            SELECT CASE WHEN i % 10 = 0 THEN 'noop' ELSE 'primes' END, '{}',
                   CASE WHEN i % 50 = 0 THEN 'failed' WHEN i % 3 = 0 THEN 'pending'
                        ELSE 'completed' END,
                   3, i, CASE WHEN i % 3 = 0 AND i % 50 <> 0 THEN NULL ELSE i + 1 END,
                   CASE WHEN i % 100 = 0 THEN '0123456789ab' WHEN i % 2 = 1 THEN 'ba9876543210' END
              FROM generate_series(1, 50000) i""")
        conn.execute("ANALYZE tasks")
        cursor = psycopg.ClientCursor(conn)
        plans = {}
        for name in PAGE_QUERIES:
            params = {**PARAMS, "before": 5000.0} if name == "purge_candidates" else PARAMS
            rows = cursor.execute("EXPLAIN " + pg_backend.QUERIES[name], params).fetchall()
            plans[name] = "\n".join(row[0] for row in rows)
            # And the generic plan, which a prepared statement may settle on.
            plans[f"{name} (generic)"] = generic_plan(conn, pg_backend.QUERIES[name], params)
        return plans


def test_every_page_query_walks_an_index(client: FlaskClient, config: Config) -> None:
    if config.sqlite_path is not None:
        plans = sqlite_plans(config.sqlite_path)
        for name, plan in plans.items():
            assert "SCAN" not in plan.replace("CORRELATED SCALAR SUBQUERY", ""), (name, plan)
            assert "TEMP B-TREE" not in plan, (name, plan)  # no sort of all the matches
        assert "tasks_status_id_idx" in plans["task_page_status"]
        assert "tasks_type_status_idx" in plans["task_page_type_status"]
        assert "tasks_owner_idx" in plans["task_page_owner"]  # a client's own tasks
        assert "tasks_finished_idx" in plans["purge_candidates"]
    else:
        plans = postgres_plans(config.database_url)
        for name, plan in plans.items():
            assert "Seq Scan on tasks" not in plan, (name, plan)
            assert "Index" in plan, (name, plan)
        for name in ("task_page", "task_page_status", "task_page_type_status",
                     "task_page_owner", "task_page (generic)", "task_page_status (generic)",
                     "task_page_type_status (generic)", "task_page_owner (generic)"):
            # The walk starts at the cursor inside the index (a keyset, not an offset).
            assert "Index Cond: (" in plans[name] and "task_id <" in plans[name], plans[name]
        assert "tasks_status_id_idx" in plans["task_page_status"]
        assert "tasks_type_status_idx" in plans["task_page_type_status"]
