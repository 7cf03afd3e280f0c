"""`timeout`: deadlines that propagate, and stall detection for streams.

``timeout(total, first_token=None, idle=None)`` is a decorator and a context
manager. Each limit is finite seconds (or a timedelta) > 0, checked when the
guard is built; leave a limit out for none. A limit over 1e9 s (~31 years,
``_clock.MAX_WAIT``) waits that long: Python's own waits stop at ~9.2e9 s,
and so every wait made from the deadline (ours, the cache's, an SDK's given
``lg.remaining()``) is one Python can make.

As a **decorator** it bounds each call: the caller gets control back, with
`GuardTimeout` (a `TimeoutError`), at ``total`` seconds plus scheduling
slack. The deadline is delivered on time (``async def``: one timer per event
loop cancels the task; ``def``: the caller's own wait on the worker); the
slack is how long the caller's loop or thread then takes to run. An event
loop runs one thing at a time, so a cancelled call waits behind whatever is
ready: other calls unwinding, and other tasks building and parsing their
own requests (~1 ms each for an SDK call, several on a loaded machine);
threads wait for the GIL. Measured with 50 tasks on one loop and 16 threads
each calling back to back under ``with lg.timeout(2.5)`` (2 cores): about
30 ms at p99 on an idle machine; with the machine loaded by other work, p99
of 100-400 ms on the loop and up to ~250 ms for threads under the full guard
stack. It is not a real-time bound: leave that margin, or spread the work
over more loops or processes.

* ``async def``: the awaited work is cancelled (``asyncio`` cancellation, as
  ``asyncio.timeout`` does), so the HTTP request is abandoned too.
* ``def``: Python cannot interrupt a blocking call in a thread, so the call
  runs in a worker thread while the caller waits at most ``total``. On
  timeout the caller gets `GuardTimeout` at once; the worker is *abandoned*:
  it finishes in the background and its result is dropped (its usage is still
  recorded on the call's attempt; a stream it returns is closed). A `budget`
  *outside* this timeout settles when the caller gives up, at the input
  estimate of the attempt still running, and corrects that to what the
  abandoned request really used when the worker returns. To make the abandoned HTTP request end
  too, pass ``timeout=lg.remaining()`` to the SDK call inside the function:
  the SDK then stops at the same deadline.
* Streams (generators, async generators, functions returning SDK streams):
  ``first_token`` bounds the wait for the first chunk, counted from the
  start of the call (so a slow first byte counts), and ``idle`` the silence
  between chunks; ``total`` bounds the whole stream. For a call that returns
  a whole response, ``first_token`` bounds that response (it is the first
  and only chunk). A stall raises
  `GuardTimeout` whose ``limit`` says which fired ("first_token", "idle" or
  "total"), and the underlying stream is closed.

As a **context manager** (``with lg.timeout(5):`` / ``async with``) it sets a
deadline that every guarded call inside honours: nested deadlines take the
smaller, `retry` never sleeps or starts an attempt past it, inner `timeout`
guards shorten themselves to it, and `lg.remaining()` reports the seconds
left. ``async with`` also cancels the block at the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import functools
import threading

from collections.abc import Callable
from concurrent.futures import Future
from types import TracebackType
from typing import Any, cast

from . import _check, _clock, _events
from ._binder import Binder
from ._call import Call
from ._context import _DEADLINE, _WORKER_DEADLINE, DeadlinePassed
from ._facts import ASYNC, SYNC, error_kind_of
from ._record import ErrorKind
from ._runner import Guard
from ._stream import AsyncGuardedStream, GuardedStream, _StreamBase
from ._timers import _WORKERS, _arm_at, _Entry, _fired_alone, _release, _Wheel
from .errors import GuardTimeout


# A call's limits as it starts (`TimeoutLayer._limits`): (deadline,
# first-chunk deadline, the earlier of the two, its limit's name, now).
_Limits = tuple["float | None", "float | None", "float | None", str, float]
# What an ``async def`` call holds while it runs (`TimeoutLayer._arm`): its
# limits, the deadline's context token, and its timer on the loop's wheel
# (`_arm_at`; None when nothing is bounded yet).
_Armed = tuple[_Limits, "contextvars.Token[float | None]", "tuple[_Wheel, _Entry[Any]] | None"]


class TimeoutLayer(Guard):
    """The `timeout` guard and context manager. Build it with `timeout`."""

    name = "timeout"

    def __init__(
        self,
        total: float | dt.timedelta | None = None,
        *,
        first_token: float | dt.timedelta | None = None,
        idle: float | dt.timedelta | None = None,
        mode: str = "thread",
    ) -> None:
        if mode not in _MODES:
            msg = f"timeout(mode=...) must be one of {sorted(_MODES)}, got {mode!r}"
            raise ValueError(msg)
        self.mode = mode
        self.total = _check.seconds("timeout", "total", total, optional=True)
        self.first_token = _check.seconds("timeout", "first_token", first_token, optional=True)
        self.idle = _check.seconds("timeout", "idle", idle, optional=True)
        if self.total is None and self.first_token is None and self.idle is None:
            msg = "timeout() needs at least one of total=, first_token= or idle="
            raise ValueError(msg)
        # What the deadlines are computed from: a limit over `_clock.MAX_WAIT`
        # (~31 years) waits that long, so every wait derived from it (ours,
        # the cache's, an SDK's given lg.remaining()) is one Python can make.
        self._total = _capped(self.total)
        self._first_token = _capped(self.first_token)
        self._idle = _capped(self.idle)
        # Context-manager state per thread/task, so one timeout object can be
        # entered by many tasks at once.
        self._entered: dict[object, list[tuple[contextvars.Token[float | None], asyncio.Timeout | None]]] = {}

    def settings(self) -> dict[str, Any]:
        """The configuration, for `describe`."""
        return {"total": self.total, "first_token": self.first_token, "idle": self.idle, "mode": self.mode}

    def _deadline(self, now: float) -> float | None:
        """The deadline of a call or block starting *now*: ours or the active one, the smaller."""
        outer = _DEADLINE.get()
        total = self._total
        if total is None:
            return outer
        own = now + total
        return own if outer is None or own < outer else outer

    # -- decorator ---------------------------------------------------------

    def for_function(self, fn: Callable[..., Any], shape: str, binder: Binder) -> TimeoutLayer:  # noqa: ARG002
        """A copy with the hooks of *fn*'s shape.

        ``async def``: `_arm` sets the deadline and puts it on the loop's
        wheel, which cancels the task when it passes; `_disarm` takes it off,
        and `_cancelled` turns the wheel's cancel into `GuardTimeout`.
        ``def``: the inside runs in a worker the caller waits on
        (`_in_worker`). Generator functions: the stream's pulls are bounded,
        not its start. Whatever the shape, a stream result is handed on with
        its pulls bounded (`_timed`).
        """
        bound = object.__new__(TimeoutLayer)
        bound.__dict__.update(self.__dict__)
        if shape == ASYNC:
            bound.enter, bound.leave, bound.fail = bound._arm, bound._disarm, bound._cancelled
        elif shape == SYNC and self.mode == "wire":
            bound.enter, bound.leave, bound.fail = bound._arm_wire, bound._disarm_wire, bound._wire_failed
        else:
            bound.enter, bound.leave = bound._limits, bound._timed
            if shape == SYNC:
                bound.via = bound._in_worker
        return bound

    def _arm_wire(self, call: Call) -> tuple[_Limits, contextvars.Token[float | None]]:
        """``def`` with ``mode="wire"``: set the deadline where the function runs; its SDK requests carry it (`llmguard._wire`)."""
        limits = self._limits(call)
        return limits, _DEADLINE.set(limits[0])

    def _disarm_wire(self, call: Call, armed: tuple[_Limits, contextvars.Token[float | None]], result: Any) -> Any:
        """``def`` with ``mode="wire"``, the inside returned: past the deadline it is `GuardTimeout` all the same."""
        limits, token = armed
        _DEADLINE.reset(token)
        if isinstance(result, _StreamBase):
            return _TimedStream.wrap(result, self, limits[0], limits[1], call)
        deadline = limits[0]
        if deadline is not None and _clock.now() > deadline:
            raise self._expired(call, "total", self._fired("total", deadline - limits[4]))
        return result

    def _wire_failed(self, call: Call, armed: tuple[_Limits, contextvars.Token[float | None]], exc: BaseException) -> None:
        """``def`` with ``mode="wire"``, the inside raised: the wire's `DeadlinePassed` is `GuardTimeout`."""
        limits, token = armed
        _DEADLINE.reset(token)
        if isinstance(exc, DeadlinePassed):
            deadline = limits[0]
            allowed = 0.0 if deadline is None else deadline - limits[4]
            raise self._expired(call, "total", self._fired("total", allowed)) from exc

    def _limits(self, call: Call) -> _Limits:
        """The call's limits, from now: ours or the active deadline, the smaller, and the first chunk's.

        The first chunk is due ``first_token`` after the start (a slow first
        byte is a slow first token; a whole response is its first and only
        chunk). The deadline goes on the call's record too.
        """
        now = _clock.now()
        deadline = self._deadline(now)
        first_by = None if self._first_token is None else now + self._first_token
        if deadline is not None:
            call.set_deadline(deadline)
        until, limit = _earliest(deadline, first_by)
        return deadline, first_by, until, limit, now

    def _timed(self, call: Call, limits: _Limits, result: Any) -> Any:
        """*result*, its pulls bounded if it is a stream."""
        if isinstance(result, _StreamBase):
            return _TimedStream.wrap(result, self, limits[0], limits[1], call)
        return result

    def _arm(self, call: Call) -> _Armed:
        """``async def``, before the inside: set the deadline, and put it on the loop's wheel."""
        limits = self._limits(call)
        until = limits[2]
        # With only idle limits nothing is bounded yet.
        return limits, _DEADLINE.set(limits[0]), None if until is None else _arm_at(until)

    def _disarm(self, call: Call, armed: _Armed, result: Any) -> Any:
        """``async def``, the inside returned: take the deadline off the wheel."""
        limits, token, timer = armed
        _DEADLINE.reset(token)
        if timer is not None:
            _release(*timer)
        if isinstance(result, _StreamBase):
            return _TimedStream.wrap(result, self, limits[0], limits[1], call)
        return result

    def _cancelled(self, call: Call, armed: _Armed, exc: BaseException) -> None:
        """``async def``, the inside raised: the wheel's own cancel is `GuardTimeout`, anything else stands."""
        limits, token, timer = armed
        _DEADLINE.reset(token)
        if isinstance(exc, DeadlinePassed):  # the wire saw the deadline first
            if timer is not None:
                _release(*timer)
            raise self._expired(call, limits[3], self._fired(limits[3], cast("float", limits[2]) - limits[4])) from exc
        if timer is None:
            return
        if isinstance(exc, asyncio.CancelledError) and _fired_alone(timer[1]):
            _, _, until, limit, armed_at = limits
            raise self._expired(call, limit, self._fired(limit, cast("float", until) - armed_at)) from None
        _release(*timer)

    def _in_worker(self, call: Call, limits: _Limits, inside: Callable[[], Any]) -> Any:
        """``def``: run *inside* in a worker, waiting at most until the earlier limit.

        It runs in a copy of the caller's context with the deadline set, so
        ``lg.remaining()`` and the guards inside see it. If the wait runs
        out, the worker is abandoned (`_drop_abandoned` when it ends).
        """
        deadline, _, wait_until, limit, _ = limits
        ctx = contextvars.copy_context()
        ctx.run(_DEADLINE.set, deadline)
        ctx.run(_WORKER_DEADLINE.set, deadline)  # ours to enforce: the wire leaves the worker's requests be
        if wait_until is None:  # only idle limits: nothing to bound yet
            return ctx.run(inside)
        allowed = max(wait_until - _clock.now(), 0.0)
        future = _WORKERS.submit(lambda: ctx.run(inside))
        try:
            return future.result(timeout=allowed)
        except DeadlinePassed as exc:  # the worker's SDK request ended at the deadline (`llmguard._wire`)
            raise self._expired(call, limit, self._fired(limit, allowed)) from exc
        except Exception as exc:
            if not (future.done() and not future.cancelled() and future.exception() is exc):
                # Our wait ran out (a TimeoutError of the wait, not one the
                # function raised): the worker is abandoned.
                if not future.cancel():
                    future.add_done_callback(functools.partial(_drop_abandoned, call))
                raise self._expired(call, limit, self._fired(limit, allowed)) from None
            # The function's own error. A timeout of its own at our deadline
            # (the SDK's, set from lg.remaining(), firing with ours while this
            # thread woke late) is the deadline's, as if this thread had
            # woken first.
            if _clock.now() >= wait_until and error_kind_of(exc) is ErrorKind.TIMEOUT:
                raise self._expired(call, limit, self._fired(limit, allowed)) from exc
            raise

    def _fired(self, limit: str, allowed: float) -> float:
        """The seconds the limit that fired allowed (an outer, shorter deadline's own)."""
        return max(allowed, 0.0) if limit == "total" else self._seconds(limit)

    def _seconds(self, limit: str) -> float:
        return {"first_token": self.first_token, "idle": self.idle}.get(limit) or self.total or 0.0

    def _expired(self, call: Call | None, limit: str, seconds: float) -> GuardTimeout:
        where = f" in {call.function_name}" if call is not None else ""
        what = {
            "total": "the call took longer than",
            "first_token": "no first chunk within",
            "idle": "the stream was silent for more than",
        }[limit]
        _events.emit(
            _events.TIMEOUT_EXPIRED,
            call.record if call is not None else None,
            level="warning",
            limit=limit,
            seconds=seconds,
        )
        return GuardTimeout(f"llmguard.timeout{where}: {what} {seconds:g}s ({limit})", limit=limit, seconds=seconds)

    # -- context manager ---------------------------------------------------

    def __enter__(self) -> TimeoutLayer:
        self._entered.setdefault(_owner(), []).append((_DEADLINE.set(self._deadline(_clock.now())), None))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        token, _ = self._pop()
        _DEADLINE.reset(token)
        if isinstance(exc, DeadlinePassed):  # an SDK request inside ended at the deadline (`llmguard._wire`)
            raise self._expired(None, "total", self.total or 0.0) from exc

    async def __aenter__(self) -> TimeoutLayer:
        deadline = self._deadline(_clock.now())
        cm = asyncio.timeout(None if deadline is None else max(deadline - _clock.now(), 0.0))
        self._entered.setdefault(_owner(), []).append((_DEADLINE.set(deadline), cm))
        await cm.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        token, cm = self._pop()
        _DEADLINE.reset(token)
        if isinstance(exc, DeadlinePassed):
            if cm is not None:
                with contextlib.suppress(BaseException):
                    await cm.__aexit__(None, None, None)
            raise self._expired(None, "total", self.total or 0.0) from exc
        if cm is None:  # pragma: no cover - entered with plain `with`
            return
        try:
            await cm.__aexit__(exc_type, exc, tb)
        except TimeoutError:
            if cm.expired():
                raise self._expired(None, "total", self.total or 0.0) from exc
            raise

    def _pop(self) -> tuple[contextvars.Token[float | None], asyncio.Timeout | None]:
        owner = _owner()
        stack = self._entered[owner]
        item = stack.pop()
        if not stack:
            del self._entered[owner]
        return item


