"""`retry`: provider-aware retries with capped, jittered backoff.

What is retried, by default, is decided by the provider adapters'
classification of the exception (`llmguard.providers.classify`):

* retried: rate limited (429), overloaded (529), server errors (5xx), 408,
  409, connection errors, timeouts (the SDKs' and llmguard's own per-attempt
  `GuardTimeout`), and anything the server marks ``x-should-retry: true``;
* never: 400/401/403/404/422, context too long, content filtered,
  ``x-should-retry: false``, and llmguard's own refusals (`BudgetExceeded`,
  `CircuitOpen`, `InputRejected`) and `StreamInterrupted`.

The wait before retry *n* (1-based) is capped exponential backoff,
``min(max_delay, initial * multiplier ** (n - 1))``, with full jitter by
default (a uniform draw below that cap; "equal" keeps half of it fixed,
"decorrelated" draws between ``initial`` and three times the previous wait).
A delay the server asks for (``retry-after-ms``, ``retry-after``, the
rate-limit reset headers) wins when it is longer. Retrying stops at once, with
no pointless sleep, when the wait would end past the active deadline
(``with lg.timeout(...)``) or past ``max_elapsed`` (60 s by default), or when the server asks
for more than ``max_retry_after`` seconds.

On giving up, the **original** last exception is re-raised (so ``except
anthropic.RateLimitError`` keeps working) with a PEP 678 note saying how many
attempts were made over how long.

Streams: a failure before the first chunk reaches the caller is retried like
any other; after it, chunks cannot be taken back, so the failure is raised as
`StreamInterrupted` carrying the text and usage seen so far.

Configure the SDK client underneath with ``max_retries=0``: the SDKs retry
twice by default, and nested retries multiply (4 x 3 = 12 requests). llmguard
warns once when it can see a client that still retries.
"""

from __future__ import annotations

import datetime as dt
import inspect
import math
import random
import threading

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Final, Literal, ParamSpec, TypeVar, cast, overload

from . import _check, _clock, _events
from ._binder import Binder
from ._call import Call
from ._context import deadline as active_deadline
from ._record import CallRecord, ErrorKind
from ._runner import Guard, Run
from ._warn import warn
from .errors import GuardTimeout, LLMGuardError, StreamInterrupted
from .providers import classify


P = ParamSpec("P")
R = TypeVar("R")

Jitter = Literal["full", "equal", "decorrelated"] | None
Predicate = Callable[[BaseException], "bool | float | dt.timedelta"]
On = type[BaseException] | tuple[type[BaseException], ...] | Predicate | None

_JITTERS: Final = ("full", "equal", "decorrelated", None)

# What a later identical request cannot fix, whatever x-should-retry says.
# (Other client errors — auth, not found, bad request — are not transient, so
# they are retried only when the server itself says x-should-retry: true.)
_NEVER_STATUSES: Final = frozenset({400, 401, 403, 404, 422})
_NEVER_KINDS: Final = frozenset({ErrorKind.CONTEXT_TOO_LONG, ErrorKind.CONTENT_FILTERED})
# Exceptions that end a call rather than fail it.
_NOT_FAILURES: Final = (KeyboardInterrupt, SystemExit, GeneratorExit)


class _RetryBudget:
    """A token bucket shared by every caller of one function.

    Each call deposits ``ratio`` tokens and each retry spends one, so over
    time retries stay below ``ratio`` of calls; a small reserve lets the
    first isolated failures retry before any calls have deposited.
    """

    __slots__ = ("_lock", "_tokens", "cap", "ratio")

    RESERVE: Final = 10.0

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio
        self.cap = self.RESERVE
        self._tokens = self.RESERVE
        self._lock = threading.Lock()

    def deposit(self) -> None:
        with self._lock:
            self._tokens = min(self.cap, self._tokens + self.ratio)

    def withdraw(self) -> bool:
        with self._lock:
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True


class _Attempts:
    """Where one call's retrying stands: attempts made, time, last wait."""

    __slots__ = (
        "count",
        "last_delay",
        "last_error",
        "previous_wait",
        "retryable",
        "started",
        "stopped_by",
    )

    def __init__(self, started: float) -> None:
        self.started = started
        self.retryable = False  # the last error was one worth retrying
        self.count = 0
        self.last_delay = 0.0
        self.previous_wait = 0.0
        self.last_error: BaseException | None = None
        self.stopped_by = ""


