"""`trace` beside an SDK that traces itself: one call's usage is counted once over all GenAI spans.

anthropic ≥ 2 opens its own CLIENT span per API call (scope ``com.anthropic.sdk.python``, a child of
llmguard's) carrying ``gen_ai.usage.*``; openai and google-genai open none. Whatever the SDK does, the
sum of ``gen_ai.usage.input_tokens`` over every finished span of one call is what the server sent.
"""

from __future__ import annotations

import asyncio

from collections.abc import Callable
from types import ModuleType
from typing import Any

import anthropic
import openai
import pydantic
import pytest

from conftest import API_KEY, json_mode
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import llmguard as lg

from llmguard._fake_provider import FakeProvider, Step
from llmguard._trace_client import _sdk_span_provider


MODEL = "claude-sonnet-4-6"
MESSAGES: Any = [{"role": "user", "content": "hello there"}]
USAGE = {"input_tokens": 120, "output_tokens": 9, "cache_read_tokens": 50, "cache_write_tokens": 20}
SDK_SCOPE = "com.anthropic.sdk.python"
# anthropic traces itself from 2.x; CI's lowest environment has a release that does not.
SELF_TRACING = hasattr(anthropic.Anthropic, "open_telemetry")


class Ledger(SpanProcessor):
    """Counts every span's start and end: none left open, none ended twice."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.ended: list[int] = []

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        self.started.append(span.context.span_id)

    def on_end(self, span: ReadableSpan) -> None:
        self.ended.append(span.context.span_id)  # type: ignore[union-attr]

    def check(self) -> None:
        assert sorted(self.started) == sorted(self.ended)
        assert len(set(self.ended)) == len(self.ended)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


@pytest.fixture
def tracer_provider(exporter: InMemorySpanExporter, ledger: Ledger) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(ledger)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


# How the SDK's own tracing is set: each gives a client (real SDK) against the fake provider.
def _anthropic(fp: FakeProvider, tp: TracerProvider, mp: pytest.MonkeyPatch, **options: Any) -> Any:
    if SELF_TRACING:
        return anthropic.Anthropic(
            base_url=fp.anthropic_base_url, api_key=API_KEY, max_retries=0, open_telemetry={"tracer_provider": tp, **options}
        )
    mp.setattr(otel_trace, "_TRACER_PROVIDER", tp)
    return anthropic.Anthropic(base_url=fp.anthropic_base_url, api_key=API_KEY, max_retries=0)


def _anthropic_on(fp: FakeProvider, tp: TracerProvider, mp: pytest.MonkeyPatch) -> Any:
    return _anthropic(fp, tp, mp)


def _anthropic_on_global(fp: FakeProvider, tp: TracerProvider, mp: pytest.MonkeyPatch) -> Any:
    mp.setattr(otel_trace, "_TRACER_PROVIDER", tp)
    return anthropic.Anthropic(base_url=fp.anthropic_base_url, api_key=API_KEY, max_retries=0)


def _anthropic_off_env(fp: FakeProvider, tp: TracerProvider, mp: pytest.MonkeyPatch) -> Any:
    mp.setattr(otel_trace, "_TRACER_PROVIDER", tp)
    mp.setenv("ANTHROPIC_OPEN_TELEMETRY", "false")
    return anthropic.Anthropic(base_url=fp.anthropic_base_url, api_key=API_KEY, max_retries=0)


def _anthropic_off_option(fp: FakeProvider, tp: TracerProvider, mp: pytest.MonkeyPatch) -> Any:
    return _anthropic(fp, tp, mp, traces=False)


def _openai(fp: FakeProvider, tp: TracerProvider, mp: pytest.MonkeyPatch) -> Any:
    mp.setattr(otel_trace, "_TRACER_PROVIDER", tp)
    return openai.OpenAI(base_url=fp.openai_base_url, api_key=API_KEY, max_retries=0)


CLIENTS: dict[str, tuple[Callable[..., Any], bool]] = {
    # name: (make, whether the SDK opens its own span)
    "anthropic-on": (_anthropic_on, SELF_TRACING),
    "anthropic-on-global": (_anthropic_on_global, SELF_TRACING),
    "anthropic-off-env": (_anthropic_off_env, False),
    "anthropic-off-option": (_anthropic_off_option, False),
    "openai": (_openai, False),
}


def _create(client: Any, stream: bool) -> Any:
    if isinstance(client, anthropic.Anthropic):
        return client.messages.create(model=MODEL, max_tokens=32, messages=MESSAGES, stream=stream)
    extra = {"stream_options": {"include_usage": True}} if stream else {}
    return client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=stream, **extra)


def _total(spans: tuple[ReadableSpan, ...], key: str) -> int:
    return sum(int(s.attributes.get(key, 0)) for s in spans if s.attributes)  # type: ignore[arg-type]


def _check_once(exporter: InMemorySpanExporter, ledger: Ledger, sdk_spans: bool, requests: int) -> None:
    spans = exporter.get_finished_spans()
    assert USAGE["input_tokens"] == _total(spans, "gen_ai.usage.input_tokens"), [dict(s.attributes or {}) for s in spans]
    assert USAGE["output_tokens"] == _total(spans, "gen_ai.usage.output_tokens")
    own = [s for s in spans if s.instrumentation_scope and s.instrumentation_scope.name == "llmguard"]
    sdk = [s for s in spans if s.instrumentation_scope and s.instrumentation_scope.name == SDK_SCOPE]
    assert 1 == len(own)
    assert (requests if sdk_spans else 0) == len(sdk)
    assert all(s.parent is not None and s.parent.span_id == own[0].context.span_id for s in sdk)  # type: ignore[union-attr]
    attrs = dict(own[0].attributes or {})
    if sdk_spans:  # the operation's totals stay on llmguard's span, outside gen_ai.usage.*
        assert "gen_ai.usage.input_tokens" not in attrs
        assert USAGE["input_tokens"] == attrs["llmguard.usage.input_tokens"]
        assert USAGE["output_tokens"] == attrs["llmguard.usage.output_tokens"]
        assert attrs["llmguard.cost_usd"] > 0
    else:
        assert "llmguard.usage.input_tokens" not in attrs
    ledger.check()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("how", list(CLIENTS))
def test_usage_is_counted_once_over_all_spans(
    how: str,
    stream: bool,
    monkeypatch: pytest.MonkeyPatch,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    ledger: Ledger,
    fake_provider: FakeProvider,
) -> None:
    make, sdk_spans = CLIENTS[how]
    client = make(fake_provider, tracer_provider, monkeypatch)
    fake_provider.script(Step(usage=USAGE))

    @lg.trace(tracer_provider=tracer_provider)
    def ask() -> Any:
        return _create(client, stream)

    with client:
        result = ask()
        if stream:
            for _ in result:
                pass
    _check_once(exporter, ledger, sdk_spans, requests=1)


@pytest.mark.parametrize("how", list(CLIENTS))
def test_a_retried_call_counts_its_usage_once(
    how: str,
    monkeypatch: pytest.MonkeyPatch,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    ledger: Ledger,
    fake_provider: FakeProvider,
    fake_clock: Any,
) -> None:
    """429 then success under `@lg.retry`: two SDK spans (one per request) under llmguard's one."""
    make, sdk_spans = CLIENTS[how]
    client = make(fake_provider, tracer_provider, monkeypatch)
    fake_provider.script(Step(status=429, headers={"retry-after": "1"}), Step(usage=USAGE))

    @lg.trace(tracer_provider=tracer_provider)
    @lg.retry(attempts=3)
    def ask() -> Any:
        return _create(client, False)

    with client:
        ask()
    _check_once(exporter, ledger, sdk_spans, requests=2)