# How a sync call is bounded (`timeout(mode=...)`): "thread" runs it in a worker the caller
# waits on (any blocking code); "wire" runs it on the caller's thread and bounds the SDK
# requests it makes (`llmguard._wire`).
_MODES = frozenset({"thread", "wire"})


def _capped(limit: float | None) -> float | None:
    return None if limit is None else min(limit, _clock.MAX_WAIT)


def _owner() -> object:
    """Who entered a context manager: the running task, else the thread."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    return task if task is not None else threading.get_ident()


class _TimedStream:
    """Pulls from a guarded stream, each pull bounded by the stream limits."""

    __slots__ = ("_call", "_ctx", "_deadline", "_first_by", "_layer", "_stream")

    def __init__(
        self, stream: Any, layer: TimeoutLayer, deadline: float | None, first_by: float | None, call: Call
    ) -> None:
        self._stream = stream
        self._layer = layer
        self._deadline = deadline
        self._first_by = first_by
        self._call = call
        # A generator body keeps one context across its yields, as it would
        # undecorated: every (sync) pull runs in this one, whichever thread.
        self._ctx = contextvars.copy_context()
        self._ctx.run(_DEADLINE.set, deadline)

    @classmethod
    def wrap(cls, stream: _StreamBase, layer: TimeoutLayer, deadline: float | None, first_by: float | None, call: Call) -> Any:
        """*stream* with its pulls bounded, when a limit applies and it is of the call's kind (else as it is)."""
        if layer.first_token is None and layer.idle is None and deadline is None:
            return stream
        if call.is_async:
            if isinstance(stream, AsyncGuardedStream):
                return AsyncGuardedStream(source=_AsyncPulls(cls(stream, layer, deadline, first_by, call)), record=call.record)
        elif isinstance(stream, GuardedStream):
            return GuardedStream(source=_SyncPulls(cls(stream, layer, deadline, first_by, call)), record=call.record)
        return stream

    def limit(self) -> tuple[float | None, str]:
        """Seconds the next pull may take, and the name of the limit that binds."""
        now = _clock.now()
        if self._stream.delivered == 0:
            first_by = self._first_by
            if first_by is None and self._layer._first_token is not None:
                first_by = self._first_by = now + self._layer._first_token
            until, name = _earliest(self._deadline, first_by)
            return (None, name) if until is None else (max(until - now, 0.0), name)
        idle = self._layer._idle
        if idle is not None and (self._deadline is None or now + idle <= self._deadline):
            return idle, "idle"
        if self._deadline is not None:
            return max(self._deadline - now, 0.0), "total"
        return None, "idle"

    def expired(self, name: str) -> GuardTimeout:
        return self._layer._expired(self._call, name, self._layer._seconds(name))


