"""How the dispatcher process runs: on plain threads (tests, tools) or on gevent (the server).

The server (``python -m dispatcher``) patches the standard library with gevent before anything
else is imported, so every request is a greenlet and a waiting long poll costs a socket, not a
thread. Code here works the same either way; :func:`offload` keeps one slow system call from
stalling every other request under gevent.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def on_gevent() -> bool:
    """True when this process has been monkey-patched by gevent."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))


def offload(fn: Callable[..., T], *args: object) -> T:
    """Call ``fn(*args)``; under gevent in a native thread, so other greenlets run meanwhile.

    For blocking system calls that take long enough to matter (an fsync: 0.3 ms to tens of
    ms); anything short is cheaper to call directly.
    """
    if on_gevent():
        import gevent

        return gevent.get_hub().threadpool.apply(fn, args)
    return fn(*args)


def let_others_run() -> None:
    """Under gevent, let the greenlets that are ready run before going on (threads need not)."""
    if on_gevent():
        import gevent

        gevent.sleep(0)
