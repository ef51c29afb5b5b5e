"""The ``fairlane`` command: worker, ingress, api, keys, scheduler, jobs, tenants, dead letters, demo."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from fairlane import dead_letters
from fairlane.app import App, get_app
from fairlane.errors import JobNotFound, LedgerOutdated, SettingsError
from fairlane.ledger.clock import database_now
from fairlane.ledger.jobs import Job
from fairlane.logs import configure_logging

# Piped output keeps whole job ids on one line (rich would squeeze them into 80 columns).
console = Console(width=None if sys.stdout.isatty() else 200)
_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``12h``, ``7d`` (or combinations such as ``1d12h``) as a timedelta."""
    parts = _DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 30m, 12h or 7d")
    total = timedelta()
    for number, unit in parts:
        total += timedelta(**{_UNITS[unit]: int(number)})
    return total


# -- worker ---------------------------------------------------------------------------------------------


def _cmd_worker(args: argparse.Namespace) -> int:
    from fairlane.worker import run_process, run_processes

    if args.processes == 1:
        return run_process(args.modules, args.threads, args.shutdown_timeout)
    return run_processes(args.modules, args.processes, args.threads, args.shutdown_timeout)


# -- ingress --------------------------------------------------------------------------------------------


def _cmd_ingress(args: argparse.Namespace) -> int:
    from fairlane.ingress import run_ingress

    return run_ingress(args.modules)


# -- migrate --------------------------------------------------------------------------------------------


def _cmd_migrate(args: argparse.Namespace) -> int:
    from fairlane.ledger.database import create_ledger_engine, migrate, schema_revisions
    from fairlane.settings import load_settings

    settings = load_settings()
    engine = create_ledger_engine(settings)
    try:
        before, _newest = schema_revisions(engine)
        migrate(engine, settings)
        after, _newest = schema_revisions(engine)
    finally:
        engine.dispose()
    if before == after:
        console.print(f"ledger schema: {after}, already current")
    else:
        console.print(f"ledger schema: {before or 'empty'} -> {after}")
    return 0


# -- scheduler ------------------------------------------------------------------------------------------


def _cmd_scheduler(args: argparse.Namespace) -> int:
    from fairlane.scheduling.service import run_scheduler

    return run_scheduler(args.modules)


# -- jobs -----------------------------------------------------------------------------------------------


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="milliseconds") if moment else "-"


def _print_job(job: Job, message: str | None = None) -> None:
    table = Table(show_header=False, box=None)
    for name, value in (
        ("id", job.id),
        ("actor", job.actor),
        ("queue", job.queue),
        ("tenant", job.tenant),
        ("priority", job.priority),
        ("state", job.state + (" (cancel requested)" if job.cancel_requested else "")),
        ("attempts", str(job.attempts)),
        ("idempotency key", job.idempotency_key or "-"),
        ("enqueued", _when(job.enqueued_at)),
        ("runnable from", _when(job.next_run_at)),
        ("started", _when(job.started_at)),
        ("finished", _when(job.finished_at)),
        ("progress", json.dumps(job.progress) if job.progress else "-"),
        ("result", json.dumps(job.result)[:2000] if job.state == "succeeded" else "-"),
        ("error", f"{job.error.type}: {job.error.message}" if job.error else "-"),
    ):
        table.add_row(f"[bold]{name}[/]", value)
    if message is not None:
        table.add_row("[bold]message[/]", message[:2000])
    console.print(table)
    if job.error and job.error.traceback:
        console.print("[bold]traceback[/]")
        console.print(job.error.traceback, markup=False, highlight=False)


def _jobs_table(jobs: Sequence[Job], *, title: str) -> Table:
    table = Table(title=title)
    for column in ("id", "actor", "tenant", "priority", "state", "attempts", "enqueued", "error"):
        table.add_column(column, no_wrap=column == "id", min_width=36 if column == "id" else None)
    for job in jobs:
        error = f"{job.error.type}: {job.error.message}"[:60] if job.error else ""
        table.add_row(
            job.id,
            job.actor,
            job.tenant,
            job.priority,
            job.state,
            str(job.attempts),
            _when(job.enqueued_at),
            error,
        )
    return table


def _cmd_jobs_show(args: argparse.Namespace) -> int:
    from fairlane import jobs

    _print_job(jobs.get(args.id))
    return 0