class _SyncPulls:
    """A sync iterator over the stream whose every ``next`` is time-bounded."""

    __slots__ = ("_t",)

    def __init__(self, timed: _TimedStream) -> None:
        self._t = timed

    @property
    def inner_stream(self) -> Any:
        """The guarded stream this adapter reads (followed by the core)."""
        return self._t._stream

    def __iter__(self) -> _SyncPulls:
        return self

    def __next__(self) -> Any:
        t = self._t
        wait, name = t.limit()
        if wait is None:
            return t._ctx.run(next, t._stream)
        future = _WORKERS.submit(lambda: t._ctx.run(next, t._stream))
        try:
            return future.result(timeout=wait)
        except TimeoutError:
            if not future.cancel():
                # The pull is blocked in the worker: closing the SDK stream
                # ends its HTTP read; a generator is left to finish alone.
                _close_quietly(t._stream)
            raise t.expired(name) from None

    def close(self) -> None:
        _close_quietly(self._t._stream)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t._stream, name)


class _AsyncPulls:
    """An async iterator over the stream whose every ``__anext__`` is time-bounded."""

    __slots__ = ("_t",)

    def __init__(self, timed: _TimedStream) -> None:
        self._t = timed

    @property
    def inner_stream(self) -> Any:
        """The guarded stream this adapter reads (followed by the core)."""
        return self._t._stream

    def __aiter__(self) -> _AsyncPulls:
        return self

    async def __anext__(self) -> Any:
        t = self._t
        wait, name = t.limit()
        # The body sees the deadline (lg.remaining()) while it runs, not across yields.
        token = _DEADLINE.set(t._deadline)
        try:
            if wait is None:
                return await t._stream.__anext__()
            # On the loop's wheel, as a call's deadline is (`_arm_at`): no
            # TimerHandle per chunk.
            wheel, entry = _arm_at(_clock.now() + wait)
            try:
                chunk = await t._stream.__anext__()
            except asyncio.CancelledError:
                if _fired_alone(entry):
                    await t._stream.aclose()
                    raise t.expired(name) from None
                _release(wheel, entry)
                raise
            except BaseException:
                _release(wheel, entry)
                raise
            _release(wheel, entry)
            return chunk
        finally:
            _DEADLINE.reset(token)

    async def aclose(self) -> None:
        await self._t._stream.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t._stream, name)


