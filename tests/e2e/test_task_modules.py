"""TASK_MODULES with real processes: an operator's task runs, a missing or bad module is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from shared.cluster import LocalCluster
from shared.config import REPO_ROOT
from shared.utils import free_port
from tests.conftest import ClusterFactory

EXAMPLE = "examples.wordcount"
TEXT = "It was the best of times, it was the worst of times;\n" * 1000 + "it was the age of wisdom"


def test_example_module_runs_on_a_worker_that_loads_it(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(TASK_MODULES=EXAMPLE, CHECKPOINT_INTERVAL="0.001")
    cluster.start_worker("w1")
    view = cluster.wait_finished(cluster.submit("wordcount", {"text": TEXT, "top": 3}), 60)
    assert view["status"] == "completed", view
    expected = Counter(word.strip(",;").lower() for word in TEXT.split())
    assert view["result"]["words"] == sum(expected.values()) == 12006
    assert view["result"]["distinct"] == len(expected)
    assert view["result"]["top"] == [["it", 2001], ["of", 2001], ["the", 2001]]  # ties: a-z
    assert view["params"] == {"text": TEXT, "top": 3} and view["progress"] == 1.0
    log = cluster.worker_log("w1")
    assert "task types: collatz_longest, cpu_burn" in log and "checkpoint refused" not in log


def test_worker_without_the_module_fails_that_task_and_runs_the_next(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(TASK_MODULES=EXAMPLE)
    cluster.start_worker("plain", env={"TASK_MODULES": ""})
    view = cluster.wait_finished(cluster.submit("wordcount", {"text": "a b"}), 60)
    assert view["status"] == "failed" and view["attempt"] == 1
    assert view["error"].startswith(
        "UnknownTaskType: task type 'wordcount' is not loaded on worker plain (add its module "
        "to TASK_MODULES there; loaded: collatz_longest, ")
    after = cluster.wait_finished(cluster.submit("primes", {"limit": 30}), 60)
    assert after["status"] == "completed" and after["worker_id"] == "plain"


def test_dispatcher_without_the_module_refuses_the_task_type(cluster: LocalCluster) -> None:
    resp = cluster.post("/submit-task", {"task_type": "wordcount", "params": {"text": "a"}})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["code"] == "invalid_field"
    assert error["message"].startswith("task_type: unknown task type 'wordcount'; known: ")


# Load errors stop both entry points at start with one line on stderr and exit code 2.

BAD_MODULES = {
    "dup_primes": "from pydantic import BaseModel\nfrom tasks import task\n\n\n"
                  "class P(BaseModel):\n    n: int = 0\n\n\n"
                  "@task('primes', params=P)\ndef run(params, resume, checkpoint):\n    return {}\n",
    "raises_on_import": "import json\n\nraise RuntimeError('cannot reach the model server')\n",
}
CASES = {
    "unknown": ("no_such_task_module", "TASK_MODULES: no module named 'no_such_task_module' "
                "(is it installed on this host, or on PYTHONPATH?)"),
    "duplicate": ("dup_primes", "TASK_MODULES: dup_primes: task type 'primes' is already "
                  "defined by tasks.prime_task"),
    "broken": ("raises_on_import", "TASK_MODULES: raises_on_import raised on import: "
               "RuntimeError: cannot reach the model server ({dir}/raises_on_import.py, line 3)"),
}
ENTRY_POINTS = {"worker": ["-m", "worker", "w1"], "dispatcher": ["-m", "dispatcher"]}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_task_module_stops_the_process_with_one_line(
    tmp_path: Path, entry: str, case: str
) -> None:
    for name, source in BAD_MODULES.items():
        (tmp_path / f"{name}.py").write_text(source)
    module, expected = CASES[case]
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "TASK_MODULES": f"examples.wordcount,{module}",
           "DATABASE_URL": f"sqlite:///{tmp_path / 'tasks.db'}", "RUN_DIR": str(tmp_path / "run"),
           "DISPATCHER_PORT": str(free_port()), "DISPATCHER_URL": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, *ENTRY_POINTS[entry]], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done
    assert done.stderr == f"configuration error: {expected.format(dir=tmp_path)}\n"
    assert done.stdout == "" and not (tmp_path / "tasks.db").exists()