@pytest.mark.skipif(not SELF_TRACING, reason="this anthropic release does not trace itself")
async def test_async_anthropic_with_its_tracing_counts_once(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, ledger: Ledger, fake_provider: FakeProvider
) -> None:
    client = anthropic.AsyncAnthropic(
        base_url=fake_provider.anthropic_base_url,
        api_key=API_KEY,
        max_retries=0,
        open_telemetry={"tracer_provider": tracer_provider},
    )
    fake_provider.script(Step(usage=USAGE), Step(usage=USAGE))

    @lg.trace(tracer_provider=tracer_provider)
    async def ask(stream: bool) -> Any:
        return await client.messages.create(model=MODEL, max_tokens=32, messages=MESSAGES, stream=stream)

    await ask(False)
    _check_once(exporter, ledger, True, requests=1)
    exporter.clear()
    async for _ in await ask(True):
        await asyncio.sleep(0)
    _check_once(exporter, ledger, True, requests=1)
    await client.close()


@pytest.mark.skipif(not SELF_TRACING, reason="this anthropic release does not trace itself")
def test_what_the_sdk_says_about_its_own_spans(monkeypatch: pytest.MonkeyPatch, fake_provider: FakeProvider) -> None:
    """The switch is read from the real SDKs: anthropic's resolved option, openai has none."""
    tp = TracerProvider()
    url = fake_provider.anthropic_base_url
    assert tp is _sdk_span_provider(anthropic.Anthropic(base_url=url, api_key=API_KEY, open_telemetry={"tracer_provider": tp}))
    assert _sdk_span_provider(anthropic.Anthropic(base_url=url, api_key=API_KEY)) is not None  # on by default
    assert _sdk_span_provider(anthropic.Anthropic(base_url=url, api_key=API_KEY, open_telemetry=False)) is None
    monkeypatch.setenv("ANTHROPIC_OPEN_TELEMETRY", "false")
    assert _sdk_span_provider(anthropic.Anthropic(base_url=url, api_key=API_KEY)) is None
    assert _sdk_span_provider(openai.OpenAI(base_url=fake_provider.openai_base_url, api_key=API_KEY)) is None


