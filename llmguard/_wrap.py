"""The one wrapping primitive every guard is built on.

A guard is a `Layer`: an object with ``around(call)`` for code that runs in a
thread and ``around_async(call)`` for code that runs on an event loop. `wrap`
puts a layer around a function with wrapt (which handles binding to
instances, classes, staticmethods and classmethods, and keeps ``__name__``,
``__doc__``, ``__wrapped__``, the signature and ``iscoroutinefunction``), and
turns every call shape into that one interface:

========================  ==================  ============================
wrapped function          layer method        ``call.proceed*()`` returns
========================  ==================  ============================
``def``                   ``around``          the value, or a `GuardedStream`
                                              if the value is a stream
``async def``             ``around_async``    same, `AsyncGuardedStream`
generator function        ``around``          a `GuardedStream` (lazy)
async generator function  ``around_async``    an `AsyncGuardedStream` (lazy)
========================  ==================  ============================

"A stream" is whatever the wrapped code hands back to be iterated: a
generator, an anthropic or openai ``Stream``/``AsyncStream``, or a stream
manager (``client.messages.stream(...)``). Streams are wrapped lazily (each
chunk passes through as it arrives, nothing is buffered) and every guarded
stream has **one idempotent finish hook** that runs exactly once whichever way
the stream ends: exhaustion, an exception, ``close()``/``aclose()``,
``__exit__``, ``GeneratorExit``, task cancellation, or garbage collection as a
last resort. Layers register callbacks with `GuardedStream.on_finish`.

Calling a guarded generator function runs nothing, as calling a generator
function never does: the layers run when the first chunk is asked for.

Each layer of one call shares one `CallRecord` (see `_HANDOFF` for how it is
handed from layer to layer); the innermost layer, the one that calls your
function, opens an `Attempt` per real call and fills it from the result
(usage, model, finish reason) through the provider adapters.

A layer may also offer a `Lane`: its fast path for a ``def`` or ``async
def`` it guards alone (not stacked). The lane runs the layer's ``enter`` and
``leave`` hooks around the function in one closure, keeps the call in a
*frame* (a list) and builds the `Call` and the record only when something
asks for them; anything unusual (an exception, a stream) goes to the
layer's general path through ``resume``, whose first ``proceed()`` hands
back what the function already did. See `_lane_sync`.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import threading
import types
import warnings

from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, ParamSpec, TypeVar, cast

import wrapt

from . import _clock, _estimate, prices, providers
from ._binder import Binder
from ._record import Attempt, CallRecord, ErrorKind, Outcome, Usage
from .errors import StreamFailed


if TYPE_CHECKING:
    from collections.abc import Awaitable


P = ParamSpec("P")
R = TypeVar("R")

SYNC = "sync"
ASYNC = "async"
GEN = "generator"
ASYNCGEN = "async generator"
_STREAM_SHAPES = frozenset({GEN, ASYNCGEN})

FinishHook = Callable[[Outcome, "BaseException | None"], None]
# (usage, model, provider): what `report_usage` keeps on a lane's frame, and
# what a lane reads of a result.
_UsageFacts = tuple["Usage | None", "str | None", "str | None"]
ErrorMap = Callable[["BaseException", "_StreamBase"], "BaseException | None"]

# Finishing flips one flag; a stream may be ended from two threads at once
# (a timeout closing it while a worker is still reading), so the flip is locked.
_FINISH_LOCK = threading.Lock()

# The call's state travels with it in two context variables, never on the
# function object. Tokens are always reset in the same frame that set them,
# and never held across a ``yield`` (streams set and reset them around each pull).
#
# ``_HANDOFF`` carries the outermost layer's `Call` (which owns the record) to
# the next layer of the *same* call, set only for the synchronous moment in
# which the outer layer invokes the inner one. The innermost layer clears it
# while the user's function runs, so a guarded call made *inside* that
# function starts a record of its own (with this one as its parent).
_HANDOFF: contextvars.ContextVar[Call | None] = contextvars.ContextVar("llmguard_handoff", default=None)
# ``_CURRENT`` is the call whose user code is running now, and the attempt
# running (report_usage writes there); a fast lane's frame (a list, see
# `_realize`) while its Call is unbuilt. It is how `report_usage()`,
# `current_call()` and nested calls find their parent.
_CURRENT: contextvars.ContextVar[tuple[Call, Attempt | None] | list[Any] | None] = contextvars.ContextVar(
    "llmguard_current", default=None
)


def current_call() -> CallRecord | None:
    """The record of the guarded call whose code is running now, if any."""
    running = _CURRENT.get()
    if running is None:
        return None
    return _call_of(running).record


class Lane(NamedTuple):
    """A layer's fused fast path for a call it guards alone (see `_lane_sync`).

    ``enter(call)`` runs before the function (it may raise, or return
    `GENERAL` to take the general path for this call, after setting
    ``call.entered`` if that path should reuse what enter worked out); its
    return value is handed to the others. ``leave(call, state, result)`` runs after a plain
    result (not a stream) and returns it; *call* is None when no `Call` was
    built, and ``returned_call(frame, result)`` builds one whose record shows
    the attempt settled from *result* (a record built by then is ended after
    leave, as the general path ends it).
    ``resume(call, state)`` takes over when the function raised or returned a
    stream or a type not seen before: it continues as the layer's general
    path would after its first ``call.proceed()``, which hands back that
    outcome (awaitable for ``async def``).
    """

    enter: Callable[[Any], Any] | None  # (Call) -> state, or (frame) when not needs_call
    leave: Callable[[Any, Any, Any], Any] | None  # (Call or None, state, result) -> result
    resume: Callable[[Call, Any], Any]
    # False when ``enter`` and ``leave`` need no `Call`: enter then gets the
    # lane's frame (it may set ``frame[_F_DEADLINE]``), leave gets None, and
    # no Call is built unless something asks (resume always gets one).
    needs_call: bool = True
    # True when ``enter`` may return an `Answer`: the call's result, given
    # without running the function (a cache hit).
    answers: bool = False


class Answer(NamedTuple):
    """What a lane's ``enter`` returns to answer the call itself (see `Lane.answers`).

    The lane returns *value* as the call's result; a record ``enter`` built
    is ended with it, as the general path ends a call whose layer returned
    without proceeding.
    """

    value: Any


# What `Lane.enter` returns to send one call down the general path instead.
GENERAL: Any = object()
# `Call._lane` while the lane's attempt runs and nobody has asked for the record,
# and once it has returned a plain result (kept in ``_replay``) still unrecorded.
_RUNNING: Any = object()
_RETURNED: Any = object()


class Layer:
    """One guard's behaviour around a call. Subclass it once per guard.

    ``around`` and ``around_async`` must call ``call.proceed()`` /
    ``await call.proceed_async()`` (zero or more times) and return what it
    returned, or raise. A layer object may decorate many functions; what it
    keeps per function it creates in `for_function`.
    """

    name: ClassVar[str] = "layer"

    def settings(self) -> dict[str, Any]:
        """The layer's configuration, for `describe`."""
        return {}

    def for_function(self, fn: Callable[..., Any], shape: str, binder: Binder) -> Layer:  # noqa: ARG002
        """The layer to use for *fn* (override to keep per-function state).

        *binder* is the function's one argument `Binder` (also ``call.info.binder``).
        """
        return self

    def around(self, call: Call) -> Any:
        """Run one call of a ``def`` or generator function."""
        return call.proceed()

    async def around_async(self, call: Call) -> Any:
        """Run one call of an ``async def`` or async generator function."""
        return await call.proceed_async()

    def lane(self, shape: str) -> Lane | None:  # noqa: ARG002
        """The layer's fast path for *shape* (`SYNC` or `ASYNC`), or None for none."""
        return None

    def resume(self, call: Call, state: Any) -> Any:  # noqa: ARG002
        """`Lane.resume` for a layer that does nothing before its first proceed: `around`."""
        return self.around(call)

    async def resume_async(self, call: Call, state: Any) -> Any:  # noqa: ARG002
        """`Lane.resume` for ``async def``: `around_async`."""
        return await self.around_async(call)

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate *fn* with this layer."""
        return wrap(self, fn)


class _FunctionInfo:
    """What `wrap` learns once about a function, so calls don't redo it."""

    __slots__ = (
        "binder",
        "has_model",
        "has_stream",
        "inner_is_guard",
        "name",
        "shape",
    )

    def __init__(self, fn: Callable[..., Any], *, static: bool = False) -> None:
        self.shape = shape_of(fn)
        self.name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
        self.inner_is_guard = layer_of(fn) is not None
        # The one argument binder: names, positions, defaults, the instance rule.
        self.binder = binder = Binder(fn, static=static)
        # Read positionally / from defaults only when the function names them.
        self.has_model = "model" in binder.positions or "model" in binder.defaults
        self.has_stream = "stream" in binder.positions or "stream" in binder.defaults


