"""The one guard protocol and the one runner every guarded function gets.

A guard is a `Guard`: one class whose ``run(call)`` is a generator, the
guard's whole decision, written once for every call shape::

    class CountAttempts(Guard):
        name = "count"

        def run(self, call):
            self.n += 1
            return (yield PROCEED)

What ``run`` yields is an instruction to the runner; what the runner sends
back is its outcome (an exception is thrown in at the ``yield``):

- `PROCEED`: run the guards inside this one, then the function; the value
  is the result (a `GuardedStream` / `AsyncGuardedStream` for streams).
  Yield it again to run the inside again (a retry): each real call of the
  function is one `Attempt` on the record.
- ``proceed(args=, kwargs=, via=)``: the same with other arguments, or run
  through *via* (sync `timeout` runs the inside in a worker thread).
- ``io(fn, afn, *args)``: I/O, ``fn(*args)`` when the call is synchronous
  and ``await afn(*args)`` when it runs on an event loop (a Redis store).
- ``sleep(seconds)``: on llmguard's clock, blocking or awaited.

Returning without yielding `PROCEED` answers the call (a cache hit);
raising refuses it (a budget). Everything else a guard does is plain code
between yields.

`@a @b @c def f` builds *one* runner with guards ``[a, b, c]`` (``a``
outermost) and one wrapper: a decorator applied to an already guarded
function extends its runner. The runner drives the guards' generators the
same way for every shape; only the innermost step (calling the function)
and awaiting differ between `_Runner.run_sync` and `_Runner.run_async`.

Every guard of one call shares one `Call`: the arguments, the instance of a
method, and the `CallRecord`, built only when something reads it.
"""

from __future__ import annotations

import functools
import inspect

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, ParamSpec, TypeVar, cast

import wrapt

from . import _clock, _estimate, providers
from ._binder import Binder
from ._record import Attempt, CallRecord
from ._wrap import (
    _CURRENT,
    _STREAM_TYPES,
    _UNSEEN,
    ASYNCGEN,
    GEN,
    SYNC,
    AsyncGuardedStream,
    GuardedStream,
    _apply_notes,
    _begin_attempt,
    _end_record,
    _end_record_hook,
    _fail_attempt,
    _settle_attempt,
    _StreamBase,
    shape_of,
    stream_kind,
)


if TYPE_CHECKING:
    from collections.abc import Awaitable


P = ParamSpec("P")
R = TypeVar("R")

_STREAM_SHAPES = frozenset({GEN, ASYNCGEN})

# -- what a guard may yield --------------------------------------------------


class _Proceed(NamedTuple):
    args: tuple[Any, ...] | None
    kwargs: dict[str, Any] | None
    via: Callable[[Callable[[], Any]], Any] | None


class _Io(NamedTuple):
    fn: Callable[..., Any]
    afn: Callable[..., Awaitable[Any]] | None
    args: tuple[Any, ...]


PROCEED: Any = _Proceed(None, None, None)
"""Yield it from `Guard.run` to run the inside (the guards within, then the function)."""


def proceed(
    args: tuple[Any, ...] | None = None,
    kwargs: dict[str, Any] | None = None,
    via: Callable[[Callable[[], Any]], Any] | None = None,
) -> Any:
    """`PROCEED` with other arguments (None keeps the call's), or run through *via*.

    While the inside runs, ``call.args`` / ``call.kwargs`` are the ones
    given; they are restored after. *via(thunk)* runs the inside for the
    runner: ``thunk()`` runs it (synchronous calls) or returns its awaitable
    (async calls, where ``via`` is awaited).
    """
    return _Proceed(args, kwargs, via)


def io(fn: Callable[..., Any], afn: Callable[..., Awaitable[Any]] | None = None, *args: Any) -> Any:
    """I/O for `Guard.run`: ``fn(*args)`` in a synchronous call, ``await afn(*args)`` in an async one.

    Without *afn*, an async call gets ``fn(*args)``, awaited if it is awaitable.
    """
    return _Io(fn, afn, args)


def sleep(seconds: float) -> Any:
    """Wait *seconds* on llmguard's clock (`llmguard.testing` can fake it)."""
    clock = _clock.get_clock()
    return _Io(clock.sleep, clock.asleep, (seconds,))


# -- the protocol ------------------------------------------------------------

GuardRun = Generator[Any, Any, Any]