def _cmd_jobs_list(args: argparse.Namespace) -> int:
    from fairlane import jobs

    found = jobs.list(
        tenant=args.tenant,
        state=args.state,
        actor=args.actor,
        queue=args.queue,
        limit=args.limit,
        before=args.before,
    )
    console.print(_jobs_table(found, title=f"{len(found)} jobs, newest first"))
    if len(found) == args.limit:
        console.print(f"next page: --before {found[-1].id}")
    return 0


def _cmd_jobs_cancel(args: argparse.Namespace) -> int:
    from fairlane import jobs

    job = jobs.cancel(args.id)
    console.print(f"job {job.id}: {job.state}" + (" (cancel requested)" if job.cancel_requested else ""))
    return 0


# -- dead letters ---------------------------------------------------------------------------------------


def _cmd_dlq_list(args: argparse.Namespace) -> int:
    app = get_app()
    dead = dead_letters.dead_jobs(
        app, actor=args.actor, tenant=args.tenant, queue=args.queue, limit=args.limit
    )
    console.print(_jobs_table(dead, title=f"{len(dead)} dead jobs, oldest first"))
    for queue in _known_queues(app, args.queue):
        raw = dead_letters.raw_dead_letters(app, queue)
        for letter in raw:
            console.print(
                f"[yellow]{queue}.XQ[/] no ledger row: {letter.reason} :: {letter.body_preview[:80]!r}"
            )
    return 0


def _cmd_dlq_show(args: argparse.Namespace) -> int:
    app = get_app()
    job = app.jobs.get(args.id)
    if job.state != "dead":
        console.print(f"[yellow]job {job.id} is {job.state}, not dead[/]")
    _print_job(job, message=app.jobs.message_of(job.id))
    return 0


def _select_dead(app: App, args: argparse.Namespace) -> list[Job]:
    if getattr(args, "ids", None):
        return [app.jobs.get(job_id) for job_id in args.ids]
    older_than = database_now(app.engine) - args.older_than if args.older_than else None
    return dead_letters.dead_jobs(
        app, actor=args.actor, tenant=args.tenant, queue=args.queue, older_than=older_than
    )


def _with_progress(label: str, jobs: list[Job], action: Callable[[Callable[[int], None]], int]) -> int:
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), console=console) as bar:
        task = bar.add_task(label, total=len(jobs))
        return action(lambda done: bar.update(task, completed=done))


def _cmd_dlq_requeue(args: argparse.Namespace) -> int:
    if not (args.ids or args.actor or args.tenant or args.queue or args.older_than):
        raise SystemExit(
            "dlq requeue: give job ids or at least one of --actor, --tenant, --queue, --older-than"
        )
    app = get_app()
    selected = _select_dead(app, args)
    count = _with_progress("requeue", selected, lambda report: dead_letters.requeue(app, selected, report))
    console.print(f"requeued {count} dead job(s) through admission")
    return 0


def _cmd_dlq_purge(args: argparse.Namespace) -> int:
    app = get_app()
    selected = _select_dead(app, args)
    for queue in _known_queues(app, args.queue):
        app.broker.declare_queue(queue)
    cutoff = database_now(app.engine) - args.older_than
    count = _with_progress(
        "purge", selected, lambda report: dead_letters.purge(app, selected, report, raw_before=cutoff)
    )
    console.print(f"purged {count} dead job(s) older than {args.older_than}")
    return 0


def _known_queues(app: App, only: str | None) -> list[str]:
    return [only] if only else app.admission.known_queues()


# -- tenants --------------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return f"{value:.0f} ms" if value is not None else "-"


def _cmd_tenants(args: argparse.Namespace) -> int:
    from fairlane import tenants

    rows = tenants.stats(queue=args.queue)
    table = Table(title=f"{len(rows)} tenants" + (f" on queue {args.queue}" if args.queue else ""))
    for column in ("tenant", "backlog", "running", "weight", "cap", "wait p50", "wait p99"):
        table.add_column(column, justify="left" if column == "tenant" else "right")
    for row in rows:
        table.add_row(
            row.tenant,
            str(row.backlog),
            str(row.running),
            f"{row.weight:g}",
            str(row.cap) if row.cap is not None else "-",
            _ms(row.wait_p50_ms),
            _ms(row.wait_p99_ms),
        )
    console.print(table)
    console.print("running = dispatched + running; waits: jobs finished in the last 5 minutes")
    return 0


