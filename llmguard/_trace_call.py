"""One traced call: its span, from the start to the one end, and the ``with lg.trace(...)`` block around calls.

`_CallTrace` starts the span with the sampling-relevant attributes, makes it
the record's span (so other guards' events land on it), wraps a stream so
that each pull runs under the span, and ends it exactly once with what the
record gathered: the span's end attributes, the metrics and the call event
(`_trace_report`). `_Scope` is an open ``with lg.trace(...)`` block: its span
and the totals of the calls inside. Every time is on the guards' clock
(`_start_time`, `_end_time`).
"""

from __future__ import annotations

import contextvars
import math
import threading
import time
import warnings

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.trace import Span, SpanKind

from . import _clock, _events, _semconv, prices, providers
from ._call import _request_model, _requests_stream
from ._facts import needs_record, plain_wire
from ._record import CallRecord, Outcome
from ._stream import AsyncGuardedStream, GuardedStream, _StreamBase
from ._trace_client import _GLOBAL_PROVIDER, _address_of_url, _stream_address
from ._trace_content import _content_attributes, _ContentBudget
from ._trace_otel import _ParentSpan, _records_spans, _RecordSpan
from ._trace_report import (
    _answer_attributes,
    _emit,
    _error_attributes,
    _error_type,
    _guard_attributes,
    _number,
    _record_metrics,
    _set_error_status,
)


if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context

    from ._call import Call
    from ._record import Attempt, Usage
    from ._trace import TraceLayer
    from ._trace_otel import _Telemetry


_UNSET: Any = object()


# -- the parent span of `with lg.trace(...)` ------------------------------------


class _Scope:
    """An open ``with lg.trace(...)`` block: its span and the totals of the calls inside."""

    __slots__ = (
        "calls",
        "cost",
        "ctx_token",
        "input_tokens",
        "lock",
        "output_tokens",
        "owner",
        "scope_token",
        "span",
        "t0",
        "t0_ns",
    )

    def __init__(self, span: Span, owner: TraceLayer, t0: float, t0_ns: int) -> None:
        self.span = span
        self.t0 = t0
        self.t0_ns = t0_ns
        self.owner = owner
        self.calls = 0
        self.cost = 0.0
        self.input_tokens = 0
        self.output_tokens = 0
        self.lock = threading.Lock()
        self.ctx_token: contextvars.Token[Context] | None = None
        self.scope_token: contextvars.Token[tuple[_Scope, ...]] | None = None

    def add(self, usage: Usage | None, cost: float | None) -> None:
        with self.lock:
            self.calls += 1
            self.cost += cost or 0.0
            if usage is not None:
                self.input_tokens += usage.input_tokens
                self.output_tokens += usage.output_tokens


# The open scopes of this thread or task, innermost last. A ContextVar, not
# state on the layer: one `trace(...)` object may be entered by many tasks.
_SCOPES: contextvars.ContextVar[tuple[_Scope, ...]] = contextvars.ContextVar(
    "llmguard_trace_scopes", default=()
)


def _restore(scope: _Scope) -> None:
    """Undo what entering *scope* set, if this is the context it was set in."""
    try:
        if scope.scope_token is not None:
            _SCOPES.reset(scope.scope_token)
    except ValueError:
        # A copy of the entering context (a task started inside the block):
        # its tokens cannot be reset here, and OTel's would log "Failed to
        # detach context". Drop the scope from this copy only.
        _SCOPES.set(tuple(s for s in _SCOPES.get() if s is not scope))
        before = getattr(scope.ctx_token, "old_value", None)
        if isinstance(before, otel_context.Context):  # make it current again in this copy
            otel_context.attach(before)
        return
    if scope.ctx_token is not None:
        otel_context.detach(scope.ctx_token)



