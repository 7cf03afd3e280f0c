"""`timeout`: deadlines that propagate, and stall detection for streams.

``timeout(total, first_token=None, idle=None)`` is a decorator and a context
manager.

As a **decorator** it bounds each call: the caller gets control back, with
`GuardTimeout` (a `TimeoutError`), within ``total`` seconds (plus scheduling
slack, well under 100 ms):

* ``async def``: the awaited work is cancelled (``asyncio`` cancellation, as
  ``asyncio.timeout`` does), so the HTTP request is abandoned too.
* ``def``: Python cannot interrupt a blocking call in a thread, so the call
  runs in a worker thread while the caller waits at most ``total``. On
  timeout the caller gets `GuardTimeout` at once; the worker is *abandoned*:
  it finishes in the background and its result is dropped (its usage is still
  recorded on the call's attempt). To make the abandoned HTTP request end
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
import threading

from collections.abc import Callable
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Final, cast

from . import _clock, _events
from ._context import _DEADLINE
from ._wrap import ASYNCGEN, GEN, AsyncGuardedStream, Call, GuardedStream, Layer
from .errors import GuardTimeout


class _Workers:
    """Threads that run blocking calls the caller may stop waiting for.

    Elastic: an idle worker is reused, otherwise a new daemon thread starts,
    so an abandoned call (still blocked in the background) never makes a
    later call queue behind it. Idle workers exit after a minute.
    """

    IDLE_SECONDS: Final = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            worker = _Worker(self)
        worker.give(fn, future)
        return future

    def park(self, worker: _Worker) -> None:
        with self._lock:
            self._idle.append(worker)

    def retire(self, worker: _Worker) -> bool:
        """Remove an idle worker that timed out waiting; False if it was just handed work."""
        with self._lock:
            if worker in self._idle:
                self._idle.remove(worker)
                return True
            return False


class _Worker:
    __slots__ = ("_job", "_pool", "_ready")

    def __init__(self, pool: _Workers) -> None:
        self._pool = pool
        self._ready = threading.Event()
        self._job: tuple[Callable[[], Any], Future[Any]] | None = None
        threading.Thread(target=self._run, name="llmguard-timeout", daemon=True).start()

    def give(self, fn: Callable[[], Any], future: Future[Any]) -> None:
        self._job = (fn, future)
        self._ready.set()

    def _run(self) -> None:
        while True:
            if not self._ready.wait(self._pool.IDLE_SECONDS):
                if self._pool.retire(self):
                    return
                self._ready.wait()
            self._ready.clear()
            job, self._job = self._job, None
            if job is None:  # pragma: no cover - set() always comes with a job
                continue
            fn, future = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                    future.set_exception(exc)
            self._pool.park(self)


_WORKERS = _Workers()


class TimeoutLayer(Layer):
    """The `timeout` guard and context manager. Build it with `timeout`."""

    name = "timeout"

    def __init__(
        self,
        total: float | dt.timedelta | None = None,
        *,
        first_token: float | dt.timedelta | None = None,
        idle: float | dt.timedelta | None = None,
    ) -> None:
        self.total = _clock.seconds("timeout", "total", total)
        self.first_token = _clock.seconds("timeout", "first_token", first_token)
        self.idle = _clock.seconds("timeout", "idle", idle)
        if self.total is None and self.first_token is None and self.idle is None:
            msg = "timeout() needs at least one of total=, first_token= or idle="
            raise ValueError(msg)
        # Context-manager state per thread/task, so one timeout object can be
        # entered by many tasks at once.
        self._entered: dict[object, list[tuple[contextvars.Token[float | None], asyncio.Timeout | None]]] = {}

    def settings(self) -> dict[str, Any]:
        """The configuration, for `describe`."""
        return {"total": self.total, "first_token": self.first_token, "idle": self.idle}

    def _deadline(self) -> float | None:
        """The deadline of a call starting now: ours or the active one, the smaller."""
        outer = _DEADLINE.get()
        if self.total is None:
            return outer
        own = _clock.now() + self.total
        return own if outer is None or own < outer else outer

    # -- decorator ---------------------------------------------------------

    def _first_chunk_by(self) -> float | None:
        """When the first chunk must have arrived.

        For a call that returns a stream, the request itself counts (a slow
        first byte is a slow first token); for one that returns a whole
        response, that response is its first and only chunk.
        """
        if self.first_token is None:
            return None
        return _clock.now() + self.first_token

    def around(self, call: Call) -> Any:
        """Run a sync call in a worker, waiting at most until the deadline."""
        deadline = self._deadline()
        first_by = self._first_chunk_by()
        if call.shape == GEN:
            call.set_deadline(deadline)
            return _TimedStream.wrap(call.proceed(), self, deadline, first_by, call)
        if deadline is not None:
            call.set_deadline(deadline)
        ctx = contextvars.copy_context()
        ctx.run(_DEADLINE.set, deadline)
        wait_until, limit = _earliest(deadline, first_by)
        if wait_until is None:  # only idle limits: nothing to bound yet
            result = ctx.run(call.proceed)
        else:
            allowed = max(wait_until - _clock.now(), 0.0)
            future = _WORKERS.submit(lambda: ctx.run(call.proceed))
            try:
                result = future.result(timeout=allowed)
            except TimeoutError:
                future.cancel()
                raise self._expired(call, limit, self._fired(limit, allowed)) from None
        if isinstance(result, GuardedStream):
            return _TimedStream.wrap(result, self, deadline, first_by, call)
        return result

    def _fired(self, limit: str, allowed: float) -> float:
        """The seconds the limit that fired allowed (an outer, shorter deadline's own)."""
        return allowed if limit == "total" else self._seconds(limit)

    def _seconds(self, limit: str) -> float:
        return {"first_token": self.first_token, "idle": self.idle}.get(limit) or self.total or 0.0

    async def around_async(self, call: Call) -> Any:
        """Await the call, cancelling it at the deadline."""
        deadline = self._deadline()
        first_by = self._first_chunk_by()
        if call.shape == ASYNCGEN:
            call.set_deadline(deadline)
            return _TimedStream.wrap_async(await call.proceed_async(), self, deadline, first_by, call)
        wait_until, limit = _earliest(deadline, first_by)
        token = _DEADLINE.set(deadline)
        try:
            if wait_until is None:
                result = await call.proceed_async()
            else:
                call.set_deadline(deadline)
                result = await self._within(call, wait_until, limit)
        finally:
            _DEADLINE.reset(token)
        if isinstance(result, AsyncGuardedStream):
            return _TimedStream.wrap_async(result, self, deadline, first_by, call)
        return result

    async def _within(self, call: Call, until: float, limit: str) -> Any:
        # What asyncio.timeout does, without its context-manager machinery
        # (a third of the cost): one timer that cancels this task, and
        # telling our own cancellation apart from anyone else's.
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - awaited, so inside a task
        fired = False

        def expire() -> None:
            nonlocal fired
            fired = True
            task.cancel()

        allowed = max(until - _clock.now(), 0.0)
        handle = loop.call_at(loop.time() + allowed, expire)
        try:
            return await call.proceed_async()
        except asyncio.CancelledError:
            if fired and task.uncancel() == 0:
                raise self._expired(call, limit, self._fired(limit, allowed)) from None
            raise
        finally:
            handle.cancel()

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
        self._entered.setdefault(_owner(), []).append((_DEADLINE.set(self._deadline()), None))
        return self

    def __exit__(self, *exc_info: object) -> None:
        token, _ = self._pop()
        _DEADLINE.reset(token)

    async def __aenter__(self) -> TimeoutLayer:
        deadline = self._deadline()
        cm = asyncio.timeout(None if deadline is None else max(deadline - _clock.now(), 0.0))
        self._entered.setdefault(_owner(), []).append((_DEADLINE.set(deadline), cm))
        await cm.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        token, cm = self._pop()
        _DEADLINE.reset(token)
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
    def wrap(
        cls, stream: GuardedStream, layer: TimeoutLayer, deadline: float | None, first_by: float | None, call: Call
    ) -> GuardedStream:
        if layer.first_token is None and layer.idle is None and deadline is None:
            return stream
        return GuardedStream(source=_SyncPulls(cls(stream, layer, deadline, first_by, call)), record=call.record)

    @classmethod
    def wrap_async(
        cls, stream: AsyncGuardedStream, layer: TimeoutLayer, deadline: float | None, first_by: float | None, call: Call
    ) -> AsyncGuardedStream:
        if layer.first_token is None and layer.idle is None and deadline is None:
            return stream
        return AsyncGuardedStream(
            source=_AsyncPulls(cls(stream, layer, deadline, first_by, call)), record=call.record
        )

    def limit(self) -> tuple[float | None, str]:
        """Seconds the next pull may take, and the name of the limit that binds."""
        now = _clock.now()
        if self._stream.delivered == 0:
            first_by = self._first_by
            if first_by is None and self._layer.first_token is not None:
                first_by = self._first_by = now + self._layer.first_token
            until, name = _earliest(self._deadline, first_by)
            return (None, name) if until is None else (max(until - now, 0.0), name)
        if self._layer.idle is not None and (self._deadline is None or now + self._layer.idle <= self._deadline):
            return self._layer.idle, "idle"
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
            try:
                async with asyncio.timeout(wait) as cm:
                    return await t._stream.__anext__()
            except TimeoutError:
                if cm.expired():
                    await t._stream.aclose()
                    raise t.expired(name) from None
                raise
        finally:
            _DEADLINE.reset(token)

    async def aclose(self) -> None:
        await self._t._stream.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t._stream, name)


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
) -> TimeoutLayer:
    """Bound a call (and its stream) in time; also a deadline for a block.

    ``@lg.timeout(30, first_token=5, idle=10)`` or ``with lg.timeout(30):``.
    All three limits are seconds (or timedeltas) and must be > 0; see the
    module docstring for what happens to abandoned sync work.
    """
    if callable(cast("object", total)):
        msg = "timeout needs its limits: use @timeout(seconds), not bare @timeout"
        raise TypeError(msg)
    return TimeoutLayer(total, first_token=first_token, idle=idle)