# -- a client llmguard cannot see: the SDK's span is noticed as it starts --------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("how", list(CLIENTS))
def test_a_client_behind_a_lookup_counts_once(
    how: str,
    stream: bool,
    monkeypatch: pytest.MonkeyPatch,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    ledger: Ledger,
    fake_provider: FakeProvider,
) -> None:
    """The client comes from a registry (a getter, a DI container): only the SDK's span starting says it traces."""
    make, sdk_spans = CLIENTS[how]
    registry = {"llm": make(fake_provider, tracer_provider, monkeypatch)}
    fake_provider.script(Step(usage=USAGE))

    @lg.trace(tracer_provider=tracer_provider)
    def ask() -> Any:
        return _create(registry["llm"], stream)

    with registry["llm"]:
        result = ask()
        if stream:
            for _ in result:
                pass
    _check_once(exporter, ledger, sdk_spans, requests=1)


@pytest.mark.parametrize("how", [how for how in CLIENTS if how.startswith("anthropic")])
def test_a_stream_helper_opened_after_the_function_returned_counts_once(
    how: str,
    monkeypatch: pytest.MonkeyPatch,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    ledger: Ledger,
    fake_provider: FakeProvider,
) -> None:
    """``messages.stream()`` sends its request when the caller enters it: the SDK's span starts then, under llmguard's."""
    make, sdk_spans = CLIENTS[how]
    registry = {"llm": make(fake_provider, tracer_provider, monkeypatch)}
    fake_provider.script(Step(usage=USAGE))

    @lg.trace(tracer_provider=tracer_provider)
    def ask() -> Any:
        return registry["llm"].messages.stream(model=MODEL, max_tokens=32, messages=MESSAGES)

    with registry["llm"], ask() as stream:
        for _ in stream.text_stream:
            pass
    _check_once(exporter, ledger, sdk_spans, requests=1)


@pytest.mark.parametrize("how", list(CLIENTS))
def test_a_retried_call_through_a_lookup_counts_its_usage_once(
    how: str,
    monkeypatch: pytest.MonkeyPatch,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    ledger: Ledger,
    fake_provider: FakeProvider,
    fake_clock: Any,
) -> None:
    make, sdk_spans = CLIENTS[how]
    registry = {"llm": make(fake_provider, tracer_provider, monkeypatch)}
    fake_provider.script(Step(status=429, headers={"retry-after": "1"}), Step(usage=USAGE))

    @lg.trace(tracer_provider=tracer_provider)
    @lg.retry(attempts=3)
    def ask() -> Any:
        return _create(registry["llm"], False)

    with registry["llm"]:
        ask()
    _check_once(exporter, ledger, sdk_spans, requests=2)


