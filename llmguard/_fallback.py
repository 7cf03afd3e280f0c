"""`fallback`: other targets, in order, when one fails or its answer is refused.

::

    @lg.fallback(ask_openai, {"model": "claude-haiku-4-5"}, reject=truncated, default=None)
    @lg.retry(attempts=3)
    def ask(q: str, model: str = "claude-sonnet-4-6") -> Any: ...

The *targets* of a call are the decorated function (the primary) and then
each alternate, in the order given:

* a **function** with the same signature (another provider's client, written
  by you; it may return that SDK's own type) is called with the call's
  arguments in place of the decorated function (`Run(fn=...)`): every guard
  below fallback (retry, breaker, budget, rate limit, timeout) applies to it
  as to the primary. When the alternate has a ``model`` parameter with a
  default and the call gives no model, that default is passed by name, so
  budget and trace see the attempt under the model it really asks for;
* a **dict** of keyword overrides (``{"model": "gpt-4o-mini"}``) runs the
  decorated function again with those arguments (in place, when the caller
  passed one positionally).

The guard moves to the next target when the current one raises an error
``on=`` accepts (by default: a transient error after whatever retry sits
below, a timeout, `CircuitOpen`, a context too long; never a bad request,
auth, not found, `BudgetExceeded`, `InputRejected`, `ValidationFailed` or
another of llmguard's refusals), when its circuit is open (it is skipped
without a call), or when ``reject=`` refuses its answer. An error ``on=``
does not accept is raised as it is, with a note naming the targets passed
over before it. When no target is left (or the active deadline has passed,
so none may start), ``default=`` answers, or `AllFailed` is raised holding
each target's error (a refused answer as `AnswerRejected`), in order.

Streams: the first chunk is fetched before deciding (``primes``), so a
stream that fails before anything reached the caller moves to the next
target; after that it is `StreamInterrupted`. ``reject=`` judges plain
answers only: a stream's answer is known only once its chunks have reached
the caller.

What happened is on the record: ``record.fallback_target`` names the target
that answered when it was not the primary (so `cache` never stores it as
the primary's answer), ``record.extra["fallback_passed_over"]`` lists each
earlier target and why it was passed over, and the event
``llmguard.fallback.used`` says the same on the span and in the log.
"""

from __future__ import annotations

import inspect
import threading

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, Final, Protocol

from . import _clock, _events
from ._binder import Binder
from ._breaker import circuit as new_circuit
from ._call import Call
from ._context import deadline as active_deadline
from ._facts import ASYNC, ASYNCGEN, GEN, SYNC, shape_of
from ._record import ErrorKind
from ._runner import Answer, Guard, Run
from ._stream import _StreamBase
from .errors import AllFailed, AnswerRejected, CircuitOpen, GuardTimeout, LLMGuardError
from .providers import classify


On = ErrorKind | type[BaseException] | Iterable[ErrorKind | type[BaseException]] | Callable[[BaseException], bool] | None

_NO_DEFAULT: Final[Any] = object()
# Statuses that are the caller's to fix: another target would refuse them too.
_CALLERS_STATUSES: Final = frozenset({400, 401, 403, 404, 422})


class Circuit(Protocol):
    """What fallback needs of a circuit breaker (`llmguard._breaker.circuit` makes one per target)."""

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"``."""

    def admit(self) -> object:
        """A ticket for one call; raises `CircuitOpen` when the circuit refuses it."""

    def record(self, ticket: object, exc: BaseException | None) -> None:
        """How the admitted call ended (None: it succeeded); the circuit classifies *exc* itself."""

    async def aadmit(self) -> object:
        """`admit` on an event loop."""

    async def arecord(self, ticket: object, exc: BaseException | None) -> None:
        """`record` on an event loop."""


_NAMES: dict[str, int] = {}  # circuit names given out in this process, and how many times
_NAMES_LOCK: Final = threading.Lock()


def _circuit_name(base: str, settings: Mapping[str, Any]) -> str:
    """*base*, made unique in this process when the circuits are in its memory.

    Two functions of one module and qualified name (made in a loop, a test)
    must not share a circuit by accident; with a shared ``store=`` (Redis)
    the name is kept as it is, so every process names a target alike.
    """
    if settings.get("store") is not None:
        return base
    with _NAMES_LOCK:
        n = _NAMES[base] = _NAMES.get(base, 0) + 1
    return base if n == 1 else f"{base}#{n}"


