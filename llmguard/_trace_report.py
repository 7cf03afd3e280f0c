"""What a traced call reports when it ends: span attributes, metrics, the call event.

Pure builders over the facts `_CallTrace` gathered: `_answer_attributes`
(response, usage, cost), `_guard_attributes` (what other guards noted),
`_error_attributes` and `_set_error_status`; `_record_metrics` (the spec's
histograms and llmguard's counters) and `_emit` (the one ``llmguard.call``
event). Every name comes from `_semconv`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from opentelemetry.trace import Span, Status, StatusCode

from . import _events, _semconv, providers
from ._record import CallRecord, ErrorKind, Outcome
from ._secrets import scrub
from ._trace_otel import _add_exception_event
from .errors import BudgetExceeded, CircuitOpen, InputRejected, RateLimited


if TYPE_CHECKING:
    from ._record import Usage
    from ._trace import TraceLayer
    from ._trace_call import _CallTrace
    from ._trace_otel import _Instruments


_OK = Outcome.OK
_LEVELS: Final = {
    Outcome.OK: "info",
    Outcome.CLOSED: "info",
    Outcome.CANCELLED: "warning",
    Outcome.ABANDONED: "warning",
}
# Guards' refusals: the call was stopped before any request was made.
_REFUSALS: Final = (BudgetExceeded, RateLimited, CircuitOpen, InputRejected)
_REQUEST_PARAMS: Final = (
    ("max_tokens", "request_max_tokens"),
    ("temperature", "request_temperature"),
    ("top_p", "request_top_p"),
)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# -- the span's attributes --------------------------------------------------------


def _answer_attributes(
    attrs: dict[str, Any],
    n: _semconv.Semconv,
    span: Span,
    layer: TraceLayer,
    request_model: str | None,
    operation: str,
    answer: tuple[str | None, str | None, tuple[str, ...], Usage | None, float | None],
) -> None:
    """The span's attributes from the answer: (response model, id, finish reasons, usage, cost)."""
    response_model, response_id, finish_reasons, usage, cost = answer
    if response_model:
        attrs[n.response_model] = response_model
        if not request_model and not layer.span_name:
            # The spec's name wants the requested model; when the function
            # chose it inside, the answering model is the best known.
            span.update_name(f"{layer.operation or operation} {response_model}")
    if response_id:
        attrs[n.response_id] = response_id
    if finish_reasons:
        attrs[n.response_finish_reasons] = finish_reasons
    if usage is not None:
        attrs[n.usage_input] = usage.input_tokens
        attrs[n.usage_output] = usage.output_tokens
        attrs[n.usage_cache_read] = usage.cache_read_tokens
        attrs[n.usage_cache_write] = usage.cache_write_tokens
        if usage.reasoning_tokens:
            attrs[n.usage_reasoning] = usage.reasoning_tokens
        if usage.estimated:
            attrs[n.lg_usage_estimated] = True
    if cost is not None:
        attrs[n.lg_cost] = cost


def _guard_attributes(attrs: dict[str, Any], n: _semconv.Semconv, record: CallRecord) -> None:
    """What the user and other guards put on the record: request parameters, cache, fallback, budget, route."""
    if record._request:
        _request_attributes(attrs, n, record._request)
    if record.cache is not None:
        attrs[n.lg_cache] = record.cache
    if record.cache_similarity is not None:
        attrs[n.lg_cache_similarity] = record.cache_similarity
    if record.saved_usd is not None:
        attrs[n.lg_saved] = record.saved_usd
    if record.fallback_target is not None:
        attrs[n.lg_fallback_target] = scrub(str(record.fallback_target))
    if record.budget_decision is not None:
        attrs[n.lg_budget_decision] = str(record.budget_decision)
    if record.route is not None:
        attrs[n.lg_route] = scrub(str(record.route))


def _request_attributes(attrs: dict[str, Any], n: _semconv.Semconv, request: Mapping[str, Any]) -> None:
    """The request parameters put on the record (``record.request``), as span attributes."""
    for param, key in _REQUEST_PARAMS:
        value = request.get(param)
        if _number(value):
            attrs[getattr(n, key)] = value


def _error_attributes(attrs: dict[str, Any], n: _semconv.Semconv, exc: BaseException) -> None:
    """The error's kind, and which guard refused the call."""
    kind = _error_kind(exc)
    if kind is not None:
        attrs[n.lg_error_kind] = kind.value
    if isinstance(exc, _REFUSALS):
        attrs[n.lg_refusal] = type(exc).__name__


def _set_error_status(span: Span, error_type: str, outcome: Outcome, exc: BaseException | None) -> None:
    if exc is not None and outcome is Outcome.ERROR:
        _add_exception_event(span, exc)
        span.set_status(Status(StatusCode.ERROR, f"{error_type}: {scrub(str(exc))[:300]}"))
    else:
        span.set_status(Status(StatusCode.ERROR, error_type))


def _error_kind(exc: BaseException | None) -> ErrorKind | None:
    if exc is None or not isinstance(exc, Exception):
        return None  # success, or cancellation / close / KeyboardInterrupt
    return providers.classify(exc).kind


def _error_type(outcome: Outcome, exc: BaseException | None) -> str | None:
    """``error.type``: the exception's class, or how an unfinished stream ended."""
    if outcome is _OK or outcome is Outcome.CLOSED:
        return None
    if outcome is Outcome.CANCELLED:
        return "cancelled"
    if outcome is Outcome.ABANDONED:
        return "abandoned"
    if exc is not None:
        return type(exc).__qualname__
    return "_OTHER"

