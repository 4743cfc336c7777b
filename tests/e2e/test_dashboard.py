"""The dashboard in a real browser: Debian's chromium driven by Playwright, against a real
dispatcher and real workers (both stores).

What a person would check by eye, the tests check in the DOM, polling with deadlines (Playwright's
``expect`` and ``wait_for_function``): workers appear alive; a running task's progress bar moves
with its checkpoints; a worker killed with SIGKILL turns dead, its task shows up in the timeline
as reclaimed and then as resumed by the other worker, whose bar goes on from the checkpoint; the
task's detail opens; cancel (and retry) buttons call the API. Screenshots go to the test's temp
directory. Where no browser is installed these tests are skipped, except in CI
(``CI``/``TASKQUEUE_REQUIRE_BROWSER``), where that fails them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.cluster import LocalCluster
from tests.conftest import ClusterFactory

CHROMIUM = Path(os.environ.get("TASKQUEUE_CHROMIUM", "/usr/bin/chromium"))
REQUIRED = (os.environ.get("CI", "").lower() in ("1", "true", "yes")
            or os.environ.get("TASKQUEUE_REQUIRE_BROWSER") == "1")
SLOW_PRIMES = {"limit": 10**11}  # tens of seconds of sieving: it is still running when cancelled
WAIT_MS = 30_000


def browser_unavailable(reason: str) -> None:
    """Skip (locally) or fail (in CI) for want of the browser."""
    if REQUIRED:
        pytest.fail(f"{reason} (a browser is required here: CI or TASKQUEUE_REQUIRE_BROWSER)",
                    pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium under Playwright (never a downloaded browser build)."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        browser_unavailable("playwright is not installed (pip install -r requirements-dev.txt)")
    if not CHROMIUM.exists():
        browser_unavailable(f"no browser at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        except Error as exc:
            browser_unavailable(f"{CHROMIUM} does not start under Playwright: {exc}")
        yield launched
        launched.close()


@pytest.fixture
def open_dashboard(browser: Any, tmp_path: Path) -> Iterator[Any]:
    """Open the dashboard of a cluster in a fresh browser context; no script error allowed."""
    contexts, errors = [], []

    def open_page(cluster: LocalCluster) -> Any:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error"
                and not msg.text.startswith("Failed to load resource") else None)  # a 4xx
        page.goto(f"{cluster.url}/dashboard")
        page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert errors == [], f"errors in the page: {errors}"


def shoot(page: Any, tmp_path: Path, name: str) -> None:
    """A screenshot for whoever looks into a failure (the test's temp directory)."""
    page.screenshot(path=str(tmp_path / f"dashboard-{name}.png"), full_page=True)


def wait_progress_above(page: Any, selector: str, floor: float) -> float:
    """Wait until the progress bar at ``selector`` shows more than ``floor``; its value."""
    page.wait_for_function(
        "([sel, floor]) => { const bar = document.querySelector(sel);"
        " return bar !== null && parseFloat(bar.dataset.progress) > floor; }",
        arg=[selector, floor], timeout=WAIT_MS)
    return float(page.locator(selector).get_attribute("data-progress"))


def test_a_killed_workers_task_is_seen_moving_and_resuming(
    make_cluster: ClusterFactory, open_dashboard: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    cluster = make_cluster(CHECKPOINT_INTERVAL="0.2")
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    page = open_dashboard(cluster)
    for worker in ("w1", "w2"):
        expect(page.locator(f'#workers tr[data-worker="{worker}"]')).to_have_attribute(
            "data-state", "alive", timeout=WAIT_MS)
    task_id = cluster.submit("primes", SLOW_PRIMES)
    row = page.locator(f'#running tr[data-task="{task_id}"]')
    bar = f'#running tr[data-task="{task_id}"] .bar'
    first = wait_progress_above(page, bar, 0.0)
    moved = wait_progress_above(page, bar, first)  # the bar follows the checkpoints
    assert moved > first
    shoot(page, tmp_path, "running")
    victim = row.locator("td").nth(2).inner_text()
    survivor = {"w1": "w2", "w2": "w1"}[victim]

    cluster.kill_worker(victim)  # SIGKILL, by PID
    expect(page.locator(f'#workers tr[data-worker="{victim}"]')).to_have_attribute(
        "data-state", "dead", timeout=WAIT_MS)
    expect(page.locator("#h-dead")).to_have_text("1", timeout=WAIT_MS)
    timeline = page.locator("#timeline")
    expect(timeline.locator(f'li[data-kind="worker_dead"][data-worker="{victim}"]')).to_be_visible(
        timeout=WAIT_MS)
    reclaimed = timeline.locator(f'li[data-kind="dead_worker"][data-task="{task_id}"]')
    expect(reclaimed).to_contain_text(f"taken from {victim}", timeout=WAIT_MS)
    resumed = timeline.locator(
        f'li[data-kind="resumed"][data-task="{task_id}"][data-worker="{survivor}"]')
    expect(resumed).to_contain_text("resumes from its checkpoint", timeout=WAIT_MS)
    expect(row.locator("td").nth(2)).to_have_text(survivor, timeout=WAIT_MS)
    expect(row.locator("td").nth(3)).to_have_text("2 / 10", timeout=WAIT_MS)
    wait_progress_above(page, bar, moved)  # goes on from the checkpoint, not from zero
    shoot(page, tmp_path, "resumed")

    row.locator('[data-action="details"]').click()
    dialog = page.locator("#detail")
    expect(dialog).to_be_visible()
    expect(dialog).to_have_attribute("data-status", "in-progress", timeout=WAIT_MS)
    expect(dialog.locator('[data-field="params"]')).to_contain_text(str(SLOW_PRIMES["limit"]))
    expect(dialog.locator('[data-field="attempt"]')).to_have_text("2")
    expect(dialog.locator("#detail-checkpoint")).to_contain_text("last_checked", timeout=WAIT_MS)
    expect(dialog.locator('#detail-events li[data-kind="dead_worker"]')).to_be_visible(
        timeout=WAIT_MS)
    shoot(page, tmp_path, "detail")
    dialog.locator('[data-action="cancel"]').click()
    expect(dialog).to_have_attribute("data-status", "cancelled", timeout=WAIT_MS)
    assert cluster.task(task_id)["status"] == "cancelled"
    page.locator("#detail-close").click()
    expect(dialog).to_be_hidden()
    expect(page.locator(f'#timeline li[data-kind="cancelled"][data-task="{task_id}"]')
           ).to_be_visible(timeout=WAIT_MS)
    expect(row).to_have_count(0, timeout=WAIT_MS)


def test_headline_chart_cancel_retry_and_the_token(
    make_cluster: ClusterFactory, open_dashboard: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    cluster = make_cluster()
    ids = [cluster.submit("sleep", {"seconds": 1}) for _ in range(3)]
    page = open_dashboard(cluster)
    expect(page.locator("#h-pending")).to_have_text("3", timeout=WAIT_MS)
    expect(page.locator("#h-alive")).to_have_text("0")
    # The token entered once goes with every request; POSTs send JSON.
    page.fill("#token", "s3cret-token")
    with page.expect_request(lambda r: r.url.endswith("/dashboard/state")
                             and r.headers.get("authorization") == "Bearer s3cret-token",
                             timeout=WAIT_MS):
        page.click('#token-form button[type="submit"]')
    pending = page.locator(f'#pending tr[data-task="{ids[0]}"]')
    with page.expect_request(lambda r: r.url.endswith(f"/task/{ids[0]}/cancel")) as sent:
        pending.locator('[data-action="cancel"]').click()
    assert sent.value.method == "POST"
    assert sent.value.headers["content-type"] == "application/json"
    expect(page.locator("#flash")).to_contain_text(f"Task #{ids[0]} cancelled", timeout=WAIT_MS)
    expect(page.locator("#h-pending")).to_have_text("2", timeout=WAIT_MS)
    cancelled = page.locator(f'#recent tr[data-task="{ids[0]}"][data-status="cancelled"]')
    expect(cancelled).to_be_visible(timeout=WAIT_MS)
    with page.expect_request(lambda r: r.url.endswith(f"/task/{ids[0]}/retry")) as sent:
        cancelled.locator('[data-action="retry"]').click()
    assert sent.value.method == "POST"
    expect(page.locator("#flash")).to_contain_text(f"Task #{ids[0]} is queued again.",
                                                   timeout=WAIT_MS)
    expect(page.locator("#h-pending")).to_have_text("3", timeout=WAIT_MS)  # it is back
    expect(page.locator("#flash")).not_to_contain_text("undefined")

    cluster.start_worker("w1")
    cluster.submit_many([{"task_type": "noop", "params": {"i": i}} for i in range(20)])
    expect(page.locator("#h-alive")).to_have_text("1", timeout=WAIT_MS)
    # The 3 sleeps (the retried one too) and the 20 noops.
    expect(page.locator('#status-legend li[data-status="completed"] .count')).to_have_text(
        "23", timeout=WAIT_MS)
    page.wait_for_function("document.querySelector('#chart').dataset.total >= 23",
                           timeout=WAIT_MS)
    assert page.locator("#chart svg rect.completed").count() >= 1
    assert float(page.locator("#h-rate").inner_text()) > 0
    shoot(page, tmp_path, "throughput")