class RetryLayer(Guard):
    """The `retry` guard. Build it with `retry`, not directly."""

    name = "retry"

    def __init__(
        self,
        attempts: int = 4,
        *,
        on: On = None,
        initial: float | dt.timedelta = 0.5,
        max_delay: float | dt.timedelta = 30.0,
        multiplier: float = 2.0,
        jitter: Jitter = "full",
        max_elapsed: float | dt.timedelta | None = 60.0,
        max_retry_after: float | dt.timedelta = 300.0,
        budget_ratio: float | None = None,
    ) -> None:
        _check.number("retry", "attempts", attempts, integer=True, minimum=1, exclusive=False)
        if on is not None and not _valid_on(on):
            msg = (
                "retry(on=...) must be an exception class, a tuple of them, or a "
                f"callable taking the exception, got {on!r}"
            )
            raise TypeError(msg)
        if jitter not in _JITTERS:
            msg = f'retry(jitter=...) must be "full", "equal", "decorrelated" or None, got {jitter!r}'
            raise ValueError(msg)
        _check.number("retry", "multiplier", multiplier, minimum=1, exclusive=False)
        _check.number("retry", "budget_ratio", budget_ratio, maximum=1, optional=True)
        self.max_attempts = attempts
        self.on = on
        self.initial = _check.seconds("retry", "initial", initial)
        self.max_delay = _check.seconds("retry", "max_delay", max_delay)
        self.max_elapsed = _check.seconds("retry", "max_elapsed", max_elapsed, optional=True)
        self.max_retry_after = _check.seconds("retry", "max_retry_after", max_retry_after)
        if self.max_delay < self.initial:  # each checked alone first, so a bad one is named as such
            msg = f"retry(max_delay=...) must be >= initial (initial={self.initial:g}), got {self.max_delay:g}"
            raise ValueError(msg)
        self.multiplier = float(multiplier)
        self.jitter = jitter
        self.budget_ratio = budget_ratio
        self._budget: _RetryBudget | None = None
        self._warned = False
        self._function = ""

    def settings(self) -> dict[str, Any]:
        """The configuration, for `describe`."""
        return {
            "attempts": self.max_attempts,
            "on": self.on,
            "initial": self.initial,
            "max_delay": self.max_delay,
            "multiplier": self.multiplier,
            "jitter": self.jitter,
            "max_elapsed": self.max_elapsed,
            "max_retry_after": self.max_retry_after,
            "budget_ratio": self.budget_ratio,
        }

    def for_function(self, fn: Callable[..., Any], shape: str, binder: Binder) -> RetryLayer:  # noqa: ARG002
        """A copy for *fn*: its own retry budget and SDK-retries warning."""
        layer = _copy(self)
        layer._budget = _RetryBudget(self.budget_ratio) if self.budget_ratio else None
        if layer._budget is not None:
            layer.enter = layer._deposit
        layer._function = getattr(fn, "__qualname__", repr(fn))
        client = _retrying_client(fn)
        if client is not None:
            layer._warn_sdk_retries(client)
        return layer

    # -- the decision ------------------------------------------------------

    def _delay(self, exc: BaseException, state: _Attempts) -> float | None:
        """Seconds to wait before the next attempt, or None to give up."""
        state.last_error = exc
        if isinstance(exc, _NOT_FAILURES) or not isinstance(exc, Exception):
            return None  # cancellation, interrupts: not failures to retry
        server_delay, reason, exact = self._judge(exc)
        if reason:
            state.stopped_by = reason
            return None
        state.retryable = True
        if state.count >= self.max_attempts:
            state.stopped_by = "attempts exhausted"
            return None
        if self._budget is not None and not self._budget.withdraw():
            state.stopped_by = "retry budget exhausted"
            return None
        wait = server_delay if exact and server_delay is not None else self._backoff(state)
        if server_delay is not None and not exact:
            if server_delay > self.max_retry_after:
                state.stopped_by = f"server asked to wait {server_delay:.1f}s (> max_retry_after)"
                return None
            wait = max(wait, server_delay)
        now = _clock.now()
        dl = active_deadline()
        if dl is not None and now + wait >= dl:
            state.stopped_by = f"the next attempt could not start before the deadline (wait {wait:.2f}s)"
            return None
        if self.max_elapsed is not None and now + wait - state.started >= self.max_elapsed:
            state.stopped_by = f"max_elapsed ({self.max_elapsed}s) would be passed (wait {wait:.2f}s)"
            return None
        state.last_delay = wait
        return wait

    def _judge(self, exc: BaseException) -> tuple[float | None, str, bool]:
        """(server delay, reason not to retry, whether the delay is exact) for *exc*.

        An empty reason means retry; a delay from an ``on=`` predicate is used
        as it is, a server's delay only when longer than the backoff.
        """
        if isinstance(exc, StreamInterrupted):
            return None, "the stream had already reached the caller", False
        on = self.on
        if on is not None and not isinstance(on, (type, tuple)):
            verdict = on(exc)
            if verdict is False or verdict is None:
                return None, "on= said no", False
            if verdict is True:
                return classify(exc).retry_after, "", False
            return _predicate_delay(verdict, exc), "", True
        if on is not None:
            # Explicit exception classes replace the default classification,
            # the never-retried statuses included: the caller asked for them.
            refusal = isinstance(exc, LLMGuardError) and not isinstance(exc, GuardTimeout)
            if not isinstance(exc, on) or (refusal and not _named(exc, on)):
                return None, f"not retryable ({type(exc).__name__} is not in on=)", False
            return classify(exc).retry_after, "", False
        if isinstance(exc, GuardTimeout):
            return None, "", False  # a per-attempt timeout: worth another attempt
        info = classify(exc)
        if info.kind is ErrorKind.GUARD:
            return None, f"not retryable ({type(exc).__name__})", False
        if info.should_retry is False:
            return None, "the server said x-should-retry: false", False
        never = info.status in _NEVER_STATUSES or info.kind in _NEVER_KINDS
        if not never and (info.kind.transient or info.should_retry):
            return info.retry_after, "", False
        return None, f"not retryable ({info.kind.value})", False

    def _backoff(self, state: _Attempts) -> float:
        n = state.count  # attempts made so far; the first retry has n == 1
        try:
            grown = self.initial * self.multiplier ** (n - 1)
        except OverflowError:  # many attempts: past any max_delay long ago
            grown = math.inf
        cap = min(self.max_delay, grown)
        if self.jitter == "full":
            wait = random.uniform(0, cap)  # noqa: S311 - jitter, not cryptography
        elif self.jitter == "equal":
            wait = cap / 2 + random.uniform(0, cap / 2)  # noqa: S311
        elif self.jitter == "decorrelated":
            prev = state.previous_wait or self.initial
            wait = min(self.max_delay, random.uniform(self.initial, prev * 3))  # noqa: S311
        else:
            wait = cap
        state.previous_wait = wait
        return wait

    def _scheduled(self, record: CallRecord | None, state: _Attempts, delay: float) -> None:
        exc = state.last_error
        kind = classify(exc).kind.value if isinstance(exc, Exception) else None
        _events.emit(
            _events.RETRY_SCHEDULED,
            record,
            level="warning",
            attempt=state.count,
            delay=round(delay, 6),
            error_kind=kind,
            cause=type(exc).__name__,
        )
        if record is not None:
            record.extra["retries"] = record.extra.get("retries", 0) + 1

    def _give_up(self, record: CallRecord | None, state: _Attempts, exc: BaseException) -> None:
        if not isinstance(exc, Exception) or (state.count == 1 and not state.retryable):
            return  # a first failure that is not retryable: left exactly as raised
        elapsed = _clock.now() - state.started
        note = (
            f"llmguard.retry: gave up after {state.count} attempt{'s' * (state.count != 1)} "
            f"over {elapsed:.2f}s (last delay {state.last_delay:.2f}s): {state.stopped_by}"
        )
        exc.add_note(note)
        _events.emit(
            _events.RETRY_EXHAUSTED,
            record,
            level="warning",
            attempts=state.count,
            elapsed=round(elapsed, 6),
            reason=state.stopped_by,
            cause=type(exc).__name__,
        )
        self._check_sdk_retried(exc)

    # -- the guard ---------------------------------------------------------

    # A stream's failure before its first chunk reaches the caller is retried;
    # after it, the runner raises `StreamInterrupted` (nothing is replayed).
    primes = True

    def _deposit(self, call: Call) -> None:  # noqa: ARG002
        """``enter`` when a retry budget is set: every call deposits into it."""
        cast("_RetryBudget", self._budget).deposit()

    def fail(self, call: Call, state: _Attempts | None, exc: BaseException) -> Run | None:
        """After an error: the wait before trying again, or None to give up (re-raising it)."""
        if state is None:
            state = _Attempts(call.started_at)
        state.count += 1
        delay = self._delay(exc, state)
        if delay is None:
            self._give_up(call.record, state, exc)
            return None
        self._scheduled(call.record, state, delay)
        return Run(delay, state=state)

    # -- the block form ----------------------------------------------------

    def attempts(self) -> Iterator[RetryAttempt]:
        """Retry a block of code: ``for attempt in r.attempts(): with attempt: ...``."""
        state = _Attempts(_clock.now())
        while True:
            state.count += 1
            attempt = RetryAttempt(self, state)
            yield attempt
            if attempt.delay is None:
                return
            self._scheduled(None, state, attempt.delay)
            _clock.get_clock().sleep(attempt.delay)

    async def attempts_async(self) -> AsyncIterator[RetryAttempt]:
        """Retry a block of async code: ``async for attempt in r.attempts_async(): with attempt: ...``."""
        state = _Attempts(_clock.now())
        while True:
            state.count += 1
            attempt = RetryAttempt(self, state)
            yield attempt
            if attempt.delay is None:
                return
            self._scheduled(None, state, attempt.delay)
            await _clock.get_clock().asleep(attempt.delay)

    # -- SDK retries underneath ---------------------------------------------

    def _warn_sdk_retries(self, client: Any) -> None:
        if self._warned:
            return
        self._warned = True
        warn(
            f"llmguard.retry on {self._function}: the {type(client).__module__.partition('.')[0]} "
            f"client it calls also retries (max_retries={client.max_retries}), so attempts "
            f"multiply ({self.max_attempts} x {client.max_retries + 1}); create the client with "
            "max_retries=0 and let llmguard do the retrying",
            UserWarning,
        )

    def _check_sdk_retried(self, exc: BaseException) -> None:
        request = getattr(exc, "request", None)
        headers = getattr(request, "headers", None)
        if headers is None:
            return
        try:
            count = int(headers.get("x-stainless-retry-count", "0"))
        except (TypeError, ValueError, AttributeError):
            return
        if count > 0 and not self._warned:
            self._warned = True
            warn(
                f"llmguard.retry on {self._function}: the SDK client underneath retried too "
                f"({count} retries on the last attempt), so attempts multiply; create the "
                "client with max_retries=0 and let llmguard do the retrying",
                UserWarning,
            )