def _end_time(start_ns: int, t0: float, t1: float) -> int:
    """A span's end (ns since the epoch): its start plus the duration on the guards' clock.

    The span's start is the wall-clock time read at *t0*, and its duration is
    ``t1 - t0`` on `_clock`, the clock that times the first chunk, the
    duration metric and the call event: so a span is never shorter than the
    time to first chunk it reports (two clocks, or two starts, could make it
    so), a stepped wall clock cannot stretch it, and under
    `llmguard.testing.FakeClock` its duration is the fake one. Rounded up,
    so that a first chunk at the very end still fits.
    """
    return start_ns + math.ceil(max(t1 - t0, 0.0) * 1e9)


def _start_time(scope: _Scope | None, t0: float) -> int:
    """The start (ns since the epoch) of a span that starts at *t0* on the guards' clock.

    Inside a ``with lg.trace(...)`` block it is the block's start plus the
    time since on the guards' clock (rounded down, as `_end_time` rounds
    up), so the calls' spans lie within the block's whichever clock runs;
    else the wall-clock time now.
    """
    if scope is not None:
        return scope.t0_ns + math.floor(max(t0 - scope.t0, 0.0) * 1e9)
    return time.time_ns()




# -- one traced call -----------------------------------------------------------


def _noted(call: Call) -> bool:
    """Whether a guard noted facts for the record (other than `trace`'s span): the span needs them."""
    notes = call._notes
    return notes is not None and (len(notes) > 1 or (bool(notes) and "span" not in notes))


_OK = Outcome.OK
_CLIENT = SpanKind.CLIENT
_INT_FLOAT: Final = (int, float)
_PROVIDER_NAMES: Final = _semconv.PROVIDERS
_GOOGLE: Final = _semconv.PROVIDERS["google"]  # its specific name depends on the endpoint
_GUESSES: Final = _semconv._GUESSES  # provider_from_model's cache, read inline on the hot path
_set_span_in_context = otel_trace.set_span_in_context
_get_current = otel_context.get_current


