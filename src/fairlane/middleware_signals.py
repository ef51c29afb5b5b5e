"""Signals delivered only to the middleware that handle them.

Dramatiq's broker calls every middleware's hook for every signal: a fairlane worker has
fourteen middleware and a job raises about ten signals, so some 140 calls a job, most of them
to :class:`dramatiq.Middleware`'s empty defaults. :class:`SignalEmitter` calls only the hooks a
middleware's class (or the middleware itself) defines, in Dramatiq's order (``before_``
signals in the middleware's order, ``after_`` ones in reverse) and with its error handling.

Which middleware handle a signal is worked out once per signal and kept until the broker's
middleware list changes (``add_middleware``, or the list edited in place, as tests do); a hook
assigned to a middleware object later than that is not seen until the list changes again.
"""

from __future__ import annotations

from typing import Any

from dramatiq.broker import Broker
from dramatiq.middleware import Middleware, MiddlewareError

#: Dramatiq's empty hooks, by name.
_DEFAULTS = {name: hook for name, hook in vars(Middleware).items() if name.startswith(("before_", "after_"))}


def _handles(middleware: Any, hook: str) -> bool:
    """Whether ``middleware``'s ``hook`` does something (is not Dramatiq's empty default)."""
    default = _DEFAULTS.get(hook)
    return default is None or hook in vars(middleware) or getattr(type(middleware), hook, None) is not default


class SignalEmitter(Broker):
    """A Dramatiq broker whose signals reach only the middleware hooks that are defined."""

    #: The middleware list the routes were worked out for, and each hook's handlers.
    _routes: tuple[list[Any], dict[str, list[Any]]] | None = None

    def _handlers(self, hook: str, reverse: bool) -> list[Any]:
        """The middleware whose ``hook`` does something, in calling order."""
        current = self._routes
        # Compared item by item, by identity (Middleware defines no __eq__): a few hundred ns.
        if current is None or current[0] != self.middleware:
            current = self._routes = (list(self.middleware), {})  # other threads see old or new
        snapshot, routes = current
        handlers = routes.get(hook)
        if handlers is None:
            ordered = reversed(snapshot) if reverse else snapshot
            handlers = routes[hook] = [middleware for middleware in ordered if _handles(middleware, hook)]
        return handlers

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        """Call ``before_<signal>`` on each middleware that defines it; a MiddlewareError
        (SkipMessage …) propagates, any other error is logged and the next hook runs."""
        hook = "before_" + signal
        for middleware in self._handlers(hook, reverse=False):
            try:
                getattr(middleware, hook)(self, *args, **kwargs)
            except MiddlewareError:
                raise
            except Exception:
                self.logger.critical("Unexpected failure in %s of %r.", hook, middleware, exc_info=True)

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        """Call ``after_<signal>`` on each middleware that defines it, last-added first; errors are logged."""
        hook = "after_" + signal
        for middleware in self._handlers(hook, reverse=True):
            try:
                getattr(middleware, hook)(self, *args, **kwargs)
            except Exception:
                self.logger.critical("Unexpected failure in %s of %r.", hook, middleware, exc_info=True)


__all__ = ["SignalEmitter"]