def _cmd_tenants_set(args: argparse.Namespace) -> int:
    from fairlane import tenants

    if args.weight is None and args.cap is None and not args.no_cap:
        raise SystemExit("tenants set: give --weight, --cap or --no-cap")
    if args.weight is not None:
        tenants.set_weight(args.tenant, args.weight)
    if args.cap is not None or args.no_cap:
        tenants.set_cap(args.tenant, None if args.no_cap else args.cap)
    console.print(f"tenant {args.tenant}: updated (workers apply it within seconds)")
    return 0


# -- api and keys ---------------------------------------------------------------------------------------


def _cmd_api(args: argparse.Namespace) -> int:
    from fairlane.api.server import serve

    return serve(args.modules, host=args.host, port=args.port, workers=args.workers)


def _cmd_keys_create(args: argparse.Namespace) -> int:
    from fairlane.ledger.api_keys import ApiKeyStore
    from fairlane.validation import check_tenant

    record, key = ApiKeyStore(get_app().engine).create(
        check_tenant(args.tenant), admin=args.admin, name=args.name
    )
    kind = "admin key" if record.admin else "key"
    console.print(f"{kind} {record.prefix} for tenant {record.tenant} (shown once, store it now):")
    print(key)
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    from fairlane.ledger.api_keys import ApiKeyStore

    records = ApiKeyStore(get_app().engine).list(include_revoked=args.all)
    table = Table(title=f"{len(records)} API keys")
    for column in ("key", "tenant", "admin", "name", "created", "revoked"):
        table.add_column(column, no_wrap=column == "key")
    for record in records:
        table.add_row(
            record.prefix,
            record.tenant,
            "yes" if record.admin else "",
            record.name,
            _when(record.created_at),
            _when(record.revoked_at) if record.revoked_at else "",
        )
    console.print(table)
    return 0


def _cmd_keys_revoke(args: argparse.Namespace) -> int:
    from fairlane.ledger.api_keys import ApiKeyStore

    record = ApiKeyStore(get_app().engine).revoke(args.key_id)
    if record is None:
        console.print(f"[red]no API key {args.key_id}[/]")
        return 1
    console.print(f"key {record.prefix} (tenant {record.tenant}) revoked")
    return 0


# -- demo -----------------------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from fairlane.demo import run_demo

    return run_demo(console, seconds=args.seconds)


