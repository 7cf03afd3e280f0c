"""OpenTelemetry plumbing for `trace`: which providers record, the tracer and instruments.

`_telemetry_for` decides, once per (tracer provider, meter provider, names),
whether anything would be recorded, and builds the tracer and the spec's
instruments for it. `_RecordSpan` is the call's span as other guards see it
on ``record.span``: every string they put on it is scrubbed of secrets.
`_ParentSpan` is the call's span as the code inside the call sees it (the
current span): it notices a GenAI span started under it (`_genai_child`).
"""

from __future__ import annotations

import os
import sys
import threading
import traceback

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.metrics import _internal as _otel_metrics_state
from opentelemetry.trace import (
    NoOpTracer,
    NoOpTracerProvider,
    ProxyTracerProvider,
    Span,
    Status,
    StatusCode,
)

from . import _semconv
from ._secrets import scrub, scrub_named


if TYPE_CHECKING:
    from opentelemetry.metrics import Counter, Histogram, Meter
    from opentelemetry.trace import SpanContext, Tracer
    from opentelemetry.util import types as otel_types


_UNSET: Any = object()

# -- secrets (the patterns live in _secrets, shared with the events module) ------

def _scrub_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not attributes:
        return None
    return {key: scrub_named(key, value) for key, value in attributes.items()}


# -- OpenTelemetry providers: the fast-path decision ---------------------------


class _Instruments:
    """The spec's histograms and llmguard's counters on one meter."""

    __slots__ = (
        "cache_hits",
        "cache_misses",
        "cost",
        "duration",
        "fallbacks",
        "op_input",
        "op_output",
        "refusals",
        "retries",
        "saved",
        "token_usage",
        "tpoc",
        "ttfc",
        "usage_counters",
    )

    def __init__(self, meter: Meter, n: _semconv.Semconv) -> None:
        time_b = [float(b) for b in _semconv.TIME_BUCKETS]
        token_b = [float(b) for b in _semconv.TOKEN_BUCKETS]

        def histogram(name: str, unit: str, description: str, buckets: list[float]) -> Histogram | None:
            if not name:
                return None
            return meter.create_histogram(
                name, unit, description, explicit_bucket_boundaries_advisory=buckets
            )

        def counter(name: str, unit: str, description: str) -> Counter | None:
            return meter.create_counter(name, unit, description) if name else None

        self.duration = histogram(n.metric_duration, "s", "GenAI operation duration.", time_b)
        self.ttfc = histogram(n.metric_ttfc, "s", "Time to receive the first chunk of a stream.", time_b)
        self.tpoc = histogram(
            n.metric_tpoc, "s", "Time between consecutive chunks of a stream, after the first.", time_b
        )
        self.token_usage = histogram(
            n.metric_token_usage, "{token}", "Number of input and output tokens used.", token_b
        )
        self.op_input = histogram(n.metric_op_input_tokens, "{token}", "Input tokens per operation.", token_b)
        self.op_output = histogram(n.metric_op_output_tokens, "{token}", "Output tokens per operation.", token_b)
        # latest-experimental token counters: (Usage field, counter)
        counters: list[tuple[str, Counter]] = []
        for field, name in (
            ("input_tokens", n.metric_usage_input),
            ("output_tokens", n.metric_usage_output),
            ("cache_read_tokens", n.metric_usage_cache_read),
            ("cache_write_tokens", n.metric_usage_cache_write),
            ("reasoning_tokens", n.metric_usage_reasoning),
        ):
            made = counter(name, "{token}", "Tokens used by GenAI inference.")
            if made is not None:
                counters.append((field, made))
        self.usage_counters = tuple(counters)
        self.cost = counter(n.metric_cost, "USD", "What GenAI calls cost, in US dollars.")
        self.saved = counter(n.metric_saved, "USD", "What cache hits did not spend, in US dollars.")
        self.retries = counter(n.metric_retries, "{retry}", "Retries made by llmguard.retry.")
        self.cache_hits = counter(n.metric_cache_hits, "{call}", "Calls answered by llmguard.cache.")
        self.cache_misses = counter(n.metric_cache_misses, "{call}", "Calls llmguard.cache passed on.")
        self.fallbacks = counter(n.metric_fallbacks, "{call}", "Calls answered by a fallback target.")
        self.refusals = counter(
            n.metric_refusals,
            "{call}",
            "Calls a guard refused before any request (budget, rate limit, breaker, input).",
        )


