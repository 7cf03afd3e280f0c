"""Per-call state that travels with the call, never on the function object.

Three context variables:

* ``_HANDOFF`` carries the call (its `CallRecord`) from one guard layer to the next
  layer of the *same* call, set only for the synchronous moment in which the
  outer layer invokes the inner one. The innermost layer clears it while the
  user's function runs, so a guarded call made *inside* that function starts
  a record of its own (with this one as its parent).
* ``_CURRENT`` is the call whose user code is running now; it
  is how `report_usage()` and nested calls find their parent.
* ``_DEADLINE`` is the active deadline (monotonic seconds) set by
  ``with lg.timeout(...)`` and by `timeout` layers; `remaining()` reads it.

Tokens are always reset in the same frame that set them, and never held
across a ``yield`` (streams set and reset them around each pull).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from ._clock import get_clock


if TYPE_CHECKING:
    from ._record import Attempt, CallRecord
    from ._wrap import Call


# The outermost layer's `Call` of a call, which owns its record.
_HANDOFF: ContextVar[Call | None] = ContextVar("llmguard_handoff", default=None)
# That call, and the attempt whose code is running (report_usage writes there);
# a fast lane's frame (a list, see `_wrap._realize`) while its Call is unbuilt.
_CURRENT: ContextVar[tuple[Call, Attempt | None] | list[Any] | None] = ContextVar("llmguard_current", default=None)
_DEADLINE: ContextVar[float | None] = ContextVar("llmguard_deadline", default=None)


def current_call() -> CallRecord | None:
    """The record of the guarded call whose code is running now, if any."""
    running = _CURRENT.get()
    if running is None:
        return None
    from ._wrap import _call_of  # noqa: PLC0415 - _wrap imports this module

    return _call_of(running).record


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