class RetryAttempt:
    """One attempt of the block form; use it as a ``with`` block."""

    __slots__ = ("_layer", "_state", "delay")

    def __init__(self, layer: RetryLayer, state: _Attempts) -> None:
        self._layer = layer
        self._state = state
        self.delay: float | None = None  # set when the block failed and will be retried

    @property
    def number(self) -> int:
        """1 for the first attempt, 2 for the first retry..."""
        return self._state.count

    def __enter__(self) -> RetryAttempt:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> bool:
        if exc is None:
            return False
        delay = self._layer._delay(exc, self._state)
        if delay is None:
            self._layer._give_up(None, self._state, exc)
            return False
        self.delay = delay
        return True  # swallowed: the loop sleeps and tries again


def _predicate_delay(verdict: object, exc: BaseException) -> float:
    """The wait an ``on=`` predicate asked for: finite seconds >= 0 (or a timedelta), else an error naming ``on=``.

    Any real number is a wait (``Decimal``, ``Fraction``, a numpy number: as a ``float``). A NaN wait
    would retry at once (and stop a fake clock), an infinite one sleep for decades.
    """
    seconds = verdict.total_seconds() if isinstance(verdict, dt.timedelta) else verdict
    try:
        return float(_check.number("retry", "on", seconds, minimum=0, exclusive=False, real=True))
    except (TypeError, ValueError) as bad:
        msg = (
            f"retry(on=...) returned {verdict!r} for {type(exc).__name__}: the predicate must return "
            "True, False, None or a wait of finite seconds >= 0 (or a timedelta)"
        )
        raise type(bad)(msg) from exc


