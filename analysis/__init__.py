"""Analysis tools: throughput and recovery runners (JSON in analysis/results/) and their plotters.

Only the standard library is imported here, so that :func:`require_venv` can run before numpy,
matplotlib or requests are imported.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
_VENV = REPO_ROOT / ".venv"
_VENV_PYTHON = _VENV / "bin" / "python"
_NEEDED = ("requests", "numpy", "matplotlib", "psutil", "tqdm")


def require_venv() -> None:
    """Re-run this command inside the project's .venv when a dependency is missing."""
    if all(importlib.util.find_spec(name) for name in _NEEDED):
        return
    # sys.prefix, not the executable: a venv's python is often a symlink to the system one.
    running_venv = Path(sys.prefix).resolve() == _VENV.resolve()
    if _VENV_PYTHON.exists() and not running_venv:
        os.execv(str(_VENV_PYTHON), [str(_VENV_PYTHON), *sys.orig_argv[1:]])
    sys.exit("error: dependencies missing; run ./quickstart.sh or "
             "'python3 -m pip install -r requirements.txt' first")