class _Telemetry:
    """The tracer and instruments for one (tracer provider, meter provider, names)."""

    __slots__ = ("instruments", "names", "tracer")

    def __init__(self, tracer: Tracer | None, meter: Meter | None, names: _semconv.Semconv) -> None:
        self.tracer = tracer
        self.names = names
        self.instruments = _Instruments(meter, names) if meter is not None else None


_TELEMETRY: dict[tuple[Any, Any, bool], _Telemetry | None] = {}
_TELEMETRY_LOCK = threading.Lock()
_VERSION: list[str | None] = []
# `get_tracer_provider()` costs 0.6 µs (an os.environ lookup) on every call
# while nothing is configured, so guards read the API's globals directly and
# cache their decision per provider object; only a provider named by the
# environment needs the API's own loader, once.
_ENV_TRACER: Final = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
_ENV_METER: Final = "OTEL_PYTHON_METER_PROVIDER" in os.environ


def _version() -> str | None:
    if not _VERSION:
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

        try:
            _VERSION.append(version("llmguard"))
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            _VERSION.append(None)
    return _VERSION[0]


def _records_spans(provider: object) -> bool:
    return provider is not None and not isinstance(
        provider, (ProxyTracerProvider, NoOpTracerProvider)
    )


def _records_metrics(provider: object) -> bool:
    return provider is not None and not isinstance(
        provider, (NoOpMeterProvider, _otel_metrics_state._ProxyMeterProvider)
    )


def _telemetry_for(tp: Any, mp: Any, names: _semconv.Semconv) -> _Telemetry | None:
    """The shared telemetry of these providers (None: nothing would be recorded)."""
    key = (tp, mp, names.latest)
    found = _TELEMETRY.get(key, _UNSET)
    if found is not _UNSET:
        return found  # type: ignore[no-any-return]
    with _TELEMETRY_LOCK:
        if key in _TELEMETRY:
            return _TELEMETRY[key]
        version = _version()
        tracer = (
            tp.get_tracer("llmguard", version, schema_url=names.schema_url)
            if _records_spans(tp)
            else None
        )
        meter = (
            mp.get_meter("llmguard", version, schema_url=names.schema_url)
            if _records_metrics(mp)
            else None
        )
        telemetry = _Telemetry(tracer, meter, names) if tracer or meter else None
        _TELEMETRY[key] = telemetry
        return telemetry


# -- the span other guards see ---------------------------------------------------


class _RecordSpan(Span):
    """The call's span as guards see it on ``record.span``: strings scrubbed.

    `_events.emit` puts other guards' events on ``record.span``; this makes
    sure nothing they say (an error message quoting a key) leaks.
    """

    __slots__ = ("span",)

    def __init__(self, span: Span) -> None:
        self.span = span

    def end(self, end_time: int | None = None) -> None:
        self.span.end(end_time)

    def get_span_context(self) -> SpanContext:
        return self.span.get_span_context()

    def set_attributes(self, attributes: Mapping[str, otel_types.AnyValue]) -> None:
        self.span.set_attributes(_scrub_attributes(attributes) or {})

    def set_attribute(self, key: str, value: otel_types.AnyValue) -> None:
        self.span.set_attribute(key, scrub_named(key, value))

    def add_event(
        self, name: str, attributes: otel_types.Attributes = None, timestamp: int | None = None
    ) -> None:
        self.span.add_event(name, _scrub_attributes(attributes), timestamp)

    def add_link(self, context: SpanContext, attributes: otel_types.Attributes = None) -> None:
        self.span.add_link(context, _scrub_attributes(attributes))

    def update_name(self, name: str) -> None:
        self.span.update_name(name)

    def is_recording(self) -> bool:
        return self.span.is_recording()

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        self.span.set_status(status, scrub(description) if description else description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: otel_types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,  # noqa: ARG002 - deprecated in the API
    ) -> None:
        _add_exception_event(self.span, exception, _scrub_attributes(attributes), timestamp)


