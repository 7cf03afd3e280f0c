"""`trace`: an OpenTelemetry span, GenAI metrics and one log event per call.

``@lg.trace`` is the outermost guard. For each call it opens one span of
kind CLIENT named ``"{gen_ai.operation.name} {gen_ai.request.model}"`` with
the GenAI semantic-convention attributes (`_semconv` holds every name),
puts it on the call record *before* the call goes on, so that every inner
guard's events (retries, fallbacks, cache hits, budget alerts, breaker
changes, rate-limit waits) land on it as span events, and ends it with the
facts the record gathered: models, usage, cost, attempts, cache status,
error. It records the spec's metrics and llmguard's counters, and emits one
``llmguard.call`` event through `_events` (structlog and in-process
listeners) with the same facts. ``with lg.trace("pipeline"):`` opens a
parent span around many calls instead. The span, the time to first chunk,
the duration metric and the event all time a call from one start on the
guards' clock (`_clock`): the span starts at the wall-clock time of that
start and lasts what the metric says (`_start_time`, `_end_time`).

Three rules come from other libraries' bugs (spans that leak or vanish
when a stream is abandoned, "Failed to detach context" with async
generators, content captured by default):

* **A span ends exactly once, however a stream ends.** Streams end through
  the core's one finish hook (exhaustion, error, ``close()``, ``with`` exit,
  task cancellation, garbage collection), and the span ends there, with the
  usage seen so far and ``error.type`` (``"cancelled"``, ``"abandoned"``, or
  the exception's class).
* **No OpenTelemetry context stays attached across a ``yield``.** The span
  is made current around the call and around each pull of the stream, and
  detached in the same frame; between chunks the caller's context is the
  caller's. So there is never a "Failed to detach context", and HTTP spans
  made inside the call (an instrumented httpx) nest under the GenAI span.
* **Content is off by default**, and secrets are never recorded: prompts
  and outputs are captured only with ``capture_content=True`` or
  ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``, through the
  ``redact=`` hook and a size cap; anything that looks like an API key or
  an ``Authorization`` value is replaced by ``[REDACTED]`` in every string
  llmguard records (user attributes, content, error messages, other guards'
  span events), content or not. Headers are never read.

**One call's usage is counted once across all GenAI spans.** anthropic ≥ 2
traces itself: with a recording tracer provider it opens a CLIENT span per
API call (scope ``com.anthropic.sdk.python``, a child of llmguard's span;
the SDK's own retries inside it, so a call llmguard retries has several),
carrying that request's ``gen_ai.usage.*``; it records no metrics, and openai and
google-genai trace nothing. So the spans divide the work: llmguard's span
is the *operation* (attempts, retries, cache, budget, fallback, cost), the
SDK's span is the *request* and owns its usage. llmguard learns it at run
time: inside the call the current span is a thin view of llmguard's
(`_trace_otel._ParentSpan`) that notices a GenAI span starting under it
(a tracer's ``start_span`` asks its parent's span context; a CLIENT span
starting with ``gen_ai.operation.name`` / ``gen_ai.provider.name``, from
a tracer that records), during which attempt. So the client may be
anywhere (a getter, a registry, wrapped by instructor), and an
instrumentation's spans (openai's, a nested llmguard call's) count too.
It also asks the client it finds (`_ClientFinder`) for its public,
resolved ``open_telemetry`` option (``ANTHROPIC_OPEN_TELEMETRY`` or
``open_telemetry=`` not false) with a tracer provider that records, for a
tracer whose start cannot be seen. Either way, llmguard's span leaves out
``gen_ai.usage.*`` for those attempts and keeps the call's totals as
``llmguard.usage.input_tokens`` / ``llmguard.usage.output_tokens`` (cost
stays in one place, ``llmguard.cost_usd`` on llmguard's span: no SDK
prices); other attempts keep their usage on llmguard's span, so summing
``gen_ai.usage.*`` over a trace gives what the servers sent, once. No
SpanProcessor is added (the pipeline is the user's); the GenAI metrics
stay llmguard's, since no SDK records them. Known limit: an attempt that
sent two requests, one traced by its SDK and one not, has all its usage
on the SDK's span.

With no OpenTelemetry SDK configured (the API's proxy or no-op providers)
and nobody listening for events, a call costs two attribute reads and a
comparison on top of the core: the decision is cached per provider object.

This module is the guard (`TraceLayer`, `trace`); its parts live beside it:
`_trace_call` (one traced call from its span's start to its one end, and the
``with`` block's scope), `_trace_report` (the span's end attributes, the
metrics, the call event), `_trace_client` (the client a function calls: the
server address, whether its SDK traces itself), `_trace_content` (opt-in
prompts and outputs) and `_trace_otel` (providers, tracer, instruments, the
scrubbed span other guards see).
"""


