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
SDK's span is the *request* and owns its usage. When the client the call
uses (the one `_ClientFinder` finds) says it traces itself — its public,
resolved ``open_telemetry`` option is enabled (``ANTHROPIC_OPEN_TELEMETRY``
or ``open_telemetry=`` not false) and the tracer provider it uses records —
llmguard's span leaves out ``gen_ai.usage.*`` for the attempts answered
through that SDK and keeps the call's totals as ``llmguard.usage.input_tokens``
/ ``llmguard.usage.output_tokens`` (and ``llmguard.cost_usd``); attempts
answered elsewhere keep their usage on llmguard's span, so summing
``gen_ai.usage.*`` over a trace gives what the servers sent, once. llmguard
asks the SDK's own switch rather than watching spans start (that would need
a SpanProcessor in the user's pipeline, which is theirs); the GenAI metrics
stay llmguard's, since no SDK records them. A client llmguard cannot find
(built inside the function) is taken as not tracing itself.

With no OpenTelemetry SDK configured (the API's proxy or no-op providers)
and nobody listening for events, a call costs two attribute reads and a
comparison on top of the core: the decision is cached per provider object.
"""

from __future__ import annotations

import contextvars
import copy
import json
import math
import os
import threading
import time
import traceback
import types
import warnings

from collections.abc import Callable, Mapping, Sequence
from contextvars import Token
from typing import TYPE_CHECKING, Any, ClassVar, Final, ParamSpec, TypeVar, cast, overload

from opentelemetry import context as otel_context
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.metrics import _internal as _otel_metrics_state
from opentelemetry.trace import (
    NonRecordingSpan,
    NoOpTracerProvider,
    ProxyTracerProvider,
    Span,
    SpanKind,
    Status,
    StatusCode,
)

from . import _clock, _events, _semconv, prices, providers
from ._binder import Binder
from ._check import number as check_number
from ._record import CallRecord, ErrorKind, Outcome
from ._secrets import SECRET_KEY_NAMES, scrub, scrub_named
from ._wrap import (
    _F_ARGS,
    _F_CALL,
    _F_INFO,
    _F_KWARGS,
    _F_NOTES,
    _F_USAGE,
    SYNC,
    AsyncGuardedStream,
    Call,
    GuardedStream,
    Lane,
    Layer,
    _FunctionInfo,
    _realize,
    _request_model,
    _requests_stream,
    _StreamBase,
    outcome_of,
    returned_call,
    with_reported,
)
from .errors import BudgetExceeded, CircuitOpen, InputRejected, RateLimited


if TYPE_CHECKING:
    from types import TracebackType

    from opentelemetry.context import Context
    from opentelemetry.metrics import Counter, Histogram, Meter, MeterProvider
    from opentelemetry.trace import SpanContext, Tracer, TracerProvider
    from opentelemetry.util import types as otel_types

    from ._record import Attempt, Usage


P = ParamSpec("P")
R = TypeVar("R")

_UNSET: Any = object()
DEFAULT_MAX_CONTENT_CHARS: Final = 16_384

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


# -- where the request goes: server.address / server.port ------------------------

_CLIENT_TYPES: dict[type, bool] = {}
_CLIENT_ROOTS: Final = ("anthropic", "openai", "google")


def _is_client(obj: object) -> bool:
    cls = type(obj)
    known = _CLIENT_TYPES.get(cls)
    if known is None:
        root = (getattr(cls, "__module__", "") or "").partition(".")[0]
        known = root in _CLIENT_ROOTS and hasattr(cls, "base_url") and not isinstance(obj, type)
        if len(_CLIENT_TYPES) > 1024:
            _CLIENT_TYPES.clear()
        _CLIENT_TYPES[cls] = known
    return known


def _may_hold_client(value: Any) -> bool:
    """Whether a variable holding *value* now may hold an SDK client (now or later)."""
    if value is _UNSET or value is None:
        return True  # not bound yet
    if isinstance(value, (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)):
        return False
    return _is_client(value) or not isinstance(value, (str, bytes, int, float, bool, tuple, list, dict))


def _unwrap(fn: Any) -> Any:
    """The user's function under llmguard's (and functools') wrappers."""
    for _ in range(16):
        if isinstance(fn, (staticmethod, classmethod)):
            fn = fn.__func__
        inner = getattr(fn, "__wrapped__", None)
        if inner is None or inner is fn:
            break
        fn = inner
    return fn


def _address_of_url(url: Any) -> tuple[str, int] | None:
    """(host, port) of an httpx/httpx2 URL or a URL string; None if it has none."""
    if url is None:
        return None
    try:
        if isinstance(url, str):
            from urllib.parse import urlsplit  # noqa: PLC0415

            parts = urlsplit(url)
            host, port, scheme = parts.hostname, parts.port, parts.scheme
        else:
            host, port, scheme = url.host, url.port, url.scheme
    except Exception:  # noqa: BLE001 - an odd URL object just has no address
        return None
    if not host:
        return None
    if port is None:
        port = 443 if scheme == "https" else 80
    return str(host), int(port)


# (server address, llmguard's name for the client's SDK, `_sdk_span_provider` of the client)
_Endpoint = tuple["tuple[str, int] | None", "str | None", Any]
_NOWHERE: _Endpoint = (None, None, None)
_GLOBAL_PROVIDER: Final = object()  # an SDK span from the global tracer provider


def _sdk_span_provider(client: Any) -> Any:
    """Where *client*'s own GenAI span of each request goes, or None when it opens none.

    anthropic ≥ 2 opens a CLIENT span per API call (every SDK retry and the
    stream's reading included), with ``gen_ai.usage.*``, unless its tracing
    is off (``ANTHROPIC_OPEN_TELEMETRY=false`` or ``open_telemetry=False``,
    resolved when the client is built and public as ``client.open_telemetry``).
    The answer is its tracer provider (`_GLOBAL_PROVIDER` for the global one,
    read at the end of each call: it may be set later); whether that provider
    records is asked then. openai and google-genai trace nothing themselves.
    """
    try:
        options = client.open_telemetry
        if not options["traces"]["enabled"]:
            return None
        return options.get("tracer_provider") or _GLOBAL_PROVIDER
    except Exception:  # noqa: BLE001 - an SDK without self-tracing (or an odd option) opens no span
        return None


class _ClientFinder:
    """Finds the SDK client a function calls, to say which server it talks to.

    Looked for, cheaply, on each call (a client may be rebound): in the
    function's closure, in the module globals its code names, in its
    arguments, and on ``self``.
    """

    __slots__ = ("_cells", "_globals", "_instance_attr", "_last", "_names")

    def __init__(self, fn: Callable[..., Any]) -> None:
        cells: list[Any] = []
        names: list[str] = []
        self._globals: dict[str, Any] = {}
        self._collect(_unwrap(fn), cells, names, depth=0, seen=set())
        self._cells = tuple(cells)
        self._names = tuple(names)
        self._instance_attr: dict[type, str | None] = {}
        self._last: tuple[Any, _Endpoint] = (None, _NOWHERE)

    def _collect(self, target: Any, cells: list[Any], names: list[str], depth: int, seen: set[int]) -> None:
        """Where a client may be found: *target*'s cells and globals, and its helpers' (two levels)."""
        if id(target) in seen or len(cells) + len(names) >= 16:
            return
        seen.add(id(target))
        code = getattr(target, "__code__", None)
        g: dict[str, Any] = getattr(target, "__globals__", None) or {}
        if not self._globals:
            self._globals = g
        helpers: list[Any] = []
        for cell in getattr(target, "__closure__", None) or ():
            try:
                value = cell.cell_contents
            except ValueError:  # empty now, may be filled later
                cells.append(cell)
                continue
            if isinstance(value, types.FunctionType):
                helpers.append(value)
            elif _may_hold_client(value):
                cells.append(cell)
        for name in code.co_names if code is not None else ():
            value = g.get(name, _UNSET)
            if isinstance(value, types.FunctionType):
                helpers.append(value)
            elif g is self._globals and _may_hold_client(value) and name not in names:
                names.append(name)
        # A function that calls a helper holding the client (``ask`` calling
        # ``create`` which uses ``client``): look one or two levels down.
        # Only the user's own helpers (same module): a library function's
        # globals are never where the user's client lives.
        if depth < 2:
            module = getattr(target, "__module__", None)
            for helper in map(_unwrap, helpers):
                if getattr(helper, "__module__", None) == module:
                    self._collect(helper, cells, names, depth + 1, seen)

    def _address(self, client: Any) -> _Endpoint:
        last = self._last
        if last[0] is client:
            return last[1]
        address = _address_of_url(getattr(client, "base_url", None))
        sdk = providers.provider_of(client)
        found = (address, sdk, _sdk_span_provider(client))
        self._last = (client, found)
        return found

    def find(self, args: tuple[Any, ...], kwargs: dict[str, Any], instance: Any) -> _Endpoint:
        """(server address, llmguard provider name, SDK span provider) of the client the call will use."""
        for cell in self._cells:
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if _is_client(value):
                return self._address(value)
        g = self._globals
        for name in self._names:
            value = g.get(name)
            if value is not None and _is_client(value):
                return self._address(value)
        # Arguments: a type seen before is one dict lookup (`_is_client`, inlined).
        known_types = _CLIENT_TYPES
        for value in args[:4]:
            known = known_types.get(type(value))
            if known or (known is None and _is_client(value)):
                return self._address(value)
        for value in kwargs.values():
            known = known_types.get(type(value))
            if known or (known is None and _is_client(value)):
                return self._address(value)
        return self._on_instance(instance) if instance is not None else _NOWHERE

    def _on_instance(self, instance: Any) -> _Endpoint:
        cls = type(instance)
        try:
            attr = self._instance_attr[cls]
        except KeyError:
            attr = None
            for key, value in list(getattr(instance, "__dict__", {}).items()):
                if _is_client(value):
                    attr = key
                    break
            self._instance_attr[cls] = attr
        if attr is None:
            return _NOWHERE
        value = getattr(instance, attr, None)
        return self._address(value) if value is not None and _is_client(value) else _NOWHERE


# -- content (opt-in) ----------------------------------------------------------

_INPUT_PARAMS: Final = ("messages", "input", "prompt", "contents")
_SYSTEM_PARAMS: Final = ("system", "instructions")
# String arguments that are request settings, not prompt text.
_NOT_PROMPT: Final = frozenset({"model", "provider", "user", "service_tier", "stop", "reasoning_effort"})


class _ContentBudget:
    """Redaction, scrubbing and the size cap, shared by one span's content."""

    __slots__ = ("left", "redact")

    def __init__(self, redact: Callable[[str], str] | None, limit: int) -> None:
        self.redact = redact
        self.left = limit

    def clean(self, text: str) -> str:
        if self.redact is not None:
            redacted: object = self.redact(text)
            if not isinstance(redacted, str):
                msg = f"trace(redact=...) must return a str, got {type(redacted).__name__}"
                raise TypeError(msg)
            text = redacted
        text = scrub(text)
        if len(text) > self.left:
            cut = len(text) - self.left
            text = f"{text[: self.left]}…[truncated {cut} chars]"
            self.left = 0
        else:
            self.left -= len(text)
        return text


def _get(obj: Any, key: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def _parts(content: Any, budget: _ContentBudget) -> list[dict[str, Any]]:
    """GenAI message parts from a message's content (a str, or provider blocks)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "content": budget.clean(content)}]
    if not isinstance(content, Sequence):
        return [{"type": "text", "content": budget.clean(str(content))}]
    out: list[dict[str, Any]] = []
    for block in content:
        if isinstance(block, str):
            out.append({"type": "text", "content": budget.clean(block)})
            continue
        kind = _get(block, "type")
        if kind in ("text", "input_text", "output_text"):
            out.append({"type": "text", "content": budget.clean(str(_get(block, "text") or ""))})
        elif kind == "tool_use":
            arguments = budget.clean(json.dumps(_get(block, "input"), default=str))
            out.append({"type": "tool_call", "id": _get(block, "id"), "name": _get(block, "name"), "arguments": arguments})
        elif kind == "tool_result":
            result = _parts(_get(block, "content"), budget)
            out.append({"type": "tool_call_response", "id": _get(block, "tool_use_id"), "result": result})
        else:
            out.append({"type": str(kind or "unknown")})  # images, files...: their kind only
    return out


def _message(m: Any, budget: _ContentBudget) -> dict[str, Any]:
    if isinstance(m, Mapping) or hasattr(m, "role"):
        return {"role": str(_get(m, "role") or "user"), "parts": _parts(_get(m, "content"), budget)}
    return {"role": "user", "parts": _parts(m, budget)}


def _input_content(call: Call, budget: _ContentBudget) -> tuple[list[Any] | None, list[Any] | None]:
    """(system instructions, input messages) in the spec's JSON shapes."""
    system: list[Any] | None = None
    for name in _SYSTEM_PARAMS:
        value = call.param(name)
        if value:
            system = _parts(value, budget)
            break
    for name in _INPUT_PARAMS:
        value = call.param(name)
        if value is None:
            continue
        if isinstance(value, str):
            return system, [{"role": "user", "parts": _parts(value, budget)}]
        if isinstance(value, Sequence):
            return system, [_message(m, budget) for m in value]
        return system, None
    # A function like ``ask(q)`` builds the request itself: its text
    # arguments are the closest thing to the prompt that llmguard sees.
    texts = [
        v
        for k, v in call.bound_arguments().items()
        if isinstance(v, str) and k not in _NOT_PROMPT and not SECRET_KEY_NAMES.search(k)
    ]
    if not texts:
        return system, None
    return system, [{"role": "user", "parts": [{"type": "text", "content": budget.clean(t)} for t in texts]}]


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


# -- one traced call -----------------------------------------------------------

_OK = Outcome.OK
_CLIENT = SpanKind.CLIENT
_INT_FLOAT: Final = (int, float)
_PROVIDER_NAMES: Final = _semconv.PROVIDERS
_GOOGLE: Final = _semconv.PROVIDERS["google"]  # its specific name depends on the endpoint
_GUESSES: Final = _semconv._GUESSES  # provider_from_model's cache, read inline on the hot path
_attach = otel_context.attach
_detach = otel_context.detach
_set_span_in_context = otel_trace.set_span_in_context
_get_current = otel_context.get_current
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


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _CallTrace:
    """One traced call: its span, its start, and how to end it (once).

    Built on every traced call, so (like `Attempt`) it has no ``__slots__``
    and keeps its defaults on the class: ``__init__`` stores only what this
    call has. The facts the record holds at the end are read once, by
    `_end`, which keeps on this object what metrics and events need.
    """

    # None for a lane call until the lane binds one (or never): see `_end`.
    record: CallRecord = None  # type: ignore[assignment]
    call: Call | None = None  # a lane call's Call, if it was built
    frame: list[Any] | None = None  # a lane call's frame
    prev_span: Span | None = None
    span: Span | None = None
    ctx: Context | None = None
    stream: _StreamBase | None = None
    chunk_gaps: list[float] | None = None
    last_chunk: float = 0.0
    address: tuple[str, int] | None = None
    client_provider: str | None = None  # llmguard's name for the client's SDK
    sdk_spans: Any = None  # the client opens its own GenAI spans: `_sdk_span_provider`
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

    def __init__(  # noqa: C901, PLR0912, PLR0915 - every call's start, kept in one frame
        self, layer: TraceLayer, call: Call | None, tel: _Telemetry | None, *, frame: list[Any] | None = None
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
        record: CallRecord | None
        if frame is not None:
            # On the fast lane: read from the frame, no Call, and no record
            # unless someone asks (the span then goes on it as a note); the
            # end may read the facts from the result instead. (``record``,
            # ``call`` and ``prev_span`` keep their class defaults, None.)
            self.frame = frame
            record = None
            info: _FunctionInfo = frame[_F_INFO]
            args: tuple[Any, ...] = frame[_F_ARGS]
            kwargs: dict[str, Any] = frame[_F_KWARGS]
            instance, args = info.binder.split(args)
            model = self.request_model = _request_model(info, instance, args, kwargs)
            stream = self.start_stream = _requests_stream(info, instance, args, kwargs)
            function = info.name
        else:
            call = cast("Call", call)
            self.call = call
            args, kwargs, instance = call.args, call.kwargs, call.instance
            self.record = record = call.record
            self.prev_span = record.span
            model = self.request_model = record.request_model
            stream = self.start_stream = record.stream
            function = record.function
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
                value = (
                    kwargs[param]
                    if param in kwargs
                    else call.param(param)
                    if call is not None
                    else info.binder.arg(instance, args, kwargs, param)
                )
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
                # Kept for the record, should one be built (`_wrap._realize` takes the notes).
                notes = cast("list[Any]", frame)[_F_NOTES]
                if notes is None:
                    cast("list[Any]", frame)[_F_NOTES] = {"span": _RecordSpan(span)}
                else:
                    notes["span"] = _RecordSpan(span)
        self.ctx = _set_span_in_context(span, parent)

    # -- streams -------------------------------------------------------------

    def wrap(self, result: _StreamBase) -> _StreamBase:
        """The stream to hand back: pulls made current under the span; ended once."""
        self.stream = result
        out: _StreamBase = result
        if self.ctx is not None:
            if isinstance(result, AsyncGuardedStream):
                traced_async = _TracedAsyncStream(source=result, record=self.record)
                traced_async._otel_ctx = self.ctx
                out = traced_async
            else:
                traced = _TracedStream(source=result, record=self.record)
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
            if cast("CallRecord | None", self.record) is None:  # a lane call's plain result, no record
                self._end_lane(result)
            else:
                self._end(outcome, exc, result)
        except Exception as bug:  # noqa: BLE001 - telemetry must never break the call
            warnings.warn(f"llmguard.trace: could not record a call: {bug!r}", RuntimeWarning, stacklevel=3)
            span = self.span
            if span is not None and span.is_recording():
                span.end(_end_time(self.t0_ns, self.t0, _clock.now()))
        finally:
            if self.record is not None:
                self.record.span = self.prev_span

    def _end(  # noqa: PLR0912, PLR0915 - every call's end, kept in one frame
        self, outcome: Outcome, exc: BaseException | None, result: Any
    ) -> None:
        # One method on purpose: this runs on every call, and each Python
        # call or attribute round-trip saved shows beside the SDK's own cost.
        t1 = _clock.now()  # the call's end, for the span, the metrics and the event alike
        tel = self.tel
        record = self.record
        layer = self.layer
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
                own = usage if self.sdk_spans is None else self._own_usage(attrs, n, usage, record.attempts)
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
                    self._content(attrs, n, result)
                if error_type is not None:
                    attrs[n.error_type] = error_type
                span.set_attributes(attrs)
                if error_type is not None:
                    _set_error_status(span, error_type, outcome, exc)
            span.end(_end_time(self.t0_ns, self.t0, t1))
        if self.scope is not None:
            self.scope.add(usage, cost)
        if tel is not None and tel.instruments is not None:
            self._record_metrics(tel.instruments, tel.names, t1, error_type, exc)
        if _events.listening():
            self._emit(outcome, exc, error_type, t1)

    def _end_lane(self, result: Any) -> None:
        """`_end` for a lane call's plain result with no record (so no metrics or events either).

        Its one attempt's facts are read as `Call` would settle them, from
        what was reported and returned; the span gets the same attributes.
        """
        layer = self.layer
        # The attempt's facts as `Call` would settle them: the result's, the
        # usage `report_usage` kept on the frame winning over the result's,
        # priced as `_wrap._price` prices.
        frame = cast("list[Any]", self.frame)
        reported = frame[_F_USAGE]
        facts = providers.observe_result(result)
        response_id: str | None = None
        finish_reasons: tuple[str, ...] = ()
        if facts is not None:
            response_id, finish_reasons = facts.response_id, facts.finish_reasons
        usage, response_model, provider = with_reported(
            None if facts is None else (facts.usage, facts.model, facts.provider), reported
        ) or (None, None, None)
        cost = prices.cost_of(usage, response_model or self.request_model, provider) if usage is not None else None
        provider = self._provider(provider)
        span = self.span
        if span is not None:
            if span.is_recording():
                n = layer._names
                attrs: dict[str, Any] = {n.lg_attempts: 1}
                if provider and provider != self.start_provider:
                    attrs[n.provider] = provider
                own = usage if self.sdk_spans is None else self._own_usage(attrs, n, usage, ((provider, usage),))
                _answer_attributes(
                    attrs, n, span, layer, self.request_model, CallRecord.operation,
                    (response_model, response_id, finish_reasons, own, cost),
                )
                if layer.capture_content:
                    self.finish_reasons = finish_reasons
                    self._content(attrs, n, result)
                span.set_attributes(attrs)
            span.end(_end_time(self.t0_ns, self.t0, _clock.now()))
        if self.scope is not None:
            self.scope.add(usage, cost)

    def _own_usage(
        self,
        attrs: dict[str, Any],
        n: _semconv.Semconv,
        usage: Usage | None,
        parts: Sequence[Attempt] | tuple[tuple[str | None, Usage | None], ...],
    ) -> Usage | None:
        """The usage this span carries as ``gen_ai.usage.*``: what no SDK span of the call carries.

        The client opens its own GenAI span per request, a child of this one
        (`_sdk_span_provider`): when that span records, each attempt answered
        through that SDK (*parts*: each attempt's provider and usage) has its
        usage there, once, and this span keeps the call's totals under
        ``llmguard.usage.*`` instead. Attempts answered elsewhere (a fallback
        to another SDK) stay here, so the sum over the trace is the server's.
        """
        sdk_spans = self.sdk_spans
        tp = otel_trace.get_tracer_provider() if sdk_spans is _GLOBAL_PROVIDER else sdk_spans
        if usage is None or not _records_spans(tp):
            return usage
        sdk = self.client_provider
        own: Usage | None = None
        for part in parts:
            provider, used = part if isinstance(part, tuple) else (part.provider, part.usage)
            if used is not None and provider is not None and provider != sdk:
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

    def _content(self, attrs: dict[str, Any], n: _semconv.Semconv, result: Any) -> None:
        layer = self.layer
        budget = _ContentBudget(layer.redact, layer.max_content_chars)
        try:
            call = self.call if self.call is not None else _realize(cast("list[Any]", self.frame))
            system, messages = _input_content(call, budget)
            if system:
                attrs[n.system_instructions] = json.dumps(system, ensure_ascii=False, default=str)
            if messages:
                attrs[n.input_messages] = json.dumps(messages, ensure_ascii=False, default=str)
            text = None
            if self.stream is not None:
                text = self.stream.text
            elif result is not None:
                observed = providers.observe_result(result)
                text = observed.text if observed is not None else (result if isinstance(result, str) else None)
            if text:
                reason = self.finish_reasons[0] if self.finish_reasons else "unknown"
                part = {"type": "text", "content": budget.clean(text)}
                out = [{"role": "assistant", "parts": [part], "finish_reason": reason}]
                attrs[n.output_messages] = json.dumps(out, ensure_ascii=False)
        except Exception as exc:  # noqa: BLE001 - a redactor's bug drops the content, never leaks it
            for key in (n.system_instructions, n.input_messages, n.output_messages):
                attrs.pop(key, None)
            warnings.warn(
                f"llmguard.trace: content not recorded ({type(exc).__name__} in the redactor or content)",
                RuntimeWarning,
                stacklevel=2,
            )

    def _metric_attributes(self, n: _semconv.Semconv) -> dict[str, Any]:
        record = self.record
        attrs: dict[str, Any] = {n.operation: self.layer.operation or record.operation}
        provider = self.provider or _semconv.provider_from_model(record.request_model)
        if provider:
            attrs[n.provider] = provider
        if record.request_model:
            attrs[n.request_model] = record.request_model
        if self.response_model:
            attrs[n.response_model] = self.response_model
        if self.address is not None:
            attrs[n.server_address] = self.address[0]
            attrs[n.server_port] = self.address[1]
        return attrs

    def _record_metrics(  # noqa: PLR0912 - one optional instrument per branch
        self,
        ins: _Instruments,
        n: _semconv.Semconv,
        t1: float,
        error_type: str | None,
        exc: BaseException | None,
    ) -> None:
        record = self.record
        attrs = self._metric_attributes(n)
        if ins.duration is not None:
            ins.duration.record(t1 - self.t0, {**attrs, n.error_type: error_type} if error_type else attrs)
        usage = self.usage
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
        if self.ttfc is not None and ins.ttfc is not None:
            ins.ttfc.record(self.ttfc, attrs)
        if self.chunk_gaps and ins.tpoc is not None:
            for gap in self.chunk_gaps:
                ins.tpoc.record(gap, attrs)
        if self.cost and ins.cost is not None:
            ins.cost.add(self.cost, attrs)
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
        self,
        outcome: Outcome,
        exc: BaseException | None,
        error_type: str | None,
        t1: float,
    ) -> None:
        record = self.record
        usage = self.usage
        kind = _error_kind(exc)
        fields: dict[str, Any] = {
            "function": record.function,
            "operation": self.layer.operation or record.operation,
            "provider": self.provider,
            "model": record.request_model,
            "response_model": self.response_model,
            "stream": record.stream,
            "outcome": outcome.value,
            "duration_s": round(t1 - self.t0, 6),
            "ttft_s": round(self.ttfc, 6) if self.ttfc is not None else None,
            "attempts": len(record.attempts),
            "input_tokens": usage.input_tokens if usage else None,
            "output_tokens": usage.output_tokens if usage else None,
            "cache_read_tokens": usage.cache_read_tokens if usage and usage.cache_read_tokens else None,
            "cache_write_tokens": usage.cache_write_tokens if usage and usage.cache_write_tokens else None,
            "reasoning_tokens": usage.reasoning_tokens if usage and usage.reasoning_tokens else None,
            "usage_estimated": usage.estimated if usage else None,
            "cost_usd": self.cost,
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
        span = self.span
        if span is not None:
            ctx = span.get_span_context()
            if ctx.is_valid:
                fields["trace_id"] = f"{ctx.trace_id:032x}"
                fields["span_id"] = f"{ctx.span_id:016x}"
        level = _LEVELS.get(outcome)
        if level is None:  # an error: transient ones and refusals are warnings
            level = "warning" if kind is not None and (kind.transient or kind is ErrorKind.GUARD) else "error"
        _events.emit(_events.CALL, None, level=level, **{k: v for k, v in fields.items() if v is not None})


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


def _stream_address(stream: _StreamBase) -> tuple[str, int] | None:
    """(host, port) of the HTTP response an SDK stream reads, if it has one."""
    source = stream._innermost()._source
    if source is None or isinstance(source, _StreamBase):
        return None
    try:
        response = getattr(source, "response", None)
        return _address_of_url(getattr(response, "url", None)) if response is not None else None
    except Exception:  # noqa: BLE001 - a stream helper without a response is fine
        return None


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


# -- the guard -------------------------------------------------------------------


def _valid_attribute(value: object) -> bool:
    if isinstance(value, (str, bool, int, float)):
        return True
    return isinstance(value, (list, tuple)) and all(isinstance(v, (str, bool, int, float)) for v in value)


class TraceLayer(Layer):
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

    # -- the decorator ---------------------------------------------------------

    def around(self, call: Call) -> Any:
        """Trace one call of a ``def`` or generator function."""
        tel = self._telemetry()
        if tel is None and not _events.listening():
            return call.proceed()
        ct = _CallTrace(self, call, tel)
        ctx = ct.ctx
        # Attached here, detached in `_proceed`'s finally: no context outlives the call.
        return self._proceed(call, ct, _attach(ctx) if ctx is not None else None)

    @staticmethod
    def _proceed(call: Call, ct: _CallTrace, token: Token[Context] | None) -> Any:
        try:
            result = call.proceed()
        except BaseException as exc:
            ct.end(outcome_of(exc), exc, None)
            raise
        finally:
            if token is not None:
                _detach(token)
        if isinstance(result, _StreamBase):
            return ct.wrap(result)
        ct.end(_OK, None, result)
        return result

    async def around_async(self, call: Call) -> Any:
        """Trace one call of an ``async def`` or async generator function."""
        tel = self._telemetry()
        if tel is None and not _events.listening():
            return await call.proceed_async()
        ct = _CallTrace(self, call, tel)
        ctx = ct.ctx
        token = _attach(ctx) if ctx is not None else None
        try:
            result = await call.proceed_async()
        except BaseException as exc:
            ct.end(outcome_of(exc), exc, None)
            raise
        finally:
            if token is not None:
                _detach(token)
        if isinstance(result, _StreamBase):
            return ct.wrap(result)
        ct.end(_OK, None, result)
        return result

    # -- the fast lane: this trace alone on a def / async def ------------------

    def lane(self, shape: str) -> Lane | None:
        """Start the span from the call, end it from what came back; no record unless asked for.

        A call with metrics or event listeners, or whose record someone
        built, ends from the record as on the general path; an exception or
        a stream goes on through `_proceed` as `around` would.
        """
        resume = self._lane_resume if shape == SYNC else self._lane_resume_async
        return Lane(self._lane_enter, self._lane_leave, resume, needs_call=False)

    def _lane_enter(self, frame: list[Any]) -> tuple[_CallTrace, Token[Context] | None] | None:
        tel = self._telemetry()
        if tel is None and not _events.listening():
            return None
        ct = _CallTrace(self, None, tel, frame=frame)
        ctx = ct.ctx
        # Detached by leave or resume, in the same context, with no yield between.
        return ct, (_attach(ctx) if ctx is not None else None)

    @staticmethod
    def _lane_leave(call: Call | None, state: tuple[_CallTrace, Token[Context] | None] | None, result: Any) -> Any:  # noqa: ARG004
        if state is None:
            return result
        ct, token = state
        if token is not None:
            _detach(token)
        tel = ct.tel
        frame = cast("list[Any]", ct.frame)
        built = frame[_F_CALL]
        if (built is not None and built._record is not None) or (tel is not None and tel.instruments is not None) or _events.listening():
            # Someone built the record, or metrics and events will read it: end from it.
            real = returned_call(frame, result)
            ct.call = real
            ct.record = real.record
        ct.end(_OK, None, result)
        return result

    def _lane_resume(self, call: Call, state: tuple[_CallTrace, Token[Context] | None] | None) -> Any:
        if state is None:
            return call.proceed()
        ct, token = state
        ct.call = call
        ct.record = call.record
        return self._proceed(call, ct, token)

    async def _lane_resume_async(self, call: Call, state: tuple[_CallTrace, Token[Context] | None] | None) -> Any:
        return self._lane_resume(call, state)  # the first proceed only replays: nothing to await

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
