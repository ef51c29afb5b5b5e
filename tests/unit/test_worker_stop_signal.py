"""A worker's main thread sees SIGTERM even when the kernel delivers it to another thread."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator

import pytest

from fairlane.worker import stop_on_signals, wait_until_stopped

#: Seconds after which the guard sets the stop itself (then the signal was not seen).
GUARD = 15.0


@pytest.fixture
def restored_handlers() -> Iterator[None]:
    saved = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


@pytest.mark.usefixtures("restored_handlers")
def test_a_sigterm_delivered_to_another_thread_ends_the_main_threads_wait(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a worker's main thread waiting for a stop, with its signal handlers installed
    assert threading.current_thread() is threading.main_thread()
    stop = threading.Event()
    stop_on_signals(stop)
    signalled = threading.Event()

    def send_to_this_thread() -> None:
        signalled.wait(0.2)
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # not the main thread
        signalled.set()

    guard_fired = threading.Event()

    def guard_stop() -> None:
        guard_fired.set()
        stop.set()

    guard = threading.Timer(GUARD, guard_stop)
    guard.start()
    sender = threading.Thread(target=send_to_this_thread)

    # When SIGTERM is delivered to another thread of the process
    with caplog.at_level(logging.INFO, logger="fairlane.worker"):
        sender.start()
        wait_until_stopped(stop)
    guard.cancel()
    sender.join()

    # Then the handler ran (in the main thread) and ended the wait, not the guard
    assert signalled.is_set()
    assert not guard_fired.is_set()
    assert any("event=shutdown_requested signal=SIGTERM" in r.getMessage() for r in caplog.records)
