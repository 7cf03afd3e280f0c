"""The facts of each attempt of a guarded call, derived once, in one place.

`llmguard._runner` runs the guards and the function; what an attempt was
(usage, model, provider, cost, finish reasons, outcome, error kind) is
worked out here, from the result through the provider adapters
(`llmguard.providers`) and priced by `llmguard.prices`:

- attempts begun, settled from a result or failed with a classified error,
  and priced (`_begin_attempt`, `_settle_attempt`, `_fail_attempt`);
- `report_usage`, for code llmguard cannot read, and `_CURRENT`, the call
  and attempt whose code is running now;
- how a call or a stream ended (`outcome_of`, `error_kind_of`,
  `_end_record`), and the call shape of a function (`shape_of`).

Streams, and what an attempt learns from them chunk by chunk, are in `llmguard._stream`.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import types

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _clock, prices, providers
from ._record import Attempt, CallRecord, ErrorKind, Outcome, Usage


if TYPE_CHECKING:
    from ._call import Call


SYNC = "sync"
ASYNC = "async"
GEN = "generator"
ASYNCGEN = "async generator"

FinishHook = Callable[[Outcome, "BaseException | None"], None]
_OK = Outcome.OK  # enum member lookups cost ~50 ns; the hot path uses this

# ``_CURRENT`` is the call whose user code is running now and its attempt:
# ``(call, attempt)``, or ``(call, slot)`` with the attempt's slot
# (`_runner.Call._begin`) before the record exists (report_usage writes there): how `report_usage()`, `current_call()` and
# nested guarded calls find it. Tokens are always reset in the same frame
# that set them, and never held across a ``yield`` (streams set and reset it
# around each pull).
_CURRENT: contextvars.ContextVar[tuple[Call, Attempt | list[Any]] | None] = contextvars.ContextVar("llmguard_current", default=None)


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
    call, attempt = running
    if not isinstance(attempt, Attempt):  # a runner's slot (see `_runner.Call._begin`)
        slot = attempt
        if slot[5] is None:  # no record yet: built now, it makes the slot's attempt
            call.record  # noqa: B018
        attempt = slot[5]
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



# -- ending the call's record ----------------------------------------------


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


