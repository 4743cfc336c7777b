"""Entry point: ``python -m dispatcher [--host H] [--port P] [--log-level L]``.

gevent patches the standard library (sockets, threads, locks, sleeps) before anything else is
imported, so every request, long poll and background loop of the dispatcher is a greenlet.
"""

import os

from gevent import monkey

monkey.patch_all()
# psycopg waits for its socket through the patched select module under gevent; its
# select()-based wait keeps a transaction in pipeline mode at one round trip per read,
# where its poll()-based default (a gevent watcher set up and torn down per wait) measured
# about twice as long per transaction.
os.environ.setdefault("PSYCOPG_WAIT_FUNC", "wait_select")

import sys  # noqa: E402

from dispatcher.app import main  # noqa: E402

sys.exit(main())