# -- targets -------------------------------------------------------------------------


class _Target:
    """One target of a decorated function: the primary, an alternate function, or overrides."""

    __slots__ = ("circuit", "fn", "model", "name", "overrides")

    def __init__(self, name: str, fn: Callable[..., Any] | None, overrides: dict[str, Any] | None, model: str | None) -> None:
        self.name = name
        self.fn = fn  # None: the decorated function
        self.overrides = overrides
        self.model = model  # an alternate function's own default model, passed when the call names none
        self.circuit: Circuit | None = None


def _no_circuit(*_: object) -> Any:
    """Stands for the primary circuit's methods when there is none (never called: no hook uses them then)."""
    raise AssertionError("no circuit")  # pragma: no cover


class _State:
    """Where one call's fallback stands: the target running, its circuit ticket, the errors so far."""

    __slots__ = ("errors", "index", "ticket")

    def __init__(self, index: int, ticket: object) -> None:
        self.index = index
        self.ticket = ticket
        self.errors: list[Exception] = []


def _name_of(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def _overrides_name(overrides: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" if isinstance(v, str) else f"{k}={v!r}" for k, v in overrides.items())


def _reason(exc: BaseException) -> str:
    """Why a target was passed over, in a few words."""
    if isinstance(exc, CircuitOpen):
        return "circuit open"
    if isinstance(exc, AnswerRejected):
        return "answer rejected"
    if isinstance(exc, GuardTimeout):
        return f"timeout ({exc.limit})"
    return f"{classify(exc).kind.value} ({type(exc).__name__})"


def default_trigger(exc: BaseException) -> bool:
    """Whether *exc* moves a call to its next target when ``on=`` is not given.

    A transient error (rate limited, overloaded, server, connection,
    timeout), llmguard's `GuardTimeout` and `CircuitOpen`, and a context too
    long (a larger-context alternate may take it); never the caller's own
    errors (400, 401, 403, 404, 422) nor llmguard's other refusals.
    """
    if isinstance(exc, (CircuitOpen, GuardTimeout)):
        return True
    if isinstance(exc, LLMGuardError):
        return False  # BudgetExceeded, InputRejected, ValidationFailed, RateLimited, StreamInterrupted...
    info = classify(exc)
    if info.kind is ErrorKind.CONTEXT_TOO_LONG:
        return True
    return info.status not in _CALLERS_STATUSES and info.kind.transient


def _trigger_of(on: On) -> Callable[[BaseException], bool]:
    """``on=`` as one predicate, or a TypeError naming it."""
    if on is None:
        return default_trigger
    if isinstance(on, (ErrorKind, type)):
        on = (on,)
    if isinstance(on, (tuple, list, set, frozenset)):
        kinds = frozenset(k for k in on if isinstance(k, ErrorKind))
        types = tuple(t for t in on if isinstance(t, type) and issubclass(t, BaseException))
        if len(kinds) + len(types) != len(on):
            bad = next(x for x in on if x not in kinds and x not in types)
            msg = f"fallback(on=...) takes ErrorKinds and exception classes, or a predicate; got {bad!r} in {on!r}"
            raise TypeError(msg)

        def named(exc: BaseException) -> bool:
            return isinstance(exc, types) or (bool(kinds) and classify(exc).kind in kinds)

        return named
    if callable(on):
        return on
    msg = f"fallback(on=...) must be an ErrorKind, an exception class, a tuple of them, or a predicate of the exception; got {on!r}"
    raise TypeError(msg)


def _positional_count(fn: Callable[..., Any]) -> int:
    """How many positional arguments *fn* takes (2 for more, and for ``*args``); 1 when it cannot be told."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 2
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty for p in params)


_SHAPES_THAT_FIT: Final = {
    SYNC: frozenset({SYNC}),
    ASYNC: frozenset({SYNC, ASYNC}),  # a plain callable may return an awaitable (a lambda calling an async def)
    GEN: frozenset({SYNC, GEN}),  # ... or an iterable of chunks
    ASYNCGEN: frozenset({SYNC, ASYNCGEN}),
}


# -- the guard -----------------------------------------------------------------------


class FallbackLayer(Guard):
    """The `fallback` guard. Build it with `fallback`, not directly."""

    name = "fallback"
    # A stream's failure before its first chunk reaches the caller moves on to
    # the next target; after it, the runner raises `StreamInterrupted`.
    primes = True

    def __init__(
        self,
        *alternates: Any,
        on: On = None,
        reject: Any = None,
        default: Any = _NO_DEFAULT,
        breaker: Any = True,
    ) -> None:
        if not alternates:
            msg = "fallback(...) needs at least one alternate: a function with the same signature, or a dict of keyword overrides"
            raise TypeError(msg)
        for i, alt in enumerate(alternates, 1):
            if isinstance(alt, Mapping):
                if not alt:
                    msg = f"fallback(...): alternate {i} is an empty dict of overrides (it would repeat the primary)"
                    raise ValueError(msg)
                if not all(isinstance(k, str) for k in alt):
                    msg = f"fallback(...): alternate {i}'s overrides must be keyword names, got {alt!r}"
                    raise TypeError(msg)
            elif not callable(alt):
                msg = f"fallback(...): alternate {i} must be a function with the decorated function's signature or a dict of keyword overrides, got {type(alt).__name__}: {alt!r}"
                raise TypeError(msg)
        if reject is not None and not callable(reject):
            msg = f"fallback(reject=...) must be a predicate of the answer (and its attempt), got {reject!r}"
            raise TypeError(msg)
        if reject is not None and _positional_count(reject) not in (1, 2):
            msg = "fallback(reject=...) must take the answer, or the answer and its attempt (lg.Attempt)"
            raise TypeError(msg)
        self.alternates = alternates
        self.on = on
        self._trigger = _trigger_of(on)
        self.reject = reject
        self._reject_sees_attempt = reject is not None and _positional_count(reject) == 2
        self.default = default
        self.breaker = breaker
        self._breaker_settings = self._breaker_settings_of(breaker)
        self.targets: tuple[_Target, ...] = ()
        self._first: Circuit | None = None  # the primary's circuit
        self._admit_first: Callable[[], object] = _no_circuit
        self._record_first: Callable[[object, BaseException | None], None] = _no_circuit

    @staticmethod
    def _breaker_settings_of(breaker: Any) -> dict[str, Any] | None:
        """The settings of each target's circuit; None: no circuits."""
        if breaker is None or breaker is False:
            return None
        if breaker is True:
            return {}
        if isinstance(breaker, Mapping):
            return dict(breaker)
        if isinstance(breaker, Guard) and breaker.name == "breaker":
            # Its settings, not its name: each target has a circuit of its own.
            return {k: v for k, v in breaker.settings().items() if k != "name"}
        msg = f"fallback(breaker=...) must be True, False, a dict of lg.breaker settings or an lg.breaker(...), got {breaker!r}"
        raise TypeError(msg)

    def settings(self) -> dict[str, Any]:
        """The configuration, for `describe`."""
        return {
            "alternates": [t.name for t in self.targets[1:]] or list(self.alternates),
            "on": self.on,
            "reject": self.reject,
            "default": None if self.default is _NO_DEFAULT else self.default,
            "breaker": self.breaker,
        }

    def for_function(self, fn: Callable[..., Any], shape: str, binder: Binder) -> FallbackLayer:
        """A copy for *fn*: its targets checked against its signature and shape, a circuit each."""
        targets = self._targets_of(fn, shape, binder)
        layer = _copy(self)
        layer.targets = targets
        settings = self._breaker_settings
        if settings is not None:
            where = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', targets[0].name)}"
            for target in targets:
                target.circuit = new_circuit(_circuit_name(f"fallback:{where}:{target.name}", settings), **settings)
        first = layer._first = targets[0].circuit
        if first is not None:  # bound once: the success path's two calls
            layer._admit_first, layer._record_first = first.admit, first.record
        layer._choose_hooks(settings)
        return layer

    def _targets_of(self, fn: Callable[..., Any], shape: str, binder: Binder) -> tuple[_Target, ...]:
        """The primary and each alternate, checked against *fn*'s parameters and shape, named uniquely."""
        fn_name = _name_of(fn)
        targets = [_Target(fn_name, None, None, None)]
        params = binder.signature.parameters if binder.signature is not None else None
        takes_any = params is None or any(p.kind is p.VAR_KEYWORD for p in params.values())
        for i, alt in enumerate(self.alternates, 1):
            if isinstance(alt, Mapping):
                unknown = [k for k in alt if not takes_any and k not in params]  # type: ignore[operator]
                if unknown:
                    msg = f"fallback(...): alternate {i} overrides {', '.join(map(repr, unknown))}, which {fn_name} has no parameter for"
                    raise ValueError(msg)
                targets.append(_Target(_overrides_name(alt), None, dict(alt), None))
                continue
            alt_shape = shape_of(alt)
            if alt_shape not in _SHAPES_THAT_FIT[shape]:
                msg = f"fallback(...): alternate {i} ({_name_of(alt)}) is a {alt_shape} function; {fn_name} is a {shape} function"
                raise TypeError(msg)
            alt_model = Binder(alt).defaults.get("model")
            targets.append(_Target(_name_of(alt), alt, None, alt_model if isinstance(alt_model, str) else None))
        seen: dict[str, int] = {}
        for target in targets:  # the record and the circuits tell targets apart by name
            n = seen[target.name] = seen.get(target.name, 0) + 1
            if n > 1:
                target.name = f"{target.name}#{n}"
        return tuple(targets)

    def _choose_hooks(self, settings: dict[str, Any] | None) -> None:
        """The hooks this configuration needs, and no more (the runner skips the others at no cost)."""
        self.fail = self._fail
        if settings is not None:
            self.enter, self.leave = self._enter, self._leave
            if settings.get("store") is not None:
                # A store that may do I/O (Redis): an async call awaits it. The
                # default, this process's memory, answers at once: the sync hooks serve.
                self.aenter, self.aleave, self.afail = self._aenter, self._aleave, self._afail
        else:
            self.leave = self._leave if self.reject is not None else self._leave_plain_free
        if callable(self.default):
            # The async hooks await what a default= callable returns, if awaitable.
            self.afail = self._afail
            if self.leave == self._leave:
                self.aleave = self._aleave

    # -- the decision, written once ----------------------------------------------------

    def _failed(self, call: Call, state: _State, exc: BaseException) -> bool:
        """Whether the call moves on from its current target after *exc* (the circuit already told)."""
        if not isinstance(exc, Exception):
            return False  # cancellation, interrupts: not failures
        parent = call._parent
        if parent is not None and parent.runner is call.runner:
            return False  # an alternate calling the decorated function again: its outer call decides
        if isinstance(exc, AnswerRejected) or self._trigger(exc):
            state.errors.append(exc)
            return True
        if state.errors:
            exc.add_note(f"llmguard.fallback: {self._passed_over(state)}; then {self.targets[state.index].name} failed with an error on= does not accept")
        return False

    def _passed_over(self, state: _State) -> str:
        return "; ".join(f"{self.targets[i].name}: {_reason(e)}" for i, e in enumerate(state.errors))

    def _may_start(self, state: _State, index: int) -> bool:
        """Whether target *index* may start now: not once the active deadline has passed."""
        dl = active_deadline()
        if dl is None or _clock.now() < dl:
            return True
        state.errors.append(GuardTimeout(f"the deadline passed before {self.targets[index].name} could start", limit="total"))
        return False

    def _run(self, call: Call, state: _State, index: int, ticket: object) -> Run:
        """Run target *index* as the inside."""
        state.index, state.ticket = index, ticket
        target = self.targets[index]
        if target.overrides is not None:
            # Always a Run with arguments: it replaces an earlier target's (its function too).
            run = call.run_with(target.overrides)
            args = None if run is None else run.args
            kwargs = call.kwargs if run is None or run.kwargs is None else run.kwargs
            return Run(args=args, kwargs=kwargs, state=state)
        kwargs = call.kwargs
        if target.model is not None and not _given(call, "model"):
            kwargs = {**kwargs, "model": target.model}
        return Run(kwargs=kwargs, fn=target.fn, state=state)

    def _exhausted(self, call: Call, state: _State) -> Answer:
        """No target left: the default, or `AllFailed` with each target's error in order."""
        record = call.record
        record.extra["fallback_passed_over"] = self._passed_list(state)
        default = self.default
        if default is _NO_DEFAULT:
            n = len(state.errors)
            msg = f"all {n} fallback target{'s' * (n != 1)} of {call.function_name} failed: {self._passed_over(state)}"
            raise AllFailed(msg, state.errors)
        record.fallback_target = "default"
        _events.emit(_events.FALLBACK_USED, record, target="default", passed_over=self._passed_over(state))
        value = default(*call.positional(), **call.kwargs) if callable(default) else default
        if call.shape == ASYNCGEN and not hasattr(value, "__aiter__"):
            value = _chunks(value)  # an async generator function's default given as a list of chunks
        return Answer(value)

    def _passed_list(self, state: _State) -> list[dict[str, str]]:
        return [{"target": self.targets[i].name, "reason": _reason(e)} for i, e in enumerate(state.errors)]

    def _answered(self, call: Call, state: _State) -> None:
        """An alternate answered: say so on the record, the span and the log."""
        name = self.targets[state.index].name
        call.note(fallback_target=name, extra={"fallback_passed_over": self._passed_list(state)})
        _events.emit(_events.FALLBACK_USED, call.record, target=name, index=state.index, passed_over=self._passed_over(state))

    def _refused(self, call: Call, state: _State | None, result: Any) -> _State | None:
        """The state to move on with when ``reject=`` refuses *result*, else None."""
        reject = self.reject
        if reject is None or isinstance(result, _StreamBase):
            return None
        refused = reject(result, call.record.attempt) if self._reject_sees_attempt else reject(result)
        if not refused:
            return None
        state = state or _State(0, None)
        name = self.targets[state.index].name
        state.errors.append(AnswerRejected(f"reject= refused the answer of {name}", answer=result, target=name))
        return state

    # -- sync hooks ----------------------------------------------------------------------
    # The primary's state is its circuit's ticket as it is (no `_State` on the success
    # path); a `_State` once the call moved past it. With no circuits there is no enter,
    # and the state is None until the primary fails.

    def _enter(self, call: Call) -> Any:
        """Admit the primary through its circuit (its ticket is the state); an open one is skipped without a call."""
        try:
            return self._admit_first()
        except CircuitOpen as open_:
            state = _State(0, None)
            state.errors.append(open_)
            return self._next(call, state)

    def _next(self, call: Call, state: _State) -> Run | Answer:
        """The next target that may start and its circuit admits, or the end (default / AllFailed)."""
        for index in range(state.index + 1, len(self.targets)):
            if not self._may_start(state, index):
                break
            circuit = self.targets[index].circuit
            try:
                ticket = None if circuit is None else circuit.admit()
            except CircuitOpen as open_:
                state.errors.append(open_)
                continue
            return self._run(call, state, index, ticket)
        return self._exhausted(call, state)

    def _leave(self, call: Call, state: Any, result: Any) -> Any:
        """The target answered (a stream: its first chunk came): refused, or the answer."""
        if state.__class__ is not _State:
            if state is not None:
                self._record_first(state, None)
            if self.reject is None:
                return result
            state = None
        elif state.ticket is not None:
            self.targets[state.index].circuit.record(state.ticket, None)  # type: ignore[union-attr]
        refused = self._refused(call, state, result)
        if refused is not None:
            out = self._next(call, refused)
            return out.value if type(out) is Answer else out
        if state is not None and state.index:
            self._answered(call, state)
        return result

    def _leave_plain_free(self, call: Call, state: _State | None, result: Any) -> Any:
        """`leave` with no circuits and no ``reject=``: only an alternate's answer is noted."""
        if state is not None and state.index:
            self._answered(call, state)
        return result

    def _fail(self, call: Call, state: Any, exc: BaseException) -> Run | Answer | None:
        """The target failed: the next one, the default, `AllFailed`, or *exc* as it is."""
        if state.__class__ is not _State:
            if state is not None:
                self._first.record(state, exc)  # type: ignore[union-attr]
            state = _State(0, None)
        elif state.ticket is not None:
            self.targets[state.index].circuit.record(state.ticket, exc)  # type: ignore[union-attr]
            state.ticket = None
        if not self._failed(call, state, exc):
            return None
        return self._next(call, state)

    # -- async hooks: the same decisions, awaiting the circuits (a shared store's I/O) ----

    async def _aenter(self, call: Call) -> Any:
        """`_enter` on an event loop."""
        try:
            return await self._first.aadmit()  # type: ignore[union-attr]
        except CircuitOpen as open_:
            state = _State(0, None)
            state.errors.append(open_)
            return await self._anext(call, state)

    async def _anext(self, call: Call, state: _State) -> Run | Answer:
        """`_next` on an event loop."""
        for index in range(state.index + 1, len(self.targets)):
            if not self._may_start(state, index):
                break
            circuit = self.targets[index].circuit
            try:
                ticket = None if circuit is None else await circuit.aadmit()
            except CircuitOpen as open_:
                state.errors.append(open_)
                continue
            return self._run(call, state, index, ticket)
        return await _awaited(self._exhausted(call, state))

    async def _aleave(self, call: Call, state: Any, result: Any) -> Any:
        """`_leave` on an event loop."""
        if state.__class__ is not _State:
            if state is not None:
                await self._first.arecord(state, None)  # type: ignore[union-attr]
            if self.reject is None:
                return result
            state = None
        elif state.ticket is not None:
            await self.targets[state.index].circuit.arecord(state.ticket, None)  # type: ignore[union-attr]
        refused = self._refused(call, state, result)
        if refused is not None:
            out = await self._anext(call, refused)
            return out.value if type(out) is Answer else out
        if state is not None and state.index:
            self._answered(call, state)
        return result

    async def _afail(self, call: Call, state: Any, exc: BaseException) -> Run | Answer | None:
        """`_fail` on an event loop."""
        if state.__class__ is not _State:
            if state is not None:
                await self._first.arecord(state, exc)  # type: ignore[union-attr]
            state = _State(0, None)
        elif state.ticket is not None:
            await self.targets[state.index].circuit.arecord(state.ticket, exc)  # type: ignore[union-attr]
            state.ticket = None
        if not self._failed(call, state, exc):
            return None
        return await self._anext(call, state)


async def _chunks(items: Iterable[Any]) -> AsyncIterator[Any]:
    """*items* as the async stream an async generator function's caller reads."""
    for item in items:
        yield item


async def _awaited(out: Answer) -> Answer:
    """A default of an async call: awaited when the ``default=`` callable returned an awaitable."""
    value = out.value
    return Answer(await value) if inspect.isawaitable(value) else out


def _given(call: Call, name: str) -> bool:
    """Whether the caller passed parameter *name* (by keyword or position)."""
    if name in call.kwargs:
        return True
    binder = call.info.binder
    at = (binder.positions_after if call.instance is not None else binder.positions).get(name)
    return at is not None and at < len(call.args)


def _copy(layer: FallbackLayer) -> FallbackLayer:
    new = object.__new__(FallbackLayer)
    new.__dict__.update(layer.__dict__)
    return new


def fallback(
    *alternates: Callable[..., Any] | Mapping[str, Any],
    on: On = None,
    reject: Callable[..., Any] | None = None,
    default: Any = _NO_DEFAULT,
    breaker: Any = True,
) -> FallbackLayer:
    """Try other targets, in order, when the decorated function's call fails or its answer is refused.

    ``@lg.fallback(*alternates, on=None, reject=None, default=<none>,
    breaker=True)``. Each alternate is a function with the decorated
    function's signature (another provider), or a dict of keyword overrides
    applied to the decorated function (``{"model": "gpt-4o-mini"}``).

    * ``on=``: which errors move on (after whatever retry sits below):
      ErrorKinds, exception classes, a tuple of them, or a predicate of the
      exception; it replaces the default (`default_trigger`: transient errors,
      timeouts, `CircuitOpen`, context too long).
    * ``reject=``: a predicate of a successful answer, or of the answer and
      its `lg.Attempt` (``finish_reasons``, ``usage``...); true refuses it
      and moves on, as a failure would. Plain answers only, not streams.
    * ``default=``: what to return when every target failed: a value, or a
      callable given the call's arguments (awaited if it returns an
      awaitable, for an async function). Without it, `lg.AllFailed`.
    * ``breaker=``: a circuit per target, skipping one that keeps failing
      without a call: True (default settings), False/None (none), a dict of
      `lg.breaker` settings, or an ``lg.breaker(...)`` whose settings are used.

    See the module docs for the rest (streams, the record, deadlines).
    """
    return FallbackLayer(*alternates, on=on, reject=reject, default=default, breaker=breaker)