class _CallTrace:
    """One traced call: its span, its start, and how to end it (once).

    Built on every traced call, so (like `Attempt`) it has no ``__slots__``
    and keeps its defaults on the class: ``__init__`` stores only what this
    call has. The facts the record holds at the end are read once, by
    `_end`, which keeps on this object what metrics and events need.
    """

    token: Token[Context] | None = None  # the span's context, attached while the inside runs
    prev_span: Span | None = None
    span: Span | None = None
    ctx: Context | None = None
    stream: _StreamBase | None = None
    chunk_gaps: list[float] | None = None
    last_chunk: float = 0.0
    address: tuple[str, int] | None = None
    client_provider: str | None = None  # llmguard's name for the client's SDK
    sdk_spans: Any = None  # the client opens its own GenAI spans: `_sdk_span_provider`
    sdk_attempts: set[int] | None = None  # attempts (0-based) under which a GenAI span started: `_ParentSpan`
    parent_span: _ParentSpan | None = None  # the span as the code inside sees it (recording spans only)
    start_provider: str | None = None  # gen_ai.provider.name set at the start
    start_address: bool = False
    start_stream: bool = False
    scope: _Scope | None = None
    ended: bool = False
    # -- the facts at the end (`_end`)
    provider: str | None = None
    response_model: str | None = None
    finish_reasons: tuple[str, ...] = ()
    usage: Usage | None = None
    cost: float | None = None
    ttfc: float | None = None
    t0_ns: int = 0  # the wall-clock time (ns) of `t0`, read when there is a span to start
    record: CallRecord | None = None  # read at the end (`_end`), unless `_end_plain` can do without

    def __init__(  # noqa: C901, PLR0912, PLR0915 - every call's start, kept in one frame
        self, layer: TraceLayer, call: Call, tel: _Telemetry | None
    ) -> None:
        self.layer = layer
        self.tel = tel
        # The start of everything this call reports (the span, time to first
        # chunk, duration metric, event), on the guards' clock; the span's
        # start is the wall-clock time of the same instant (see `_end_time`).
        self.t0 = t0 = _clock.now()
        scopes = _SCOPES.get()
        if scopes:
            self.scope = scopes[-1]
        if tel is not None and tel.tracer is not None:
            self.t0_ns = _start_time(self.scope, t0)
        self.call = call
        args, kwargs, instance = call.args, call.kwargs, call.instance
        record: CallRecord | None = None
        if call._record is not None:
            record = call._record
            self.prev_span = record.span
            model, stream = record.request_model, record.stream
        else:
            # Not built for the span: it goes on as a note, and the end reads
            # the facts without the record when it can (`_end_plain`).
            notes = call._notes
            if notes:  # a `trace` outside this one, on the same call
                self.prev_span = notes.get("span")
            info = call.info
            model = _request_model(info, instance, args, kwargs)
            stream = _requests_stream(info, instance, args, kwargs)
        self.request_model = model
        self.start_stream = stream
        function = call.runner.info.name
        if tel is None:
            return
        address = client = None
        finder = layer._finder
        if finder is not None:
            address, client, sdk_spans = finder.find(args, kwargs, instance)
            if address is not None:  # else the class defaults, None
                self.address = address
            if client is not None:
                self.client_provider = client
            if sdk_spans is not None:
                self.sdk_spans = sdk_spans
        tracer = tel.tracer
        if tracer is None:
            return
        # The spec asks for the sampling-relevant attributes at the start, so
        # they go to start_span, in one dict (one validation pass).
        n = layer._names
        op = layer.operation or CallRecord.operation
        attrs: dict[str, Any] = {n.operation: op, n.request_stream: stream, n.lg_function: function}
        provider = layer.provider
        if provider is None:
            if client is not None:
                provider = _semconv.provider_name(client, address[0] if address is not None else None)
            if not provider and model:
                provider = _GUESSES.get(model, _UNSET)
                if provider is _UNSET:
                    provider = _semconv.provider_from_model(model)
        if provider:
            attrs[n.provider] = provider
            self.start_provider = provider
        if model:
            attrs[n.request_model] = model
        if address is not None:
            attrs[n.server_address] = address[0]
            attrs[n.server_port] = address[1]
            self.start_address = True
        params = layer._params
        if params:
            for param, key in params:
                value = kwargs[param] if param in kwargs else call.param(param)
                if value is not None and (type(value) in _INT_FLOAT or _number(value)):
                    attrs[key] = value
        if layer._attributes:
            attrs.update(layer._attributes)
        # The current context, read once: start_span, its sampler and
        # set_span_in_context would each read it again.
        parent = _get_current()
        span = tracer.start_span(
            layer.span_name or (f"{op} {model}" if model else op),
            parent,
            kind=_CLIENT,
            attributes=attrs,
            start_time=self.t0_ns,
        )
        self.span = span
        if span.is_recording():  # sampled out: inner guards' events need go nowhere
            if record is not None:
                record.span = _RecordSpan(span)
            else:
                # `call.note(span=...)`, without its keyword dict: every call passes here.
                notes = call._notes
                if notes is None:
                    call._notes = {"span": _RecordSpan(span)}
                else:
                    notes["span"] = _RecordSpan(span)
            # Inside the call the current span notices a GenAI span started
            # under it (an SDK's own): that request's usage is counted there.
            self.parent_span = watch = _ParentSpan(span, self)
            self.ctx = _set_span_in_context(watch, parent)
        else:
            self.ctx = _set_span_in_context(span, parent)

    def _genai_child(self) -> None:
        """A GenAI span started under this call's span, during the current attempt (`_ParentSpan`)."""
        attempt = max(self.call.attempt_count() - 1, 0)
        seen = self.sdk_attempts
        if seen is None:
            self.sdk_attempts = {attempt}
        else:
            seen.add(attempt)

    # -- streams -------------------------------------------------------------

    def wrap(self, result: _StreamBase) -> _StreamBase:
        """The stream to hand back: pulls made current under the span; ended once."""
        self.stream = result
        out: _StreamBase = result
        if self.ctx is not None:
            if isinstance(result, AsyncGuardedStream):
                traced_async = _TracedAsyncStream(source=result, record=self.call.record)
                traced_async._otel_ctx = self.ctx
                out = traced_async
            else:
                traced = _TracedStream(source=result, record=self.call.record)
                traced._otel_ctx = self.ctx
                out = traced
        if self.tel is not None and self.tel.instruments is not None:
            self.chunk_gaps = []
            out.on_chunk(self._on_chunk)
        # Only bound methods of this object go on the stream: nothing here
        # refers back to the stream, so dropping it frees it at once.
        out.on_finish(self.finish)
        return out

    def _on_chunk(self, _chunk: Any) -> None:
        now = _clock.now()
        if self.last_chunk and self.chunk_gaps is not None:
            self.chunk_gaps.append(now - self.last_chunk)
        self.last_chunk = now

    def finish(self, outcome: Outcome, exc: BaseException | None) -> None:
        """The stream's finish hook."""
        self.end(outcome, exc, None)

    # -- the end -------------------------------------------------------------

    def end(self, outcome: Outcome, exc: BaseException | None, result: Any) -> None:
        """End the span, record the metrics and emit the call event, once."""
        if self.ended:
            return
        self.ended = True
        try:
            self._end(outcome, exc, result)
        except Exception as bug:  # noqa: BLE001 - telemetry must never break the call
            warnings.warn(f"llmguard.trace: could not record a call: {bug!r}", RuntimeWarning, stacklevel=3)
            span = self.span
            if span is not None and span.is_recording():
                span.end(_end_time(self.t0_ns, self.t0, _clock.now()))
        finally:
            if self.parent_span is not None:
                self.parent_span.owner = None
            call = self.call
            record = call._record
            if record is not None:
                record.span = self.prev_span
            else:  # the span's note goes back to the outer trace's, or away
                notes = call._notes
                if notes is not None:
                    if self.prev_span is None:
                        notes.pop("span", None)
                    else:
                        notes["span"] = self.prev_span

    def _end(  # noqa: C901, PLR0912, PLR0915 - every call's end, kept in one frame
        self, outcome: Outcome, exc: BaseException | None, result: Any
    ) -> None:
        # One method on purpose: this runs on every call, and each Python
        # call or attribute round-trip saved shows beside the SDK's own cost.
        t1 = _clock.now()  # the call's end, for the span, the metrics and the event alike
        tel = self.tel
        layer = self.layer
        if exc is None and self._plain() and not needs_record(self.call, result):
            self._end_plain(t1, result)
            return
        self.record = record = self.call.record
        if tel is not None and self.address is None and (exc is not None or self.stream is not None):
            self._late_address(exc)
        # -- the facts the record holds now (one attempt: read directly, no sums)
        last: Attempt | None
        if len(record.attempts) == 1:
            n_attempts = 1
            last = record.attempts[0]
            provider = last.provider
            response_model = last.response_model
            response_id = last.response_id
            finish_reasons = last.finish_reasons
            usage = last.usage
            cost = last.cost_usd if usage is not None else None
        else:
            attempts = record.attempts
            n_attempts = len(attempts)
            provider = response_model = response_id = None
            finish_reasons = ()
            for att in reversed(attempts):
                provider = provider or att.provider
                response_model = response_model or att.response_model
                response_id = response_id or att.response_id
                finish_reasons = finish_reasons or att.finish_reasons
            usage = record.usage
            cost = record.cost_usd
            last = attempts[-1] if attempts else None
        address = self.address
        provider = self._provider(provider)
        first_chunk = last.first_chunk_at if last is not None else None
        ttfc = max(first_chunk - self.t0, 0.0) if first_chunk is not None else None
        # kept for metrics, events and content
        self.provider = provider
        self.response_model = response_model
        self.finish_reasons = finish_reasons
        self.usage = usage
        self.cost = cost
        self.ttfc = ttfc
        error_type = None if outcome is _OK else _error_type(outcome, exc)
        stream = record.stream
        span = self.span
        if span is not None:
            if span.is_recording():
                # -- the span's end attributes, in one set_attributes (one
                # validation pass). Those set at the start are not set again;
                # defaults (outcome ok, usage measured) are left implicit.
                n = layer._names
                attrs: dict[str, Any] = {n.lg_attempts: n_attempts}
                if outcome is not _OK:
                    attrs[n.lg_outcome] = outcome.value
                if stream is not self.start_stream:  # a function that returned a stream
                    attrs[n.request_stream] = stream
                if provider and provider != self.start_provider:
                    attrs[n.provider] = provider
                own = (
                    usage
                    if self.sdk_spans is None and self.sdk_attempts is None
                    else self._own_usage(attrs, n, usage, [(a.usage, a.provider) for a in record.attempts])
                )
                _answer_attributes(
                    attrs, n, span, layer, record.request_model, record.operation,
                    (response_model, response_id, finish_reasons, own, cost),
                )
                if ttfc is not None:
                    attrs[n.response_ttfc] = ttfc
                if address is not None and not self.start_address:
                    attrs[n.server_address] = address[0]
                    attrs[n.server_port] = address[1]
                _guard_attributes(attrs, n, record)
                if exc is not None:
                    _error_attributes(attrs, n, exc)
                if layer.capture_content:
                    budget = _ContentBudget(layer.redact, layer.max_content_chars)
                    _content_attributes(attrs, n, budget, self.call, self.stream, result, finish_reasons)
                if error_type is not None:
                    attrs[n.error_type] = error_type
                span.set_attributes(attrs)
                if error_type is not None:
                    _set_error_status(span, error_type, outcome, exc)
            span.end(_end_time(self.t0_ns, self.t0, t1))
        if self.scope is not None:
            self.scope.add(usage, cost)
        if tel is not None and tel.instruments is not None:
            _record_metrics(self, record, tel.instruments, tel.names, t1, error_type, exc)
        if _events.listening():
            _emit(self, record, outcome, exc, error_type, t1)

    def _plain(self) -> bool:
        """Whether only the span needs the call's facts, and the record is not built: `_end_plain`.

        Nobody has read the record, no guard noted a fact for it, the call
        made one attempt, which returned a plain result (a stream builds the
        record; an error reaches `_end` as one), and no metrics or event
        listeners will read the record.
        """
        call = self.call
        tel = self.tel
        return not (
            call._record is not None
            or tel is None
            or tel.instruments is not None
            or call.attempt_count() != 1
            or _noted(call)
            or _events.listening()
        )

    def _end_plain(self, t1: float, result: Any) -> None:
        """`_end` for one attempt's plain result with no record: the same span from the same facts.

        The facts are the result's, as the record would settle its one
        attempt from it (`providers.observe_result`), priced as it would
        price them. No metrics and no event: `_end` takes this path only
        without them.
        """
        facts = providers.observe_result(result)
        usage = response_model = response_id = provider = None
        finish_reasons: tuple[str, ...] = ()
        if facts is not None:
            usage, response_model, provider = facts.usage, facts.model, facts.provider
            response_id, finish_reasons = facts.response_id, facts.finish_reasons
        wired = plain_wire(self.call)  # what the wire measured wins (`_facts._settle_attempt`)
        if wired is not None:
            usage, response_model, provider = wired[0], wired[1] or response_model, wired[2] or provider
        cost = prices.cost_of(usage, response_model or self.request_model, provider) if usage is not None else None
        provider = self._provider(provider)
        span = self.span
        if span is not None:
            if span.is_recording():
                layer = self.layer
                n = layer._names
                attrs: dict[str, Any] = {n.lg_attempts: 1}
                if provider and provider != self.start_provider:
                    attrs[n.provider] = provider
                own = (
                    usage
                    if self.sdk_spans is None and self.sdk_attempts is None
                    else self._own_usage(attrs, n, usage, [(usage, provider)])
                )
                _answer_attributes(
                    attrs, n, span, layer, self.request_model, CallRecord.operation,
                    (response_model, response_id, finish_reasons, own, cost),
                )
                if layer.capture_content:
                    budget = _ContentBudget(layer.redact, layer.max_content_chars)
                    _content_attributes(attrs, n, budget, self.call, None, result, finish_reasons)
                span.set_attributes(attrs)
            span.end(_end_time(self.t0_ns, self.t0, t1))
        if self.scope is not None:
            self.scope.add(usage, cost)

    def _own_usage(
        self,
        attrs: dict[str, Any],
        n: _semconv.Semconv,
        usage: Usage | None,
        parts: Sequence[tuple[Usage | None, str | None]],
    ) -> Usage | None:
        """The usage this span carries as ``gen_ai.usage.*``: what no SDK span of the call carries.

        *parts* are the attempts' usage and provider, in order. An attempt has
        its usage on another GenAI span, a child of this one, when one started
        under this span during it (`sdk_attempts`: seen at run time, whatever
        client made it), or when the client the call uses says it opens its
        own (`_sdk_span_provider`) and the provider that span goes to records
        and the attempt was answered through that SDK. Those attempts' usage
        is counted there, once, and this span keeps the call's totals under
        ``llmguard.usage.*`` instead. Other attempts (a fallback to an SDK
        that traces nothing) stay here, so the sum over the trace is the
        servers'.
        """
        if usage is None:
            return usage
        seen = self.sdk_attempts
        sdk_spans = self.sdk_spans
        sdk: str | None = None
        if sdk_spans is not None:
            tp = otel_trace.get_tracer_provider() if sdk_spans is _GLOBAL_PROVIDER else sdk_spans
            if _records_spans(tp):
                sdk = self.client_provider or ""
        if seen is None and sdk is None:
            return usage
        own: Usage | None = None
        for attempt, (used, provider) in enumerate(parts):
            if used is None or (seen is not None and attempt in seen):
                continue
            if sdk is not None and (provider is None or provider == sdk):
                continue
            own = used if own is None else own + used
        attrs[n.lg_total_input] = usage.input_tokens
        attrs[n.lg_total_output] = usage.output_tokens
        if usage.estimated:
            attrs[n.lg_usage_estimated] = True
        return own

    def _provider(self, provider: str | None) -> str | None:
        """The span's provider name: the answer's, else the client's, else the configured one."""
        provider = provider or self.client_provider
        if provider is not None:  # `_semconv.provider_name`, without the call for the usual names
            name: str | None = _PROVIDER_NAMES.get(provider, provider)
            if name == _GOOGLE:
                address = self.address
                name = _semconv.provider_name(provider, address[0] if address is not None else None)
            provider = name
        return provider or self.layer.provider

    def _late_address(self, exc: BaseException | None) -> None:
        """The server address known only at the end: from the error's request, or the stream's response."""
        if exc is not None:
            self.address = _address_of_url(getattr(getattr(exc, "request", None), "url", None))
        elif self.stream is not None:
            self.address = _stream_address(self.stream)



