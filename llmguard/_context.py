"""The active deadline, and the ``with`` scopes, which travel with the call (context variables).

``_DEADLINE`` is the active deadline (monotonic seconds) set by
``with lg.timeout(...)`` and by `timeout` layers; `remaining()` reads it.
The call's own state (``_CURRENT``, `current_call`) lives with
the call machinery in `_runner` and `_facts`; this module imports nothing of them.

`enter_scope` / `exit_scope` keep a guard's ``with`` scopes (``with
lg.budget(...)``, ``with lg.ratelimit(...)``): a tuple in the guard's own
context variable, outermost first, that the calls made inside read.

Tokens are always reset in the same frame that set them, and never held
across a ``yield``.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TypeVar

from ._clock import get_clock


T = TypeVar("T")


_DEADLINE: ContextVar[float | None] = ContextVar("llmguard_deadline", default=None)


# The deadline a sync `timeout` in its thread mode enforces itself, by giving up on its worker
# (which then runs on, and is charged what it used when it ends): the wire leaves the worker's
# requests unbounded by it (`llmguard._wire`).
_WORKER_DEADLINE: ContextVar[float | None] = ContextVar("llmguard_worker_deadline", default=None)


class DeadlinePassed(BaseException):
    """The active deadline passed while an SDK request was on the wire (`llmguard._wire`).

    A `BaseException`, like `asyncio.CancelledError`: the SDKs retry any
    `Exception` from their HTTP client (sleeping first), which would hold the
    caller past the deadline. The `timeout` guard or block that set the
    deadline turns it into `GuardTimeout`; its ``__cause__`` is the HTTP
    library's timeout, when one fired.
    """


def deadline() -> float | None:
    """The active deadline in the clock's monotonic seconds, or None."""
    return _DEADLINE.get()


def remaining() -> float | None:
    """Seconds left before the active deadline (``None`` when there is none).

    Never negative. Pass it to the SDK's own ``timeout=`` so the HTTP request
    ends with the deadline too::

        client.messages.create(..., timeout=lg.remaining())
    """
    dl = _DEADLINE.get()
    if dl is None:
        return None
    return max(0.0, dl - get_clock().monotonic())


def enter_scope(scopes: ContextVar[tuple[T, ...]], scope: T) -> None:
    """Make *scope* the innermost of the active *scopes* (in this thread or task and the tasks it starts)."""
    scopes.set((*scopes.get(), scope))


def exit_scope(scopes: ContextVar[tuple[T, ...]], scope: T) -> None:
    """Remove the innermost occurrence of *scope* from *scopes* (``with`` blocks of async tasks may end out of order)."""
    active = scopes.get()
    for i in range(len(active) - 1, -1, -1):
        if active[i] is scope:
            scopes.set(active[:i] + active[i + 1 :])
            break


class Refused(BaseException):
    """A budget scope refused an SDK request at the wire: carries the `BudgetExceeded` (*error*).

    A `BaseException` for the reason `DeadlinePassed` is: the SDKs would wrap
    an `Exception` from their HTTP client as a connection error and retry it.
    The scope (``with lg.budget(...)``) raises *error* in its place.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error
