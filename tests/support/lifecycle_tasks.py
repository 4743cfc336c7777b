"""Test-only task types for the task lifecycle.

Load with ``TASK_MODULES=tests.support.lifecycle_tasks``.

``flaky`` raises its first ``fail_times`` runs (counted in a file, so across workers);
``suicide`` saves a checkpoint and then SIGKILLs its own worker process, at the same checkpoint
every time or one step further each time; ``spin`` runs for a while, calling its checkpoint
callback (or never calling it: a task that ignores its timeout).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tasks import CheckpointFn, task


class FlakyParams(BaseModel):
    """Parameters of ``flaky``."""

    model_config = ConfigDict(strict=True, extra="forbid")

    counter: str = Field(min_length=1, max_length=500)
    fail_times: int = Field(ge=0, le=100)


@task("flaky", params=FlakyParams)
def flaky(params: FlakyParams, resume: dict[str, Any] | None, checkpoint: CheckpointFn
          ) -> dict[str, Any]:
    """Raise for the first ``fail_times`` runs, then succeed with the number of runs."""
    path = Path(params.counter)
    runs = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(runs))
    if runs <= params.fail_times:
        raise RuntimeError(f"flaky failure {runs} of {params.fail_times}")
    return {"runs": runs}


class SuicideParams(BaseModel):
    """Parameters of ``suicide``."""

    model_config = ConfigDict(strict=True, extra="forbid")

    kills: int = Field(ge=0, le=100)  # how many runs kill their worker before one completes
    progressing: bool = False  # each run checkpoints one step further before dying


class SuicideState(BaseModel):
    """How many steps are done."""

    model_config = ConfigDict(strict=True, extra="forbid")

    step: int = Field(default=0, ge=0)


@task("suicide", params=SuicideParams, state=SuicideState)
def suicide(params: SuicideParams, resume: dict[str, Any] | None, checkpoint: CheckpointFn
            ) -> dict[str, Any]:
    """Checkpoint, then SIGKILL this worker process (``kills`` times); then complete."""
    state = SuicideState.model_validate(resume or {})
    if state.step >= params.kills:
        return {"step": state.step}
    step = state.step + 1 if params.progressing else max(state.step, 1)
    time.sleep(0.05)  # past the checkpoint interval, so the call below is sent
    checkpoint({"step": step}, step / (params.kills + 1))
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable: the process was killed")


class SpinParams(BaseModel):
    """Parameters of ``spin``."""

    model_config = ConfigDict(strict=True, extra="forbid")

    seconds: float = Field(gt=0, le=600)
    cooperative: bool = True  # calls its checkpoint callback every 10 ms


@task("spin", params=SpinParams)
def spin(params: SpinParams, resume: dict[str, Any] | None, checkpoint: CheckpointFn
         ) -> dict[str, Any]:
    """Run for ``seconds``; a non-cooperative run never calls its checkpoint callback."""
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < params.seconds:
        if params.cooperative:
            checkpoint({"elapsed": elapsed}, min(1.0, elapsed / params.seconds))
        time.sleep(0.01)
    return {"seconds": params.seconds}