class _TracedStream(GuardedStream):
    """A sync stream whose every pull runs with the call's span current."""

    __slots__ = ("_otel_ctx",)

    _otel_ctx: Context

    def _pull(self) -> Any:
        token = otel_context.attach(self._otel_ctx)
        try:
            return GuardedStream._pull(self)
        finally:
            otel_context.detach(token)

    def __enter__(self) -> GuardedStream:
        token = otel_context.attach(self._otel_ctx)
        try:
            # Enter the stream underneath too: a stream manager must be open
            # for ``with ask() as s: s.get_final_text()`` without iterating.
            source = self._source
            if isinstance(source, GuardedStream) and source._it is None:
                source.__enter__()
            return GuardedStream.__enter__(self)
        finally:
            otel_context.detach(token)


class _TracedAsyncStream(AsyncGuardedStream):
    """An async stream whose every pull runs with the call's span current."""

    __slots__ = ("_otel_ctx",)

    _otel_ctx: Context

    async def _pull(self) -> Any:
        token = otel_context.attach(self._otel_ctx)
        try:
            return await AsyncGuardedStream._pull(self)
        finally:
            otel_context.detach(token)

    async def __aenter__(self) -> AsyncGuardedStream:
        token = otel_context.attach(self._otel_ctx)
        try:
            source = self._source
            if isinstance(source, AsyncGuardedStream) and source._it is None:
                await source.__aenter__()
            return await AsyncGuardedStream.__aenter__(self)
        finally:
            otel_context.detach(token)