def _add_exception_event(
    span: Span,
    exc: BaseException,
    attributes: Mapping[str, Any] | None = None,
    timestamp: int | None = None,
) -> None:
    # `Span.record_exception` would record str(exc) and the traceback as
    # they are; an SDK error message can quote a key, so both are scrubbed.
    cls = type(exc)
    event: dict[str, Any] = {
        "exception.type": f"{cls.__module__}.{cls.__qualname__}",
        "exception.message": scrub(str(exc))[:2000],
        "exception.stacktrace": scrub("".join(traceback.format_exception(exc)))[:8000],
    }
    if attributes:
        event.update(attributes)
    span.add_event("exception", event, timestamp)



# -- the current span inside a traced call: who starts a span under it ----------

# Attributes by which a span says, when it starts, that it is a GenAI
# operation (the semantic conventions ask for them at the start, for samplers).
_GENAI_START: Final = ("gen_ai.operation.name", "gen_ai.provider.name")


def _genai_child(frame: Any) -> bool:
    """Whether *frame*, the caller of the parent's ``get_span_context``, starts a GenAI span.

    A tracer's ``start_span`` reads its parent's span context first (the
    OpenTelemetry SDK's does so in ``start_span`` itself; so does any
    implementation keeping the API's parameter names). A GenAI span (an
    SDK's own, an instrumentation's, a nested llmguard call's) is a CLIENT
    span that starts with ``gen_ai.operation.name`` or
    ``gen_ai.provider.name``. Anything else reading the span's context (a
    propagator, log correlation) is not a ``start_span`` frame. A tracer that
    records nothing (the API's no-op tracer, behind a proxy with no SDK set
    or an SDK switched off, or a disabled SDK tracer) starts no span that
    counts.
    """
    if frame.f_code.co_name != "start_span":
        return False
    local = frame.f_locals
    tracer = local.get("self")
    if isinstance(tracer, NoOpTracer):
        return False
    enabled = getattr(tracer, "_is_enabled", None)  # the SDK's tracer configurator (1.39+)
    if enabled is not None and not enabled():
        return False
    attributes = local.get("attributes")
    kind = local.get("kind")
    return (
        getattr(kind, "name", None) == "CLIENT"
        and isinstance(attributes, Mapping)
        and any(key in attributes for key in _GENAI_START)
    )


class _ParentSpan(Span):
    """The call's span as the code inside the call sees it: itself, but it notices GenAI children.

    A GenAI span started under it (`_genai_child`) calls the owner's
    ``_genai_child()`` (the call's `_CallTrace`), so the
    call's span knows, per attempt, that another span carries that
    request's ``gen_ai.usage.*`` (see `trace`'s module docstring). Every
    other method is the span's own: writes go to the span unchanged, and
    what is not part of the API (``attributes``, ``name``...) is read
    through. Only recording spans get one; the call lets go of it when it
    ends (``owner`` None: no cycle keeps the call, or its stream, alive).
    """

    __slots__ = ("owner", "span")

    def __init__(self, span: Span, owner: Any) -> None:
        self.span = span
        self.owner = owner

    def get_span_context(self) -> SpanContext:
        try:
            owner = self.owner  # None once the call has ended
            if owner is not None and _genai_child(sys._getframe(1)):  # who asks: see `_genai_child`
                owner._genai_child()
        except Exception:  # noqa: BLE001, S110 - noticing must never break the span's start
            pass
        return self.span.get_span_context()

    def end(self, end_time: int | None = None) -> None:
        self.span.end(end_time)

    def set_attributes(self, attributes: Mapping[str, otel_types.AnyValue]) -> None:
        self.span.set_attributes(attributes)

    def set_attribute(self, key: str, value: otel_types.AnyValue) -> None:
        self.span.set_attribute(key, value)

    def add_event(
        self, name: str, attributes: otel_types.Attributes = None, timestamp: int | None = None
    ) -> None:
        self.span.add_event(name, attributes, timestamp)

    def add_link(self, context: SpanContext, attributes: otel_types.Attributes = None) -> None:
        self.span.add_link(context, attributes)

    def update_name(self, name: str) -> None:
        self.span.update_name(name)

    def is_recording(self) -> bool:
        return self.span.is_recording()

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        self.span.set_status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: otel_types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        self.span.record_exception(exception, attributes, timestamp, escaped)

    def __getattr__(self, name: str) -> Any:
        if name in _ParentSpan.__slots__:  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.span, name)

    def __repr__(self) -> str:
        return f"_ParentSpan({self.span!r})"
