"""EXPLAIN (ANALYZE, BUFFERS) of the hot path's statements with 1,000,000 finished jobs in the ledger.

    python bench/explain_hot_path.py [--finished N] [--backlog N] [--no-analyze]

Creates a PostgreSQL database ``fairlane_explain_<random>`` (dropped at the end), migrates it,
loads ``--finished`` succeeded jobs (COPY) plus a live queue: a backlog of ``--backlog``
pending jobs from 4 tenants, 32 dispatched and 8 running, then runs ``ANALYZE`` and prints the
plan of each statement a job's life runs through, each inside a transaction that is rolled
back, so every plan sees the same table:

* the accept of one job (``send()``, one statement);
* an admission round: the queue's turn with its dispatched count, the backlog scan, the
  dispatch of the chosen jobs;
* a worker's flush: 8 finishes and 8 starts in one statement.

What to look for: every scan is an index scan on a partial index or the primary key, and the
buffers touched do not grow with ``--finished``. ``--no-analyze`` leaves the table without
statistics (a fresh bulk load before autovacuum analyzes it, or autovacuum off); with
``--finished 0 --backlog 0`` it shows the plans a worker booting on an empty ledger prepares
(sequential scans: why prepared statements are planned again every second, see
``fairlane.ledger.database.replan_if_stale``).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fairlane.ledger.admission import _ACCEPT_PG, _CLOSE_ROUND_PG, _OPEN_ROUND_PG, Admission, _Statements
from fairlane.ledger.database import create_ledger_engine, migrate, plan_by_index
from fairlane.ledger.ratelimits import RateLimits
from fairlane.ledger.transitions import FLUSH_PG
from fairlane.settings import Settings

ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
QUEUE = "explain"
COLUMNS = (
    "id, actor, queue, tenant, lane, lane_rank, state, stride_pass, cost, message, "
    "enqueued_at, next_run_at, dispatched_at, started_at, finished_at, updated_at, attempts, worker_id"
)


def _load(url: str, finished: int, backlog: int, analyze: bool) -> None:
    now = datetime.now(UTC)
    message = '{"queue_name":"explain.normal","actor_name":"noop","args":[],"kwargs":{},"options":{}}'
    with psycopg.connect(url) as connection, connection.cursor() as cursor:
        with cursor.copy(f"COPY fairlane_jobs ({COLUMNS}) FROM STDIN") as copy:
            for index in range(finished):
                moment = now - timedelta(seconds=finished - index)
                copy.write_row(
                    (
                        str(uuid.uuid4()),
                        "noop",
                        QUEUE,
                        f"t{index % 4}",
                        "normal",
                        2,
                        "succeeded",
                        float(index),
                        1.0,
                        message,
                        moment,
                        moment,
                        moment,
                        moment,
                        moment,
                        moment,
                        1,
                        "w:1",
                    )
                )
            states = ["running"] * 8 + ["dispatched"] * 32 + ["pending"] * backlog
            for index, state in enumerate(states):
                started = now if state == "running" else None
                dispatched = now if state != "pending" else None
                copy.write_row(
                    (
                        str(uuid.uuid4()),
                        "noop",
                        QUEUE,
                        f"t{index % 4}",
                        "normal",
                        2,
                        state,
                        float(finished + index),
                        1.0,
                        message,
                        now,
                        now,
                        dispatched,
                        started,
                        None,
                        now,
                        1 if started else 0,
                        "w:1" if started else None,
                    )
                )
        cursor.execute("INSERT INTO fairlane_queues (name) VALUES (%s) ON CONFLICT DO NOTHING", (QUEUE,))
        connection.commit()
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE fairlane_jobs" if analyze else "VACUUM fairlane_jobs")


def _explain(
    connection: psycopg.Connection,
    title: str,
    sql: str,
    parameters: dict | None = None,
    *,
    generic: bool = False,
) -> None:
    """Print the plan of ``sql`` run once inside a transaction that is rolled back.

    ``generic``: the plan of the statement prepared once and run with its generic plan, as the
    hot path runs it (``prepare=True`` on connections with ``plan_cache_mode=force_generic_plan``).
    """
    print(f"\n-- {title}{' (prepared: its generic plan)' if generic else ''}")
    connection.execute("BEGIN")
    try:
        if generic:
            # The parameter types psycopg sends, read off its own prepare (whose run is undone).
            connection.execute("SAVEPOINT probe")
            connection.execute(sql, parameters or {}, prepare=True)
            (types,) = connection.execute(
                "SELECT parameter_types::text[] FROM pg_prepared_statements "
                "ORDER BY prepare_time DESC LIMIT 1"
            ).fetchone() or ([],)
            connection.execute("ROLLBACK TO SAVEPOINT probe")
            names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", sql)))  # psycopg numbers them so
            numbered = re.sub(r"%\((\w+)\)s", lambda match: f"${names.index(match.group(1)) + 1}", sql)
            connection.execute(f"PREPARE explained ({', '.join(types)}) AS {numbered}")
            connection.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            values = [(parameters or {})[key] for key in names]
            with psycopg.ClientCursor(connection) as cursor:
                placeholders = ", ".join(["%s"] * len(values))
                cursor.execute(
                    f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE explained({placeholders})", values
                )
                rows = cursor.fetchall()
        else:
            rows = connection.execute(
                "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql, parameters or {}
            ).fetchall()
        for (line,) in rows:
            print(line)
    finally:
        connection.execute("ROLLBACK")


def _literal(statement: sa.ClauseElement, **parameters: object) -> str:
    bound = statement.params(**parameters) if parameters else statement
    return str(bound.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument(
        "--no-analyze",
        dest="analyze",
        action="store_false",
        help="leave the table without statistics, as a fresh bulk load is until autovacuum analyzes it",
    )
    args = parser.parse_args(argv)
    name = f"fairlane_explain_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        settings = Settings(database_url=url)
        engine = create_ledger_engine(settings)
        migrate(engine, settings)
        began = time.monotonic()
        _load(url, args.finished, args.backlog, args.analyze)
        print(
            f"loaded {args.finished:,} finished and {args.backlog + 40:,} live jobs in "
            f"{time.monotonic() - began:.0f} s; PostgreSQL {engine.dialect.server_version_info}"
        )
        admission = Admission(engine, settings, RateLimits(engine, {}))
        statements = _Statements(postgresql.insert, True)
        with psycopg.connect(url, autocommit=True) as connection:
            plan_by_index(connection)  # as the hot path's connections and rounds plan
            live = connection.execute(
                "SELECT id, state FROM fairlane_jobs WHERE state IN ('dispatched', 'running')"
            ).fetchall()
            running = [job_id for job_id, state in live if state == "running"]
            dispatched = [job_id for job_id, state in live if state == "dispatched"][:8]
            _explain(
                connection,
                "send(): the accept of one job (busy queue: it waits)",
                _ACCEPT_PG,
                {
                    "id": str(uuid.uuid4()),
                    "actor": "noop",
                    "queue": QUEUE,
                    "tenant": "t9",
                    "lane": "normal",
                    "rank": 2,
                    "cost": 1.0,
                    "message": "{}",
                    "key": None,
                    "rate_key": None,
                    "rate_tokens": None,
                    "delay": 0.0,
                    "eligible": True,
                    "budget": 32,
                    "overtake_budget": 48,
                    "fair": True,
                    "increment": 1.0,
                    "notify": True,
                },
                generic=True,
            )
            _explain(
                connection,
                "admission round, first statement: the turn, dispatched count, credits, due jobs (16 free)",
                _OPEN_ROUND_PG[False],
                {
                    "queue": QUEUE,
                    "lanes": ["urgent", "high", "normal", "low"],
                    "budget": 48,
                    "factor": 1,
                    "share_ranks": [3],
                },
                generic=True,
            )
            _explain(
                connection,
                "admission round (capped queues): the queue's turn and its dispatched count",
                _literal(statements.try_lock_queue, p_queue=QUEUE),
            )
            _explain(
                connection,
                "admission round (capped queues): the backlog scan (16 free slots)",
                _literal(admission._backlog_query(QUEUE, [], 16)),
            )
            first_due = [
                row[0]
                for row in connection.execute(
                    "SELECT id FROM fairlane_jobs WHERE queue = %s AND state IN ('pending', 'retrying') "
                    "ORDER BY lane_rank, stride_pass, id LIMIT 16",
                    (QUEUE,),
                ).fetchall()
            ]
            _explain(
                connection,
                "admission round (capped queues): dispatch the chosen jobs (16)",
                "UPDATE fairlane_jobs SET state = 'dispatched', dispatched_at = now(), updated_at = now() "
                "WHERE id = ANY(%(ids)s::text[])",
                {"ids": first_due},
            )
            _explain(
                connection,
                "admission round, second statement: dispatch the chosen jobs (16), advance the lane",
                _CLOSE_ROUND_PG,
                {
                    "ids": first_due,
                    "queue": QUEUE,
                    "lanes": ["normal"],
                    "times": [1.0],
                    "credits": [0.0],
                },
                generic=True,
            )
            # Finishes of running jobs, jobs started and finished in the same write (their start
            # was not flushed yet), and starts, as a busy worker's flush holds them.
            starts, ran = dispatched[:4], dispatched[4:]
            finished = running + ran
            _explain(
                connection,
                f"worker flush: {len(running)} finishes, {len(ran)} start-and-finish writes and "
                f"{len(starts)} starts in one statement",
                FLUSH_PG,
                {
                    "worker": "w:2",
                    "finish_ids": finished,
                    "states": ["succeeded"] * len(finished),
                    "results": ["null"] * len(finished),
                    "result_paths": [None] * len(finished),
                    "error_types": [None] * len(finished),
                    "error_messages": [None] * len(finished),
                    "error_tracebacks": [None] * len(finished),
                    "delays": [None] * len(finished),
                    "messages": [None] * len(finished),
                    "starting": [job_id in ran for job_id in finished],
                    "start_ids": starts,
                    "restart": [False] * len(starts),
                },
                generic=True,
            )
        engine.dispose()
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