def _named(exc: BaseException, on: type[BaseException] | tuple[type[BaseException], ...]) -> bool:
    """Whether *on* names *exc*'s llmguard class itself (not just a base like Exception)."""
    classes = on if isinstance(on, tuple) else (on,)
    return any(issubclass(c, LLMGuardError) for c in classes if isinstance(exc, c))


def _valid_on(on: object) -> bool:
    if isinstance(on, type):
        return issubclass(on, BaseException)
    if isinstance(on, tuple):
        return bool(on) and all(isinstance(t, type) and issubclass(t, BaseException) for t in on)
    return callable(on)


def _copy(layer: RetryLayer) -> RetryLayer:
    new = object.__new__(RetryLayer)
    new.__dict__.update(layer.__dict__)
    return new


def _retrying_client(fn: Callable[..., Any]) -> Any:
    """An anthropic/openai client *fn* visibly uses that still retries, if any."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    candidates: list[Any] = []
    fn_globals = getattr(fn, "__globals__", {})
    candidates.extend(fn_globals[name] for name in code.co_names if name in fn_globals)
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            candidates.append(cell.cell_contents)
        except ValueError:  # an empty cell
            continue
    for obj in candidates:
        module = type(obj).__module__.partition(".")[0]
        if module in ("anthropic", "openai"):
            retries = getattr(obj, "max_retries", 0)
            if isinstance(retries, int) and retries > 0:
                return obj
    return None


@overload
def retry(fn: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def retry(
    attempts: int = 4,
    *,
    on: On = None,
    initial: float | dt.timedelta = 0.5,
    max_delay: float | dt.timedelta = 30.0,
    multiplier: float = 2.0,
    jitter: Jitter = "full",
    max_elapsed: float | dt.timedelta | None = 60.0,
    max_retry_after: float | dt.timedelta = 300.0,
    budget_ratio: float | None = None,
) -> RetryLayer: ...
def retry(fn_or_attempts: Any = None, /, **kwargs: Any) -> Any:
    """Retry transient LLM API failures with capped, jittered backoff.

    ``@lg.retry`` or ``@lg.retry(attempts=4, on=None, initial=0.5,
    max_delay=30, multiplier=2, jitter="full", max_elapsed=60,
    max_retry_after=300, budget_ratio=None)``. ``attempts`` counts the
    first call too. ``on`` replaces the default classification: exception
    classes, or a predicate returning True/False or a delay in seconds
    (finite and >= 0, or a timedelta; anything else is an error naming ``on=``).
    ``max_elapsed`` (60 s by default; None for no cap) bounds the whole
    retrying, from the first attempt's start: a wait that would end past it is
    not slept, and the last error is raised at once (three 429s asking
    ``retry-after: 250`` would otherwise wait 750 s). ``budget_ratio`` caps
    retries, across all callers of the function, at that fraction of recent calls. The returned object is also the block form::

        retrying = lg.retry(attempts=3)
        for attempt in retrying.attempts():
            with attempt:
                ...

    See the module docstring for exactly what is retried and how long it waits.
    """
    if fn_or_attempts is None:
        return RetryLayer(**kwargs)
    if callable(fn_or_attempts) or isinstance(fn_or_attempts, (staticmethod, classmethod)):
        if kwargs:
            msg = "retry(fn, ...) takes no other arguments; use @retry(...) to configure"
            raise TypeError(msg)
        return RetryLayer()(fn_or_attempts)
    return RetryLayer(fn_or_attempts, **kwargs)



# help(), IDEs and inspect.signature show the real parameters, not (fn_or_attempts, **kwargs).
retry.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        inspect.Parameter("attempts", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=4),
        *list(inspect.signature(RetryLayer.__init__).parameters.values())[2:],
    ]
)