from __future__ import annotations

import copy

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final, ParamSpec, TypeVar, overload

from opentelemetry import context as otel_context
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from opentelemetry.metrics import _internal as _otel_metrics_state
from opentelemetry.trace import NonRecordingSpan, Span, SpanKind, Status, StatusCode

from . import _clock, _events, _semconv
from ._call import Call
from ._check import number as check_number
from ._facts import outcome_of
from ._record import Outcome
from ._runner import Guard
from ._stream import _StreamBase
from ._trace_call import _SCOPES, _CallTrace, _end_time, _restore, _Scope, _start_time
from ._trace_client import _ClientFinder
from ._trace_otel import (
    _ENV_METER,
    _ENV_TRACER,
    _add_exception_event,
    _scrub_attributes,
    _Telemetry,
    _telemetry_for,
)
from ._trace_report import _REQUEST_PARAMS, _error_type


if TYPE_CHECKING:
    from types import TracebackType

    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from ._binder import Binder


P = ParamSpec("P")
R = TypeVar("R")

_UNSET: Any = object()
DEFAULT_MAX_CONTENT_CHARS: Final = 16_384
_OK = Outcome.OK
_attach = otel_context.attach
_detach = otel_context.detach

# -- the guard -------------------------------------------------------------------


def _valid_attribute(value: object) -> bool:
    if isinstance(value, (str, bool, int, float)):
        return True
    return isinstance(value, (list, tuple)) and all(isinstance(v, (str, bool, int, float)) for v in value)