def _drop_abandoned(call: Call, future: Future[Any]) -> None:
    """An abandoned worker finished: a stream it returned will never be read, so close it.

    Closing runs its finish hooks: spans end, caches keep nothing. Then the
    call's record hears that its abandoned attempt ended
    (`CallRecord.background_ended`): a `budget` that settled while it ran
    charges what it really used.
    """
    if not future.cancelled() and future.exception() is None:
        result = future.result()
        if isinstance(result, GuardedStream):
            _close_quietly(result)
    if call.recorded:
        call.record.background_ended()


def _earliest(deadline: float | None, first_by: float | None) -> tuple[float | None, str]:
    """The earlier of the total deadline and the first-chunk deadline, named."""
    if first_by is not None and (deadline is None or first_by < deadline):
        return first_by, "first_token"
    return deadline, "total"


def _close_quietly(stream: Any) -> None:
    # A generator still running in the worker cannot be closed from here.
    with contextlib.suppress(ValueError, RuntimeError):
        stream.close()


def timeout(
    total: float | dt.timedelta | None = None,
    *,
    first_token: float | dt.timedelta | None = None,
    idle: float | dt.timedelta | None = None,
    mode: str = "thread",
) -> TimeoutLayer:
    """Bound a call (and its stream) in time; also a deadline for a block.

    ``@lg.timeout(30, first_token=5, idle=10)`` or ``with lg.timeout(30):``.
    All three limits are finite seconds (or timedeltas) > 0; see the
    module docstring for what happens to abandoned sync work. *mode* says
    how a ``def`` is bounded: ``"thread"`` (the default) runs it in a worker
    thread the caller stops waiting for at the deadline, whatever it
    blocks on; ``"wire"`` runs it on the caller's thread, no thread per
    call, and gives each SDK request it makes the time left as its own
    timeout (docs/wire.md): for functions whose waiting is SDK requests.
    """
    if callable(cast("object", total)):
        msg = "timeout needs its limits: use @timeout(seconds), not bare @timeout"
        raise TypeError(msg)
    return TimeoutLayer(total, first_token=first_token, idle=idle, mode=mode)
