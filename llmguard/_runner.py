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
  attaches its per-chunk and finish hooks there.
- ``fail(call, state, exc)``: after the inside raised. None re-raises;
  `Run` runs the inside again, after a delay and/or with other arguments
  (retry, fallback and a re-ask are all this one decision).
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

from . import _clock, _estimate, providers
from ._binder import Binder
from ._facts import (
    _CURRENT,
    ASYNC,
    ASYNCGEN,
    GEN,
    SYNC,
    _apply_notes,
    _begin_attempt,
    _end_record,
    _end_record_hook,
    _fail_attempt,
    _settle_attempt,
    release_frames,
    shape_of,
)
from ._record import Attempt, CallRecord, Usage
from ._stream import (
    _PLAIN_TYPES,
    _STREAM_TYPES,
    _UNSEEN,
    AsyncGuardedStream,
    GuardedStream,
    _StreamBase,
    stream_kind,
)
from .errors import StreamInterrupted


P = ParamSpec("P")
R = TypeVar("R")

_STREAM_SHAPES = frozenset({GEN, ASYNCGEN})
_KEEP: Any = object()


class Answer(NamedTuple):
    """What `Guard.enter` returns to answer the call itself (a cache hit): *value* is the result."""

    value: Any


class Run(NamedTuple):
    """Run the inside (again): from `Guard.fail`, or from `Guard.enter` with other arguments.

    *delay* seconds first (on llmguard's clock; `fail` only); *args* /
    *kwargs* replace the call's while the inside runs (None keeps them);
    *state* replaces the guard's state for this call (left out: kept).
    """

    delay: float = 0.0
    args: tuple[Any, ...] | None = None
    kwargs: dict[str, Any] | None = None
    state: Any = _KEEP


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
    fail: Callable[[Call, Any, BaseException], Run | None] | None = None
    aenter: Callable[[Call], Awaitable[Any]] | None = None
    aleave: Callable[[Call, Any, Any], Awaitable[Any]] | None = None
    afail: Callable[[Call, Any, BaseException], Awaitable[Run | None]] | None = None
    via: Callable[[Call, Any, Callable[[], Any]], Any] | None = None

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


class Layer(Guard):
    """A guard written as ``around(call)`` / ``around_async(call)`` calling ``call.proceed()``.

    The shape the guards had before the hooks; kept while they move over.
    """

    name: ClassVar[str] = "layer"

    def around(self, call: Call) -> Any:
        """Run one call of a ``def`` or generator function."""
        return call.proceed()

    async def around_async(self, call: Call) -> Any:
        """Run one call of an ``async def`` or async generator function."""
        return await call.proceed_async()

    # Read by lanes that no runner calls any more, going away (#13).
    def resume(self, call: Call, state: Any) -> Any:  # noqa: ARG002
        """Gone with the lanes."""
        return self.around(call)

    async def resume_async(self, call: Call, state: Any) -> Any:  # noqa: ARG002
        """Gone with the lanes."""
        return await self.around_async(call)


# -- the call ------------------------------------------------------------------


class _FunctionInfo:
    """What `wrap` learns once about a function, so calls don't redo it."""

    __slots__ = ("binder", "has_model", "has_stream", "name", "shape")

    def __init__(self, fn: Callable[..., Any], *, static: bool = False) -> None:
        self.shape = shape_of(fn)
        self.name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
        # The one argument binder: names, positions, defaults, the instance rule.
        self.binder = binder = Binder(fn, static=static)
        # Read positionally / from defaults only when the function names them.
        self.has_model = "model" in binder.positions or "model" in binder.defaults
        self.has_stream = "stream" in binder.positions or "stream" in binder.defaults


