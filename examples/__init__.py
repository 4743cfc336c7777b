"""Example task modules, loaded only when named in TASK_MODULES."""