class TraceLayer(Guard):
    """The `trace` guard: a decorator and a context manager. Build it with `trace`."""

    name: ClassVar[str] = "trace"

    def __init__(
        self,
        name: str | None = None,
        *,
        attributes: Mapping[str, Any] | None = None,
        capture_content: bool | None = None,
        redact: Callable[[str], str] | None = None,
        max_content_chars: int = DEFAULT_MAX_CONTENT_CHARS,
        operation: str = "chat",
        provider: str | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        _check(name, attributes, capture_content, redact, max_content_chars, operation, provider)
        for param, value, method in (
            ("tracer_provider", tracer_provider, "get_tracer"),
            ("meter_provider", meter_provider, "get_meter"),
        ):
            if value is not None and not callable(getattr(value, method, None)):
                msg = f"trace({param}=...) must be an OpenTelemetry {param.replace('_', ' ')}, got {value!r}"
                raise TypeError(msg)
        self.span_name = name
        self._attributes = _scrub_attributes(attributes)
        self.capture_content = (
            _semconv.capture_content_from_env() if capture_content is None else capture_content
        )
        self.redact = redact
        self.max_content_chars = max_content_chars
        self.operation = operation
        self.provider = provider
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._names = _semconv.active()
        self._cache: tuple[Any, Any, _Telemetry | None] = (_UNSET, _UNSET, None)
        self._finder: _ClientFinder | None = None
        self._open: list[_Scope] = []  # entered as a context manager, not yet exited
        # (parameter, span attribute) for the request parameters to read
        self._params: tuple[tuple[str, str], ...] = tuple(
            (param, getattr(self._names, key)) for param, key in _REQUEST_PARAMS
        )

    def settings(self) -> dict[str, Any]:
        """The configuration, for `describe`."""
        return {
            "name": self.span_name,
            "operation": self.operation,
            "capture_content": self.capture_content,
            "semconv": _semconv.LATEST_EXPERIMENTAL if self._names.latest else "v1.41",
        }

    def for_function(self, fn: Callable[..., Any], shape: str, binder: Binder) -> TraceLayer:  # noqa: ARG002
        """A copy that knows *fn*: its client, and which request parameters it takes."""
        layer = copy.copy(self)
        layer._finder = _ClientFinder(fn)
        layer._open = []
        if binder.signature is None:
            return layer
        params = binder.signature.parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            layer._params = tuple(pair for pair in layer._params if pair[0] in params)
        return layer

    # -- the fast path: is anything recorded? ----------------------------------

    def _telemetry(self) -> _Telemetry | None:
        # Every call's cost with no SDK: two provider reads and a cache check.
        tp = self._tracer_provider
        if tp is None:
            tp = otel_trace._TRACER_PROVIDER
        mp = self._meter_provider
        if mp is None:
            mp = _otel_metrics_state._METER_PROVIDER
        cache = self._cache
        return cache[2] if cache[0] is tp and cache[1] is mp else self._resolve(tp, mp)

    def _resolve(self, tp: Any, mp: Any) -> _Telemetry | None:
        seen = (tp, mp)
        # A provider named by OTEL_PYTHON_*_PROVIDER is loaded on first use.
        if tp is None and _ENV_TRACER:
            tp = otel_trace.get_tracer_provider()
        if mp is None and _ENV_METER:
            mp = otel_metrics.get_meter_provider()
        tel = _telemetry_for(tp, mp, self._names)
        self._cache = (*seen, tel)
        return tel

    # -- the decorator: one traced call ------------------------------------------

    def enter(self, call: Call) -> _CallTrace | None:
        """Start the call's span and make it current while the inside runs; None when nothing is recorded."""
        tel = self._telemetry()
        if tel is None and not _events.listening():
            return None
        ct = _CallTrace(self, call, tel)
        ctx = ct.ctx
        if ctx is not None:
            # Detached by `leave` or `fail`, which the runner calls in this
            # same context: no context outlives the call.
            ct.token = _attach(ctx)
        return ct

    @staticmethod
    def leave(call: Call, ct: _CallTrace | None, result: Any) -> Any:  # noqa: ARG004
        """End the span (a stream's: on the stream's one finish)."""
        if ct is None:
            return result
        if ct.token is not None:
            _detach(ct.token)
        if isinstance(result, _StreamBase):
            return ct.wrap(result)
        ct.end(_OK, None, result)
        return result

    @staticmethod
    def fail(call: Call, ct: _CallTrace | None, exc: BaseException) -> None:  # noqa: ARG004
        """End the span with the error; the error goes on."""
        if ct is not None:
            try:
                ct.end(outcome_of(exc), exc, None)
            finally:
                if ct.token is not None:
                    _detach(ct.token)

    # -- the context manager: a parent span around many calls ------------------

    def __enter__(self) -> Span:
        """Open a parent span (kind INTERNAL) and make it current; returns it."""
        t0 = _clock.now()
        scopes = _SCOPES.get()
        t0_ns = _start_time(scopes[-1] if scopes else None, t0)
        tel = self._telemetry()
        tracer = tel.tracer if tel is not None else None
        span: Span
        if tracer is None:
            span = NonRecordingSpan(otel_trace.get_current_span().get_span_context())
        else:
            span = tracer.start_span(
                self.span_name or "llmguard", kind=SpanKind.INTERNAL, attributes=self._attributes, start_time=t0_ns
            )
        scope = _Scope(span, self, t0, t0_ns)
        scope.ctx_token = otel_context.attach(otel_trace.set_span_in_context(span))
        scope.scope_token = _SCOPES.set((*_SCOPES.get(), scope))
        self._open.append(scope)
        return span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """End the parent span opened by `__enter__`."""
        scopes = _SCOPES.get()
        here = bool(scopes) and scopes[-1].owner is self
        if here:
            scope = scopes[-1]
        elif self._open:
            # Exited in another context than it was entered in: a `with`
            # held across a `yield` of a generator finished elsewhere. The
            # span still ends; the other context's variables are not ours to
            # reset (that is what logs "Failed to detach context").
            scope = self._open[-1]
        else:
            msg = "lg.trace(...).__exit__ without a matching __enter__"
            raise RuntimeError(msg)
        self._open.remove(scope)
        try:
            self._end_scope(scope, exc)
        finally:
            if here:
                _restore(scope)

    def _end_scope(self, scope: _Scope, exc: BaseException | None) -> None:
        span = scope.span
        if span.is_recording():
            n = self._names
            with scope.lock:
                totals: dict[str, Any] = {
                    n.lg_calls: scope.calls,
                    n.lg_total_input: scope.input_tokens,
                    n.lg_total_output: scope.output_tokens,
                }
                if scope.cost:
                    totals[n.lg_cost] = scope.cost
            span.set_attributes(totals)
            if exc is not None:
                outcome = outcome_of(exc)
                error_type = _error_type(outcome, exc) or "_OTHER"
                span.set_attribute(n.error_type, error_type)
                if outcome is Outcome.ERROR:
                    _add_exception_event(span, exc)
                span.set_status(Status(StatusCode.ERROR, error_type))
        span.end(_end_time(scope.t0_ns, scope.t0, _clock.now()))

    async def __aenter__(self) -> Span:
        """``async with lg.trace("pipeline"):``, as `__enter__`."""
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """As `__exit__`."""
        self.__exit__(exc_type, exc, tb)


def _check(
    name: object,
    attributes: object,
    capture_content: object,
    redact: object,
    max_content_chars: object,
    operation: object,
    provider: object,
) -> None:
    """Reject bad configuration at decoration time, naming the parameter."""
    if name is not None and (not isinstance(name, str) or not name.strip()):
        msg = f"trace(name=...) must be a non-empty str, got {name!r}"
        raise ValueError(msg)
    if attributes is not None:
        if not isinstance(attributes, Mapping):
            msg = f"trace(attributes=...) must be a mapping, got {type(attributes).__name__}"
            raise TypeError(msg)
        for key, value in attributes.items():
            if not isinstance(key, str) or not _valid_attribute(value):
                msg = (
                    "trace(attributes=...) must map str to str, bool, int, float or a list of "
                    f"those, got {key!r}: {value!r}"
                )
                raise ValueError(msg)
    if capture_content is not None and not isinstance(capture_content, bool):
        msg = f"trace(capture_content=...) must be True, False or None, got {capture_content!r}"
        raise TypeError(msg)
    if redact is not None and not callable(redact):
        msg = f"trace(redact=...) must be a callable taking and returning a str, got {redact!r}"
        raise TypeError(msg)
    check_number("trace", "max_content_chars", max_content_chars, integer=True, exclusive=False)
    if not isinstance(operation, str) or not operation:
        msg = f"trace(operation=...) must be a non-empty str such as 'chat' or 'embeddings', got {operation!r}"
        raise ValueError(msg)
    if provider is not None and (not isinstance(provider, str) or not provider):
        msg = f"trace(provider=...) must be a gen_ai.provider.name such as 'anthropic', got {provider!r}"
        raise ValueError(msg)


# -- the public name -------------------------------------------------------------


@overload
def trace(fn: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def trace(
    span_name: str | None = None,
    /,
    *,
    name: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    capture_content: bool | None = None,
    redact: Callable[[str], str] | None = None,
    max_content_chars: int = DEFAULT_MAX_CONTENT_CHARS,
    operation: str = "chat",
    provider: str | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
) -> TraceLayer: ...


def trace(
    fn_or_name: Any = None,
    /,
    *,
    name: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    capture_content: bool | None = None,
    redact: Callable[[str], str] | None = None,
    max_content_chars: int = DEFAULT_MAX_CONTENT_CHARS,
    operation: str = "chat",
    provider: str | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
) -> Any:
    """One OpenTelemetry GenAI span, the GenAI metrics and a log event per call.

    ``@lg.trace`` or ``@lg.trace(...)`` on a function; ``with
    lg.trace("pipeline"):`` (or ``async with``) for a parent span around
    many calls. Put it outermost.

    *name* (also the first positional argument) replaces the span name (the spec's ``"{operation} {model}"`` by
    default); *attributes* go on every span. Content (prompts and outputs)
    is recorded only when *capture_content* is True, or when it is None and
    ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` says so; each text
    passes through *redact* (``str -> str``) and the span's content is cut
    at *max_content_chars*. Credentials are scrubbed from everything, always.
    *operation* is ``gen_ai.operation.name``; *provider* is the
    ``gen_ai.provider.name`` when the response does not say.
    *tracer_provider* and *meter_provider* default to the global ones.
    """
    kwargs: dict[str, Any] = {
        "attributes": attributes,
        "capture_content": capture_content,
        "redact": redact,
        "max_content_chars": max_content_chars,
        "operation": operation,
        "provider": provider,
        "tracer_provider": tracer_provider,
        "meter_provider": meter_provider,
    }
    if fn_or_name is not None and name is not None:
        msg = "trace() takes the span name once: trace('x') or trace(name='x'), not both"
        raise TypeError(msg)
    if fn_or_name is None or isinstance(fn_or_name, str):
        return TraceLayer(fn_or_name if name is None else name, **kwargs)
    if callable(fn_or_name) or isinstance(fn_or_name, (staticmethod, classmethod)):
        return TraceLayer(**kwargs)(fn_or_name)
    msg = (
        "trace() takes a function to decorate or a span name (str), "
        f"got {type(fn_or_name).__name__}: {fn_or_name!r}"
    )
    raise TypeError(msg)
