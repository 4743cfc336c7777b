"""The OpenAPI document against a live dispatcher: schemathesis finds no server error and no
response that contradicts the document (every check enabled, a bounded number of examples)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ClusterFactory

CONFIG = Path(__file__).with_name("schemathesis.toml")
MAX_EXAMPLES = 20
SEED = 1


def run_schemathesis(url: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """``schemathesis run --checks all`` on the dispatcher's own /openapi.json."""
    cli = Path(sys.executable).with_name("schemathesis")
    return subprocess.run(
        [str(cli), "--config-file", str(CONFIG), "--no-color", "run", f"{url}/openapi.json",
         "--checks", "all", "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
         "--workers", "2", "--request-timeout", "30",  # a heartbeat may list 10,000 leases
         "--generation-database", "none", "--report-dir", str(workdir / "report"),
         # Every POST must say it is JSON, even a body-less cancel (else 415, documented).
         "--header", "Content-Type: application/json"],
        capture_output=True, text=True, timeout=600, cwd=workdir,
    )


def test_schemathesis_finds_nothing(make_cluster: ClusterFactory, tmp_path: Path) -> None:
    # Long polls answer at once, so generated waits of up to an hour cost nothing.
    cluster = make_cluster(MAX_WAIT_SECONDS="0")
    done = run_schemathesis(cluster.url, tmp_path)
    summary = done.stdout[done.stdout.rfind("SUMMARY"):] or done.stdout[-3000:]
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-3000:]
    assert re.search(r"Tested: (\d+)", summary), summary
    tested = int(re.search(r"Tested: (\d+)", summary).group(1))
    documented = sum(len(ops) for ops in cluster.get("/openapi.json").json()["paths"].values())
    assert tested == documented - 1, summary  # all but GET /openapi.json, the document itself
    assert "server error" not in done.stdout.lower(), summary
    print(summary)  # the figures for the README: operations, test cases, failures
