"""The worker supervisor's pure parts: names, restart delays, exit causes, process counts."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from shared.config import ConfigError, load_config, resolve_process_count
from worker.supervisor import child_names, exit_cause, parse_args, restart_delay, worker_args


def test_children_are_named_after_the_base_id() -> None:
    assert child_names("host-a", 3) == ["host-a-1", "host-a-2", "host-a-3"]


def test_restart_delay_is_immediate_then_doubles_up_to_the_cap() -> None:
    delays = [restart_delay(n, 1.0, 30.0) for n in range(8)]
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_exit_cause_names_the_signal_or_the_code() -> None:
    assert exit_cause(-signal.SIGKILL) == "killed by SIGKILL"
    assert exit_cause(1) == "exit code 1"
    assert exit_cause(-200) == "killed by signal 200"
    assert exit_cause(75).startswith("exit code 75 (its task ignored its timeout")


def test_process_count_is_a_number_or_auto(tmp_path: Path) -> None:
    assert resolve_process_count("4") == 4
    assert resolve_process_count(" AUTO ") == len(os.sched_getaffinity(0))
    for bad in ("0", "-1", "1025", "two", ""):
        with pytest.raises(ConfigError, match="--processes"):
            resolve_process_count(bad, "--processes")
    assert load_config(env={}, dotenv_path=tmp_path / "none").worker_process_count == 1
    assert load_config(env={"WORKER_PROCESSES": "auto"},
                       dotenv_path=tmp_path / "none").worker_process_count >= 1


def test_worker_options_are_passed_on_as_given() -> None:
    args = parse_args(["h", "--processes", "2", "--url", "http://x:1", "--burst",
                       "--max-tasks", "5", "--log-level", "debug"])
    assert worker_args(args) == ["--url", "http://x:1", "--max-tasks", "5", "--burst",
                                 "--log-level", "DEBUG"]
    assert worker_args(parse_args(["h"])) == []