class Call:
    """One invocation of a guarded function, shared by every guard on it.

    ``args`` and ``kwargs`` are what the caller passed, a method's instance
    excluded: it is ``instance`` (`_binder` has the one rule that decides).
    A guard's ``Run(args=, kwargs=)`` changes them while the inside runs.

    The `CallRecord` is built on demand: the first time anything reads
    ``call.record`` (a guard, `report_usage`, `current_call`, a nested
    guarded call). Until then each attempt is kept unnumbered with its
    result, so a guard that never looks at the record (`retry` on its
    success path, `trace` with no OTel SDK) costs only what it does itself;
    reading it later gives the same facts as reading it early.
    """

    # Not __slots__: one is built on every call, and class-level defaults with
    # a short __init__ build fastest (an instance stores only what it sets).
    _record: CallRecord | None = None
    _parent: Call | None = None
    # The attempts begun before anyone asked for the record, in order, each a
    # *slot* (see `_begin`) until the record is built and makes it an `Attempt`.
    _attempts: list[list[Any]] | None = None
    _end: tuple[float, BaseException | None] | None = None
    _returned_at: float | None = None  # when the runner returned a plain result (`_end` without building a tuple)
    _deadline: float | None = None
    _notes: dict[str, Any] | None = None
    _model: Any = None  # the model the inside asks for while a guard's `Run` changes the arguments
    _given: tuple[tuple[Any, ...], dict[str, Any]] | None = None  # the caller's arguments, while a guard's replace them
    _pos = 0  # the running `Layer`'s index, for its ``call.proceed()``
    entered: Any = None  # read by the cache's lane, going away (#13)

    def __init__(self, runner: _Runner, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.runner = runner
        self.instance = instance
        self.args = args
        self.kwargs = kwargs
        running = _CURRENT.get()
        if running is not None:
            self._parent = running[0]
        self.started_at = _clock.now()

    @property
    def info(self) -> _FunctionInfo:
        """What the runner knows of the function: ``binder``, ``shape``, ``name``."""
        return self.runner.info

    @property
    def is_async(self) -> bool:
        """Whether the call runs on an event loop (``async def``, async generator function)."""
        return self.runner.is_async

    # -- the record ---------------------------------------------------------

    @property
    def record(self) -> CallRecord:
        """The call's record, shared by every guard of this call."""
        record = self._record
        return record if record is not None else self._materialize()

    def _materialize(self) -> CallRecord:
        """Build the record, replaying what happened so far."""
        parent = self._parent
        info = self.runner.info
        record = CallRecord(info.name, parent.record if parent is not None else None, self.started_at)
        args, kwargs = self._given or (self.args, self.kwargs)
        model = _request_model(info, self.instance, args, kwargs)
        if model is not None:
            record.request_model = model
        if _requests_stream(info, self.instance, args, kwargs):
            record.stream = True
        record.deadline = self._deadline
        self._record = record
        slots, self._attempts = self._attempts, None
        for slot in slots or ():
            started, model, ended, result, exc, _ = slot
            attempt = Attempt(len(record.attempts) + 1, model if isinstance(model, str) else record.request_model, started)
            slot[3] = slot[4] = None  # the attempt has what it needs of them
            slot[5] = attempt
            record.attempts.append(attempt)
            if ended is None:
                continue  # still running: it settles itself
            if exc is not None:
                _fail_attempt(attempt, exc, ended)
            else:
                _settle_attempt(attempt, providers.observe_result(result), ended)
        if self._notes is not None:
            _apply_notes(record, self._notes)
        if self._end is not None:
            ended_at, exc = self._end
            _end_record(record, exc, ended_at)
        elif self._returned_at is not None:
            _end_record(record, None, self._returned_at)
        return record

    @property
    def recorded(self) -> bool:
        """Whether the call's record has been built (someone reads it)."""
        return self._record is not None

    def note(self, **facts: Any) -> None:
        """Write *facts* on the call's record, without building it just for that.

        Each keyword is a `CallRecord` attribute (``cache="hit"``,
        ``saved_usd=...``); ``extra={...}`` merges into ``record.extra``. If
        the record exists they are written now, else when it is built.
        """
        if self._record is not None:
            _apply_notes(self._record, facts)
        elif self._notes is None:
            self._notes = facts
        else:
            extra = facts.pop("extra", None)
            self._notes.update(facts)
            if extra:
                # A new dict: the one a guard passed first is its own, never written into.
                self._notes["extra"] = {**self._notes.get("extra", {}), **extra}

    def set_deadline(self, deadline: float | None) -> None:
        """Note the call's deadline on its record (without building the record)."""
        self._deadline = deadline
        if self._record is not None:
            self._record.deadline = deadline

    def _finish_call(self, exc: BaseException | None) -> None:
        """The runner returned (or raised): close the record."""
        record = self._record
        if record is None:
            self._end = (_clock.now(), exc)
        else:
            _end_record(record, exc, _clock.now())

    # -- facts of the attempts, without the record --------------------------------

    def attempt_count(self) -> int:
        """How many attempts (real calls of the function) this call has begun so far."""
        record = self._record
        if record is not None:
            return len(record.attempts)
        return 0 if self._attempts is None else len(self._attempts)

    def plain_usage(self, since: int = 0) -> list[tuple[Usage | None, str | None, str | None]] | None:
        """``(usage, model, provider)`` of each attempt from the *since*-th (0-based) on, without building the record.

        Read from each attempt's result by the provider adapters
        (`providers.observe_usage`); the model is the one the provider
        named, else the one asked for. None when that cannot be read this
        cheaply: the record exists, or one of those attempts raised, is still
        running, or returned a stream. Then read ``call.record``. (The model
        asked for is given only when a guard's `Run` changed the arguments.)
        """
        slots = self._attempts
        if self._record is not None or slots is None:
            return None
        out: list[tuple[Usage | None, str | None, str | None]] = []
        for _, model, ended, result, exc, _ in slots[since:]:
            if ended is None or exc is not None:
                return None
            found = providers.observe_usage(result)
            if found is None:
                out.append((None, model if isinstance(model, str) else None, None))
            else:
                usage, response_model, provider = found
                out.append((usage, response_model or (model if isinstance(model, str) else None), provider))
        return out

    # -- the arguments ------------------------------------------------------

    @property
    def shape(self) -> str:
        """`SYNC`, `ASYNC`, `GEN` or `ASYNCGEN`."""
        return self.info.shape

    @property
    def function_name(self) -> str:
        """The qualified name of the function being guarded."""
        return self.info.name

    def param(self, name: str, default: Any = None) -> Any:
        """The argument passed for parameter *name* (keyword or positional)."""
        return self.info.binder.arg(self.instance, self.args, self.kwargs, name, default)

    def bound_arguments(self) -> dict[str, Any]:
        """All arguments by parameter name, defaults applied (the instance excluded)."""
        return self.info.binder.bound(self.instance, self.args, self.kwargs)

    def arguments(self) -> dict[str, Any]:
        """All arguments by name, defaults applied, ``**kwargs`` flat (as ``key=`` and ``estimate=`` get them)."""
        return self.info.binder.arguments(self.instance, self.args, self.kwargs)

    def request_model(self) -> str | None:
        """The model the call asks for (its ``model`` argument), if it names one."""
        return _request_model(self.info, self.instance, self.args, self.kwargs)

    def requests_stream(self) -> bool:
        """Whether the call is a stream by its shape or asks for one (``stream=True``)."""
        return _requests_stream(self.info, self.instance, self.args, self.kwargs)

    def estimated_input_size(self) -> int:
        """The estimate's count of the request's input, in bytes (`llmguard._estimate`).

        The arguments named in `_estimate.INPUT_NAMES` (``messages``,
        ``system``, ``prompt``, ``input``, ``instructions``, ``contents``,
        ``tools``) when the call has any, else all its arguments: the count a
        budget reserves from, so an estimated charge and the reservation
        before it are two readings of one number.
        """
        param = self.param
        parts = [v for name in _estimate.INPUT_NAMES if (v := param(name)) is not None]
        if parts:
            return sum(map(_estimate.size, parts))
        return _estimate.arguments_size(self.args, self.kwargs)

    def estimated_input_tokens(self) -> int:
        """The best-guess input tokens of the request (`_estimate.tokens` of `estimated_input_size`)."""
        return _estimate.tokens(self.estimated_input_size())

    # -- a `Layer`'s way on --------------------------------------------------

    def proceed(self, args: tuple[Any, ...] | None = None, kwargs: dict[str, Any] | None = None) -> Any:
        """Run the inside, for a `Layer`'s ``around`` (a `Guard` has hooks instead)."""
        run = None if args is None and kwargs is None else Run(0.0, args, kwargs)
        return self.runner._inside_sync(self, self._pos + 1, run, None, None)

    async def proceed_async(self, args: tuple[Any, ...] | None = None, kwargs: dict[str, Any] | None = None) -> Any:
        """For a `Layer`'s ``around_async``: run the inside."""
        run = None if args is None and kwargs is None else Run(0.0, args, kwargs)
        return await self.runner._inside_async(self, self._pos + 1, run)

    def _use(self, run: Run) -> tuple[Any, ...]:
        """Make *run*'s arguments the call's while the inside runs; returns what to restore."""
        saved = self.args, self.kwargs, self._model, self._given
        if self._given is None:
            self._given = self.args, self.kwargs
        if run.args is not None:
            self.args = run.args
        if run.kwargs is not None:
            self.kwargs = run.kwargs
        # The model the inside asks for, by keyword or by position (a route may pass either).
        self._model = _request_model(self.runner.info, self.instance, self.args, self.kwargs)
        return saved

    # -- attempts --------------------------------------------------------------
    # Each attempt has a *slot*, a list ``[started, model, ended, result,
    # error, attempt]``; while it runs `_CURRENT` holds ``(call, slot)``.
    # Before the record exists the slot is all there is (cheaper than an
    # `Attempt`); building the record makes its ``Attempt``. (A slot never
    # refers to its call: a reference cycle on every call would cost the
    # cyclic garbage collector more than all of this.)

    def _begin(self) -> list[Any]:
        """A new attempt's slot, with its `Attempt` at once if the record exists."""
        record = self._record
        if record is not None:
            attempt = _begin_attempt(record, self._model, _clock.now())
            return [attempt.started_at, attempt.model, None, None, None, attempt]
        slot = [_clock.now(), self._model, None, None, None, None]
        attempts = self._attempts
        if attempts is None:
            self._attempts = [slot]
        else:
            attempts.append(slot)
        return slot

    def _failed(self, slot: list[Any], exc: BaseException) -> None:
        """The attempt of *slot* raised *exc*: settled now if it is on the record, else when it is built."""
        attempt = slot[5]
        if attempt is not None:
            _fail_attempt(attempt, exc, _clock.now())
        else:
            slot[4] = exc
            slot[2] = _clock.now()

    def _returned(self, slot: list[Any], result: Any) -> Any:
        """The attempt of *slot* returned a stream or an unseen type, or is on the record: observe it."""
        attempt = slot[5]
        if attempt is None:
            # A stream, or a type not seen before: it needs the record. Built
            # while the attempt is still running, it takes the attempt on.
            self.record  # noqa: B018
            attempt = slot[5]
        return self._observe(attempt, result)

    def _observe(self, attempt: Attempt, result: Any) -> Any:
        """Settle *attempt* from *result*, or wrap a stream result in a guarded stream."""
        kind = _STREAM_TYPES.get(type(result), _UNSEEN)
        if kind is _UNSEEN:
            kind = stream_kind(result)
        if kind is None:
            _settle_attempt(attempt, providers.observe_result(result), _clock.now())
            return result
        record = self.record
        record.stream = True
        if not inspect.isgenerator(result) and not inspect.isasyncgen(result) and "manager" not in kind:
            attempt.sent = True  # an SDK stream: the request was made when it was created
        if kind == "manager":
            return GuardedStream(manager=result, record=record, attempt=attempt, call=self)
        if kind == "async manager":
            return AsyncGuardedStream(manager=result, record=record, attempt=attempt, call=self)
        if kind == "async":
            return AsyncGuardedStream(source=result, record=record, attempt=attempt, call=self)
        return GuardedStream(source=result, record=record, attempt=attempt, call=self)


def _request_model(info: _FunctionInfo, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    model = kwargs.get("model") if "model" in kwargs or not info.has_model else info.binder.arg(instance, args, kwargs, "model")
    return model if isinstance(model, str) else None


def _requests_stream(info: _FunctionInfo, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if info.shape in _STREAM_SHAPES:
        return True
    stream = kwargs.get("stream") if "stream" in kwargs or not info.has_stream else info.binder.arg(instance, args, kwargs, "stream")
    return stream is True


def current_call() -> CallRecord | None:
    """The record of the guarded call whose code is running now, if any."""
    running = _CURRENT.get()
    return None if running is None else running[0].record


# -- the runner ------------------------------------------------------------------


class _Runner:
    """The guards on one function, composed: runs their hooks in order, then the function."""

    __slots__ = ("async_hooks", "fn", "guards", "info", "is_async", "legacy", "n", "static", "stream_shape", "sync_hooks")

    def __init__(self, guards: tuple[Guard, ...], info: _FunctionInfo, fn: Callable[..., Any], *, static: bool) -> None:
        self.guards = guards
        self.legacy = tuple(isinstance(g, Layer) for g in guards)
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
        if self.legacy[i]:
            saved, call._pos = call._pos, i
            try:
                return cast("Layer", self.guards[i]).around(call)
            finally:
                call._pos = saved
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
                if again.state is not _KEEP:
                    state = again.state
                if again.args is not None or again.kwargs is not None:
                    run = again
                delay = again.delay
                # Gone past: it stays on the record, never raised, and must not
                # keep the frames of this call (and what they will hold) alive.
                release_frames(exc, sys._getframe())
                continue
            if leave is None:
                return result
            try:
                return leave(call, state, result)
            except BaseException:
                if isinstance(result, _StreamBase):
                    _close_quietly(result)  # nobody will read it: end it now, not when collected
                raise

    async def run_async(self, call: Call, i: int = 0) -> Any:  # noqa: PLR0912 - the decision loop, in one frame
        """`run_sync` for an ``async def`` or async generator function."""
        if i == self.n:
            return await self._invoke_async(call)
        if self.legacy[i]:
            saved, call._pos = call._pos, i
            try:
                return await cast("Layer", self.guards[i]).around_async(call)
            finally:
                call._pos = saved
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
                if again.state is not _KEEP:
                    state = again.state
                if again.args is not None or again.kwargs is not None:
                    run = again
                delay = again.delay
                release_frames(exc, sys._getframe())
                continue
            if leave is None:
                return result
            try:
                return (await leave(call, state, result)) if leave_awaits else leave(call, state, result)
            except BaseException:
                if isinstance(result, _StreamBase):
                    await _aclose_quietly(result)
                raise

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
            call.args, call.kwargs, call._model, call._given = saved

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
                call.args, call.kwargs, call._model, call._given = saved

    async def _inside_async(self, call: Call, i: int, run: Run | None) -> Any:
        """`_inside_sync` for async calls (no ``via``)."""
        if run is None:
            return await self.run_async(call, i)
        saved = call._use(run)
        try:
            return await self.run_async(call, i)
        finally:
            call.args, call.kwargs, call._model, call._given = saved

    # -- the innermost step: one attempt, the function itself ---------------------

    def _invoke_sync(self, call: Call) -> Any:
        instance = call.instance
        a = call.args if instance is None else (instance, *call.args)
        if self.stream_shape:
            record = call.record
            attempt = _begin_attempt(record, call._model, _clock.now())
            return GuardedStream(source=self.fn(*a, **call.kwargs), record=record, attempt=attempt, call=call)
        if call._record is None:
            slot = [_clock.now(), call._model, None, None, None, None]
            if call._attempts is None:
                call._attempts = [slot]
            else:
                call._attempts.append(slot)
        else:
            slot = call._begin()
        token = _CURRENT.set((call, slot))
        try:
            result = self.fn(*a, **call.kwargs)
        except BaseException as exc:
            call._failed(slot, exc)
            raise
        finally:
            _CURRENT.reset(token)
        if slot[5] is None and type(result) in _PLAIN_TYPES:
            # A plain result, nobody has read the record: settled from it if and when somebody does.
            slot[3] = result
            slot[2] = _clock.now()
            return result
        return call._returned(slot, result)

    async def _invoke_async(self, call: Call) -> Any:
        instance = call.instance
        a = call.args if instance is None else (instance, *call.args)
        if self.stream_shape:
            record = call.record
            attempt = _begin_attempt(record, call._model, _clock.now())
            return AsyncGuardedStream(source=self.fn(*a, **call.kwargs), record=record, attempt=attempt, call=call)
        if call._record is None:
            slot = [_clock.now(), call._model, None, None, None, None]
            if call._attempts is None:
                call._attempts = [slot]
            else:
                call._attempts.append(slot)
        else:
            slot = call._begin()
        token = _CURRENT.set((call, slot))
        try:
            result = await self.fn(*a, **call.kwargs)
        except BaseException as exc:
            call._failed(slot, exc)
            raise
        finally:
            _CURRENT.reset(token)
        if slot[5] is None and type(result) in _PLAIN_TYPES:
            slot[3] = result
            slot[2] = _clock.now()
            return result
        return call._returned(slot, result)


def _interrupted(exc: BaseException, stream: _StreamBase) -> BaseException | None:
    """A primed stream's failure after chunks reached the caller becomes `StreamInterrupted`."""
    if stream.delivered == 0 or not isinstance(exc, Exception) or isinstance(exc, StreamInterrupted):
        return None
    return StreamInterrupted(
        f"the stream failed after {stream.delivered} chunk{'s' * (stream.delivered != 1)} "
        f"reached the caller ({type(exc).__name__}: {exc}); nothing was replayed",
        text=stream.text,
        usage=stream.usage_so_far(),
    )


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
