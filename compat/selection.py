"""Which of Dramatiq's own tests `make compat` runs, and which it leaves out (with why).

The same selection runs on both brokers. Paths are relative to the unpacked Dramatiq tree
(`tests/...`); an entry is a whole file or `file::test_function` (all its parameters).
"""

from __future__ import annotations

#: Dramatiq's sdist pinned by the runner, and the repository commit whose tests/ it ships
#: (the sdist's tests/ and dramatiq/ equal this commit's, except `__version__`).
DRAMATIQ_VERSION = "2.2.1"
SDIST_SHA256 = "f9fbbd2feea27b3fa4085446242a24d86f78288b20c78a93f9f0bdbd7d908cd5"
DRAMATIQ_COMMIT = "848b35f2f960457ff54a72f9edb3af0de754f72f"

#: Broker-agnostic and RabbitMQ test files of the sdist.
SDIST = [
    "tests/test_actors.py",
    "tests/test_broker.py",
    "tests/test_callbacks.py",
    "tests/test_composition.py",
    "tests/test_encoders.py",
    "tests/test_generic_actors.py",
    "tests/test_messages.py",
    "tests/test_rabbitmq.py",
    "tests/test_results.py",
    "tests/test_worker.py",
]

#: `--full`: tests/middleware/ from the repository (not in the sdist): the tests that use a broker.
FULL = [
    "tests/middleware/test_retries.py",
    "tests/middleware/test_time_limit.py::test_time_limits_are_handled",
    "tests/middleware/test_shutdown.py::test_shutdown_notifications_options",
    "tests/middleware/test_shutdown.py::test_shutdown_notifications_are_received",
    "tests/middleware/test_shutdown.py::test_shutdown_notifications_can_be_ignored",
    "tests/middleware/test_shutdown.py::test_shutdown_notifications_dont_notify_completed_threads",
    "tests/middleware/test_asyncio.py::test_anyio_currrent_message_middleware_exposes_the_current_message",
    "tests/middleware/test_asyncio.py::test_exception_from_async_actor_doesnt_leak",
]

#: Left out, with the reason. Files here are never collected; test ids inside selected files are
#: deselected by the conftest.
EXCLUDED = {
    # whole files
    "tests/test_stub_broker.py": "StubBroker internals",
    "tests/test_redis.py": "Redis broker",
    "tests/test_cli.py": "dramatiq CLI in a subprocess, no broker fixture",
    "tests/test_watch.py": "CLI --watch reloading",
    "tests/test_pidfile.py": "CLI pid files",
    "tests/test_canteen.py": "no broker: worker-process shared memory helper",
    "tests/test_common.py": "no broker: queue-name helpers",
    "tests/test_types.py": "no broker: typing-only checks",
    "tests/test_barrier.py": "no broker: rate-limiter backends (memcached/Redis)",
    "tests/test_bucket_rate_limiter.py": "no broker: rate-limiter backends",
    "tests/test_concurrent_rate_limiter.py": "no broker: rate-limiter backends",
    "tests/test_window_rate_limiter.py": "no broker: rate-limiter backends",
    "tests/middleware/test_threading.py": "no broker: thread-exception helper (--full)",
    "tests/middleware/test_prometheus.py": "no broker: metrics exposition server (--full)",
    "tests/middleware/test_asyncio.py (others)": "no broker: EventLoopThread unit tests (--full)",
    "tests/middleware/test_shutdown.py (others)": "builds its own StubBroker or needs gevent (--full)",
    "tests/middleware/test_time_limit.py (others)": "builds its own StubBroker or needs gevent (--full)",
    # single tests inside selected files
    "tests/test_actors.py::test_actors_can_be_sent_messages": "reads StubBroker.queues[...]",
    "tests/test_actors.py::test_messages_belonging_to_missing_actors_are_rejected": (
        "asserts StubBroker.dead_letters"
    ),
    "tests/test_actors.py::test_worker_handles_non_numeric_eta_and_logs_warning": (
        "puts raw bytes on StubBroker.queues[...]"
    ),
    "tests/test_actors.py::test_worker_handles_none_eta": "puts raw bytes on StubBroker.queues[...]",
    "tests/test_broker.py::test_broker_uses_rabbitmq_if_not_set": "constructor only (default global broker)",
    "tests/test_broker.py::test_can_instantiate_brokers_without_middleware": "constructor only",
    "tests/test_rabbitmq.py::test_rabbitmq_broker_can_be_passed_a_semicolon_separated_list_of_uris": (
        "constructor only (own RabbitmqBroker)"
    ),
    "tests/test_rabbitmq.py::test_rabbitmq_broker_can_be_passed_a_list_of_uri_for_failover": (
        "constructor only (own RabbitmqBroker)"
    ),
    "tests/test_rabbitmq.py::test_rabbitmq_broker_raises_an_error_if_given_invalid_parameter_combinations": (
        "constructor only (own RabbitmqBroker)"
    ),
    "tests/test_rabbitmq.py::test_rabbitmq_broker_can_be_passed_a_list_of_parameters_for_failover": (
        "constructor only (own RabbitmqBroker)"
    ),
    "tests/test_rabbitmq.py::test_rabbitmq_broker_connections_are_lazy": "constructor only (own broker)",
    "tests/test_rabbitmq.py::test_rabbitmq_close_only_registers_ignore_filter_once": (
        "constructor only (own RabbitmqBroker)"
    ),
    "tests/test_rabbitmq.py::test_ignore_scary_logs_filter_ignores_logs": "no broker: a logging filter",
    "tests/test_rabbitmq.py::test_rabbitmq_workers_handle_rabbit_failures_gracefully": (
        "runs `rabbitmqctl stop_app`: would stop the machine's shared RabbitMQ"
    ),
}


def deselected_ids() -> list[str]:
    """The `file::function` ids the conftest deselects from selected files."""
    return [test_id for test_id in EXCLUDED if "::" in test_id]
