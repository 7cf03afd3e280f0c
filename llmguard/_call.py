"""The call: one per invocation of a guarded function, shared by every guard on it.

What a guard reads of the call (its arguments, by name through the
function's one `Binder`; the model it asks for; the estimate of its input)
and the facts of its attempts: each attempt is a cheap *slot* until
something reads ``call.record``, which is then built from them (see
`Call`). `llmguard._runner` runs the guards and the function on it.
"""

from __future__ import annotations

import inspect

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from . import _clock, _estimate, providers
from ._binder import Binder
from ._facts import (
    _CURRENT,
    ASYNCGEN,
    GEN,
    _apply_notes,
    _begin_attempt,
    _end_record,
    _estimable,
    _fail_attempt,
    _settle_attempt,
    estimate_unmeasured,
    sane_usage,
    shape_of,
    wire_apply,
    wire_usage,
)
from ._record import Attempt, CallRecord, Usage
from ._stream import (
    _PLAIN_TYPES,
    _STREAM_TYPES,
    _UNSEEN,
    AsyncGuardedStream,
    GuardedStream,
    stream_kind,
)


if TYPE_CHECKING:
    from ._runner import Run, _Runner


_STREAM_SHAPES = frozenset({GEN, ASYNCGEN})


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
    _fn: Callable[..., Any] | None = None  # the function the innermost step calls while a guard's `Run(fn=)` replaces it

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
            started, model, ended, result, exc, _, wire = slot
            attempt = Attempt(len(record.attempts) + 1, model if isinstance(model, str) else record.request_model, started)
            slot[3] = slot[4] = slot[6] = None  # the attempt has what it needs of them
            slot[5] = attempt
            record.attempts.append(attempt)
            for facts in wire or ():
                wire_apply(attempt, facts)
            if ended is None:
                continue  # still running: it settles itself
            if exc is not None:
                _fail_attempt(attempt, exc, ended)
            else:
                _settle_attempt(attempt, providers.observe_result(result), ended)
                estimate_unmeasured(self, attempt, result)
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
        for _, model, ended, result, exc, _, wire in slots[since:]:
            if ended is None or exc is not None:
                return None
            found = None if wire is None else wire_usage(wire)
            if found is None:
                found = providers.observe_usage(result)
                if wire is not None and found is not None and not sane_usage(found[0]):
                    found = None  # the wire saw the exchange and could not believe it (`_settle_attempt`)
            if found is None and _estimable(result):
                return None  # estimated, flagged and warned about once: on the record
            if found is None:
                out.append((None, model if isinstance(model, str) else None, None))
            else:
                usage, response_model, provider = found
                out.append((usage, response_model or (model if isinstance(model, str) else None), provider))
        return out

    def rejected(self, result: Any, below: Any) -> str | None:
        """Why a guard above *below* on this call will reject *result* (validate: it does not validate), or None.

        What a guard that keeps results (cache) asks before keeping one, so a
        rejected answer is never kept to be served again.
        """
        for guard in self.runner.guards:
            if guard is below:
                return None
            judge = guard.judge
            if judge is not None and (why := judge(self, result)) is not None:
                return why
        return None

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

    def positional(self) -> tuple[Any, ...]:
        """The positional arguments the function itself receives (a method's instance first)."""
        instance = self.instance
        return self.args if instance is None else (instance, *self.args)

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

    def run_with(self, values: Mapping[str, Any]) -> Run | None:
        """A `Run` of the inside with the arguments *values* names set (None: they already are).

        An argument the caller passed positionally is replaced where it
        stands (``ask("q", "claude-opus-4-1")``: a keyword ``model=`` beside
        it would be "multiple values for argument 'model'"); any other is set
        by keyword. For a guard's ``enter`` (route) or ``fail`` (fallback's
        keyword overrides).
        """
        from ._runner import Run  # noqa: PLC0415 - _runner imports this module

        args, kwargs = self.args, self.kwargs
        binder = self.info.binder
        positions = binder.positions_after if self.instance is not None else binder.positions
        new_args: list[Any] | None = None
        new_kwargs: dict[str, Any] | None = None
        for name, value in values.items():
            pos = positions.get(name)
            if pos is not None and pos < len(args) and name not in kwargs:
                if args[pos] is not value:
                    if new_args is None:
                        new_args = list(args)
                    new_args[pos] = value
            elif name not in kwargs or kwargs[name] is not value:
                if new_kwargs is None:
                    new_kwargs = dict(kwargs)
                new_kwargs[name] = value
        if new_args is None and new_kwargs is None:
            return None
        return Run(args=None if new_args is None else tuple(new_args), kwargs=new_kwargs)

    def _use(self, run: Run) -> tuple[Any, ...]:
        """Make *run*'s arguments the call's while the inside runs; returns what to restore."""
        saved = self.args, self.kwargs, self._model, self._given, self._fn
        if self._given is None:
            self._given = self.args, self.kwargs
        if run.args is not None:
            self.args = run.args
        if run.kwargs is not None:
            self.kwargs = run.kwargs
        if run.fn is not None:
            self._fn = run.fn
        # The model the inside asks for, by keyword or by position (a route may pass either).
        self._model = _request_model(self.runner.info, self.instance, self.args, self.kwargs)
        return saved

    def _restore(self, saved: tuple[Any, ...]) -> None:
        """Undo `_use`: the arguments (and function) before that `Run`."""
        self.args, self.kwargs, self._model, self._given, self._fn = saved

    # -- attempts --------------------------------------------------------------
    # Each attempt has a *slot*, a list ``[started, model, ended, result,
    # error, attempt, wire]`` (*wire*: what `llmguard._wire` read of its
    # responses, `_facts.wire_report`); while it runs `_CURRENT` holds ``(call, slot)``.
    # Before the record exists the slot is all there is (cheaper than an
    # `Attempt`); building the record makes its ``Attempt``. (A slot never
    # refers to its call: a reference cycle on every call would cost the
    # cyclic garbage collector more than all of this.)

    def _begin(self) -> list[Any]:
        """A new attempt's slot, with its `Attempt` at once if the record exists."""
        record = self._record
        if record is not None:
            attempt = _begin_attempt(record, self._model, _clock.now())
            return [attempt.started_at, attempt.model, None, None, None, attempt, None]
        slot = [_clock.now(), self._model, None, None, None, None, None]
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
        """The attempt of *slot* returned *result*: what the call's guards get (a stream is wrapped)."""
        attempt = slot[5]
        if attempt is None and type(result) in _PLAIN_TYPES:
            # A plain result, nobody has read the record: settled from it if and when somebody does.
            slot[3] = result
            slot[2] = _clock.now()
            return result
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
            if attempt.usage is None:
                estimate_unmeasured(self, attempt, result)
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