# -- metrics and the call event ----------------------------------------------------


def _metric_attributes(ct: _CallTrace, record: CallRecord, n: _semconv.Semconv) -> dict[str, Any]:
    attrs: dict[str, Any] = {n.operation: ct.layer.operation or record.operation}
    provider = ct.provider or _semconv.provider_from_model(record.request_model)
    if provider:
        attrs[n.provider] = provider
    if record.request_model:
        attrs[n.request_model] = record.request_model
    if ct.response_model:
        attrs[n.response_model] = ct.response_model
    if ct.address is not None:
        attrs[n.server_address] = ct.address[0]
        attrs[n.server_port] = ct.address[1]
    return attrs

def _record_metrics(  # noqa: PLR0912 - one optional instrument per branch
    ct: _CallTrace,
    record: CallRecord,
    ins: _Instruments,
    n: _semconv.Semconv,
    t1: float,
    error_type: str | None,
    exc: BaseException | None,
) -> None:
    attrs = _metric_attributes(ct, record, n)
    if ins.duration is not None:
        ins.duration.record(t1 - ct.t0, {**attrs, n.error_type: error_type} if error_type else attrs)
    usage = ct.usage
    if usage is not None:
        if ins.token_usage is not None:
            ins.token_usage.record(usage.input_tokens, {**attrs, n.token_type: "input"})
            ins.token_usage.record(usage.output_tokens, {**attrs, n.token_type: "output"})
        if ins.op_input is not None:
            ins.op_input.record(usage.input_tokens, attrs)
        if ins.op_output is not None:
            ins.op_output.record(usage.output_tokens, attrs)
        if ins.usage_counters:
            modal = {**attrs, n.token_modality: "unknown"} if n.token_modality else attrs
            for field, counter in ins.usage_counters:
                counter.add(getattr(usage, field), modal)
    if ct.ttfc is not None and ins.ttfc is not None:
        ins.ttfc.record(ct.ttfc, attrs)
    if ct.chunk_gaps and ins.tpoc is not None:
        for gap in ct.chunk_gaps:
            ins.tpoc.record(gap, attrs)
    if ct.cost and ins.cost is not None:
        ins.cost.add(ct.cost, attrs)
    if record.saved_usd and ins.saved is not None:
        ins.saved.add(record.saved_usd, attrs)
    extra = record._extra
    retries = extra.get("retries", 0) if extra else 0  # counted by llmguard.retry
    if retries and ins.retries is not None:
        ins.retries.add(retries, attrs)
    if record.cache == "hit" and ins.cache_hits is not None:
        ins.cache_hits.add(1, attrs)
    elif record.cache == "miss" and ins.cache_misses is not None:
        ins.cache_misses.add(1, attrs)
    if record.fallback_target is not None and ins.fallbacks is not None:
        ins.fallbacks.add(1, attrs)
    if isinstance(exc, _REFUSALS) and ins.refusals is not None:
        ins.refusals.add(1, {**attrs, n.lg_refusal: type(exc).__name__})

def _emit(
    ct: _CallTrace,
    record: CallRecord,
    outcome: Outcome,
    exc: BaseException | None,
    error_type: str | None,
    t1: float,
) -> None:
    usage = ct.usage
    kind = _error_kind(exc)
    fields: dict[str, Any] = {
        "function": record.function,
        "operation": ct.layer.operation or record.operation,
        "provider": ct.provider,
        "model": record.request_model,
        "response_model": ct.response_model,
        "stream": record.stream,
        "outcome": outcome.value,
        "duration_s": round(t1 - ct.t0, 6),
        "ttft_s": round(ct.ttfc, 6) if ct.ttfc is not None else None,
        "attempts": len(record.attempts),
        "input_tokens": usage.input_tokens if usage else None,
        "output_tokens": usage.output_tokens if usage else None,
        "cache_read_tokens": usage.cache_read_tokens if usage and usage.cache_read_tokens else None,
        "cache_write_tokens": usage.cache_write_tokens if usage and usage.cache_write_tokens else None,
        "reasoning_tokens": usage.reasoning_tokens if usage and usage.reasoning_tokens else None,
        "usage_estimated": usage.estimated if usage else None,
        "cost_usd": ct.cost,
        "cache": record.cache,
        "cache_similarity": record.cache_similarity,
        "saved_usd": record.saved_usd,
        "fallback_target": scrub(str(record.fallback_target)) if record.fallback_target else None,
        "budget_decision": record.budget_decision,
        "route": scrub(str(record.route)) if record.route else None,
        "error_kind": kind.value if kind is not None else None,
        "error_type": error_type,
        "error": scrub(str(exc))[:300] if exc is not None and outcome is Outcome.ERROR else None,
    }
    span = ct.span
    if span is not None:
        ctx = span.get_span_context()
        if ctx.is_valid:
            fields["trace_id"] = f"{ctx.trace_id:032x}"
            fields["span_id"] = f"{ctx.span_id:016x}"
    level = _LEVELS.get(outcome)
    if level is None:  # an error: transient ones and refusals are warnings
        level = "warning" if kind is not None and (kind.transient or kind is ErrorKind.GUARD) else "error"
    _events.emit(_events.CALL, None, level=level, **{k: v for k, v in fields.items() if v is not None})