@pytest.mark.parametrize("how", list(CLIENTS))
def test_a_traced_call_inside_a_traced_call_counts_once(
    how: str,
    monkeypatch: pytest.MonkeyPatch,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    ledger: Ledger,
    fake_provider: FakeProvider,
) -> None:
    """The outer call returns what the inner one returned: the inner span (or the SDK's under it) has the usage."""
    make, _ = CLIENTS[how]
    client = make(fake_provider, tracer_provider, monkeypatch)
    fake_provider.script(Step(usage=USAGE))

    @lg.trace(tracer_provider=tracer_provider)
    def inner() -> Any:
        return _create(client, False)

    @lg.trace("outer", tracer_provider=tracer_provider)
    def outer() -> Any:
        return inner()

    with client:
        outer()
    spans = exporter.get_finished_spans()
    assert USAGE["input_tokens"] == _total(spans, "gen_ai.usage.input_tokens"), [dict(s.attributes or {}) for s in spans]
    assert USAGE["output_tokens"] == _total(spans, "gen_ai.usage.output_tokens")
    [top] = [s for s in spans if s.name == "outer"]
    assert USAGE["input_tokens"] == dict(top.attributes or {})["llmguard.usage.input_tokens"]
    ledger.check()


def test_spans_that_are_not_genai_do_not_move_the_usage(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, ledger: Ledger, fake_provider: FakeProvider
) -> None:
    """The user's own span inside the call, and anything reading the current span, leave the usage where it is."""
    client = openai.OpenAI(base_url=fake_provider.openai_base_url, api_key=API_KEY, max_retries=0)
    tracer = tracer_provider.get_tracer("mine")
    fake_provider.script(Step(usage=USAGE))

    @lg.trace(tracer_provider=tracer_provider)
    def ask() -> Any:
        current = otel_trace.get_current_span()
        current.set_attribute("app.user", "ada")  # the current span is still the call's span for the user
        assert current.get_span_context().span_id
        with tracer.start_as_current_span("prepare", kind=otel_trace.SpanKind.INTERNAL):
            pass
        with tracer.start_as_current_span("http", kind=otel_trace.SpanKind.CLIENT, attributes={"http.method": "POST"}):
            return _create(client, False)

    with client:
        ask()
    spans = exporter.get_finished_spans()
    [own] = [s for s in spans if s.instrumentation_scope and s.instrumentation_scope.name == "llmguard"]
    attrs = dict(own.attributes or {})
    assert USAGE["input_tokens"] == attrs["gen_ai.usage.input_tokens"]
    assert "ada" == attrs["app.user"]
    assert "llmguard.usage.input_tokens" not in attrs
    ledger.check()


@pytest.mark.skipif(not SELF_TRACING, reason="this anthropic release does not trace itself")
async def test_async_anthropic_behind_a_lookup_counts_once(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, ledger: Ledger, fake_provider: FakeProvider
) -> None:
    registry = {
        "llm": anthropic.AsyncAnthropic(
            base_url=fake_provider.anthropic_base_url,
            api_key=API_KEY,
            max_retries=0,
            open_telemetry={"tracer_provider": tracer_provider},
        )
    }
    fake_provider.script(Step(usage=USAGE), Step(usage=USAGE))

    @lg.trace(tracer_provider=tracer_provider)
    async def ask(stream: bool) -> Any:
        return await registry["llm"].messages.create(model=MODEL, max_tokens=32, messages=MESSAGES, stream=stream)

    await ask(False)
    _check_once(exporter, ledger, True, requests=1)
    exporter.clear()
    async for _ in await ask(True):
        await asyncio.sleep(0)
    _check_once(exporter, ledger, True, requests=1)
    await registry["llm"].close()


@pytest.mark.skipif(not SELF_TRACING, reason="this anthropic release does not trace itself")
def test_a_client_wrapped_by_instructor_counts_once(
    instructor: ModuleType,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    ledger: Ledger,
    fake_provider: FakeProvider,
) -> None:
    """Instructor's client hides the SDK's: its span starting under llmguard's is what says the usage is there."""
    client = anthropic.Anthropic(
        base_url=fake_provider.anthropic_base_url,
        api_key=API_KEY,
        max_retries=0,
        open_telemetry={"tracer_provider": tracer_provider},
    )
    structured = json_mode(instructor, client)
    fake_provider.script(Step(reply='{"name": "Ada"}', usage=USAGE))

    @lg.trace(tracer_provider=tracer_provider)
    def ask() -> Any:
        _user, completion = structured.messages.create_with_completion(
            model=MODEL, max_tokens=64, messages=MESSAGES, response_model=User, max_retries=1
        )
        return completion  # the SDK's Message: llmguard reads its usage

    with client:
        ask()
    _check_once(exporter, ledger, True, requests=1)


class User(pydantic.BaseModel):
    """What instructor extracts."""

    name: str