# -- parser ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fairlane`` command."""
    parser = argparse.ArgumentParser(prog="fairlane", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    worker = commands.add_parser("worker", help="run worker processes for the actors in MODULEs")
    worker.add_argument("modules", nargs="+", metavar="MODULE")
    worker.add_argument("--processes", "-p", type=int, default=1, choices=range(1, 65), metavar="N")
    worker.add_argument("--threads", "-t", type=int, default=8, choices=range(1, 257), metavar="M")
    worker.add_argument("--shutdown-timeout", type=float, default=600.0, help="seconds to let jobs finish")
    worker.set_defaults(handler=_cmd_worker)

    ingress = commands.add_parser(
        "ingress", help="turn jobs published to the fairlane.ingress exchange into jobs"
    )
    ingress.add_argument(
        "modules", nargs="*", metavar="MODULE", help="modules declaring actors to validate against"
    )
    ingress.set_defaults(handler=_cmd_ingress)

    migrate = commands.add_parser(
        "migrate", help="bring the ledger schema to the newest revision and exit (run once per release)"
    )
    migrate.set_defaults(handler=_cmd_migrate)

    scheduler = commands.add_parser(
        "scheduler", help="run a scheduler replica: retention, reaper, cron, leader gauges (one leader)"
    )
    scheduler.add_argument(
        "modules", nargs="*", metavar="MODULE", help="modules declaring the actors of cron schedules"
    )
    scheduler.set_defaults(handler=_cmd_scheduler)

    jobs = commands.add_parser("jobs", help="look up jobs").add_subparsers(dest="jobs_command", required=True)
    show = jobs.add_parser("show", help="one job in full")
    show.add_argument("id")
    show.set_defaults(handler=_cmd_jobs_show)
    listing = jobs.add_parser("list", help="jobs, newest first")
    for name in ("--tenant", "--state", "--actor", "--queue", "--before"):
        listing.add_argument(name)
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(handler=_cmd_jobs_list)
    cancel = jobs.add_parser("cancel", help="cancel a job")
    cancel.add_argument("id")
    cancel.set_defaults(handler=_cmd_jobs_cancel)

    dlq = commands.add_parser("dlq", help="dead letters").add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq.add_parser("list", help="dead jobs, and dead letters with no ledger row")
    for name in ("--actor", "--tenant", "--queue"):
        dlq_list.add_argument(name)
    dlq_list.add_argument("--limit", type=int, default=100)
    dlq_list.set_defaults(handler=_cmd_dlq_list)
    dlq_show = dlq.add_parser("show", help="a dead job: error, traceback, message")
    dlq_show.add_argument("id")
    dlq_show.set_defaults(handler=_cmd_dlq_show)
    requeue = dlq.add_parser("requeue", help="re-drive dead jobs (attempts reset, through admission)")
    requeue.add_argument("ids", nargs="*", metavar="ID")
    for name in ("--actor", "--tenant", "--queue"):
        requeue.add_argument(name)
    requeue.add_argument("--older-than", type=parse_duration, metavar="DURATION")
    requeue.set_defaults(handler=_cmd_dlq_requeue)
    purge = dlq.add_parser("purge", help="delete dead jobs that died before a time")
    purge.add_argument("--older-than", type=parse_duration, required=True, metavar="DURATION")
    for name in ("--actor", "--tenant", "--queue"):
        purge.add_argument(name)
    purge.set_defaults(handler=_cmd_dlq_purge)

    tenants = commands.add_parser("tenants", help="tenants: backlog, running, weight, cap, recent waits")
    tenants.add_argument("--queue")
    tenants.set_defaults(handler=_cmd_tenants)
    tenant_commands = tenants.add_subparsers(dest="tenants_command")
    tenant_set = tenant_commands.add_parser("set", help="set a tenant's weight and/or cap")
    tenant_set.add_argument("tenant")
    tenant_set.add_argument("--weight", type=float)
    cap = tenant_set.add_mutually_exclusive_group()
    cap.add_argument("--cap", type=int)
    cap.add_argument("--no-cap", action="store_true", help="back to the queue's default cap")
    tenant_set.set_defaults(handler=_cmd_tenants_set)

    api = commands.add_parser("api", help="serve the HTTP API (MODULEs declare actors, as for a worker)")
    api.add_argument("modules", nargs="*", metavar="MODULE")
    api.add_argument("--host", help="address to listen on (FAIRLANE_API_HOST, default 127.0.0.1)")
    api.add_argument("--port", type=int, choices=range(1, 65536), metavar="PORT", help="FAIRLANE_API_PORT")
    api.add_argument("--workers", type=int, choices=range(1, 65), metavar="N", help="FAIRLANE_API_WORKERS")
    api.set_defaults(handler=_cmd_api)

    keys = commands.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", required=True)
    key_create = keys.add_parser("create", help="create a key and print it (once)")
    key_create.add_argument("--tenant", required=True)
    key_create.add_argument("--admin", action="store_true", help="sees all tenants, manages them")
    key_create.add_argument("--name", default="", help="what the key is for")
    key_create.set_defaults(handler=_cmd_keys_create)
    key_list = keys.add_parser("list", help="keys (never the keys themselves: their fl_<id> prefix)")
    key_list.add_argument("--all", action="store_true", help="revoked keys too")
    key_list.set_defaults(handler=_cmd_keys_list)
    key_revoke = keys.add_parser("revoke", help="revoke a key by its fl_<id> prefix")
    key_revoke.add_argument("key_id", metavar="KEY_ID")
    key_revoke.set_defaults(handler=_cmd_keys_revoke)

    demo = commands.add_parser("demo", help="a mixed multi-tenant workload on an embedded worker")
    demo.add_argument("--seconds", type=float, default=45.0, help="upper bound on the demo's run time")
    demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fairlane`` command."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args.handler(args))
    except (SettingsError, LedgerOutdated) as error:
        console.print(f"[red]{error}[/]")
        return 2
    except (JobNotFound, ValueError) as error:
        console.print(f"[red]{error}[/]")
        return 1


if __name__ == "__main__":
    sys.exit(main())