class Call:
    """One invocation of one layer: the arguments, the record, and the way on.

    ``args`` and ``kwargs`` are what the caller passed, a method's instance
    excluded: it is ``instance`` (`_binder` has the one rule that decides).
    ``proceed`` calls the next layer, or the function itself, possibly with
    other arguments (fallback's overrides).

    The `CallRecord` is built on demand: the first time any layer (or
    `report_usage`, or a nested guarded call) reads ``call.record``. Until
    then each attempt is remembered as a small tuple, so a guard that never
    looks at the record (`retry` on its success path, `trace` with no OTel
    SDK) costs only what it does itself. Reading it later gives the same
    facts as reading it early.
    """

    __slots__ = (
        "_deadline",
        "_end",
        "_frame",
        "_inflight",
        "_lane",
        "_notes",
        "_owner",
        "_parent",
        "_pending",
        "_record",
        "_replay",
        "args",
        "entered",
        "info",
        "instance",
        "kwargs",
        "layer",
        "started_at",
        "wrapped",
    )

    def __init__(
        self,
        layer: Layer,
        info: _FunctionInfo,
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.layer = layer
        self.info = info
        self.wrapped = wrapped
        self.instance = instance
        self.args = args
        self.kwargs = kwargs
        # A lane's first outcome, for the general path's first proceed (see `_lane_sync`).
        self._replay: tuple[Attempt | None, Any, BaseException | None] | None = None
        # What this layer's lane enter worked out before sending the call to
        # the general path (`GENERAL`), for the layer to reuse; else None.
        self.entered: Any = None
        owner = _HANDOFF.get()
        if owner is None:
            # The outermost layer of this call: it owns the call's state.
            running = _CURRENT.get()
            self._own(None if running is None else _call_of(running), _clock.now())
        else:
            self._owner = owner
            # Claimed: the user's function (and guarded calls inside it) must
            # not see it. The outer layer's reset restores the variable.
            _HANDOFF.set(None)

    def _own(self, parent: Call | None, started_at: float) -> None:
        """Make this the owner of the call's state (the outermost layer's Call)."""
        self._owner = self
        self._record: CallRecord | None = None
        self._parent = parent
        # Attempts made before anyone asked for the record: finished ones
        # with their result or error, and those still running.
        self._pending: list[tuple[Attempt, float, Any, BaseException | None]] | None = None
        self._inflight: list[Attempt] | None = None
        self._end: tuple[float, BaseException | None] | None = None
        self._deadline: float | None = None
        self._notes: dict[str, Any] | None = None
        # A fast lane's first attempt: _RUNNING while unrecorded, then its Attempt.
        self._lane: Attempt | object | None = None
        self._frame: list[Any] | None = None  # the lane's frame, if this call ran on one
        self.started_at = started_at

    @property
    def owns_record(self) -> bool:
        """Whether this is the outermost layer of the call."""
        return self._owner is self

    @property
    def record(self) -> CallRecord:
        """The call's record, shared by every layer of this call."""
        owner = self._owner
        record = owner._record
        return record if record is not None else owner._materialize()

    def _materialize(self) -> CallRecord:
        """Build the record (owner only), replaying what happened so far."""
        parent = self._parent
        record = CallRecord(self.info.name, parent.record if parent is not None else None, self.started_at)
        model = self.request_model()
        if model is not None:
            record.request_model = model
        if self.requests_stream():
            record.stream = True
        record.deadline = self._deadline
        self._record = record
        done = self._pending
        running = self._inflight
        lane_state = self._lane
        if done is None and running is None:
            # The common case: no attempt yet, or only a lane's.
            if lane_state is _RUNNING or lane_state is _RETURNED:
                lane = self._lane_attempt()
                lane.number = 1
                lane.model = record.request_model
                record.attempts.append(lane)
                self._lane = lane
                if lane_state is _RETURNED:
                    _, result, _ = cast("tuple[None, Any, None]", self._replay)
                    self._replay = None
                    _settle_attempt(lane, providers.observe_result(result), _clock.now())
        else:
            self._replay_attempts(record, done or [], running or [], lane_state)
        if self._notes is not None:
            _apply_notes(record, self._notes)
        if self._end is not None:
            ended_at, exc = self._end
            _end_record(record, exc, ended_at)
        return record

    def _replay_attempts(
        self,
        record: CallRecord,
        done: list[tuple[Attempt, float, Any, BaseException | None]],
        running: list[Attempt],
        lane_state: Any,
    ) -> None:
        """Put the attempts made before the record existed on it, in order, settled as they ended."""
        self._pending = None
        attempts = [(a.started_at, a) for a, *_ in done] + [(a.started_at, a) for a in running]
        if lane_state is _RUNNING or lane_state is _RETURNED:
            # A lane's attempt, still running or returned: it goes on the record now.
            lane = self._lane_attempt()
            self._lane = lane
            attempts.append((lane.started_at, lane))
            if lane_state is _RETURNED:
                _, result, _ = cast("tuple[None, Any, None]", self._replay)
                self._replay = None
                done.append((lane, _clock.now(), result, None))
        for _, attempt in sorted(attempts, key=lambda pair: pair[0]):
            attempt.number = len(record.attempts) + 1
            if not isinstance(attempt.model, str):
                attempt.model = record.request_model
            record.attempts.append(attempt)
        for attempt, ended, result, exc in done:
            if exc is not None:
                _fail_attempt(attempt, exc, ended)
            else:
                _settle_attempt(attempt, providers.observe_result(result), ended)

    def request_model(self) -> str | None:
        """The model the call asks for (its ``model`` argument), if it names one."""
        return _request_model(self.info, self.instance, self.args, self.kwargs)

    def requests_stream(self) -> bool:
        """Whether the call is a stream by its shape or asks for one (``stream=True``)."""
        return _requests_stream(self.info, self.instance, self.args, self.kwargs)

    @property
    def recorded(self) -> bool:
        """Whether the call's record has been built (someone reads it)."""
        return self._owner._record is not None

    def note(self, **facts: Any) -> None:
        """Write *facts* on the call's record, without building it just for that.

        Each keyword is a `CallRecord` attribute (``cache="hit"``,
        ``saved_usd=...``); ``extra={...}`` merges into ``record.extra``. If
        the record exists they are written now, else when it is built.
        """
        owner = self._owner
        if owner._record is not None:
            _apply_notes(owner._record, facts)
        elif owner._notes is None:
            owner._notes = facts
        else:
            extra = facts.pop("extra", None)
            owner._notes.update(facts)
            if extra:
                owner._notes.setdefault("extra", {}).update(extra)

    def set_deadline(self, deadline: float | None) -> None:
        """Note the call's deadline on its record (without building the record)."""
        owner = self._owner
        owner._deadline = deadline
        if owner._record is not None:
            owner._record.deadline = deadline

    def _finish_call(self, exc: BaseException | None) -> None:
        """The outermost layer returned (or raised): close the record."""
        record = self._record
        if record is None:
            self._end = (_clock.now(), exc)
        else:
            _end_record(record, exc, _clock.now())

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

    # -- going on to the next layer, or to the function ---------------------

    def proceed(
        self, args: tuple[Any, ...] | None = None, kwargs: dict[str, Any] | None = None
    ) -> Any:
        """Call what this layer wraps (sync and generator shapes)."""
        if self._replay is not None:
            return self._replayed()
        a = self.args if args is None else args
        k = self.kwargs if kwargs is None else kwargs
        owner = self._owner
        if self.instance is not None:
            a = (self.instance, *a)
        if self.info.inner_is_guard:
            handoff = _HANDOFF.set(owner)
            try:
                return self.wrapped(*a, **k)
            finally:
                _HANDOFF.reset(handoff)
        model = None if kwargs is None else kwargs.get("model")
        if self.info.shape == GEN:
            record = self.record
            attempt = _begin_attempt(record, model, _clock.now())
            return GuardedStream(source=self.wrapped(*a, **k), record=record, attempt=attempt, call=self)
        if owner._record is not None:
            return self._proceed_recorded(a, k, model)
        # No one has asked for the record: the attempt waits, unnumbered and
        # unsettled, until someone does (or forever, for free).
        attempt = owner._begin_unrecorded(model)
        token = _CURRENT.set((owner, attempt))
        try:
            result = self.wrapped(*a, **k)
        except BaseException as exc:
            owner._attempt_done(attempt, None, exc)
            raise
        finally:
            _CURRENT.reset(token)
        return self._attempt_returned(attempt, result)

    def _proceed_recorded(self, a: tuple[Any, ...], k: dict[str, Any], model: Any) -> Any:
        owner = self._owner
        attempt = _begin_attempt(self.record, model, _clock.now())
        token = _CURRENT.set((owner, attempt))
        try:
            result = self.wrapped(*a, **k)
        except BaseException as exc:
            _fail_attempt(attempt, exc, _clock.now())
            raise
        finally:
            _CURRENT.reset(token)
        return self._observe(attempt, result)

    # -- the fast lane (see `_lane_sync`) -------------------------------------

    def _lane_returned(self, result: Any) -> bool:
        """The lane's function returned *result*; True if it is a plain result now settled.

        False means the general path must take over (a stream, a type not
        seen before): the outcome is kept for its first proceed.
        """
        lane = self._lane
        if type(result) in _PLAIN_TYPES:
            if lane is _RUNNING:
                # Kept where `_materialize` finds finished attempts.
                self._pending = [(self._lane_attempt(), _clock.now(), result, None)]
                self._lane = None
            else:  # recorded while it ran: settle it as `_observe` would
                _settle_attempt(cast("Attempt", lane), providers.observe_result(result), _clock.now())
            return True
        self._hand_over(result, None)
        return False

    def _lane_attempt(self) -> Attempt:
        """The lane's attempt, made when first needed, with the usage reported on the frame."""
        attempt = Attempt(0, None, self.started_at)
        frame = self._frame
        if frame is not None and frame[_F_USAGE] is not None:
            reported, frame[_F_USAGE] = frame[_F_USAGE], None
            _report_on(attempt, *reported)
        return attempt

    def _hand_over(self, result: Any, exc: BaseException | None) -> None:
        """Keep the lane's outcome for the general path's first proceed."""
        lane, self._lane = self._lane, None
        if lane is _RUNNING:
            attempt = self._lane_attempt()
            self._inflight = [attempt]
        else:
            attempt = cast("Attempt", lane)
        self._replay = (attempt, result, exc)

    def _replayed(self) -> Any:
        """The first proceed after a hand-over: the lane's outcome, bookkept as a proceed's."""
        attempt, result, exc = cast("tuple[Attempt, Any, BaseException | None]", self._replay)
        self._replay = None
        if exc is not None:
            if attempt.number:
                _fail_attempt(attempt, exc, _clock.now())
            else:
                self._attempt_done(attempt, None, exc)
            raise exc
        if attempt.number:
            return self._observe(attempt, result)
        return self._attempt_returned(attempt, result)

    def _begin_unrecorded(self, model: Any) -> Attempt:
        """An attempt not yet on a record (owner only); it is kept as running."""
        attempt = Attempt(0, model, _clock.now())
        if self._inflight is None:
            self._inflight = [attempt]
        else:
            self._inflight.append(attempt)
        return attempt

    def _attempt_done(self, attempt: Attempt, result: Any, exc: BaseException | None) -> bool:
        """Settle *attempt* (owner only); False if it must still be observed in full."""
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

    def _attempt_returned(self, attempt: Attempt, result: Any) -> Any:
        if self._owner._attempt_done(attempt, result, None):
            return result
        return self._observe(attempt, result)

    async def proceed_async(
        self, args: tuple[Any, ...] | None = None, kwargs: dict[str, Any] | None = None
    ) -> Any:
        """Call what this layer wraps (async and async generator shapes)."""
        if self._replay is not None:
            return self._replayed()
        a = self.args if args is None else args
        k = self.kwargs if kwargs is None else kwargs
        owner = self._owner
        if self.instance is not None:
            a = (self.instance, *a)
        if self.info.inner_is_guard:
            # The next layer claims the call when it starts running, which for
            # an async def is when it is awaited: hold the handoff until then.
            handoff = _HANDOFF.set(owner)
            try:
                if self.info.shape == ASYNC:
                    return await self.wrapped(*a, **k)
                return self.wrapped(*a, **k)
            finally:
                _HANDOFF.reset(handoff)
        model = None if kwargs is None else kwargs.get("model")
        if self.info.shape == ASYNCGEN:
            record = self.record
            attempt = _begin_attempt(record, model, _clock.now())
            return AsyncGuardedStream(source=self.wrapped(*a, **k), record=record, attempt=attempt, call=self)
        if owner._record is not None:
            attempt = _begin_attempt(self.record, model, _clock.now())
            token = _CURRENT.set((owner, attempt))
            try:
                result = await self.wrapped(*a, **k)
            except BaseException as exc:
                _fail_attempt(attempt, exc, _clock.now())
                raise
            finally:
                _CURRENT.reset(token)
            return self._observe(attempt, result)
        attempt = owner._begin_unrecorded(model)
        token = _CURRENT.set((owner, attempt))
        try:
            result = await self.wrapped(*a, **k)
        except BaseException as exc:
            owner._attempt_done(attempt, None, exc)
            raise
        finally:
            _CURRENT.reset(token)
        return self._attempt_returned(attempt, result)

    def _observe(self, attempt: Attempt, result: Any) -> Any:
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


def _request_model(info: _FunctionInfo, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    model = kwargs.get("model") if "model" in kwargs or not info.has_model else info.binder.arg(instance, args, kwargs, "model")
    return model if isinstance(model, str) else None


def _requests_stream(info: _FunctionInfo, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if info.shape in _STREAM_SHAPES:
        return True
    stream = kwargs.get("stream") if "stream" in kwargs or not info.has_stream else info.binder.arg(instance, args, kwargs, "stream")
    return stream is True


def _apply_notes(record: CallRecord, notes: dict[str, Any]) -> None:
    for name, value in notes.items():
        if name == "extra":
            record.extra.update(value)
        else:
            setattr(record, name, value)


# -- attempts ----------------------------------------------------------------


def _begin_attempt(record: CallRecord, model: Any, started: float) -> Attempt:
    attempts = record.attempts
    attempt = Attempt(len(attempts) + 1, model if isinstance(model, str) else record.request_model, started)
    attempts.append(attempt)
    return attempt


def _settle_attempt(attempt: Attempt, facts: providers.ResultFacts | None, ended: float) -> None:
    if facts is not None:
        if attempt.usage is None:  # what the user reported wins
            attempt.usage = facts.usage
        attempt.response_model = facts.model or attempt.response_model
        attempt.provider = facts.provider or attempt.provider
        attempt.response_id = facts.response_id
        attempt.finish_reasons = facts.finish_reasons
    if attempt.usage is not None:
        _price(attempt)
    attempt.outcome = _OK
    attempt.ended_at = ended


def with_reported(read: _UsageFacts | None, reported: _UsageFacts | None) -> _UsageFacts | None:
    """``(usage, model, provider)`` of a lane call's attempt, as `_settle_attempt` records them.

    *read* is what the result says, *reported* what `report_usage` kept on
    the frame: the usage reported wins, the model and provider the result
    names win. For lanes that settle without building the record.
    """
    if reported is None:
        return read
    if read is None:
        return reported
    return reported[0], read[1] or reported[1], read[2] or reported[2]


def _price(attempt: Attempt) -> None:
    if attempt.usage is not None and attempt.cost_usd is None:
        attempt.cost_usd = prices.cost_of(
            attempt.usage, attempt.response_model or attempt.model, attempt.provider
        )


def _fail_attempt(attempt: Attempt, exc: BaseException, ended: float) -> None:
    attempt.outcome = outcome_of(exc)
    attempt.error = exc
    if not isinstance(exc, _NOT_ERRORS):
        info = providers.classify(exc)
        attempt.error_kind = info.kind
        attempt.provider = attempt.provider or info.provider
    attempt.ended_at = ended
    _price(attempt)


def release_frames(exc: BaseException, caller: types.FrameType) -> None:
    """Drop the tracebacks of *exc* and of every error chained to it that is the call's own.

    For an error that stays on the record but is not raised (an attempt
    `retry` went past). A traceback holds its frames, and each frame the
    frames that called it; those go on running, and what they hold when they
    return (the stream a later attempt returned, say) would stay alive with
    the record: a stream the caller drops would never finish. Type, message
    and notes stay; an error that is raised keeps its traceback.

    *caller* is the frame running the call (retry's loop). An error caught in
    a frame that called it is not the call's: it is one the caller was
    handling when it made the call (Python chains it as the ``__context__``
    of the call's errors), which the caller may still log or re-raise. It
    keeps its traceback, and so does what it chains.
    """
    above: set[types.FrameType] = set()
    frame = caller.f_back
    while frame is not None:
        above.add(frame)
        frame = frame.f_back
    todo: list[BaseException] = [exc]
    seen: set[int] = set()
    while todo:
        err = todo.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        tb = err.__traceback__
        if tb is not None and tb.tb_frame in above:
            continue  # the caller's own error
        err.__traceback__ = None
        todo.extend(e for e in (err.__cause__, err.__context__) if e is not None)
        if isinstance(err, BaseExceptionGroup):
            todo.extend(err.exceptions)


def outcome_of(exc: BaseException | None) -> Outcome:
    """The `Outcome` an exception ends a call with."""
    if exc is None:
        return Outcome.OK
    if isinstance(exc, asyncio.CancelledError):
        return Outcome.CANCELLED
    if isinstance(exc, GeneratorExit):
        return Outcome.CLOSED
    return Outcome.ERROR


_NOT_ERRORS = (asyncio.CancelledError, GeneratorExit, KeyboardInterrupt, SystemExit)


def error_kind_of(exc: BaseException) -> ErrorKind | None:
    """The provider-aware kind of *exc* (None for cancellation and close)."""
    if isinstance(exc, _NOT_ERRORS):
        return None
    return providers.classify(exc).kind


def report_usage(
    *,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    reasoning_tokens: int = 0,
    model: str | None = None,
    provider: str | None = None,
    estimated: bool = False,
) -> bool:
    """Report usage from inside a guarded call made with any client.

    For code that calls something llmguard cannot read (raw HTTP, another
    SDK): call it inside the guarded function and every guard (budget,
    trace) sees the numbers as if the provider's response had carried them.
    ``input_tokens`` is the total input, cache reads and writes included.
    Reporting twice in one attempt adds up. Returns False (and records
    nothing) when no guarded call is running.
    """
    for name, value in (
        ("input_tokens", input_tokens),
        ("output_tokens", output_tokens),
        ("cache_read_tokens", cache_read_tokens),
        ("cache_write_tokens", cache_write_tokens),
        ("reasoning_tokens", reasoning_tokens),
    ):
        if not isinstance(value, int) or value < 0:
            msg = f"report_usage({name}=...) must be an int >= 0, got {value!r}"
            raise ValueError(msg)
    running = _CURRENT.get()
    if running is None:
        return False
    usage = Usage(
        input_tokens,
        output_tokens,
        cache_read_tokens,
        cache_write_tokens,
        reasoning_tokens,
        estimated,
    )
    if isinstance(running, tuple):
        call, attempt = running
    else:  # a lane's frame
        frame = running
        lane_call = frame[_F_CALL]
        if lane_call is None or (lane_call._record is None and lane_call._lane is _RUNNING):
            # No record yet: kept on the frame (for leave, or for the attempt if one is made).
            prev = frame[_F_USAGE]
            frame[_F_USAGE] = (
                (usage, model, provider)
                if prev is None
                else (prev[0] + usage, model or prev[1], provider or prev[2])
            )
            return True
        call, attempt = frame[_F_CALL], None
    call.record  # noqa: B018 - built now if nobody asked before; it takes this attempt on
    if attempt is None:  # a lane's attempt, on the record since that line
        attempt = cast("Attempt", call._lane)
    _report_on(attempt, usage, model, provider)
    return True


def _report_on(attempt: Attempt, usage: Usage, model: str | None, provider: str | None) -> None:
    attempt.usage = usage if attempt.usage is None else attempt.usage + usage
    attempt.cost_usd = None  # re-priced when the attempt settles
    if model:
        attempt.response_model = model
    if provider:
        attempt.provider = provider


# -- shapes ------------------------------------------------------------------


def shape_of(fn: Callable[..., Any]) -> str:
    """The call shape of *fn*: `SYNC`, `ASYNC`, `GEN` or `ASYNCGEN`."""
    target = fn.__func__ if isinstance(fn, (staticmethod, classmethod)) else fn
    if inspect.isasyncgenfunction(target):
        return ASYNCGEN
    if inspect.isgeneratorfunction(target):
        return GEN
    if inspect.iscoroutinefunction(target):
        return ASYNC
    # A callable object: its __call__ decides the shape.
    call = type(target).__call__ if not inspect.isfunction(target) else None
    if call is not None:
        if inspect.iscoroutinefunction(call):
            return ASYNC
        if inspect.isasyncgenfunction(call):
            return ASYNCGEN
        if inspect.isgeneratorfunction(call):
            return GEN
    return SYNC


_STREAM_TYPES: dict[type, str | None] = {}
# Types seen and known to be whole results (not streams, not guarded streams).
_PLAIN_TYPES: set[type] = set()
_UNSEEN = "unseen"
_OK = Outcome.OK  # enum member lookups cost ~50 ns; the hot path uses this

# (module, class name, kind) of the SDKs' stream objects, resolved lazily so
# that no SDK is imported unless the user's code already returned one of its
# objects.
_SDK_STREAMS = (
    ("anthropic", "Stream", "sync"),
    ("anthropic", "AsyncStream", "async"),
    ("anthropic.lib.streaming", "MessageStreamManager", "manager"),
    ("anthropic.lib.streaming", "AsyncMessageStreamManager", "async manager"),
    ("anthropic.lib.streaming", "MessageStream", "sync"),
    ("anthropic.lib.streaming", "AsyncMessageStream", "async"),
    ("openai", "Stream", "sync"),
    ("openai", "AsyncStream", "async"),
    ("openai.lib.streaming.chat", "ChatCompletionStreamManager", "manager"),
    ("openai.lib.streaming.chat", "AsyncChatCompletionStreamManager", "async manager"),
    ("openai.lib.streaming.responses", "ResponseStreamManager", "manager"),
    ("openai.lib.streaming.responses", "AsyncResponseStreamManager", "async manager"),
)


def stream_kind(result: object) -> str | None:
    """``"sync"``, ``"async"``, ``"manager"``, ``"async manager"`` for a stream, else None."""
    tp = type(result)
    try:
        return _STREAM_TYPES[tp]
    except KeyError:
        pass
    kind: str | None = None
    if isinstance(result, (GuardedStream, AsyncGuardedStream)):
        kind = None  # already guarded; never wrap twice
    elif inspect.isgenerator(result):
        kind = "sync"
    elif inspect.isasyncgen(result):
        kind = "async"
    else:
        module = tp.__module__.partition(".")[0]
        if module in ("anthropic", "openai"):
            import importlib  # noqa: PLC0415 - only once the SDK is in use

            for mod, cls_name, k in _SDK_STREAMS:
                if not mod.startswith(module):
                    continue
                try:
                    cls = getattr(importlib.import_module(mod), cls_name)
                except (ImportError, AttributeError):
                    continue
                if isinstance(result, cls):
                    kind = k
                    break
    _STREAM_TYPES[tp] = kind
    if kind is None and not isinstance(result, _StreamBase):
        _PLAIN_TYPES.add(tp)
    return kind


# -- streams -----------------------------------------------------------------


def _sent_body_tokens(source: object) -> int:
    """A token estimate of the request body an SDK stream was sent with (0 if none can be read)."""
    try:
        body = source.response.request.content  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - not an SDK stream, or a body that cannot be read
        return 0
    if not isinstance(body, (bytes, bytearray)):
        return 0
    return _estimate.tokens(len(body))  # the body is UTF-8 JSON: its length is the count


def _inner_of(source: object) -> _StreamBase | None:
    """The guarded stream *source* is, or reads from (an adapter's ``inner_stream``)."""
    if isinstance(source, _StreamBase):
        return source
    inner = getattr(type(source), "inner_stream", None)
    if inner is not None:
        found = getattr(source, "inner_stream", None)
        return found if isinstance(found, _StreamBase) else None
    return None


class _StreamBase:
    """What sync and async guarded streams share: state and the finish hook.

    A layer that reads a guarded stream through an adapter of its own (as
    `timeout` does, to bound each pull) gives the adapter an ``inner_stream``
    property, so text, usage and finishing still reach the innermost stream.
    """

    __slots__ = (
        "__weakref__",
        "_acc",
        "_attempt",
        "_buffer",
        "_call",
        "_chunk_hooks",
        "_error_maps",
        "_finish_hooks",
        "_finished",
        "_is_managed",
        "_it",
        "_manager",
        "_record",
        "_source",
        "_start",
        "delivered",
        "outcome",
    )

    def __init__(
        self,
        *,
        source: Any = None,
        start: Callable[[], Any] | None = None,
        manager: Any = None,
        record: CallRecord,
        attempt: Attempt | None = None,
        call: Call | None = None,
    ) -> None:
        self._source = source  # the iterable (SDK stream, generator, guarded stream)
        self._start = start  # lazily produces the source (layers not run yet)
        self._manager = manager  # an SDK stream manager, entered on first use
        self._is_managed = manager is not None
        self._record = record
        self._attempt = attempt  # set on the innermost stream only
        self._call = call
        self._acc = providers.StreamAccumulator() if attempt is not None else None
        self._it: Any = None
        self._buffer: deque[Any] = deque()
        self._chunk_hooks: list[Callable[[Any], None]] = []
        self._error_maps: list[ErrorMap] = []
        self._finish_hooks: list[FinishHook] = []
        self._finished = False
        self.delivered = 0  # chunks handed to the caller
        self.outcome: Outcome = Outcome.PENDING

    @property
    def record(self) -> CallRecord:
        """The call record of the call that produced this stream."""
        return self._record

    @property
    def finished(self) -> bool:
        """Whether the stream has ended (and its finish hooks have run)."""
        return self._finished

    @property
    def text(self) -> str:
        """The text seen so far (from the innermost stream's accumulator)."""
        inner = self._innermost()
        return inner._acc.text if inner._acc is not None else ""

    @property
    def usage(self) -> Usage | None:
        """The usage reported so far (None until the provider says)."""
        inner = self._innermost()
        return inner._acc.usage if inner._acc is not None else None

    def usage_so_far(self) -> Usage | None:
        """The usage as the attempt will record it if the stream ends now.

        What the provider reported if the stream had completed; else the input
        it confirmed and the larger of the output it reported and an estimate
        from the text seen, flagged estimated (never zero for output seen).
        """
        inner = self._innermost()
        if inner._acc is None:
            return None
        return inner._usage_for(Outcome.ERROR, inner._acc)

    def _innermost(self) -> _StreamBase:
        node: _StreamBase = self
        while (inner := _inner_of(node._source)) is not None:
            node = inner
        return node

    def on_chunk(self, hook: Callable[[Any], None]) -> None:
        """Call *hook(chunk)* for each chunk as it passes to the caller.

        Chunks already fetched but not yet handed over (a layer below called
        `prime`) are given to *hook* now, so it sees every chunk once.
        """
        for chunk in self._buffer:
            hook(chunk)
        self._chunk_hooks.append(hook)

    def map_errors(self, mapper: ErrorMap) -> None:
        """Let *mapper(exc, stream)* replace an error raised while reading.

        If it returns an exception, that is raised instead (``from`` the
        original) and is what the finish hooks see; None keeps the original.
        `retry` uses it to turn a failure after the first chunk into
        `StreamInterrupted`.
        """
        self._error_maps.append(mapper)

    def _mapped(self, exc: BaseException) -> BaseException:
        for mapper in self._error_maps:
            replacement = mapper(exc, self)
            if replacement is not None:
                replacement.__cause__ = exc
                return replacement
        return exc

    def on_finish(self, hook: FinishHook) -> None:
        """Call *hook(outcome, exc)* once, when the stream ends in any way.

        If it has already ended, *hook* runs now.
        """
        if self._finished:
            hook(self.outcome, None)
        else:
            self._finish_hooks.append(hook)

    def _ended_outcome(self, exc: BaseException | None) -> Outcome:
        """How a stream ended early by the caller (close, with-exit) ended."""
        if exc is not None:
            return outcome_of(exc)
        inner = self._innermost()
        if inner._is_managed and inner._acc is not None and inner._source is not None:
            # Read to the end through the manager's own helpers: completed.
            inner._acc.finish_from(inner._source)
            if inner._acc.finish_reasons:
                return Outcome.OK
        return Outcome.CLOSED

    @property
    def _running(self) -> tuple[Call, Attempt] | None:
        """What `_CURRENT` holds while the innermost stream's code runs."""
        call, attempt = self._call, self._attempt
        return None if call is None or attempt is None else (call._owner, attempt)

    def _observe_chunk(self, chunk: Any) -> None:
        attempt = self._attempt
        if attempt is not None:
            if attempt.first_chunk_at is None:
                attempt.first_chunk_at = _clock.now()
            attempt.chunks += 1
            self._acc.feed(chunk)  # type: ignore[union-attr]
        for hook in self._chunk_hooks:
            hook(chunk)

    def _ended(self) -> tuple[Outcome, BaseException | None]:
        """How a stream that ran out ended: OK, unless the provider said in it that it failed.

        What it said is on the innermost stream's accumulator (an adapter's
        guarded stream reads through to it).
        """
        stream: _StreamBase | None = self
        while stream is not None and stream._acc is None:
            stream = _inner_of(stream._source)
        failure = None if stream is None else cast("providers.StreamAccumulator", stream._acc).failure
        if failure is None:
            return _OK, None
        return Outcome.ERROR, StreamFailed(f"the provider reported a failure inside the stream: {failure}")

    def _finish(self, outcome: Outcome, exc: BaseException | None) -> None:
        """Run the finish hooks, once, innermost stream first."""
        with _FINISH_LOCK:
            if self._finished:
                return
            self._finished = True
        self.outcome = outcome
        inner = _inner_of(self._source)
        if inner is not None:
            inner._finish(outcome, exc)
        if self._attempt is not None:
            self._settle(outcome, exc)
        hooks, self._finish_hooks = self._finish_hooks, []
        for hook in hooks:
            try:
                hook(outcome, exc)
            except Exception as hook_exc:  # noqa: BLE001 - a guard's bug must not mask the stream's end
                warnings.warn(
                    f"llmguard: a stream finish hook failed: {hook_exc!r}",
                    RuntimeWarning,
                    stacklevel=2,
                )

    def _settle(self, outcome: Outcome, exc: BaseException | None) -> None:
        attempt = self._attempt
        acc = self._acc
        assert attempt is not None  # noqa: S101 - called on the innermost stream only
        assert acc is not None  # noqa: S101
        if outcome is Outcome.OK or self._is_managed:
            # A manager's stream may have been read through its own helpers
            # (``text_stream``), which we don't see: its snapshot has the facts.
            acc.finish_from(self._source)
        attempt.text = acc.text
        attempt.response_model = acc.model or attempt.response_model
        attempt.provider = acc.provider or attempt.provider
        attempt.response_id = acc.response_id or attempt.response_id
        attempt.finish_reasons = acc.finish_reasons or attempt.finish_reasons
        if attempt.usage is None:  # what the user reported wins
            attempt.usage = self._usage_for(outcome, acc)
        attempt.outcome = outcome
        if exc is not None:
            attempt.error = exc
            attempt.error_kind = error_kind_of(exc)
        attempt.ended_at = _clock.now()
        _price(attempt)

    def _usage_for(self, outcome: Outcome, acc: providers.StreamAccumulator) -> Usage | None:
        """Measured usage if the stream completed with it; else an estimate.

        Never zero for a stream that produced output: an interrupted stream
        keeps the input the provider confirmed and the larger of the output
        it reported and an estimate from the text seen, flagged estimated.
        """
        measured = acc.usage
        if outcome is Outcome.OK and measured is not None:
            return measured
        out_est = _estimate.text_tokens(acc.text)
        if measured is not None:
            return Usage(
                measured.input_tokens,
                max(measured.output_tokens, out_est),
                measured.cache_read_tokens,
                measured.cache_write_tokens,
                measured.reasoning_tokens,
                estimated=True,
            )
        if acc.chunks == 0 and outcome is not Outcome.OK:
            return None  # nothing came back; nothing to estimate from
        in_est = self._call.estimated_input_tokens() if self._call is not None else 0
        if not in_est:
            # No input in the arguments (the function builds its request
            # itself): the body the SDK sent, else the least a request is
            # billed. Something came back, so something was billed: never zero.
            in_est = max(_sent_body_tokens(self._source), 1)
        return Usage(in_est, out_est, estimated=True)

    def __getattr__(self, name: str) -> Any:
        # Everything else (``.response``, ``get_final_message()``,
        # ``text_stream``...) is the underlying SDK object's.
        if name.startswith("__"):
            raise AttributeError(name)
        source = object.__getattribute__(self, "_source")
        if source is None:
            msg = f"{type(self).__name__!r} has no attribute {name!r} before the stream starts"
            raise AttributeError(msg)
        return getattr(source, name)

    def __del__(self) -> None:
        # Last resort: the caller dropped the stream without finishing it.
        # A stream that exists (its request sent) counts even if never read;
        # a generator function's stream that never started made no call.
        try:
            if not self._finished and (
                self._it is not None or self._manager is not None or self._source is not None
            ):
                self._finish(Outcome.ABANDONED, None)
        except Exception:  # noqa: BLE001, S110 - nothing may escape __del__
            pass


class GuardedStream(_StreamBase):
    """A sync stream passed through llmguard's guards, chunk by chunk.

    Iterate it like the stream your function returned; other attributes
    (``.response``, ``get_final_message()``...) are the underlying stream's.
    ``close()`` or a ``with`` block ends it early.
    """

    __slots__ = ()

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._buffer:
            self.delivered += 1
            return self._buffer.popleft()
        chunk = self._pull()
        self.delivered += 1
        return chunk

    def prime(self) -> bool:
        """Fetch the first chunk now (to see early failures); False if empty."""
        if self._buffer or self.delivered:
            return True
        try:
            self._buffer.append(self._pull())
        except StopIteration:
            return False
        return True

    def _open(self) -> Any:
        try:
            if self._start is not None:
                start, self._start = self._start, None
                self._source = start()
            if self._manager is not None:
                self._source = self._manager.__enter__()
                if self._attempt is not None:
                    self._attempt.sent = True
            source = self._source
            self._it = source if isinstance(source, _StreamBase) else iter(source)
        except BaseException as exc:
            self._finish(outcome_of(exc), exc)
            raise
        return self._it

    def _pull(self) -> Any:
        if self._finished:
            raise StopIteration
        it = self._it if self._it is not None else self._open()
        try:
            if self._attempt is not None:
                token = _CURRENT.set(self._running)
                try:
                    chunk = next(it)
                finally:
                    _CURRENT.reset(token)
            else:
                chunk = next(it)
        except StopIteration:
            self._close_manager(None)
            self._finish(*self._ended())
            raise
        except BaseException as exc:
            mapped = self._mapped(exc) if self._error_maps else exc
            try:
                self._close_manager(mapped)
            finally:
                self._finish(outcome_of(mapped), mapped)
            if mapped is not exc:
                raise mapped from exc
            raise
        self._observe_chunk(chunk)
        return chunk

    def _close_manager(self, exc: BaseException | None) -> None:
        manager, self._manager = self._manager, None
        if manager is not None and self._source is not None:
            manager.__exit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)

    def close(self) -> None:
        """Stop the stream now; the underlying stream is closed too."""
        self._end(None)

    def _end(self, exc: BaseException | None) -> None:
        if self._finished:
            return
        try:
            if self._manager is not None:
                self._close_manager(exc)
            elif self._source is not None and (closer := getattr(self._source, "close", None)):
                closer()
        finally:
            self._finish(self._ended_outcome(exc), exc)

    def __enter__(self) -> GuardedStream:
        # Entering opens the whole chain, down to the SDK's stream manager,
        # so its attributes (get_final_text()...) work before any pull.
        node: _StreamBase | None = self
        while isinstance(node, GuardedStream):
            if node._it is None:
                node._open()
            node = _inner_of(node._source)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._end(exc_info[1] if isinstance(exc_info[1], BaseException) else None)


class AsyncGuardedStream(_StreamBase):
    """An async stream passed through llmguard's guards, chunk by chunk.

    ``async for`` over it; ``await s.aclose()`` (or ``await s.close()``, as
    the SDKs spell it) or ``async with`` ends it early.
    """

    __slots__ = ()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if self._buffer:
            self.delivered += 1
            return self._buffer.popleft()
        chunk = await self._pull()
        self.delivered += 1
        return chunk

    async def prime(self) -> bool:
        """Fetch the first chunk now (to see early failures); False if empty."""
        if self._buffer or self.delivered:
            return True
        try:
            self._buffer.append(await self._pull())
        except StopAsyncIteration:
            return False
        return True

    async def _open(self) -> Any:
        try:
            if self._start is not None:
                start, self._start = self._start, None
                self._source = await cast("Awaitable[Any]", start())
            if self._manager is not None:
                self._source = await self._manager.__aenter__()
                if self._attempt is not None:
                    self._attempt.sent = True
            source = self._source
            self._it = source if isinstance(source, _StreamBase) else source.__aiter__()
        except BaseException as exc:
            self._finish(outcome_of(exc), exc)
            raise
        return self._it

    async def _pull(self) -> Any:
        if self._finished:
            raise StopAsyncIteration
        it = self._it if self._it is not None else await self._open()
        try:
            if self._attempt is not None:
                token = _CURRENT.set(self._running)
                try:
                    chunk = await it.__anext__()
                finally:
                    _CURRENT.reset(token)
            else:
                chunk = await it.__anext__()
        except StopAsyncIteration:
            await self._close_manager(None)
            self._finish(*self._ended())
            raise
        except BaseException as exc:
            mapped = self._mapped(exc) if self._error_maps else exc
            try:
                await self._close_manager(mapped)
            finally:
                self._finish(outcome_of(mapped), mapped)
            if mapped is not exc:
                raise mapped from exc
            raise
        self._observe_chunk(chunk)
        return chunk

    async def _close_manager(self, exc: BaseException | None) -> None:
        manager, self._manager = self._manager, None
        if manager is not None and self._source is not None:
            await manager.__aexit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)

    async def aclose(self) -> None:
        """Stop the stream now; the underlying stream is closed too."""
        await self._end(None)

    close = aclose  # the SDKs' AsyncStream spells it close()

    async def _end(self, exc: BaseException | None) -> None:
        if self._finished:
            return
        try:
            if self._manager is not None:
                await self._close_manager(exc)
            elif self._source is not None:
                source = self._source
                closer = getattr(source, "aclose", None) or getattr(source, "close", None)
                if closer is not None:
                    result = closer()
                    if inspect.isawaitable(result):
                        await result
        finally:
            self._finish(self._ended_outcome(exc), exc)

    async def __aenter__(self) -> AsyncGuardedStream:
        node: _StreamBase | None = self
        while isinstance(node, AsyncGuardedStream):
            if node._it is None:
                await node._open()
            node = _inner_of(node._source)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._end(exc_info[1] if isinstance(exc_info[1], BaseException) else None)


# -- wrapping ----------------------------------------------------------------


def layer_of(fn: object) -> Layer | None:
    """The llmguard layer *fn* is wrapped in, or None if it is not guarded."""
    code = getattr(fn, "__code__", None)
    if code in _GUARDED_CODES:
        layer = getattr(fn, "__llmguard_layer__", None)
        return layer if isinstance(layer, Layer) else None
    wrapper = getattr(fn, "_self_wrapper", None)  # a wrapt-wrapped generator function
    return getattr(wrapper, "_llmguard_layer", None)


def layers_of(fn: object) -> list[Layer]:
    """Every llmguard layer around *fn*, outermost first."""
    out: list[Layer] = []
    node: object = fn
    while True:
        if isinstance(node, (staticmethod, classmethod)):
            node = node.__func__
        layer = layer_of(node)
        if layer is not None:
            out.append(layer)
        nxt = getattr(node, "__wrapped__", None)
        if nxt is None or nxt is node:
            return out
        node = nxt


def _end_record(
    record: CallRecord, exc: BaseException | None, ended: float, outcome: Outcome | None = None
) -> None:
    record.outcome = outcome_of(exc) if outcome is None else outcome
    if exc is not None and record.error_kind is None:
        record.error_kind = error_kind_of(exc)
    record.ended_at = ended


def _end_record_hook(record: CallRecord) -> FinishHook:
    def hook(outcome: Outcome, exc: BaseException | None) -> None:
        _end_record(record, exc, _clock.now(), outcome)

    return hook


def _end_with_result(call: Call, result: Any) -> Any:
    if isinstance(result, _StreamBase):
        result.on_finish(_end_record_hook(call.record))
    else:
        call._finish_call(None)
    return result


def wrap(layer: Layer, fn: Callable[P, R], *, static: bool = False) -> Callable[P, R]:
    """Put *layer* around *fn*, for every call shape; see the module docs.

    *static* says *fn* is a ``staticmethod``'s function (it takes no instance).
    """
    if isinstance(fn, (staticmethod, classmethod)):
        # Wrap the function and re-apply the descriptor, so `cls` arrives
        # as an ordinary first argument and binding stays Python's.
        inner = wrap(layer, fn.__func__, static=isinstance(fn, staticmethod))
        return cast("Callable[P, R]", type(fn)(inner))
    if not callable(cast("object", fn)):
        msg = (
            f"llmguard.{layer.name}() can only decorate a callable, "
            f"got {type(fn).__name__}: {fn!r}"
        )
        raise TypeError(msg)
    info = _FunctionInfo(fn, static=static)
    layer = layer.for_function(fn, info.shape, info.binder)
    shape = info.shape

    if shape in (SYNC, ASYNC):
        lane = None if info.inner_is_guard else layer.lane(shape)
        if shape == SYNC:
            made = _plain_sync(layer, info, fn) if lane is None else _lane_sync(layer, info, fn, lane)
        else:
            made = _plain_async(layer, info, fn) if lane is None else _lane_async(layer, info, fn, lane)
        functools.update_wrapper(made, fn)
        made.__llmguard_layer__ = layer  # type: ignore[attr-defined]
        return cast("Callable[P, R]", made)
    if shape == GEN:

        def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:  # noqa: ARG001
            call = Call(layer, info, fn, *info.binder.split(_unbound_args(instance, args)), kwargs)
            stream = GuardedStream(start=lambda: layer.around(call), record=call.record)
            if call._owner is call:
                stream.on_finish(_end_record_hook(call.record))
            return stream

    else:

        def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:  # noqa: ARG001
            call = Call(layer, info, fn, *info.binder.split(_unbound_args(instance, args)), kwargs)
            stream = AsyncGuardedStream(start=lambda: layer.around_async(call), record=call.record)
            if call._owner is call:
                stream.on_finish(_end_record_hook(call.record))
            return stream

    wrapper._llmguard_layer = layer  # type: ignore[attr-defined]
    return cast("Callable[P, R]", wrapt.FunctionWrapper(fn, wrapper))


def _unbound_args(instance: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The arguments the function itself receives, from wrapt's descriptor-bound *instance* and *args*.

    wrapt splits off what it bound the function to; putting it back lets the
    function's `Binder` decide, by the one rule every shape follows, and the
    call go to the unbound function (``Call.proceed`` passes the instance
    back in).
    """
    return args if instance is None else (instance, *args)


# def and async def are wrapped in plain closures rather than wrapt's proxy:
# measured here, the proxy's dispatch alone costs ~0.35 µs a call more than a
# closure, a fifth of the whole guard. A closure is a function, so Python
# binds it to instances itself; a method's instance arrives as the first
# argument and is split off as `Call.instance` by the function's `Binder`
# (``info.binder.split``), as for wrapt's shapes (`_unbound_args`), so layers
# see the same `Call` either way. Generator functions keep wrapt: only its
# proxy keeps `inspect.isgeneratorfunction` true.


def _plain_sync(layer: Layer, info: _FunctionInfo, fn: Callable[..., Any]) -> Callable[..., Any]:
    split = info.binder.split

    def guarded(*args: Any, **kwargs: Any) -> Any:
        instance, args = split(args)
        call = Call(layer, info, fn, instance, args, kwargs)
        if call._owner is not call:
            return layer.around(call)
        try:
            result = layer.around(call)
        except BaseException as exc:
            call._finish_call(exc)
            raise
        return _end_with_result(call, result)

    return guarded


def _plain_async(layer: Layer, info: _FunctionInfo, fn: Callable[..., Any]) -> Callable[..., Any]:
    split = info.binder.split

    async def guarded(*args: Any, **kwargs: Any) -> Any:
        instance, args = split(args)
        call = Call(layer, info, fn, instance, args, kwargs)
        if call._owner is not call:
            return await layer.around_async(call)
        try:
            result = await layer.around_async(call)
        except BaseException as exc:
            call._finish_call(exc)
            raise
        return _end_with_result(call, result)

    return guarded


# A lane: one layer alone around a def or async def runs its fast path fused
# with the core (one closure, no per-call layer dispatch, no Attempt object
# until someone reads the record) and falls back to the general path for
# anything unusual: an exception, a stream, an unseen result type. Stacked
# layers, and a layer called as the inner layer of another, use the general
# path; the facts recorded are the same either way.


# The lane keeps the call's state in a *frame*, a list, until someone needs
# the `Call` (a nested guarded call, report_usage, current_call, an exception,
# a stream, a layer whose hooks take the call): a Call is then built from it
# (`_realize`), the same Call the general path would have made.
_F_CALL, _F_LAYER, _F_INFO, _F_FN, _F_ARGS, _F_KWARGS, _F_STARTED, _F_TOKEN, _F_DEADLINE, _F_USAGE, _F_NOTES = range(11)
# [Call | None, layer, info, fn, args (self included), kwargs, started_at,
#  _CURRENT token, deadline, (usage, model, provider) reported before the
#  record, notes for the record should one be built (a dict, as `Call.note`)]
Frame = list
_NEEDS_RESUME: Any = object()


def _realize(frame: Frame[Any]) -> Call:
    """The `Call` of a lane's frame, built the first time it is asked for."""
    call: Call | None = frame[_F_CALL]
    if call is not None:
        return call
    info: _FunctionInfo = frame[_F_INFO]
    instance, args = info.binder.split(frame[_F_ARGS])
    call = Call.__new__(Call)
    call.layer, call.info, call.wrapped = frame[_F_LAYER], info, frame[_F_FN]
    call.instance, call.args, call.kwargs = instance, args, frame[_F_KWARGS]
    call._replay = None
    call.entered = None
    token: contextvars.Token[Any] | None = frame[_F_TOKEN]
    # Its parent is the call running when this one started: before the lane
    # set the variable (the token remembers), or now if it has not yet.
    running = _CURRENT.get() if token is None else token.old_value
    call._own(_call_of(running) if running is not None and running is not contextvars.Token.MISSING else None, frame[_F_STARTED])
    call._deadline = frame[_F_DEADLINE]
    call._notes = frame[_F_NOTES]
    call._frame = frame
    frame[_F_CALL] = call
    if token is not None:  # the function has started: its attempt is the lane's
        call._lane = _RUNNING
    return call


def returned_call(frame: Frame[Any], result: Any) -> Call:
    """For a lane's ``leave`` given no Call: the Call, with *result* as its attempt's.

    Reading ``.record`` then shows the attempt settled from *result* (and
    whatever `report_usage` said), as on the general path.
    """
    call = _realize(frame)
    if call._lane is _RUNNING:
        call._lane = _RETURNED
        call._replay = (None, result, None)
    # Else the record was built while the function ran, and the lane settled
    # its attempt before calling leave (`_lane_returned`).
    return call


def _call_of(running: tuple[Call, Attempt | None] | Frame[Any]) -> Call:
    """The call a `_CURRENT` value names (a lane's frame is realized)."""
    return running[0] if type(running) is tuple else _realize(cast("Frame[Any]", running))


def _lane_starts(call: Call) -> None:
    """The lane's function is about to run, its Call already built (by ``enter``)."""
    record = call._record
    # Its attempt: on the record if ``enter`` built it, else kept for when it is.
    call._lane = _RUNNING if record is None else _begin_attempt(record, None, _clock.now())


def _lane_returned(call: Call, state: Any, result: Any, leave: Callable[[Call, Any, Any], Any] | None) -> Any:
    """After a lane's function returned a stream, an unseen type, or with its record built.

    `_NEEDS_RESUME` when the general path must take over.
    """
    if call._lane_returned(result):
        if leave is not None:
            result = leave(call, state, result)
        return _end_with_result(call, result)
    return _NEEDS_RESUME


def _lane_sync(layer: Layer, info: _FunctionInfo, fn: Callable[..., Any], lane: Lane) -> Callable[..., Any]:
    enter, leave, resume, needs_call, answers = lane
    current_set, current_reset, handoff_get = _CURRENT.set, _CURRENT.reset, _HANDOFF.get
    clock = _clock

    def guarded(*args: Any, **kwargs: Any) -> Any:
        if handoff_get() is not None:  # the inner layer of another guard's call
            instance, rest = info.binder.split(args)
            return layer.around(Call(layer, info, fn, instance, rest, kwargs))
        frame: Frame[Any] = [None, layer, info, fn, args, kwargs, clock.now(), None, None, None, None]
        try:
            state = None
            if enter is not None:
                state = enter(_realize(frame) if needs_call else frame)
                if state is GENERAL:
                    call = _realize(frame)
                    return _end_with_result(call, layer.around(call))
                if answers and state.__class__ is Answer:
                    built = frame[_F_CALL]
                    value = state.value
                    return value if built is None or built._record is None else _end_with_result(built, value)
            if frame[_F_CALL] is not None:
                _lane_starts(frame[_F_CALL])
            frame[_F_TOKEN] = token = current_set(frame)
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to resume, which re-raises
                current_reset(token)
                call = _realize(frame)
                call._hand_over(None, exc)
                return _end_with_result(call, resume(call, state))
            current_reset(token)
            call = frame[_F_CALL]
            if type(result) in _PLAIN_TYPES and (call is None or call._lane is _RUNNING):
                if leave is None:
                    return result  # nobody asked for the record: nothing more to keep
                result = leave(call, state, result)
                built = frame[_F_CALL]  # leave may have built the record: end it
                return result if built is None or built._record is None else _end_with_result(built, result)
            call = _realize(frame)
            done = _lane_returned(call, state, result, leave)
            return done if done is not _NEEDS_RESUME else _end_with_result(call, resume(call, state))
        except BaseException as exc:
            if frame[_F_CALL] is not None:
                frame[_F_CALL]._finish_call(exc)
            raise

    return guarded


def _lane_async(layer: Layer, info: _FunctionInfo, fn: Callable[..., Any], lane: Lane) -> Callable[..., Any]:
    enter, leave, resume, needs_call, answers = lane
    current_set, current_reset, handoff_get = _CURRENT.set, _CURRENT.reset, _HANDOFF.get
    clock = _clock

    async def guarded(*args: Any, **kwargs: Any) -> Any:
        if handoff_get() is not None:
            instance, rest = info.binder.split(args)
            return await layer.around_async(Call(layer, info, fn, instance, rest, kwargs))
        frame: Frame[Any] = [None, layer, info, fn, args, kwargs, clock.now(), None, None, None, None]
        try:
            state = None
            if enter is not None:
                state = enter(_realize(frame) if needs_call else frame)
                if state is GENERAL:
                    call = _realize(frame)
                    return _end_with_result(call, await layer.around_async(call))
                if answers and state.__class__ is Answer:
                    built = frame[_F_CALL]
                    value = state.value
                    return value if built is None or built._record is None else _end_with_result(built, value)
            if frame[_F_CALL] is not None:
                _lane_starts(frame[_F_CALL])
            frame[_F_TOKEN] = token = current_set(frame)
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to resume, which re-raises
                current_reset(token)
                call = _realize(frame)
                call._hand_over(None, exc)
                return _end_with_result(call, await resume(call, state))
            current_reset(token)
            call = frame[_F_CALL]
            if type(result) in _PLAIN_TYPES and (call is None or call._lane is _RUNNING):
                if leave is None:
                    return result
                result = leave(call, state, result)
                built = frame[_F_CALL]
                return result if built is None or built._record is None else _end_with_result(built, result)
            call = _realize(frame)
            done = _lane_returned(call, state, result, leave)
            return done if done is not _NEEDS_RESUME else _end_with_result(call, await resume(call, state))
        except BaseException as exc:
            if frame[_F_CALL] is not None:
                frame[_F_CALL]._finish_call(exc)
            raise

    return guarded


def _inner_code(factory: Callable[..., Any]) -> types.CodeType:
    """The code object of the closure *factory* makes (how guarded functions are known)."""
    return next(c for c in factory.__code__.co_consts if isinstance(c, types.CodeType))


_SYNC_CODE = _inner_code(_plain_sync)
_ASYNC_CODE = _inner_code(_plain_async)
_GUARDED_CODES = frozenset({_SYNC_CODE, _ASYNC_CODE, _inner_code(_lane_sync), _inner_code(_lane_async)})
