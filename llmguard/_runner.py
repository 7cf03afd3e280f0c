"""The one guard protocol and the one runner every guarded function gets.

A guard is a `Guard`: one class with the hooks it needs, and nothing else.
Every hook is optional; the runner skips those a guard leaves out at no
cost::

    class CountAttempts(Guard):
        name = "count"

        def enter(self, call):          # before the inside runs
            self.n += 1

- ``enter(call)``: before the inside (the guards within, then the
  function) runs. What it returns is the guard's *state* for this call,
  handed to the other hooks. It may raise (a budget refusing), return
  `Answer` (a cache hit: the call's result, nothing below runs), or return
  `Run` (the inside runs with other arguments: a route).
- ``leave(call, state, result)``: after the inside returned; it returns
  what the caller gets. A stream result is a `GuardedStream`: the guard
  attaches its per-chunk and finish hooks there. Returning `Run` runs the
  inside again instead, as from ``fail`` (validate's re-ask of an answer
  that did not validate, fallback's move past an answer ``reject=`` refused).
- ``fail(call, state, exc)``: after the inside raised. None re-raises;
  `Run` runs the inside again, after a delay and/or with other arguments
  (retry, fallback and a re-ask are all this one decision); `Answer` makes
  its value the result instead (fallback's ``default=``).
- ``Run(fn=other)`` (from any hook that returns a `Run`): the innermost step
  calls *other* in place of the decorated function for that run, with the
  same arguments; every guard inside still applies (fallback's alternate
  functions).
- ``aenter`` / ``aleave`` / ``afail``: the same for calls on an event loop,
  only for guards that await I/O (a Redis store); else the sync hook runs.
- ``via(call, state, inside)``: runs the inside itself (sync `timeout`
  runs it in a worker thread).
- ``primes = True``: a stream result's first chunk is fetched before
  ``leave``, so a failure before anything reached the caller goes to
  ``fail``; a failure after it is raised as `StreamInterrupted` (chunks
  cannot be taken back).

`@a @b @c def f` builds *one* runner with guards ``[a, b, c]`` (``a``
outermost) and one wrapper: a decorator applied to an already guarded
function extends its runner. The runner's decision loop (enter, inside,
leave or fail, again or re-raise) is written once, driven by
`_Runner.run_sync` and `_Runner.run_async`, which differ only in awaiting.

Every guard of one call shares one `Call`: the arguments, the instance of a
method, and the `CallRecord`, built only when something reads it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import sys

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, NamedTuple, ParamSpec, TypeVar, cast

import wrapt

from . import _clock
from ._binder import Binder
from ._call import _STREAM_SHAPES, Call, _FunctionInfo
from ._facts import (
    _CURRENT,
    ASYNC,
    ASYNCGEN,
    SYNC,
    _begin_attempt,
    _end_record_hook,
    release_frames,
)
from ._order import warn_surprises
from ._stream import (
    AsyncGuardedStream,
    GuardedStream,
    _StreamBase,
)
from .errors import GuardTimeout, StreamInterrupted, StreamTimedOut


P = ParamSpec("P")
R = TypeVar("R")

_KEEP: Any = object()


class Answer(NamedTuple):
    """What `Guard.enter` returns to answer the call itself (a cache hit): *value* is the result."""

    value: Any


class Run(NamedTuple):
    """Run the inside (again): from `Guard.fail`, or from `Guard.enter` with other arguments.

    *delay* seconds first (on llmguard's clock; `fail` only); *args* /
    *kwargs* replace the call's while the inside runs (None keeps them);
    *state* replaces the guard's state for this call (left out: kept);
    *fn* is called by the innermost step in place of the decorated function
    while the inside runs (None keeps it): same arguments, same shape, every
    guard inside applies to it.
    """

    delay: float = 0.0
    args: tuple[Any, ...] | None = None
    kwargs: dict[str, Any] | None = None
    state: Any = _KEEP
    fn: Callable[..., Any] | None = None


class Guard:
    """One guard's behaviour around a call. Subclass it once per guard.

    Define the hooks the guard needs (see the module docs); a guard object
    may decorate many functions, and what it keeps per function it creates
    in `for_function`. Per-call state lives in the value ``enter`` returns,
    never on the guard.
    """

    name: ClassVar[str] = "guard"
    primes: ClassVar[bool] = False
    enter: Callable[[Call], Any] | None = None
    leave: Callable[[Call, Any, Any], Any] | None = None
    fail: Callable[[Call, Any, BaseException], Run | Answer | None] | None = None
    aenter: Callable[[Call], Awaitable[Any]] | None = None
    aleave: Callable[[Call, Any, Any], Awaitable[Any]] | None = None
    afail: Callable[[Call, Any, BaseException], Awaitable[Run | Answer | None]] | None = None
    via: Callable[[Call, Any, Callable[[], Any]], Any] | None = None
    # Why this guard will reject a result the guards below produced (validate), or None;
    # a guard below that keeps results (cache) asks through `Call.rejected` before keeping one.
    judge: Callable[[Call, Any], str | None] | None = None

    def settings(self) -> dict[str, Any]:
        """The guard's configuration, for `describe`."""
        return {}

    def for_function(self, fn: Callable[..., Any], shape: str, binder: Binder) -> Guard:  # noqa: ARG002
        """The guard to use for *fn* (override to keep per-function state).

        *shape* is `SYNC`, `ASYNC`, `GEN` or `ASYNCGEN`; *binder* the
        function's one argument `Binder`.
        """
        return self

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate *fn* with this guard."""
        return wrap(self, fn)


# -- the runner ------------------------------------------------------------------


class _Runner:
    """The guards on one function, composed: runs their hooks in order, then the function."""

    __slots__ = ("async_hooks", "fn", "guards", "info", "is_async", "n", "static", "stream_shape", "sync_hooks")

    def __init__(self, guards: tuple[Guard, ...], info: _FunctionInfo, fn: Callable[..., Any], *, static: bool) -> None:
        self.guards = guards
        self.n = len(guards)
        self.info = info
        self.fn = fn
        self.static = static
        self.stream_shape = info.shape in _STREAM_SHAPES
        self.is_async = info.shape in (ASYNC, ASYNCGEN)
        # Each guard's hooks, looked up once: (enter, leave, fail, via, primes),
        # the async runner's hooks each with whether it must be awaited.
        self.sync_hooks: tuple[tuple[Any, ...], ...] = tuple((g.enter, g.leave, g.fail, g.via, g.primes) for g in guards)
        self.async_hooks: tuple[tuple[Any, ...], ...] = tuple(
            (
                g.aenter or g.enter,
                g.aenter is not None,
                g.aleave or g.leave,
                g.aleave is not None,
                g.afail or g.fail,
                g.afail is not None,
                g.primes,
            )
            for g in guards
        )

    # One decision loop, two drivers: they differ only in awaiting.

    def run_sync(self, call: Call, i: int = 0) -> Any:  # noqa: PLR0912 - the decision loop, in one frame
        """Run guard *i* (and everything inside it) of a synchronous call."""
        if i == self.n:
            return self._invoke_sync(call)
        enter, leave, fail, via, primes = self.sync_hooks[i]
        state: Any = None
        run: Run | None = None
        if enter is not None:
            state = enter(call)
            if type(state) is Answer:
                return state.value
            if type(state) is Run:
                run, state = state, (None if state.state is _KEEP else state.state)
        delay: float | None = None  # a Run's, slept before running again (0 too: async yields once)
        while True:
            try:
                if delay is not None:
                    # In the try: an interrupt while waiting reaches `fail` like one from the inside.
                    _clock.get_clock().sleep(delay)
                if run is None and via is None:
                    result = self._invoke_sync(call) if i + 1 == self.n else self.run_sync(call, i + 1)
                else:
                    result = self._inside_sync(call, i + 1, run, via, state)
                if primes and isinstance(result, GuardedStream):
                    result.prime()
                    result.map_errors(_interrupted)
            except BaseException as exc:
                if fail is None:
                    raise
                again = fail(call, state, exc)
                if again is None:
                    raise
                # Gone past: it stays on the record, never raised, and must not
                # keep the frames of this call (and what they will hold) alive.
                release_frames(exc, sys._getframe())
                if type(again) is Answer:
                    return again.value  # `fail` answered the call itself (fallback's default=)
                state, run, delay = _again(again, state, run)
                continue
            if leave is None:
                return result
            try:
                out = leave(call, state, result)
            except BaseException:
                if isinstance(result, _StreamBase):
                    _close_quietly(result)  # nobody will read it: end it now, not when collected
                raise
            if type(out) is not Run:
                return out
            # `leave` said run again (validate's re-ask): like `fail`'s Run.
            state, run, delay = _again(out, state, run)

    async def run_async(self, call: Call, i: int = 0) -> Any:  # noqa: PLR0912 - the decision loop, in one frame
        """`run_sync` for an ``async def`` or async generator function."""
        if i == self.n:
            return await self._invoke_async(call)
        enter, enter_awaits, leave, leave_awaits, fail, fail_awaits, primes = self.async_hooks[i]
        state: Any = None
        run: Run | None = None
        if enter is not None:
            state = (await enter(call)) if enter_awaits else enter(call)
            if type(state) is Answer:
                return state.value
            if type(state) is Run:
                run, state = state, (None if state.state is _KEEP else state.state)
        delay: float | None = None  # a Run's, slept before running again (0 too: async yields once)
        while True:
            try:
                if delay is not None:
                    await _clock.get_clock().asleep(delay)
                if run is None:
                    result = await self.run_async(call, i + 1)
                else:
                    result = await self._inside_async(call, i + 1, run)
                if primes and isinstance(result, _StreamBase):
                    await _prime(result)
                    result.map_errors(_interrupted)
            except BaseException as exc:
                if fail is None:
                    raise
                again = (await fail(call, state, exc)) if fail_awaits else fail(call, state, exc)
                if again is None:
                    raise
                release_frames(exc, sys._getframe())
                if type(again) is Answer:
                    return again.value
                state, run, delay = _again(again, state, run)
                continue
            if leave is None:
                return result
            try:
                out = (await leave(call, state, result)) if leave_awaits else leave(call, state, result)
            except BaseException:
                if isinstance(result, _StreamBase):
                    await _aclose_quietly(result)
                raise
            if type(out) is not Run:
                return out
            state, run, delay = _again(out, state, run)

    def _inside_sync(self, call: Call, i: int, run: Run | None, via: Any, state: Any) -> Any:
        """Run guards *i*.. and the function with *run*'s arguments, through *via* if given."""
        if via is not None:
            return self._via(call, i, run, via, state)
        if run is None:
            return self.run_sync(call, i)
        saved = call._use(run)
        try:
            return self.run_sync(call, i)
        finally:
            call._restore(saved)

    def _via(self, call: Call, i: int, run: Run | None, via: Any, state: Any) -> Any:
        """Hand guards *i*.. and the function to *via*, which may run them on another thread.

        `via` may give up on that thread (sync timeout) while it goes on
        running. So the record is built first (an attempt begun or ended there
        never races the caller's thread building it from the attempts' slots),
        and the inside runs on its own copy of the call: the caller restoring
        its arguments, or a guard outside running again with others, never
        changes the arguments of a run it already handed over.
        """
        if call._record is None:
            call._materialize()
        saved = None if run is None else call._use(run)
        try:
            handed = copy.copy(call)  # shares the record; its own arguments
            return via(call, state, lambda: self.run_sync(handed, i))
        finally:
            if saved is not None:
                call._restore(saved)

    async def _inside_async(self, call: Call, i: int, run: Run | None) -> Any:
        """`_inside_sync` for async calls (no ``via``)."""
        if run is None:
            return await self.run_async(call, i)
        saved = call._use(run)
        try:
            return await self.run_async(call, i)
        finally:
            call._restore(saved)

    # -- the innermost step: one attempt, the function itself ---------------------

    def _invoke_sync(self, call: Call) -> Any:
        if self.stream_shape:
            return self._stream_of(call)
        slot = call._begin()
        token = _CURRENT.set((call, slot))
        try:
            result = (self.fn if call._fn is None else call._fn)(*call.positional(), **call.kwargs)
        except BaseException as exc:
            call._failed(slot, exc)
            raise
        finally:
            _CURRENT.reset(token)
        return call._returned(slot, result)

    async def _invoke_async(self, call: Call) -> Any:
        if self.stream_shape:
            return self._stream_of(call)
        slot = call._begin()
        token = _CURRENT.set((call, slot))
        try:
            result = await (self.fn if call._fn is None else call._fn)(*call.positional(), **call.kwargs)
        except BaseException as exc:
            call._failed(slot, exc)
            raise
        finally:
            _CURRENT.reset(token)
        return call._returned(slot, result)

    def _stream_of(self, call: Call) -> _StreamBase:
        """A generator function's call: its generator, guarded, its attempt begun (nothing runs yet)."""
        record = call.record
        attempt = _begin_attempt(record, call._model, _clock.now())
        stream_type = AsyncGuardedStream if self.is_async else GuardedStream
        return stream_type(source=(self.fn if call._fn is None else call._fn)(*call.positional(), **call.kwargs), record=record, attempt=attempt, call=call)


def _again(again: Run, state: Any, run: Run | None) -> tuple[Any, Run | None, float]:
    """The state, arguments and delay of the next run of the inside, after a `Run` from `fail` or `leave`."""
    if again.state is not _KEEP:
        state = again.state
    if again.args is not None or again.kwargs is not None or again.fn is not None:
        run = again
    return state, run, again.delay


def _interrupted(exc: BaseException, stream: _StreamBase) -> BaseException | None:
    """A stream's failure after chunks reached the caller becomes `StreamInterrupted`.

    Applied by a priming guard (retry: such a failure is not retried) and to
    every guarded stream handed to the caller, so whatever the guards and
    their order the caller catches one class. A stall (`GuardTimeout`)
    becomes `StreamTimedOut`, which is both.
    """
    if stream.delivered == 0 or not isinstance(exc, Exception) or isinstance(exc, StreamInterrupted):
        return None
    message = (
        f"the stream failed after {stream.delivered} chunk{'s' * (stream.delivered != 1)} "
        f"reached the caller ({type(exc).__name__}: {exc}); nothing was replayed"
    )
    if isinstance(exc, GuardTimeout):
        return StreamTimedOut(
            message, text=stream.text, usage=stream.usage_so_far(), limit=exc.limit, seconds=exc.seconds
        )
    return StreamInterrupted(message, text=stream.text, usage=stream.usage_so_far())


def _close_quietly(stream: _StreamBase) -> None:
    """End *stream*, which a raising ``leave`` hands nobody; that hook's error is the one raised."""
    with contextlib.suppress(Exception):
        cast("GuardedStream", stream).close()


async def _aclose_quietly(stream: _StreamBase) -> None:
    """`_close_quietly` for the async runner (whose result may be either kind of stream)."""
    if not isinstance(stream, AsyncGuardedStream):
        _close_quietly(stream)
        return
    with contextlib.suppress(Exception):
        await stream.aclose()


# -- wrapping ----------------------------------------------------------------


async def _prime(stream: _StreamBase) -> None:
    if isinstance(stream, AsyncGuardedStream):
        await stream.prime()
    elif isinstance(stream, GuardedStream):
        stream.prime()


def _end_with_result(call: Call, result: Any) -> Any:
    if isinstance(result, _StreamBase):
        result.map_errors(_interrupted)  # whatever the guards and their order: one error family
        result.on_finish(_end_record_hook(call.record))
    else:
        call._finish_call(None)
    return result


def wrap(guard: Guard, fn: Callable[P, R], *, static: bool = False) -> Callable[P, R]:
    """Put *guard* around *fn*, for every call shape; see the module docs.

    If *fn* is already guarded, its runner is extended with *guard* as the
    new outermost guard: one wrapper, one runner, whatever the number of
    guards. *static* says *fn* is a ``staticmethod``'s function.
    """
    if isinstance(fn, (staticmethod, classmethod)):
        # Wrap the function and re-apply the descriptor, so `cls` arrives
        # as an ordinary first argument and binding stays Python's.
        made = wrap(guard, fn.__func__, static=isinstance(fn, staticmethod))
        return cast("Callable[P, R]", type(fn)(made))
    if not callable(cast("object", fn)):
        msg = f"llmguard.{guard.name}() can only decorate a callable, got {type(fn).__name__}: {fn!r}"
        raise TypeError(msg)
    # A bound method (``service.ask``) is already bound: it has no instance
    # to split off, and if it is a guarded method, extending its function's
    # runner would drop the instance, so it is guarded like any callable.
    bound = inspect.ismethod(fn) or isinstance(fn, wrapt.BoundFunctionWrapper)
    below = None if bound else runner_of(fn)
    if below is not None:
        base, static, info, guards = below.fn, below.static, below.info, below.guards
    else:
        static = static or bound
        base, info, guards = fn, _FunctionInfo(fn, static=static), ()
    made = guard.for_function(base, info.shape, info.binder)
    runner = _Runner((made, *guards), info, base, static=static)
    if guards:
        warn_surprises([g.name for g in runner.guards], about=0)
    return cast("Callable[P, R]", _wrapper(runner, base))


def _wrapper(runner: _Runner, fn: Callable[..., Any]) -> Callable[..., Any]:
    info = runner.info
    shape = info.shape
    split = info.binder.split
    if shape in _STREAM_SHAPES:
        # Generator functions keep wrapt: only its proxy keeps
        # `inspect.isgeneratorfunction` true. Nothing runs until the first pull.
        is_async = shape == ASYNCGEN
        stream_type = AsyncGuardedStream if is_async else GuardedStream
        start = runner.run_async if is_async else runner.run_sync
        # wrapt hands a bound method's ``__self__`` as *instance*; a bound
        # method (the only static callable wrapt binds) already passes it.
        keeps_instance = not runner.static

        def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:  # noqa: ARG001
            call = Call(runner, *split(args if instance is None or not keeps_instance else (instance, *args)), kwargs)
            record = call.record
            stream = stream_type(start=lambda: start(call), record=record)
            stream.map_errors(_interrupted)  # whatever the guards and their order: one error family
            stream.on_finish(_end_record_hook(record))
            return stream

        wrapper._llmguard_runner = runner  # type: ignore[attr-defined]
        return cast("Callable[..., Any]", wrapt.FunctionWrapper(fn, wrapper))

    # def and async def are wrapped in plain closures rather than wrapt's
    # proxy (~0.35 µs a call cheaper). A closure is a function, so Python
    # binds it to instances itself; a method's instance arrives as the
    # first argument and the function's `Binder` splits it off.
    run_sync = runner.run_sync
    run_async = runner.run_async
    plain = info.binder.owner is None  # no instance to split off
    if shape == SYNC:

        def guarded(*args: Any, **kwargs: Any) -> Any:
            call = Call(runner, None, args, kwargs) if plain else Call(runner, *split(args), kwargs)
            try:
                result = run_sync(call)
            except BaseException as exc:
                call._finish_call(exc)
                raise
            if call._record is None and not isinstance(result, _StreamBase):
                call._returned_at = _clock.now()  # the record, if ever built, ends then
                return result
            return _end_with_result(call, result)

        made: Callable[..., Any] = guarded
    else:

        async def guarded_async(*args: Any, **kwargs: Any) -> Any:
            call = Call(runner, None, args, kwargs) if plain else Call(runner, *split(args), kwargs)
            try:
                result = await run_async(call)
            except BaseException as exc:
                call._finish_call(exc)
                raise
            if call._record is None and not isinstance(result, _StreamBase):
                call._returned_at = _clock.now()  # the record, if ever built, ends then
                return result
            return _end_with_result(call, result)

        made = guarded_async
    functools.update_wrapper(made, fn)
    made.__llmguard_runner__ = runner  # type: ignore[attr-defined]
    return made


def runner_of(fn: object) -> _Runner | None:
    """The runner of a function llmguard wrapped, or None if *fn* is not one."""
    if getattr(fn, "__code__", None) in _GUARDED_CODES:
        runner = getattr(fn, "__llmguard_runner__", None)
        return runner if isinstance(runner, _Runner) else None
    wrapper = getattr(fn, "_self_wrapper", None)  # a wrapt-wrapped generator function
    runner = getattr(wrapper, "_llmguard_runner", None)
    return runner if isinstance(runner, _Runner) else None


def layers_of(fn: object) -> list[Guard]:
    """Every llmguard guard around *fn*, outermost first (through other decorators too)."""
    out: list[Guard] = []
    node: object = fn
    while True:
        if isinstance(node, (staticmethod, classmethod)):
            node = node.__func__
        runner = runner_of(node)
        if runner is not None:
            out.extend(runner.guards)
            node = runner.fn
            continue
        nxt = getattr(node, "__wrapped__", None)
        if nxt is None or nxt is node:
            return out
        node = nxt


def layer_of(fn: object) -> Guard | None:
    """The outermost llmguard guard of *fn*, or None if it is not guarded."""
    runner = runner_of(fn)
    return None if runner is None else runner.guards[0]


def _inner_codes() -> frozenset[Any]:
    # The code objects of the closures `_wrapper` makes: a function whose
    # __code__ is one of them is ours (functools.wraps copies attributes,
    # never code), so a user's decorator copying `__llmguard_runner__` is
    # not mistaken for a guarded function.
    return frozenset(c for c in _wrapper.__code__.co_consts if isinstance(c, type(_wrapper.__code__)) and c.co_name in ("guarded", "guarded_async"))


_GUARDED_CODES = _inner_codes()
