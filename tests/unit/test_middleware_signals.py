"""Signals reach exactly the middleware hooks Dramatiq's broker would call, in the same order."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from dramatiq.middleware import Middleware, SkipMessage

from fairlane.middleware_signals import SignalEmitter


class _Emitter(SignalEmitter):
    """The signal part of a broker, without a connection."""

    def __init__(self, middleware: list[Any]) -> None:
        self.middleware = middleware
        self.logger = logging.getLogger("test.signals")


class _Recording(Middleware):
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    def before_process_message(self, broker: Any, message: Any) -> None:
        self.calls.append(f"{self.name}.before")

    def after_process_message(self, broker: Any, message: Any, **_outcome: Any) -> None:
        self.calls.append(f"{self.name}.after")


class _Silent(Middleware):
    """Defines no hook: Dramatiq's empty defaults only."""


def test_before_hooks_run_in_order_and_after_hooks_in_reverse() -> None:
    calls: list[str] = []
    emitter = _Emitter([_Recording("a", calls), _Silent(), _Recording("b", calls)])
    emitter.emit_before("process_message", "m")
    emitter.emit_after("process_message", "m", result=1)
    assert calls == ["a.before", "b.before", "b.after", "a.after"]


def test_signals_no_middleware_handles_are_a_no_op() -> None:
    emitter = _Emitter([_Silent(), _Silent()])
    emitter.emit_before("ack", "m")
    emitter.emit_after("nack", "m")
    assert emitter._handlers("before_ack", reverse=False) == []


def test_middleware_added_or_removed_later_is_seen() -> None:
    calls: list[str] = []
    emitter = _Emitter([_Recording("a", calls)])
    emitter.emit_before("process_message", "m")
    late = _Recording("late", calls)
    emitter.middleware.append(late)
    emitter.emit_before("process_message", "m")
    emitter.middleware.remove(late)
    emitter.emit_before("process_message", "m")
    emitter.middleware[0] = _Recording("replaced", calls)  # same length, another object
    emitter.emit_before("process_message", "m")
    assert calls == ["a.before", "a.before", "late.before", "a.before", "replaced.before"]


def test_a_hook_set_on_the_middleware_object_is_called() -> None:
    calls: list[str] = []
    silent = _Silent()
    silent.before_ack = lambda broker, message: calls.append("instance hook")  # type: ignore[method-assign]
    _Emitter([silent]).emit_before("ack", "m")
    assert calls == ["instance hook"]


def test_a_middleware_error_propagates_and_other_errors_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    class Skipping(Middleware):
        def before_process_message(self, broker: Any, message: Any) -> None:
            raise SkipMessage()

    class Broken(Middleware):
        def before_process_message(self, broker: Any, message: Any) -> None:
            raise RuntimeError("broken hook")

        def after_process_message(self, broker: Any, message: Any, **_: Any) -> None:
            raise RuntimeError("broken after hook")

    emitter = _Emitter([Broken(), _Recording("next", calls)])
    with caplog.at_level(logging.CRITICAL, logger="test.signals"):
        emitter.emit_before("process_message", "m")
        emitter.emit_after("process_message", "m")
    assert calls == ["next.before", "next.after"]
    assert [record.getMessage() for record in caplog.records] == [
        f"Unexpected failure in before_process_message of {emitter.middleware[0]!r}.",
        f"Unexpected failure in after_process_message of {emitter.middleware[0]!r}.",
    ]
    with pytest.raises(SkipMessage):
        _Emitter([Skipping(), _Recording("never", calls)]).emit_before("process_message", "m")
    assert "never.before" not in calls
