"""Plain task functions for peers that import jobs by dotted path (RQ)."""


def noop() -> bool:
    """Do nothing; return a value so that a result is stored."""
    return True
