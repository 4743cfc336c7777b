"""Screenshots of the dashboard at work, for the README.

    .venv/bin/python scripts/dashboard_screenshots.py [--seconds 50] [--out docs/images]

Starts a scratch cluster (a dispatcher on SQLite and six workers, in a temp directory), gives
it a stream of quick tasks and a few slow, checkpointing ones, kills one worker with SIGKILL
and restarts another under the same id, cancels a task, then photographs the dashboard with
Debian's chromium under Playwright: ``docs/images/dashboard.png`` (the whole page) and
``docs/images/dashboard-task.png`` (the detail of the task that moved to another worker).
Everything it started is stopped when it ends.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.cluster import LocalCluster, wait_until  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images",
                        help="directory for the PNG files (default docs/images)")
    parser.add_argument("--seconds", type=float, default=50,
                        help="how long the cluster works before the pictures (default 50)")
    parser.add_argument("--chromium", default="/usr/bin/chromium",
                        help="the browser binary (default /usr/bin/chromium)")
    return parser.parse_args()


def _holder(cluster: LocalCluster, task_id: int) -> str | None:
    view = cluster.task(task_id)
    return view["worker_id"] if view["status"] == "in-progress" else None


def _run_scenario(cluster: LocalCluster, seconds: float) -> int:
    """Drive the cluster for ``seconds``; the id of the task that a killed worker held."""
    for worker in ("w1", "w2", "w3", "w4", "w5", "w6"):
        cluster.start_worker(worker)
    slow = [cluster.submit("sleep", {"seconds": seconds * 1.5}) for _ in range(2)]
    slow.append(cluster.submit("primes", {"limit": 6 * 10**10}))
    doomed = cluster.submit("sleep", {"seconds": 600})
    wait_until(lambda: all(_holder(cluster, t) for t in slow + [doomed]), 60,
               message="the slow tasks are running")
    started = time.monotonic()
    victim_task, killed, restarted, cancelled = slow[0], False, False, False
    while time.monotonic() - started < seconds:
        elapsed = time.monotonic() - started
        cluster.submit_many([{"task_type": "noop", "params": {"i": i}}
                             for i in range(int(5 + 20 * (elapsed % 17) / 17))])
        if not killed and elapsed > seconds * 0.3:
            cluster.kill_worker(_holder(cluster, victim_task) or "w1")
            killed = True
        if not restarted and elapsed > seconds * 0.5:
            holder = _holder(cluster, slow[1])
            if holder is not None:
                cluster.restart_worker(holder)
            restarted = True
        if not cancelled and elapsed > seconds * 0.7:
            cluster.post(f"/task/{doomed}/cancel", {}).raise_for_status()
            cancelled = True
        time.sleep(1)  # a steady trickle of work, one batch a second
    return victim_task


def _photograph(url: str, task_id: int, out: Path, chromium: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/dashboard")
        page.wait_for_selector("body[data-ready=true]")
        page.wait_for_timeout(1500)  # let the progress bars slide to their values
        page.screenshot(path=str(out / "dashboard.png"), full_page=True)
        page.click(f'#running tr[data-task="{task_id}"] [data-action="details"]')
        expect(page.locator("#detail-checkpoint")).to_contain_text("slept")
        page.wait_for_timeout(500)
        page.screenshot(path=str(out / "dashboard-task.png"))
        browser.close()
    print(f"wrote {out / 'dashboard.png'} and {out / 'dashboard-task.png'}")


def main() -> int:
    """Run the scenario and take the pictures."""
    args = _parse_args()
    with tempfile.TemporaryDirectory(prefix="dashboard-") as tmp:
        # A longer HEARTBEAT_TIMEOUT than the default, so that the restarted worker is back
        # before its first instance is declared dead (a worker_restarted reclaim).
        env = {"CHECKPOINT_INTERVAL": "0.3", "HEARTBEAT_TIMEOUT": "6"}
        with LocalCluster(Path(tmp), env) as cluster:
            cluster.start_dispatcher()
            task_id = _run_scenario(cluster, args.seconds)
            _photograph(cluster.url, task_id, args.out, args.chromium)
    return 0


if __name__ == "__main__":
    sys.exit(main())