class Guard:
    """One guard's behaviour around a call. Subclass it once per guard.

    Override `run`. A guard object may decorate many functions; what it
    keeps per function it creates in `for_function`.
    """

    name: ClassVar[str] = "guard"

    def settings(self) -> dict[str, Any]:
        """The guard's configuration, for `describe`."""
        return {}

    def for_function(self, fn: Callable[..., Any], shape: str, binder: Binder) -> Guard:  # noqa: ARG002
        """The guard to use for *fn* (override to keep per-function state).

        *shape* is `SYNC`, `ASYNC`, `GEN` or `ASYNCGEN`; *binder* the
        function's one argument `Binder`.
        """
        return self

    def run(self, call: Call) -> GuardRun:  # noqa: ARG002 - a guard that does nothing
        """The guard's decision for one call: a generator (see the module docs)."""
        return (yield PROCEED)

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate *fn* with this guard."""
        return wrap(self, fn)


class Layer(Guard):
    """A guard written as ``around(call)`` / ``around_async(call)`` calling ``call.proceed()``.

    The shape the guards had before `Guard.run`; kept while they move over.
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
    A guard's ``proceed(args=, kwargs=)`` changes them while the inside runs.

    The `CallRecord` is built on demand: the first time anything reads
    ``call.record`` (a guard, `report_usage`, `current_call`, a nested
    guarded call). Until then each attempt is kept unnumbered with its
    result, so a guard that never looks at the record (`retry` on its
    success path, `trace` with no OTel SDK) costs only what it does itself;
    reading it later gives the same facts as reading it early.
    """

    __slots__ = (
        "_args0",
        "_deadline",
        "_end",
        "_inflight",
        "_kwargs0",
        "_model",
        "_notes",
        "_parent",
        "_pending",
        "_pos",
        "_record",
        "args",
        "entered",
        "info",
        "instance",
        "is_async",
        "kwargs",
        "runner",
        "started_at",
    )

    def __init__(
        self,
        runner: _Runner,
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        is_async: bool,
    ) -> None:
        self.runner = runner
        self.info = runner.info
        self.instance = instance
        self.args = self._args0 = args
        self.kwargs = self._kwargs0 = kwargs
        self.is_async = is_async
        running = _CURRENT.get()
        self._parent: Call | None = None if running is None else running[0]
        self.started_at = _clock.now()
        self._record: CallRecord | None = None
        # Attempts made before anyone asked for the record: finished ones
        # with their result or error, and those still running.
        self._pending: list[tuple[Attempt, float, Any, BaseException | None]] | None = None
        self._inflight: list[Attempt] | None = None
        self._end: tuple[float, BaseException | None] | None = None
        self._deadline: float | None = None
        self._notes: dict[str, Any] | None = None
        self._model: Any = None  # the model a guard's proceed(kwargs=) asks for, while it runs
        self._pos = 0  # the running `Layer`'s index, for its ``call.proceed()``
        self.entered: Any = None  # read by the cache's lane, going away (#13)

    # -- the record ---------------------------------------------------------

    @property
    def record(self) -> CallRecord:
        """The call's record, shared by every guard of this call."""
        record = self._record
        return record if record is not None else self._materialize()

    def _materialize(self) -> CallRecord:
        """Build the record, replaying what happened so far."""
        parent = self._parent
        record = CallRecord(self.info.name, parent.record if parent is not None else None, self.started_at)
        info, instance, args, kwargs = self.info, self.instance, self._args0, self._kwargs0
        model = _request_model(info, instance, args, kwargs)
        if model is not None:
            record.request_model = model
        if _requests_stream(info, instance, args, kwargs):
            record.stream = True
        record.deadline = self._deadline
        self._record = record
        if self._pending is not None or self._inflight is not None:
            self._replay_attempts(record)
        if self._notes is not None:
            _apply_notes(record, self._notes)
        if self._end is not None:
            ended_at, exc = self._end
            _end_record(record, exc, ended_at)
        return record

    def _replay_attempts(self, record: CallRecord) -> None:
        """Put the attempts made before the record existed on it, in order, settled as they ended."""
        done = self._pending or []
        running = self._inflight or []
        self._pending = None
        attempts = sorted([a for a, *_ in done] + running, key=lambda a: a.started_at)
        for attempt in attempts:
            attempt.number = len(record.attempts) + 1
            if not isinstance(attempt.model, str):
                attempt.model = record.request_model
            record.attempts.append(attempt)
        for attempt, ended, result, exc in done:
            if exc is not None:
                _fail_attempt(attempt, exc, ended)
            else:
                _settle_attempt(attempt, providers.observe_result(result), ended)

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
                self._notes.setdefault("extra", {}).update(extra)

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
        """Run the inside, for a `Layer`'s ``around`` (a `Guard` yields `PROCEED` instead)."""
        return self.runner.inside_sync(self, self._pos + 1, _Proceed(args, kwargs, None))

    async def proceed_async(self, args: tuple[Any, ...] | None = None, kwargs: dict[str, Any] | None = None) -> Any:
        """For a `Layer`'s ``around_async``: run the inside."""
        return await self.runner.inside_async(self, self._pos + 1, _Proceed(args, kwargs, None))

    # -- attempts before the record exists ------------------------------------

    def _begin_unrecorded(self, model: Any) -> Attempt:
        """An attempt not yet on a record; it is kept as running."""
        attempt = Attempt(0, model, _clock.now())
        if self._inflight is None:
            self._inflight = [attempt]
        else:
            self._inflight.append(attempt)
        return attempt

    def _attempt_done(self, attempt: Attempt, result: Any, exc: BaseException | None) -> bool:
        """Settle *attempt*; False if it must still be observed in full (a stream)."""
        if not attempt.number and exc is None and _STREAM_TYPES.get(type(result), _UNSEEN) is not None:
            # A stream, or a type not seen before: it needs the record. Built
            # while the attempt is still running, it takes the attempt on.
            self.record  # noqa: B018 - builds the record, numbering this attempt
        running = self._inflight
        if running is not None:
            running.remove(attempt)
        if attempt.number:  # on the record (built while it ran, or just now)
            if exc is not None:
                _fail_attempt(attempt, exc, _clock.now())
                return True
            return False
        entry = (attempt, _clock.now(), result, exc)
        if self._pending is None:
            self._pending = [entry]
        else:
            self._pending.append(entry)
        return True

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

    def _returned(self, attempt: Attempt, result: Any) -> Any:
        if self._attempt_done(attempt, result, None):
            return result
        return self._observe(attempt, result)


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
    """The guards on one function, composed: drives their generators, then calls the function."""

    __slots__ = ("fn", "guards", "info", "legacy", "n", "static")

    def __init__(self, guards: tuple[Guard, ...], info: _FunctionInfo, fn: Callable[..., Any], *, static: bool) -> None:
        self.guards = guards
        self.legacy = tuple(isinstance(g, Layer) for g in guards)
        self.n = len(guards)
        self.info = info
        self.fn = fn
        self.static = static

    # One decision core, two drivers: they differ only in awaiting.

    def run_sync(self, call: Call, i: int = 0) -> Any:
        """Run guard *i* (and everything inside it) of a synchronous call."""
        if i == self.n:
            return self._invoke_sync(call)
        guard = self.guards[i]
        if self.legacy[i]:
            saved, call._pos = call._pos, i
            try:
                return cast("Layer", guard).around(call)
            finally:
                call._pos = saved
        gen = guard.run(call)
        send: Any = None
        error: BaseException | None = None
        while True:
            try:
                op = gen.send(send) if error is None else gen.throw(error)
            except StopIteration as stop:
                return stop.value
            finally:
                error = None
            try:
                if type(op) is _Proceed:
                    send = self.inside_sync(call, i + 1, op)
                else:
                    send = op.fn(*op.args)
            except BaseException as exc:  # noqa: BLE001 - thrown into the guard, which decides
                error, send = exc, None

    async def run_async(self, call: Call, i: int = 0) -> Any:
        """`run_sync` for an ``async def`` or async generator function."""
        if i == self.n:
            return await self._invoke_async(call)
        guard = self.guards[i]
        if self.legacy[i]:
            saved, call._pos = call._pos, i
            try:
                return await cast("Layer", guard).around_async(call)
            finally:
                call._pos = saved
        gen = guard.run(call)
        send: Any = None
        error: BaseException | None = None
        while True:
            try:
                op = gen.send(send) if error is None else gen.throw(error)
            except StopIteration as stop:
                return stop.value
            finally:
                error = None
            try:
                if type(op) is _Proceed:
                    send = await self.inside_async(call, i + 1, op)
                elif op.afn is not None:
                    send = await op.afn(*op.args)
                else:
                    send = op.fn(*op.args)
                    if inspect.isawaitable(send):
                        send = await send
            except BaseException as exc:  # noqa: BLE001 - thrown into the guard, which decides
                error, send = exc, None

    def inside_sync(self, call: Call, i: int, op: _Proceed) -> Any:
        """Run guards *i*.. and the function, with *op*'s arguments and through its ``via``."""
        if op is PROCEED:
            return self.run_sync(call, i)
        saved = call.args, call.kwargs, call._model
        if op.args is not None:
            call.args = op.args
        if op.kwargs is not None:
            call.kwargs = op.kwargs
            call._model = op.kwargs.get("model")
        try:
            if op.via is not None:
                return op.via(lambda: self.run_sync(call, i))
            return self.run_sync(call, i)
        finally:
            call.args, call.kwargs, call._model = saved

    async def inside_async(self, call: Call, i: int, op: _Proceed) -> Any:
        """`inside_sync` for async calls."""
        if op is PROCEED:
            return await self.run_async(call, i)
        saved = call.args, call.kwargs, call._model
        if op.args is not None:
            call.args = op.args
        if op.kwargs is not None:
            call.kwargs = op.kwargs
            call._model = op.kwargs.get("model")
        try:
            if op.via is not None:
                return await op.via(lambda: self.run_async(call, i))
            return await self.run_async(call, i)
        finally:
            call.args, call.kwargs, call._model = saved

    # -- the innermost step: one attempt, the function itself ---------------------

    def _invoke_sync(self, call: Call) -> Any:
        a = call.args if call.instance is None else (call.instance, *call.args)
        if self.info.shape == GEN:
            record = call.record
            attempt = _begin_attempt(record, call._model, _clock.now())
            return GuardedStream(source=self.fn(*a, **call.kwargs), record=record, attempt=attempt, call=call)
        if call._record is not None:
            attempt = _begin_attempt(call._record, call._model, _clock.now())
            token = _CURRENT.set((call, attempt))
            try:
                result = self.fn(*a, **call.kwargs)
            except BaseException as exc:
                _fail_attempt(attempt, exc, _clock.now())
                raise
            finally:
                _CURRENT.reset(token)
            return call._observe(attempt, result)
        # No one has asked for the record: the attempt waits, unnumbered and
        # unsettled, until someone does (or forever, for free).
        attempt = call._begin_unrecorded(call._model)
        token = _CURRENT.set((call, attempt))
        try:
            result = self.fn(*a, **call.kwargs)
        except BaseException as exc:
            call._attempt_done(attempt, None, exc)
            raise
        finally:
            _CURRENT.reset(token)
        return call._returned(attempt, result)

    async def _invoke_async(self, call: Call) -> Any:
        a = call.args if call.instance is None else (call.instance, *call.args)
        if self.info.shape == ASYNCGEN:
            record = call.record
            attempt = _begin_attempt(record, call._model, _clock.now())
            return AsyncGuardedStream(source=self.fn(*a, **call.kwargs), record=record, attempt=attempt, call=call)
        if call._record is not None:
            attempt = _begin_attempt(call._record, call._model, _clock.now())
            token = _CURRENT.set((call, attempt))
            try:
                result = await self.fn(*a, **call.kwargs)
            except BaseException as exc:
                _fail_attempt(attempt, exc, _clock.now())
                raise
            finally:
                _CURRENT.reset(token)
            return call._observe(attempt, result)
        attempt = call._begin_unrecorded(call._model)
        token = _CURRENT.set((call, attempt))
        try:
            result = await self.fn(*a, **call.kwargs)
        except BaseException as exc:
            call._attempt_done(attempt, None, exc)
            raise
        finally:
            _CURRENT.reset(token)
        return call._returned(attempt, result)


# -- wrapping ------------------------------------------------------------------


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
    below = runner_of(fn)
    if below is not None:
        base, static, info, guards = below.fn, below.static, below.info, below.guards
    else:
        base, info, guards = fn, _FunctionInfo(fn, static=static), ()
    bound = guard.for_function(base, info.shape, info.binder)
    runner = _Runner((bound, *guards), info, base, static=static)
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

        def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:  # noqa: ARG001
            call = Call(runner, *split(args if instance is None else (instance, *args)), kwargs, is_async)
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
    if shape == SYNC:

        def guarded(*args: Any, **kwargs: Any) -> Any:
            call = Call(runner, *split(args), kwargs, False)
            try:
                result = run_sync(call)
            except BaseException as exc:
                call._finish_call(exc)
                raise
            return _end_with_result(call, result)

        made: Callable[..., Any] = guarded
    else:

        async def guarded_async(*args: Any, **kwargs: Any) -> Any:
            call = Call(runner, *split(args), kwargs, True)
            try:
                result = await run_async(call)
            except BaseException as exc:
                call._finish_call(exc)
                raise
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
