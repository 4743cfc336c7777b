"""Entry point: ``python -m dispatcher [--host H] [--port P] [--log-level L]``.

gevent patches the standard library (sockets, threads, locks, sleeps) before anything else is
imported, so every request, long poll and background loop of the dispatcher is a greenlet.
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

from dispatcher.app import main  # noqa: E402

sys.exit(main())
