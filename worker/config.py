"""Worker configuration: the shared config plus command-line choices, frozen at start."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from shared.config import Config, ConfigError, check_dispatcher_urls
from shared.utils import split_urls

CONFIG_ERROR_EXIT = 2
"""Exit code of a worker that cannot start (bad configuration, flags or task modules), before it
ever contacts a dispatcher; the supervisor stops on it instead of restarting (argparse uses it too)."""
TASK_OVERRAN_EXIT = 75
"""Exit code of a worker that ended itself because its task ignored its timeout (the watchdog):
a crash as far as the supervisor is concerned, so the process is started again."""

# The dispatcher's (and start_worker.sh's) rule; also safe as the cache's file name.
_WORKER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


@dataclass(frozen=True)
class WorkerConfig:
    """Everything one worker process needs; built once by the entry point."""

    worker_id: str
    instance_id: str
    dispatcher_url: str
    """One dispatcher base URL, or several separated by commas."""
    cache_path: Path
    heartbeat_interval: float = 1.0
    checkpoint_interval: float = 2.0
    poll_wait: float = 1.0
    backoff_base: float = 0.1
    backoff_max: float = 5.0
    request_timeout: float = 5.0
    prefetch_max: int = 128
    max_result_bytes: int = 1024 * 1024
    max_tasks: int | None = None
    burst: bool = False
    timeout_grace: float = 2.0
    """How long a task may run past its timeout_seconds before the worker ends itself."""
    token: str = field(default="", repr=False)
    """DISPATCHER_TOKEN, sent as a bearer token (never logged)."""

    @property
    def dispatcher_urls(self) -> tuple[str, ...]:
        """The dispatcher base URLs, in order."""
        return split_urls(self.dispatcher_url)

    @property
    def heartbeat_timeout(self) -> tuple[float, float]:
        """(connect, read) timeouts of one heartbeat, short so a slow dispatcher never delays the next."""
        short = min(1.0, self.heartbeat_interval)
        return (short, short)

    @property
    def claim_timeout(self) -> tuple[float, float]:
        """(connect, read) timeouts of a long-poll claim: the wait plus a margin."""
        return (min(2.0, self.request_timeout), self.poll_wait + self.request_timeout)

    @property
    def call_timeout(self) -> tuple[float, float]:
        """(connect, read) timeouts of checkpoint, result and release calls."""
        return (min(2.0, self.request_timeout), self.request_timeout)


def make_worker_config(
    config: Config,
    worker_id: str,
    *,
    url: str | None = None,
    max_tasks: int | None = None,
    burst: bool = False,
) -> WorkerConfig:
    """Derive the worker's config from the shared config and its CLI flags (flags win)."""
    if not _WORKER_ID.fullmatch(worker_id):
        raise ConfigError(
            "WORKER_ID must be 1-128 letters, digits and . _ : @ - starting with a letter "
            f"or digit, got {worker_id!r}"
        )
    if max_tasks is not None and max_tasks < 1:
        raise ConfigError(f"--max-tasks must be >= 1, got {max_tasks}")
    urls = config.dispatcher_urls if url is None else check_dispatcher_urls(url, "--url")
    return WorkerConfig(
        worker_id=worker_id,
        instance_id=uuid.uuid4().hex,
        dispatcher_url=",".join(urls),
        cache_path=config.run_path / "cache" / f"{worker_id}.sqlite3",
        heartbeat_interval=config.heartbeat_interval,
        checkpoint_interval=config.checkpoint_interval,
        poll_wait=config.poll_wait,
        backoff_max=config.backoff_max,
        prefetch_max=config.prefetch_max,
        max_result_bytes=config.max_result_bytes,
        max_tasks=max_tasks,
        burst=burst,
        timeout_grace=config.timeout_grace,
        token=config.dispatcher_token,
    )
