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

from . import _clock, _estimate, _events, _warn, prices, providers
from ._context import DeadlinePassed
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
        # What the user reported or the wire measured wins; where the wire
        # saw the exchange, the result's usage only if it reads as a measurement.
        if attempt.usage is None and (not attempt.wire or sane_usage(facts.usage)):
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
    if isinstance(exc, DeadlinePassed):
        attempt.error_kind = ErrorKind.TIMEOUT
    elif not isinstance(exc, _NOT_ERRORS):
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
    if isinstance(exc, DeadlinePassed):
        return ErrorKind.TIMEOUT
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
    Reporting twice in one attempt adds up. In an attempt whose SDK
    requests the wire measured (`llmguard._wire`, docs/wire.md) the usage
    reported is not added: the wire counted those requests already. Returns
    False (and records nothing) when no guarded call is running.
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
    if attempt.wire_usage is not None:
        # The wire measured this attempt's requests; a report of the same
        # numbers (the usual report_usage after reading the SDK's result) would count them twice.
        usage = Usage(0, 0)
    _report_on(attempt, usage, model, provider)
    return True


def _report_on(attempt: Attempt, usage: Usage, model: str | None, provider: str | None) -> None:
    attempt.usage = usage if attempt.usage is None else attempt.usage + usage
    attempt.cost_usd = None  # re-priced when the attempt settles
    if model:
        attempt.response_model = model
    if provider:
        attempt.provider = provider



# -- the wire and estimates ----------------------------------------------------

# Usage beyond this many tokens in one response is garbage, not a measurement.
_ABSURD = 100_000_000


def sane_usage(usage: Usage | None) -> bool:
    """Whether *usage* reads as a measurement: every count an int from 0 to 10**8, something used."""
    if usage is None:
        return False
    counts = (
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        usage.reasoning_tokens,
    )
    if any(type(c) is not int or c < 0 or c > _ABSURD for c in counts):
        return False
    return usage.input_tokens + usage.output_tokens > 0


def wire_report(running: tuple[Call, Attempt | list[Any]], facts: dict[str, Any]) -> None:
    """What the wire (`llmguard._wire`) read of one response, put on the attempt *running* when it was sent.

    Measured usage adds up over the attempt's requests (as `report_usage`
    does); an attempt that already ended (its caller closed a stream
    first, and estimated what it saw) is left as it settled.
    """
    _, attempt = running
    if not isinstance(attempt, Attempt):  # a runner's slot (see `_call.Call._begin`)
        slot = attempt
        if slot[5] is None:
            # No record yet: kept on the slot (the record, if ever built, applies them).
            if slot[2] is None:
                if slot[6] is None:
                    slot[6] = [facts]
                else:
                    slot[6].append(facts)
            return
        attempt = slot[5]
    wire_apply(attempt, facts)


def wire_apply(attempt: Attempt, facts: dict[str, Any]) -> None:
    """Put one response's wire *facts* on *attempt* (see `wire_report`)."""
    if attempt.ended_at is not None:
        return
    attempt.wire += 1
    usage = facts.get("usage")
    if usage is not None:
        # Measured: it replaces what the code reported in this attempt (see `report_usage`).
        measured = usage if attempt.wire_usage is None else attempt.wire_usage + usage
        attempt.wire_usage = measured
        attempt.usage = None
        _report_on(attempt, measured, facts.get("model"), facts.get("provider"))
    elif facts.get("provider") and attempt.provider is None:
        attempt.provider = facts["provider"]
    if facts.get("response_id"):
        attempt.response_id = facts["response_id"]
    if facts.get("request_id"):
        attempt.request_id = facts["request_id"]
    if facts.get("rate_limits"):
        attempt.rate_limits = facts["rate_limits"]


_WARNED: set[str] = set()


def wire_usage(facts: list[dict[str, Any]]) -> tuple[Usage, str | None, str | None] | None:
    """``(usage, model, provider)`` the wire measured over a slot's responses (`wire_report`), or None."""
    total: Usage | None = None
    model = provider = None
    for one in facts:
        usage = one.get("usage")
        if usage is not None:
            total = usage if total is None else total + usage
            model = one.get("model") or model
            provider = one.get("provider") or provider
    return None if total is None else (total, model, provider)


def _estimable(result: Any) -> bool:
    """A result that is an LLM's answer without its usage: text, a dict, a pydantic model, None."""
    return result is None or isinstance(result, (str, dict)) or hasattr(type(result), "model_dump_json")


def plain_wire(call: Call) -> tuple[Usage, str | None, str | None] | None:
    """``(usage, model, provider)`` the wire measured for the last attempt of a call whose record is not built, or None."""
    slots = call._attempts
    if not slots or slots[-1][6] is None:
        return None
    return wire_usage(slots[-1][6])


def needs_record(call: Call, result: Any) -> bool:
    """Whether a call's one plain *result* is estimated (on its record): nothing measured, and text, a dict, a model or None.

    For a guard that reads a result without the record (`trace` alone),
    which reads the wire's usage with `plain_wire`.
    """
    slots = call._attempts
    seen = bool(slots) and slots[-1][6] is not None  # type: ignore[index]
    return (seen or _estimable(result)) and plain_wire(call) is None


def estimate_unmeasured(call: Call, attempt: Attempt, result: Any) -> None:
    """An attempt that returned *result* with no usage measured or reported: estimate it, flag it, say so.

    The input from the call's arguments (`Call.estimated_input_tokens`, at
    least 1), the output from the text of *result* (a pydantic model's
    JSON, a dict's text; None: 0): llmguard's one estimator
    (`llmguard._estimate`). Emits ``llmguard.usage.estimated`` and warns
    once per function. Anything else a function returns (a number, an
    object of its own) is left without usage.
    """
    if attempt.usage is not None or not _estimable(result):
        return
    if result is None:
        out = 0
    elif isinstance(result, str):
        out = _estimate.text_tokens(result)
    else:
        try:
            text = result.model_dump_json() if hasattr(type(result), "model_dump_json") else str(result)
        except Exception:  # noqa: BLE001 - an odd model: its repr
            text = repr(result)
        out = _estimate.text_tokens(text)
    usage = Usage(max(call.estimated_input_tokens(), 1), out, estimated=True)
    attempt.usage = usage
    attempt.cost_usd = None
    _price(attempt)
    seen = attempt.wire
    record = call.record
    _events.emit(
        _events.USAGE_ESTIMATED,
        record,
        level="warning",
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        responses_seen=seen,
    )
    name = record.function
    if name not in _WARNED:
        _WARNED.add(name)
        hint = (
            "the SDK's responses carried no usage (for an openai stream pass stream_options={'include_usage': True})"
            if seen
            else "no SDK request was seen (another client, raw HTTP, or a transport llmguard does not patch): "
            "call lg.report_usage(...) inside the function with the provider's numbers"
        )
        _warn.warn(
            f"llmguard: {name} returned {type(result).__name__} and no usage was measured, so its usage "
            f"is estimated (flagged estimated, event {_events.USAGE_ESTIMATED}); {hint}",
            RuntimeWarning,
        )


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


