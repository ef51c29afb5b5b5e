"""Scheduling: the leader-elected ``fairlane scheduler`` process and its tasks.

``leader`` elects one replica (a PostgreSQL advisory lock, a file lock on SQLite);
``service`` runs APScheduler on the leader; ``cleanup`` (retention), ``reaper`` (stale jobs),
``cron`` (``@fairlane.cron`` and ``FAIRLANE_CRON`` schedules) and ``gauges`` (leader-only
metrics) are its tasks. The decorator is exported as ``fairlane.cron``.
"""
