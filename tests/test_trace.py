"""`trace`: GenAI spans, metrics and log events from real SDK calls against the fake provider."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
import time

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anthropic
import openai
import pytest
import structlog

from conftest import API_KEY
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler, SamplingResult
from opentelemetry.trace import (
    NonRecordingSpan,
    NoOpTracerProvider,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
)
from sdk_http import httpx
from shapes import SHAPES, build, text_of_events

import llmguard as lg

from llmguard import _events, _semconv
from llmguard._call import Call
from llmguard._fake_provider import FakeProvider, Step
from llmguard._runner import Guard
from llmguard.stores.budget import BudgetStoreError, MemoryBudgetStore
from llmguard.testing import CapturedEvent, FakeClock


MODEL = "claude-sonnet-4-6"
MESSAGES: Any = [{"role": "user", "content": "hello there"}]
SECRET = "SECRET-0123456789abcdef"  # the distinctive part of conftest.API_KEY

TIME_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)


# -- fixtures and helpers --------------------------------------------------------


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def meter_provider(reader: InMemoryMetricReader) -> MeterProvider:
    return MeterProvider(metric_readers=[reader])


@pytest.fixture
def traced(tracer_provider: TracerProvider, meter_provider: MeterProvider) -> Callable[..., Any]:
    """`lg.trace(...)` bound to this test's in-memory providers."""

    def make(*args: Any, **kwargs: Any) -> Any:
        return lg.trace(*args, tracer_provider=tracer_provider, meter_provider=meter_provider, **kwargs)

    return make


def spans_named(exporter: InMemorySpanExporter, prefix: str = "chat") -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]


def one_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = spans_named(exporter)
    assert 1 == len(spans), [s.name for s in exporter.get_finished_spans()]
    return spans[0]


def metrics(reader: InMemoryMetricReader) -> dict[str, Any]:
    """Every metric the reader holds, by name."""
    data = reader.get_metrics_data()
    out: dict[str, Any] = {}
    if data is None:
        return out
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out[metric.name] = metric
    return out


def points(metric: Any) -> list[Any]:
    return list(metric.data.data_points)


def point_with(metric: Any, **attrs: Any) -> Any:
    found = [p for p in points(metric) if all(p.attributes.get(k.replace("__", ".")) == v for k, v in attrs.items())]
    assert 1 == len(found), [dict(p.attributes) for p in points(metric)]
    return found[0]


# -- the span of one call: name, kind, attributes --------------------------------


def test_anthropic_call_span_carries_the_genai_attributes(
    traced: Any, exporter: InMemorySpanExporter, fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """A messages.create call gives one CLIENT span named "chat {model}" with the v1.41 attributes."""
    fake_provider.script(Step(usage={"input_tokens": 120, "output_tokens": 9, "cache_read_tokens": 50, "cache_write_tokens": 20}))

    @traced()
    def ask(q: str, model: str = MODEL, max_tokens: int = 64) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=max_tokens, messages=[{"role": "user", "content": q}])

    ask("hello there")

    span = one_span(exporter)
    attrs = dict(span.attributes or {})
    port = int(fake_provider.url.rsplit(":", 1)[1])
    assert "chat claude-sonnet-4-6" == span.name
    assert SpanKind.CLIENT == span.kind
    assert StatusCode.UNSET == span.status.status_code
    assert {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": MODEL,
        "gen_ai.request.max_tokens": 64,
        "gen_ai.request.stream": False,
        "gen_ai.response.model": MODEL,
        "gen_ai.response.finish_reasons": ("end_turn",),
        # the spec's anthropic rule: input = uncached + cache read + cache creation
        "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 9,
        "gen_ai.usage.cache_read.input_tokens": 50,
        "gen_ai.usage.cache_creation.input_tokens": 20,
        "server.address": "127.0.0.1",
        "server.port": port,
        "llmguard.function": "test_anthropic_call_span_carries_the_genai_attributes.<locals>.ask",
        "llmguard.attempts": 1,
    }.items() <= attrs.items()
    assert str(attrs["gen_ai.response.id"]).startswith("msg_")
    assert lg.cost_of(lg.Usage(120, 9, 50, 20), MODEL, "anthropic") == attrs["llmguard.cost_usd"]
    assert "error.type" not in attrs
    assert "gen_ai.input.messages" not in attrs  # content is off by default


def test_openai_call_span_carries_sampling_parameters(
    traced: Any, exporter: InMemorySpanExporter, fake_provider: FakeProvider, openai_client: openai.OpenAI
) -> None:
    """An openai chat call records temperature, top_p, max_tokens and cached input tokens."""
    fake_provider.script(Step(usage={"input_tokens": 40, "output_tokens": 6, "cache_read_tokens": 32}))

    @traced
    def ask(q: str, model: str = "gpt-4o", temperature: float = 0.2, top_p: float = 0.9, max_tokens: int = 50) -> Any:
        return openai_client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": q}], temperature=temperature, top_p=top_p, max_tokens=max_tokens
        )

    ask("hi", model="gpt-4o-mini")

    span = one_span(exporter)
    attrs = dict(span.attributes or {})
    assert "chat gpt-4o-mini" == span.name
    assert {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.request.temperature": 0.2,
        "gen_ai.request.top_p": 0.9,
        "gen_ai.request.max_tokens": 50,
        "gen_ai.response.model": "gpt-4o-mini",
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": 40,
        "gen_ai.usage.output_tokens": 6,
        "gen_ai.usage.cache_read.input_tokens": 32,
        "server.address": "127.0.0.1",
    }.items() <= attrs.items()
    assert str(attrs["gen_ai.response.id"]).startswith("chatcmpl")


def test_anthropic_stream_span_has_time_to_first_chunk_and_stream_usage(
    traced: Any, exporter: InMemorySpanExporter, fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """A streamed call sets request.stream, the usage from the stream and the time to the first chunk."""
    fake_provider.script(Step(delay=0.05, usage={"input_tokens": 30, "output_tokens": 5, "cache_read_tokens": 10}))

    @traced
    def ask(model: str = MODEL, stream: bool = True) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=64, messages=MESSAGES, stream=stream)

    stream = ask()
    assert [] == spans_named(exporter)  # open while the caller reads
    text = text_of_events(stream)

    span = one_span(exporter)
    attrs = dict(span.attributes or {})
    assert "Hello from the fake provider." == text
    assert {
        "gen_ai.request.stream": True,
        "gen_ai.usage.input_tokens": 30,
        "gen_ai.usage.output_tokens": 5,
        "gen_ai.usage.cache_read.input_tokens": 10,
        "gen_ai.response.finish_reasons": ("end_turn",),
        "server.address": "127.0.0.1",
    }.items() <= attrs.items()
    assert 0.05 <= attrs["gen_ai.response.time_to_first_chunk"] < (span.end_time - span.start_time) / 1e9  # type: ignore[operator]


def test_stream_span_times_the_call_on_the_clock_of_its_time_to_first_chunk(
    traced: Any,
    exporter: InMemorySpanExporter,
    reader: InMemoryMetricReader,
    fake_provider: FakeProvider,
    anthropic_client: anthropic.Anthropic,
    fake_clock: FakeClock,
    llmguard_events: list[CapturedEvent],
) -> None:
    """The span, the metrics and the event time a stream on one clock from one start: the first chunk fits in the span."""
    fake_provider.script(Step(usage={"input_tokens": 30, "output_tokens": 5}))

    @traced
    def ask(model: str = MODEL) -> Any:
        fake_clock.advance(30)  # 30 s before the request goes out
        return anthropic_client.messages.create(model=model, max_tokens=64, messages=MESSAGES, stream=True)

    before = time.time_ns()
    for i, _event in enumerate(ask()):
        if i == 0:
            fake_clock.advance(5)  # 5 s more to read the rest
    after = time.time_ns()

    span = one_span(exporter)
    assert span.start_time is not None
    assert span.end_time is not None
    assert before <= span.start_time <= after  # the span starts at the wall-clock time of the call
    assert 30.0 == (span.attributes or {})["gen_ai.response.time_to_first_chunk"]
    assert 35_000_000_000 == span.end_time - span.start_time
    found = metrics(reader)
    assert (35.0, 30.0) == (
        points(found["gen_ai.client.operation.duration"])[0].sum,
        points(found["gen_ai.client.operation.time_to_first_chunk"])[0].sum,
    )
    (event,) = [e for e in llmguard_events if e.name == "llmguard.call"]
    assert (35.0, 30.0) == (event["duration_s"], event["ttft_s"])


class _SlowSampler(Sampler):
    """Samples every span, slowly: time passes between the call's start and the span's."""

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        time.sleep(0.3)
        return ALWAYS_ON.should_sample(*args, **kwargs)

    def get_description(self) -> str:
        return "slow"


def test_stream_span_starts_when_the_call_does_however_long_the_span_takes_to_start(
    exporter: InMemorySpanExporter,
    reader: InMemoryMetricReader,
    meter_provider: MeterProvider,
    fake_provider: FakeProvider,
    anthropic_client: anthropic.Anthropic,
) -> None:
    """On the real clock, the span lasts what the duration metric says, and so holds the time to first chunk.

    (A span started by the SDK's own clock when it was made missed the time
    spent before that, which the time to first chunk counts: 0.088 s to the
    first chunk in a 0.081 s span, once, on a loaded machine.)
    """
    fake_provider.script(Step(usage={"input_tokens": 30, "output_tokens": 5}))
    tracer_provider = TracerProvider(sampler=_SlowSampler())
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))

    @lg.trace(tracer_provider=tracer_provider, meter_provider=meter_provider)
    def ask(model: str = MODEL) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=64, messages=MESSAGES, stream=True)

    assert "Hello from the fake provider." == text_of_events(ask())

    span = one_span(exporter)
    assert span.start_time is not None
    assert span.end_time is not None
    found = metrics(reader)
    duration = points(found["gen_ai.client.operation.duration"])[0].sum
    ttfc = (span.attributes or {})["gen_ai.response.time_to_first_chunk"]
    assert 0.3 <= ttfc <= (span.end_time - span.start_time) / 1e9  # type: ignore[operator]  # the sampler's wait is in both
    assert abs((span.end_time - span.start_time) - duration * 1e9) <= 1  # the metric's duration, to the nanosecond


def test_parent_span_holds_its_calls_spans_on_the_guards_clock(
    traced: Any, exporter: InMemorySpanExporter, fake_clock: FakeClock
) -> None:
    """`with lg.trace(...)` times its span as its calls' spans are timed, so they lie within it, to the nanosecond."""

    @traced
    def ask(model: str = MODEL) -> str:
        fake_clock.advance(3)
        return "ok"

    with traced("pipeline"):
        assert "ok" == ask()  # first thing in the block
        fake_clock.advance(2)
        assert "ok" == ask()  # last thing in the block

    pipeline = spans_named(exporter, "pipeline")[0]
    first, second = spans_named(exporter)
    assert pipeline.start_time is not None
    assert pipeline.end_time is not None
    assert 8_000_000_000 == pipeline.end_time - pipeline.start_time
    assert [3_000_000_000, 3_000_000_000] == [s.end_time - s.start_time for s in (first, second)]  # type: ignore[operator]
    assert pipeline.start_time <= first.start_time  # type: ignore[operator]
    assert 5_000_000_000 <= second.start_time - first.start_time  # type: ignore[operator]
    assert second.end_time <= pipeline.end_time  # type: ignore[operator]


async def test_async_openai_stream_span_records_usage_and_ttfc(
    traced: Any, exporter: InMemorySpanExporter, fake_provider: FakeProvider, async_openai_client: openai.AsyncOpenAI
) -> None:
    """An async openai stream with include_usage ends its span with the usage of the last chunk."""
    fake_provider.script(Step(usage={"input_tokens": 11, "output_tokens": 5}))

    @traced
    async def ask(model: str = "gpt-4o") -> Any:
        return await async_openai_client.chat.completions.create(
            model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )

    chunks = [c async for c in await ask()]

    attrs = dict(one_span(exporter).attributes or {})
    assert chunks
    assert {
        "gen_ai.provider.name": "openai",
        "gen_ai.request.stream": True,
        "gen_ai.usage.input_tokens": 11,
        "gen_ai.usage.output_tokens": 5,
        "gen_ai.response.finish_reasons": ("stop",),
    }.items() <= attrs.items()
    assert attrs["gen_ai.response.time_to_first_chunk"] > 0


# -- every call shape ------------------------------------------------------------





@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_gives_one_ended_span_with_usage(
    shape: str,
    traced: Any,
    exporter: InMemorySpanExporter,
    fake_provider: FakeProvider,
    anthropic_client: anthropic.Anthropic,
    async_anthropic_client: anthropic.AsyncAnthropic,
) -> None:
    """def, async def, SDK streams, generators and methods each give one ended span with usage and the server."""
    run = build(shape, traced(), anthropic_client, async_anthropic_client)

    assert "Hello from the fake provider." == run()

    span = one_span(exporter)
    attrs = dict(span.attributes or {})
    assert span.end_time is not None
    # A generator yields text, not the SDK's events: its usage is what the wire read (#14).
    assert 5 == attrs["gen_ai.usage.output_tokens"]
    assert "llmguard.usage.estimated" not in attrs
    assert "anthropic" == attrs["gen_ai.provider.name"]
    assert "127.0.0.1" == attrs["server.address"]
    assert (shape in ("def->stream", "async def->stream", "generator", "async generator")) == attrs["gen_ai.request.stream"]
    assert "error.type" not in attrs


def test_a_model_chosen_inside_the_function_names_the_span_from_the_response(
    traced: Any, exporter: InMemorySpanExporter, anthropic_client: anthropic.Anthropic
) -> None:
    """With no model argument the span is renamed after the model that answered, not left as "chat"."""

    @traced
    def ask() -> Any:
        return anthropic_client.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=MESSAGES)

    ask()

    span = one_span(exporter)
    assert "chat claude-haiku-4-5" == span.name
    assert "gen_ai.request.model" not in (span.attributes or {})


def test_stream_manager_works_inside_with_without_iterating(
    traced: Any, exporter: InMemorySpanExporter, anthropic_client: anthropic.Anthropic
) -> None:
    """`with ask() as s: s.get_final_text()` on messages.stream() works traced, and ends the span as ok."""

    @traced
    def ask() -> Any:
        return anthropic_client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES)

    with ask() as stream:
        text = stream.get_final_text()

    attrs = dict(one_span(exporter).attributes or {})
    assert "Hello from the fake provider." == text
    assert "error.type" not in attrs
    assert 5 == attrs["gen_ai.usage.output_tokens"]


# -- errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "error_type", "kind"),
    [
        (Step(status=400), "BadRequestError", "bad_request"),
        (Step(status=401), "AuthenticationError", "auth"),
        (Step(status=404), "NotFoundError", "not_found"),
        (Step(status=429, headers={"retry-after": "3"}), "RateLimitError", "rate_limited"),
        (Step(status=500), "InternalServerError", "server"),
        (Step(status=529), "OverloadedError", "overloaded"),
        (Step(drop=True), "APIConnectionError", "connection"),
    ],
)
def test_errors_set_error_type_status_and_an_exception_event(
    step: Step,
    error_type: str,
    kind: str,
    traced: Any,
    exporter: InMemorySpanExporter,
    reader: InMemoryMetricReader,
    fake_provider: FakeProvider,
    anthropic_client: anthropic.Anthropic,
) -> None:
    """Each error kind ends the span with error.type = the exception class, status ERROR and the kind."""
    fake_provider.script(step)

    @traced
    def ask(model: str = MODEL) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=8, messages=MESSAGES)

    with pytest.raises(anthropic.APIError):
        ask()

    span = one_span(exporter)
    attrs = dict(span.attributes or {})
    assert error_type == attrs["error.type"]
    assert kind == attrs["llmguard.error.kind"]
    assert StatusCode.ERROR == span.status.status_code
    assert ["exception"] == [e.name for e in span.events]
    assert "127.0.0.1" == attrs["server.address"]  # from the failed request
    duration = metrics(reader)["gen_ai.client.operation.duration"]
    assert error_type == points(duration)[0].attributes["error.type"]


def test_timeout_error_type_is_the_sdk_timeout(
    traced: Any, exporter: InMemorySpanExporter, fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """An SDK timeout is recorded as APITimeoutError, kind timeout."""
    fake_provider.script(Step(delay=1.0))

    @traced
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES, timeout=0.1)

    with pytest.raises(anthropic.APITimeoutError):
        ask()

    attrs = dict(one_span(exporter).attributes or {})
    assert ("APITimeoutError", "timeout") == (attrs["error.type"], attrs["llmguard.error.kind"])


def test_error_mid_stream_ends_span_with_error_and_the_usage_so_far(
    traced: Any, exporter: InMemorySpanExporter, fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """An in-stream error after two chunks ends the span as an error with estimated usage, not zero."""
    fake_provider.script(Step(reply="one two three four", error_after=2))

    @traced
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, stream=True)

    with pytest.raises(lg.StreamInterrupted) as info:
        text_of_events(ask())
    assert isinstance(info.value.__cause__, anthropic.APIStatusError)  # a failure after chunks: one family, whatever the guards

    span = one_span(exporter)
    attrs = dict(span.attributes or {})
    assert "APIStatusError" == attrs["error.type"]
    assert StatusCode.ERROR == span.status.status_code
    assert attrs["gen_ai.usage.output_tokens"] > 0
    assert attrs["llmguard.usage.estimated"] is True


# -- a stream's span ends exactly once, however the stream ends -------------------


@pytest.fixture
def otel_errors(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """OTel's own complaints: detach failures, ending a span twice."""
    caplog.set_level(logging.WARNING, logger="opentelemetry")
    messages: list[str] = []
    yield messages
    messages.extend(r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry"))
    assert [] == messages


def test_span_ends_when_the_caller_breaks_out_of_a_stream(
    traced: Any, exporter: InMemorySpanExporter, anthropic_client: anthropic.Anthropic, otel_errors: list[str]
) -> None:
    """`for e in ask(): break` drops the stream: the span ends at once as abandoned, with usage seen so far."""

    @traced
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, stream=True)

    for _event in ask():
        break

    span = one_span(exporter)
    attrs = dict(span.attributes or {})
    assert "abandoned" == attrs["error.type"]
    assert "abandoned" == attrs["llmguard.outcome"]
    assert attrs["gen_ai.usage.input_tokens"] > 0


@pytest.mark.parametrize("how", ["close", "with"])
def test_span_ends_when_the_caller_closes_the_stream(
    how: str, traced: Any, exporter: InMemorySpanExporter, anthropic_client: anthropic.Anthropic, otel_errors: list[str]
) -> None:
    """close() or leaving a with block early ends the span once, as closed, with no error."""

    @traced
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, stream=True)

    if how == "close":
        stream = ask()
        next(iter(stream))
        stream.close()
        stream.close()
    else:
        with ask() as stream:
            for _event in stream:
                break

    span = one_span(exporter)
    attrs = dict(span.attributes or {})
    assert "closed" == attrs["llmguard.outcome"]
    assert "error.type" not in attrs
    assert StatusCode.UNSET == span.status.status_code


def test_span_ends_when_a_dropped_stream_is_garbage_collected(
    traced: Any, exporter: InMemorySpanExporter, anthropic_client: anthropic.Anthropic, otel_errors: list[str]
) -> None:
    """A stream dropped in a reference cycle ends its span, as abandoned, when the collector runs."""

    @traced
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, stream=True)

    holder: dict[str, Any] = {"stream": ask()}
    holder["self"] = holder  # a cycle: only the collector frees it
    next(iter(holder["stream"]))
    del holder
    gc.collect()

    attrs = dict(one_span(exporter).attributes or {})
    assert "abandoned" == attrs["error.type"]


async def test_span_ends_when_the_reading_task_is_cancelled(
    traced: Any, exporter: InMemorySpanExporter, fake_provider: FakeProvider,
    async_anthropic_client: anthropic.AsyncAnthropic, otel_errors: list[str],
) -> None:
    """Cancelling the task that reads a stream ends the span as cancelled, with the usage seen."""
    fake_provider.script(Step(reply="a b c d e f", stream_delay=0.05))
    started = asyncio.Event()

    @traced
    async def ask() -> Any:
        return await async_anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, stream=True)

    async def read() -> None:
        async for _event in await ask():
            started.set()

    task = asyncio.create_task(read())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    span = one_span(exporter)
    attrs = dict(span.attributes or {})
    assert "cancelled" == attrs["error.type"]
    assert StatusCode.ERROR == span.status.status_code
    assert attrs["gen_ai.usage.input_tokens"] > 0


async def test_no_context_stays_attached_between_chunks(
    traced: Any, exporter: InMemorySpanExporter, tracer_provider: TracerProvider, otel_errors: list[str]
) -> None:
    """Between chunks the caller's span is current; a stream read and closed from other tasks detaches cleanly."""
    tracer = tracer_provider.get_tracer("test")
    inner_parents: list[Any] = []

    @traced
    async def agen(model: str = MODEL) -> AsyncIterator[int]:
        for i in range(4):
            with tracer.start_as_current_span(f"work {i}") as work:
                inner_parents.append(work.parent)
            yield i

    seen_in_loop: list[Any] = []
    with tracer.start_as_current_span("caller") as caller:
        stream = agen()
        async for _ in stream:
            seen_in_loop.append(otel_trace.get_current_span())
            break

        async def more() -> int:
            return await stream.__anext__()

        await asyncio.create_task(more())  # another task pulls
        await asyncio.create_task(stream.aclose())  # and another closes

    genai = one_span(exporter)
    assert [caller] == seen_in_loop
    assert {genai.context.span_id} == {p.span_id for p in inner_parents}
    assert caller.get_span_context().span_id == genai.parent.span_id  # type: ignore[union-attr]


def test_http_spans_made_by_the_sdk_nest_under_the_genai_span(
    traced: Any, exporter: InMemorySpanExporter, tracer_provider: TracerProvider, fake_provider: FakeProvider
) -> None:
    """An instrumented HTTP client's span (here an httpx2 event hook) is a child of the call's span."""
    tracer = tracer_provider.get_tracer("http")

    def on_request(request: httpx.Request) -> None:
        with tracer.start_as_current_span(f"POST {request.url.path}", kind=SpanKind.CLIENT):
            pass

    client = anthropic.Anthropic(
        base_url=fake_provider.anthropic_base_url,
        api_key=API_KEY,
        max_retries=0,
        http_client=httpx.Client(event_hooks={"request": [on_request]}),
    )

    @traced
    def ask(stream: bool = False) -> Any:
        return client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES, stream=stream)

    ask()
    list(ask(stream=True))
    client.close()

    genai = spans_named(exporter, "chat")
    http = spans_named(exporter, "POST")
    assert 2 == len(genai) == len(http)
    assert [g.context.span_id for g in genai] == [h.parent.span_id for h in http]  # type: ignore[union-attr]


def test_guarded_call_inside_a_traced_call_nests_under_it(traced: Any, exporter: InMemorySpanExporter) -> None:
    """A traced function called inside another traced function gets a child span."""

    @traced
    def inner(model: str = "gpt-4o-mini") -> str:
        lg.report_usage(input_tokens=3, output_tokens=2)
        return "i"

    @traced
    def outer(model: str = "gpt-4o") -> str:
        return inner() + "o"

    assert "io" == outer()

    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["chat gpt-4o"].context.span_id == spans["chat gpt-4o-mini"].parent.span_id  # type: ignore[union-attr]


def test_a_call_under_a_sampled_out_parent_follows_its_decision(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The span starts from the current context: the default ParentBased sampler follows the caller's decision."""
    parent = SpanContext(trace_id=0x1234, span_id=0x5678, is_remote=True, trace_flags=TraceFlags(TraceFlags.DEFAULT))
    seen: list[Any] = []

    @lg.trace(tracer_provider=tracer_provider)
    def ask(model: str = MODEL) -> str:
        seen.append(otel_trace.get_current_span().get_span_context())
        lg.report_usage(input_tokens=1, output_tokens=1)
        return "ok"

    token = otel_context.attach(otel_trace.set_span_in_context(NonRecordingSpan(parent)))
    try:
        assert "ok" == ask()
    finally:
        otel_context.detach(token)
    assert [] == list(exporter.get_finished_spans())
    assert 0x1234 == seen[0].trace_id  # the same trace, not a new root
    assert "ok" == ask()  # with no parent: a recorded root span
    assert 1 == len(exporter.get_finished_spans())


@pytest.mark.parametrize(
    ("reported", "expected"),
    [("anthropic", None), ("openai", "openai"), ("google", "gcp.gen_ai"), ("mistral", "mistral")],
)
def test_the_provider_that_answered_replaces_the_guess_on_the_span(
    traced: Any, exporter: InMemorySpanExporter, reported: str, expected: str | None
) -> None:
    """gen_ai.provider.name starts as the model's guess and ends as the spec's name for who answered."""

    @traced
    def ask(model: str = MODEL) -> str:
        lg.report_usage(input_tokens=1, output_tokens=1, provider=reported)
        return "ok"

    assert "ok" == ask()
    span = one_span(exporter)
    assert (expected or "anthropic") == span.attributes["gen_ai.provider.name"]  # type: ignore[index]


# -- metrics ---------------------------------------------------------------------


def test_metrics_use_the_spec_instruments_units_and_buckets(
    traced: Any, reader: InMemoryMetricReader, fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """Token usage (by token type), duration and llmguard.cost are recorded with the spec's units and buckets."""
    fake_provider.script(Step(usage={"input_tokens": 100, "output_tokens": 7}))

    @traced
    def ask(model: str = MODEL) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=8, messages=MESSAGES)

    ask()

    found = metrics(reader)
    usage = found["gen_ai.client.token.usage"]
    duration = found["gen_ai.client.operation.duration"]
    cost = found["llmguard.cost"]
    assert ("{token}", "s", "USD") == (usage.unit, duration.unit, cost.unit)
    assert 100 == point_with(usage, gen_ai__token__type="input").sum
    assert 7 == point_with(usage, gen_ai__token__type="output").sum
    assert TOKEN_BUCKETS == tuple(point_with(usage, gen_ai__token__type="input").explicit_bounds)
    assert TIME_BUCKETS == tuple(points(duration)[0].explicit_bounds)
    assert {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": MODEL,
        "gen_ai.response.model": MODEL,
        "server.address": "127.0.0.1",
    }.items() <= dict(points(duration)[0].attributes).items()
    assert lg.cost_of(lg.Usage(100, 7), MODEL, "anthropic") == pytest.approx(points(cost)[0].value)


def test_stream_metrics_record_time_to_first_chunk_and_per_chunk(
    traced: Any, reader: InMemoryMetricReader, fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """A stream records the time-to-first-chunk histogram once and time-per-output-chunk for the later chunks."""
    fake_provider.script(Step(reply="one two three"))

    @traced
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES, stream=True)

    chunks = list(ask())

    found = metrics(reader)
    ttfc = points(found["gen_ai.client.operation.time_to_first_chunk"])
    tpoc = points(found["gen_ai.client.operation.time_per_output_chunk"])
    assert 1 == sum(p.count for p in ttfc)
    assert len(chunks) - 1 == sum(p.count for p in tpoc)
    assert TIME_BUCKETS == tuple(ttfc[0].explicit_bounds)


def test_no_sdk_configured_records_nothing_and_leaves_the_record_alone(
    monkeypatch: pytest.MonkeyPatch, anthropic_client: anthropic.Anthropic
) -> None:
    """With the API's proxy providers and nobody listening, the call runs untouched and no record is built."""
    monkeypatch.setattr(otel_trace, "_TRACER_PROVIDER", None)
    monkeypatch.setattr(structlog, "is_configured", lambda: False)
    built: list[Call] = []

    class Spy(Guard):
        def leave(self, call: Call, state: None, result: Any) -> Any:
            built.append(call)
            return result

    @lg.trace
    @Spy()
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    assert "Hello from the fake provider." == ask().content[0].text
    assert built[0]._record is None


def test_the_global_provider_is_picked_up_when_it_is_set_later(
    monkeypatch: pytest.MonkeyPatch, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The no-SDK decision is cached per provider object: setting a global provider later starts spans."""
    monkeypatch.setattr(otel_trace, "_TRACER_PROVIDER", None)

    @lg.trace
    def ask(model: str = "gpt-4o") -> str:
        return "x"

    ask()
    assert () == exporter.get_finished_spans()
    monkeypatch.setattr(otel_trace, "_TRACER_PROVIDER", tracer_provider)
    ask()
    assert ["chat gpt-4o"] == [s.name for s in exporter.get_finished_spans()]


@pytest.mark.parametrize("provider", [NoOpTracerProvider(), "sampled out"])
def test_noop_or_sampled_out_providers_cost_no_record_span(provider: Any, llmguard_events: list[CapturedEvent]) -> None:
    """A no-op provider or an always-off sampler leaves record.span empty and the call unaffected."""
    if provider == "sampled out":
        provider = TracerProvider(sampler=ALWAYS_OFF)
    seen: list[Any] = []

    class Look(Guard):
        def enter(self, call: Call) -> None:
            seen.append(call.record.span)

    @lg.trace(tracer_provider=provider)
    @Look()
    def ask() -> str:
        return "ok"

    assert "ok" == ask()
    assert [None] == seen
    # "ok" is text no request measured: its usage is estimated, and said (#14).
    assert ["llmguard.usage.estimated", "llmguard.call"] == [e.name for e in llmguard_events]


# -- guards' events and facts on the span -----------------------------------------


class Facts(Guard):
    """A stand-in for the other guards: writes record facts and emits their events."""

    def enter(self, call: Call) -> None:
        record = call.record
        _events.emit(_events.BUDGET_ALERT, record, level="warning", threshold=0.8, spent=4.0)
        _events.emit(_events.CACHE_MISS, record)

    def leave(self, call: Call, state: None, result: Any) -> Any:
        record = call.record
        _events.emit(_events.FALLBACK_USED, record, target="gpt-4o-mini", error=RuntimeError(API_KEY))
        record.cache = "miss"
        record.fallback_target = "gpt-4o-mini"
        record.budget_decision = "allowed"
        record.route = "cheap"
        return result


def test_other_guards_events_and_facts_land_on_the_span(
    traced: Any, exporter: InMemorySpanExporter, reader: InMemoryMetricReader
) -> None:
    """Events emitted by inner guards become span events; their record facts become llmguard.* attributes."""

    @traced
    @Facts()
    def ask(model: str = "gpt-4o") -> str:
        lg.report_usage(input_tokens=10, output_tokens=2, provider="openai")
        return "ok"

    ask()

    span = one_span(exporter)
    attrs = dict(span.attributes or {})
    assert ["llmguard.budget.alert", "llmguard.cache.miss", "llmguard.fallback.used"] == [e.name for e in span.events]
    assert 0.8 == span.events[0].attributes["llmguard.threshold"]  # type: ignore[index]
    assert {
        "llmguard.cache": "miss",
        "llmguard.fallback.target": "gpt-4o-mini",
        "llmguard.budget.decision": "allowed",
        "llmguard.route": "cheap",
    }.items() <= attrs.items()
    found = metrics(reader)
    assert 1 == points(found["llmguard.cache.misses"])[0].value
    assert 1 == points(found["llmguard.fallbacks"])[0].value


def test_a_guard_refusal_is_an_error_type_and_a_refusal_count(
    traced: Any, exporter: InMemorySpanExporter, reader: InMemoryMetricReader
) -> None:
    """BudgetExceeded raised before any request is error.type BudgetExceeded, kind guard, counted as a refusal."""

    class Refuse(Guard):
        def enter(self, call: Call) -> None:
            raise lg.BudgetExceeded("over budget", scope="user", limit=1.0, spent=1.0)

    @traced
    @Refuse()
    def ask(model: str = "gpt-4o") -> str:
        return "never"

    with pytest.raises(lg.BudgetExceeded):
        ask()

    attrs = dict(one_span(exporter).attributes or {})
    assert ("BudgetExceeded", "guard", "BudgetExceeded", 0) == (
        attrs["error.type"], attrs["llmguard.error.kind"], attrs["llmguard.refusal"], attrs["llmguard.attempts"]
    )
    assert "BudgetExceeded" == points(metrics(reader)["llmguard.refusals"])[0].attributes["llmguard.refusal"]


def test_parent_span_contains_a_retried_call_with_its_retry_events(
    traced: Any,
    exporter: InMemorySpanExporter,
    reader: InMemoryMetricReader,
    fake_provider: FakeProvider,
    anthropic_client: anthropic.Anthropic,
    fake_clock: Any,
) -> None:
    """`with lg.trace("pipeline")` parents the call; the call's span shows the retry and both attempts."""
    fake_provider.script(Step(status=429, headers={"retry-after": "1"}), Step(usage={"input_tokens": 8, "output_tokens": 3}))

    @traced
    @lg.retry(attempts=3)
    def ask(model: str = MODEL) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=8, messages=MESSAGES)

    with traced("pipeline", attributes={"app.step": "summarise"}) as parent:
        ask()

    pipeline = spans_named(exporter, "pipeline")[0]
    call = one_span(exporter)
    attrs = dict(call.attributes or {})
    assert SpanKind.INTERNAL == pipeline.kind
    assert parent.get_span_context().span_id == pipeline.context.span_id == call.parent.span_id  # type: ignore[union-attr]
    assert "llmguard.retry.scheduled" in [e.name for e in call.events]
    assert 2 == attrs["llmguard.attempts"]
    assert "error.type" not in attrs
    assert {"app.step": "summarise", "llmguard.calls": 1, "llmguard.usage.input_tokens": 8}.items() <= dict(
        pipeline.attributes or {}
    ).items()
    assert 1 == points(metrics(reader)["llmguard.retries"])[0].value


async def test_async_parent_span_parents_concurrent_calls(traced: Any, exporter: InMemorySpanExporter) -> None:
    """`async with lg.trace(...)` parents calls gathered concurrently, and sums their usage."""

    @traced
    async def ask(i: int, model: str = "gpt-4o") -> int:
        await asyncio.sleep(0)
        lg.report_usage(input_tokens=i, output_tokens=1, provider="openai")
        return i

    async with traced("batch"):
        assert [1, 2, 3] == await asyncio.gather(ask(1), ask(2), ask(3))

    batch = spans_named(exporter, "batch")[0]
    calls = spans_named(exporter)
    assert 3 == len(calls)
    assert {batch.context.span_id} == {c.parent.span_id for c in calls}  # type: ignore[union-attr]
    assert (3, 6, 3) == tuple((batch.attributes or {})[k] for k in ("llmguard.calls", "llmguard.usage.input_tokens", "llmguard.usage.output_tokens"))


async def test_parent_span_held_across_a_yield_still_ends_without_detach_errors(
    traced: Any, exporter: InMemorySpanExporter, otel_errors: list[str]
) -> None:
    """`async with lg.trace()` inside an async generator closed by another task ends its span, quietly."""

    async def agen() -> AsyncIterator[int]:
        async with traced("inside-generator"):
            yield 1
            yield 2

    stream = agen()
    assert 1 == await stream.__anext__()
    await asyncio.create_task(stream.aclose())

    assert 1 == len(spans_named(exporter, "inside-generator"))


def test_parent_span_records_an_escaping_exception(traced: Any, exporter: InMemorySpanExporter) -> None:
    """An exception leaving `with lg.trace(...)` marks the parent span as an error, and the exception passes."""
    with pytest.raises(KeyError), traced("pipeline"):
        raise KeyError("k")

    span = spans_named(exporter, "pipeline")[0]
    assert ("KeyError", StatusCode.ERROR) == ((span.attributes or {})["error.type"], span.status.status_code)


# -- the structlog event ----------------------------------------------------------


def test_one_call_event_with_the_spans_facts(
    traced: Any, exporter: InMemorySpanExporter, fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """Structlog gets one llmguard.call event at info with model, tokens, cost, latency and the trace ids."""
    fake_provider.script(Step(usage={"input_tokens": 12, "output_tokens": 4}))

    @traced
    def ask(model: str = MODEL) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=8, messages=MESSAGES)

    with structlog.testing.capture_logs() as logs:
        ask()

    span = one_span(exporter)
    [event] = [e for e in logs if e["event"] == "llmguard.call"]
    assert {
        "log_level": "info",
        "model": MODEL,
        "provider": "anthropic",
        "input_tokens": 12,
        "output_tokens": 4,
        "attempts": 1,
        "outcome": "ok",
        "stream": False,
        "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}",
    }.items() <= event.items()
    assert event["cost_usd"] == (span.attributes or {})["llmguard.cost_usd"]
    assert event["duration_s"] >= 0


@pytest.mark.parametrize(("status", "level"), [(429, "warning"), (400, "error")])
def test_failed_calls_log_at_warning_or_error(
    status: int, level: str, fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """A transient failure logs at warning, a permanent one at error, with the kind and the class (no SDK needed)."""
    fake_provider.script(Step(status=status))

    @lg.trace
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    with structlog.testing.capture_logs() as logs, pytest.raises(anthropic.APIStatusError):
        ask()

    [event] = [e for e in logs if e["event"] == "llmguard.call"]
    assert (level, "error") == (event["log_level"], event["outcome"])
    assert event["error_type"] in ("RateLimitError", "BadRequestError")


def test_call_event_reaches_a_json_structlog_configuration(anthropic_client: anthropic.Anthropic) -> None:
    """With structlog configured to render JSON (as in production) the call is one JSON line."""
    out = io.StringIO()
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(file=out),
    )
    try:

        @lg.trace
        def ask(model: str = MODEL) -> Any:
            return anthropic_client.messages.create(model=model, max_tokens=8, messages=MESSAGES)

        ask()
    finally:
        structlog.reset_defaults()

    [line] = [json.loads(raw) for raw in out.getvalue().splitlines()]
    assert {"event": "llmguard.call", "level": "info", "model": MODEL, "output_tokens": 5}.items() <= line.items()


# -- content: off by default, opt-in, redacted, capped ------------------------------


def test_content_is_captured_only_when_asked(
    traced: Any, exporter: InMemorySpanExporter, anthropic_client: anthropic.Anthropic
) -> None:
    """capture_content=True records system instructions, input and output messages in the spec's JSON shapes."""

    @traced(capture_content=True)
    def ask(messages: Any, system: str = "Be brief.") -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, system=system, messages=messages)

    ask([{"role": "user", "content": [{"type": "text", "text": "hello there"}]}])

    attrs = dict(one_span(exporter).attributes or {})
    assert [{"type": "text", "content": "Be brief."}] == json.loads(attrs["gen_ai.system_instructions"])
    assert [{"role": "user", "parts": [{"type": "text", "content": "hello there"}]}] == json.loads(attrs["gen_ai.input.messages"])
    assert [
        {"role": "assistant", "parts": [{"type": "text", "content": "Hello from the fake provider."}], "finish_reason": "end_turn"}
    ] == json.loads(attrs["gen_ai.output.messages"])


def test_content_capture_follows_the_environment_variable(
    monkeypatch: pytest.MonkeyPatch, traced: Any, exporter: InMemorySpanExporter, anthropic_client: anthropic.Anthropic
) -> None:
    """OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true turns capture on; capture_content=False wins."""
    monkeypatch.setenv(_semconv.CAPTURE_CONTENT_ENV, "true")

    @traced
    def ask(q: str) -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": q}], stream=True)

    @traced(capture_content=False)
    def quiet(q: str) -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": q}])

    list(ask("streamed question"))
    quiet("private question")

    first, second = spans_named(exporter)
    assert "streamed question" in first.attributes["gen_ai.input.messages"]  # type: ignore[index, operator]
    assert "Hello from the fake provider." in first.attributes["gen_ai.output.messages"]  # type: ignore[index, operator]
    assert "gen_ai.input.messages" not in (second.attributes or {})


def test_content_goes_through_the_redactor_and_the_size_cap(
    traced: Any, exporter: InMemorySpanExporter, anthropic_client: anthropic.Anthropic
) -> None:
    """Every text passes the redact hook, and the span's content is cut at max_content_chars."""

    @traced(capture_content=True, redact=lambda s: s.replace("alice@example.com", "<email>"), max_content_chars=40)
    def ask(q: str) -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": q}])

    ask("mail alice@example.com about " + "x" * 100)

    attrs = dict(one_span(exporter).attributes or {})
    [message] = json.loads(attrs["gen_ai.input.messages"])
    text = message["parts"][0]["content"]
    assert "alice@example.com" not in text
    assert text.startswith("mail <email> about xxx")
    assert text.endswith("…[truncated 79 chars]")
    output = json.loads(attrs["gen_ai.output.messages"])[0]["parts"][0]["content"]
    assert output.startswith("…[truncated")  # the cap is for the whole span


def test_a_failing_redactor_drops_the_content_not_the_call(
    traced: Any, exporter: InMemorySpanExporter, anthropic_client: anthropic.Anthropic
) -> None:
    """If the redact hook raises, no content is recorded, the call returns and a warning says why."""

    def broken(_text: str) -> str:
        raise ValueError(API_KEY)

    @traced(capture_content=True, redact=broken)
    def ask(q: str) -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": q}])

    with pytest.warns(RuntimeWarning, match="content not recorded"):
        assert ask("hi").content

    attrs = dict(one_span(exporter).attributes or {})
    assert not any(k.startswith(("gen_ai.input", "gen_ai.output", "gen_ai.system")) for k in attrs)


# -- secrets --------------------------------------------------------------------------


@pytest.mark.parametrize("capture", [False, True])
def test_api_keys_appear_in_no_span_event_metric_or_log(
    capture: bool,
    traced: Any,
    exporter: InMemorySpanExporter,
    reader: InMemoryMetricReader,
    fake_provider: FakeProvider,
    anthropic_client: anthropic.Anthropic,
) -> None:
    """The test key, put everywhere a careless caller could, is never recorded, content capture on or off."""
    out = io.StringIO()
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer(default=repr)],
        logger_factory=structlog.PrintLoggerFactory(file=out),
    )
    try:

        @traced(capture_content=capture, attributes={"api_key": API_KEY, "note": f"Authorization: Bearer {API_KEY}"})
        @Facts()
        def ask(q: str, model: str = MODEL, fail: bool = False) -> Any:
            if fail:
                raise RuntimeError(f"upstream said: bad key {API_KEY}")
            return anthropic_client.messages.create(model=model, max_tokens=8, messages=[{"role": "user", "content": q}])

        ask(f"my key is {API_KEY}, keep it safe")
        ask(f"x-api-key: {API_KEY}")
        with pytest.raises(RuntimeError):
            ask("fail", fail=True)
        with traced("pipeline", attributes={"token": API_KEY}):
            ask("again")
    finally:
        structlog.reset_defaults()

    recorded: list[str] = []
    for span in exporter.get_finished_spans():
        recorded += [span.name, repr(dict(span.attributes or {})), str(span.status.description)]
        recorded += [f"{e.name} {dict(e.attributes or {})!r}" for e in span.events]
    for metric in metrics(reader).values():
        recorded += [repr(dict(p.attributes)) for p in points(metric)]
    call_lines = [line for line in out.getvalue().splitlines() if '"llmguard.call"' in line]
    recorded += call_lines
    assert 4 == len(call_lines)
    sent = fake_provider.requests[0].headers  # anthropic < 1 sends x-api-key, later a bearer token
    assert API_KEY in (sent.get("x-api-key") or sent["authorization"])  # the key really was in play
    assert [] == [r for r in recorded if SECRET in r]
    if capture:
        assert any("[REDACTED]" in r and "gen_ai.input.messages" in r for r in recorded)


def test_other_guards_log_lines_do_not_leak_keys(anthropic_client: anthropic.Anthropic) -> None:
    """An inner guard's event whose fields quote a key reaches structlog scrubbed too."""
    out = io.StringIO()
    structlog.configure(
        processors=[structlog.processors.JSONRenderer(default=repr)],
        logger_factory=structlog.PrintLoggerFactory(file=out),
    )
    try:

        @lg.trace
        @Facts()
        def ask(model: str = "gpt-4o") -> str:
            return "ok"

        ask()
    finally:
        structlog.reset_defaults()

    assert SECRET not in out.getvalue()


class _LosingStore(MemoryBudgetStore):
    """Holds, but cannot settle."""

    def settle(self, *args: Any, **kwargs: Any) -> Any:
        raise BudgetStoreError("settlement lost")

    def release(self, *args: Any) -> Any:
        raise BudgetStoreError("settlement lost")


def test_counts_under_token_names_are_numbers_on_spans_and_in_logs(
    traced: Any, exporter: InMemorySpanExporter, llmguard_events: list[CapturedEvent]
) -> None:
    """A budget's lost-settlement event keeps its token count on the span as in structlog: numbers are never secrets."""
    out = io.StringIO()
    structlog.configure(
        processors=[structlog.processors.JSONRenderer()], logger_factory=structlog.PrintLoggerFactory(file=out)
    )
    try:

        @traced
        @lg.budget(usd=1.0, store=_LosingStore())
        def ask(messages: Any, max_tokens: int = 64, model: str = "gpt-4o") -> str:
            lg.report_usage(input_tokens=300, output_tokens=12, model=model)
            return "ok"

        assert "ok" == ask(MESSAGES)
    finally:
        structlog.reset_defaults()

    (event,) = [e for e in exporter.get_finished_spans()[0].events if e.name == "llmguard.budget.store_error"]
    (line,) = [json.loads(x) for x in out.getvalue().splitlines() if "llmguard.budget.store_error" in x]
    (listened,) = [e for e in llmguard_events if e.name == "llmguard.budget.store_error"]
    assert 312 == (event.attributes or {})["llmguard.lost_tokens"] == line["lost_tokens"] == listened["lost_tokens"]
    assert isinstance((event.attributes or {})["llmguard.lost_usd"], float)


def test_values_under_credential_names_are_redacted_unless_numbers(
    traced: Any, exporter: InMemorySpanExporter, llmguard_events: list[CapturedEvent]
) -> None:
    """A key under a credential-ish name is redacted on the span and in events; counts and flags beside it are kept."""
    out = io.StringIO()
    structlog.configure(
        processors=[structlog.processors.JSONRenderer(default=repr)],
        logger_factory=structlog.PrintLoggerFactory(file=out),
    )
    fields: dict[str, Any] = {
        "access_token": API_KEY,
        "token": "not-a-key-shape",
        "api_keys": [API_KEY, 3],
        "tokens": 5,
        "cost_per_token": 0.25,
        "has_token": True,
        "note": f"Authorization: Bearer {API_KEY}",
    }
    try:

        @traced
        def ask(model: str = "gpt-4o") -> str:
            _events.emit("llmguard.test.fields", lg.current_call(), **fields)
            return "ok"

        ask()
    finally:
        structlog.reset_defaults()

    (event,) = [e for e in exporter.get_finished_spans()[0].events if e.name == "llmguard.test.fields"]
    on_span = {k.removeprefix("llmguard."): v for k, v in (event.attributes or {}).items()}
    (line,) = [json.loads(x) for x in out.getvalue().splitlines() if "llmguard.test.fields" in x]
    (listened,) = [e.fields for e in llmguard_events if e.name == "llmguard.test.fields"]
    expected = {"access_token": "[REDACTED]", "token": "[REDACTED]", "tokens": 5, "cost_per_token": 0.25, "has_token": True}
    for seen in (on_span, line, listened):
        assert expected == {k: seen[k] for k in expected}
        assert SECRET not in repr(seen["api_keys"])
        assert SECRET not in seen["note"]
        assert "Authorization" in seen["note"]
    assert "[REDACTED]" == on_span["api_keys"]  # a list is no span attribute: its text, redacted
    assert [["[REDACTED]", 3]] * 2 == [line["api_keys"], listened["api_keys"]]


# -- the latest experimental conventions -----------------------------------------------


def test_opt_in_switches_to_the_latest_experimental_names(
    monkeypatch: pytest.MonkeyPatch,
    traced: Any,
    exporter: InMemorySpanExporter,
    reader: InMemoryMetricReader,
    fake_provider: FakeProvider,
    anthropic_client: anthropic.Anthropic,
) -> None:
    """OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental emits cache_write and the inference metrics."""
    monkeypatch.setenv(_semconv.OPT_IN_ENV, "http, gen_ai_latest_experimental")
    fake_provider.script(Step(usage={"input_tokens": 60, "output_tokens": 4, "cache_write_tokens": 20}))

    @traced
    def ask(model: str = MODEL) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=8, messages=MESSAGES)

    ask()

    attrs = dict(one_span(exporter).attributes or {})
    found = metrics(reader)
    assert 20 == attrs["gen_ai.usage.cache_write.input_tokens"]
    assert "gen_ai.usage.cache_creation.input_tokens" not in attrs
    assert "gen_ai.client.token.usage" not in found
    assert "gen_ai.client.inference.duration" in found
    assert 60 == points(found["gen_ai.client.inference.usage.input_tokens"])[0].value
    assert 20 == points(found["gen_ai.client.inference.usage.cache_write.input_tokens"])[0].value
    assert 4 == points(found["gen_ai.client.inference.operation.output_tokens"])[0].sum


def test_every_semconv_name_is_in_one_table_with_both_profiles() -> None:
    """The two profiles differ exactly where the table says, and v1.41 keeps the released names."""
    differing = {k for k, (old, new) in _semconv.NAMES.items() if old != new}
    assert {
        "usage_cache_write",
        "token_modality",
        "metric_token_usage",
        "metric_duration",
        "metric_ttfc",
        "metric_tpoc",
        "metric_op_input_tokens",
        "metric_op_output_tokens",
        "metric_usage_input",
        "metric_usage_output",
        "metric_usage_cache_read",
        "metric_usage_cache_write",
        "metric_usage_reasoning",
    } == differing
    assert "gen_ai.usage.cache_creation.input_tokens" == _semconv.V1_41.usage_cache_write
    assert "gen_ai.client.operation.duration" == _semconv.V1_41.metric_duration


@pytest.mark.parametrize(
    ("provider", "address", "expected"),
    [
        ("anthropic", None, "anthropic"),
        ("openai", "api.openai.com", "openai"),
        ("google", None, "gcp.gen_ai"),
        ("google", "generativelanguage.googleapis.com", "gcp.gemini"),
        ("google", "us-central1-aiplatform.googleapis.com", "gcp.vertex_ai"),
    ],
)
def test_provider_names_map_to_the_spec_values(provider: str, address: str | None, expected: str) -> None:
    """The provider names map to gen_ai.provider.name values, google's by the endpoint it called."""
    assert expected == _semconv.provider_name(provider, address)


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"attributes": {"k": {"nested": 1}}}, ValueError, r"trace\(attributes=\.\.\.\)"),
        ({"attributes": ["k"]}, TypeError, r"trace\(attributes=\.\.\.\) must be a mapping"),
        ({"capture_content": "yes"}, TypeError, r"trace\(capture_content=\.\.\.\)"),
        ({"redact": "nope"}, TypeError, r"trace\(redact=\.\.\.\)"),
        ({"max_content_chars": -1}, ValueError, r"trace\(max_content_chars=\.\.\.\) must be an int >= 0, got -1"),
        ({"operation": ""}, ValueError, r"trace\(operation=\.\.\.\)"),
        ({"provider": ""}, ValueError, r"trace\(provider=\.\.\.\)"),
        ({"tracer_provider": object()}, TypeError, r"trace\(tracer_provider=\.\.\.\)"),
        ({"meter_provider": 3}, TypeError, r"trace\(meter_provider=\.\.\.\)"),
    ],
)
def test_bad_configuration_fails_at_decoration_naming_the_parameter(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    """Each bad setting raises when trace() is called, with the parameter's name in the message."""
    with pytest.raises(error, match=match):
        lg.trace(**kwargs)


def test_trace_rejects_what_is_neither_a_function_nor_a_name() -> None:
    """lg.trace(42) says it wants a function or a span name."""
    with pytest.raises(TypeError, match=r"a function to decorate or a span name"):
        lg.trace(42)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match=r"trace\(name=\.\.\.\)"):
        lg.trace("  ")


def test_describe_shows_the_trace_settings() -> None:
    """lg.describe lists trace with its operation, content setting and conventions."""

    @lg.trace("ask-span", capture_content=False)
    def ask() -> None:
        pass

    [info] = lg.describe(ask)
    assert ("trace", {"name": "ask-span", "operation": "chat", "capture_content": False, "semconv": "v1.41"}) == (
        info.name,
        info.settings,
    )


def test_decorated_function_keeps_its_identity() -> None:
    """@lg.trace keeps name, doc and the coroutine-function check."""

    async def ask(q: str) -> str:
        """Ask."""
        return q

    traced_ask = lg.trace(ask)
    assert ("ask", "Ask.", True) == (traced_ask.__name__, traced_ask.__doc__, asyncio.iscoroutinefunction(traced_ask))


def test_span_name_can_be_given_by_keyword(traced: Any, exporter: InMemorySpanExporter) -> None:
    """lg.trace(name="x") names the span, as lg.trace("x") does."""

    @traced(name="custom")
    def ask() -> str:
        return "ok"

    ask()

    assert 1 == len(spans_named(exporter, "custom"))


# -- trace alone, with no metrics or listeners, builds no record ----------------------


@pytest.mark.parametrize("kind", ["anthropic", "anthropic-async", "openai", "report_usage", "no-usage"])
def test_trace_alone_gives_the_same_span_as_on_the_general_path(
    kind: str,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    fake_provider: FakeProvider,
    anthropic_client: anthropic.Anthropic,
    openai_client: openai.OpenAI,
) -> None:
    """`trace` alone ends its span from the result (no record); under a guard that reads it, from the record.

    Both spans carry the same name, kind and attributes.
    """
    from probe import Probe

    def make() -> Callable[..., Any]:
        if kind == "anthropic":

            def ask(q: str, model: str = MODEL, max_tokens: int = 64) -> Any:
                return anthropic_client.messages.create(model=model, max_tokens=max_tokens, messages=[{"role": "user", "content": q}])

            return ask
        if kind == "anthropic-async":

            async def aask(q: str, model: str = MODEL, max_tokens: int = 64) -> Any:
                # A client per event loop (each run is its own asyncio.run).
                async with anthropic.AsyncAnthropic(
                    base_url=fake_provider.anthropic_base_url, api_key=API_KEY, max_retries=0
                ) as client:
                    return await client.messages.create(
                        model=model, max_tokens=max_tokens, messages=[{"role": "user", "content": q}]
                    )

            return aask
        if kind == "openai":

            def chat(q: str, model: str = "gpt-4o-mini", temperature: float = 0.5) -> Any:
                return openai_client.chat.completions.create(model=model, temperature=temperature, messages=[{"role": "user", "content": q}])

            return chat

        def own(q: str, model: str = MODEL, max_tokens: int = 64) -> str:
            if kind == "report_usage":
                lg.report_usage(input_tokens=30, output_tokens=7, model=model, provider="anthropic")
            return q

        return own

    def run(fn: Callable[..., Any]) -> None:
        result = fn("hello there")
        if asyncio.iscoroutine(result):
            asyncio.run(result)

    built: list[str] = []
    materialize = Call._materialize

    def counting(self: Call) -> Any:
        built.append(self.function_name)
        return materialize(self)

    spans = []
    records = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Call, "_materialize", counting)
        for stacked in (False, True):
            guard = lg.trace(tracer_provider=tracer_provider)
            fn = guard(Probe()(make())) if stacked else guard(make())
            # Twice: the first result of a type the core has not seen yet
            # takes the general path (it may be a stream); the second is the one compared.
            for _ in range(2):
                fake_provider.script(Step(reply="hi", usage={"input_tokens": 30, "output_tokens": 7}))
                built.clear()
                exporter.clear()
                run(fn)
            records.append(len(built))
            spans.append(exporter.get_finished_spans()[-1])
            exporter.clear()
    # Alone: no record built (the span's facts come from the result), except
    # that `report_usage` builds it (the runner keeps reported usage on it);
    # under a guard that reads the record: one.
    # A text result with no usage reported builds it too: its usage is estimated there (#14).
    assert ([1] if kind in ("report_usage", "no-usage") else [0]) + [1] == records
    lane, general = (dict(s.attributes or {}) for s in spans)
    assert spans[1].name == spans[0].name
    assert spans[1].kind == spans[0].kind
    if kind in ("anthropic", "anthropic-async", "openai"):
        assert lane.pop("gen_ai.response.id") != general.pop("gen_ai.response.id")  # two responses
    assert general == lane
    if kind != "no-usage":
        assert 7 == lane["gen_ai.usage.output_tokens"]


def test_a_lane_trace_call_still_hands_its_span_to_a_record_built_inside(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Alone, trace builds no record; one built inside the call (a nested call's parent) carries the span."""
    parents: list[lg.CallRecord | None] = []
    span_ids: list[int] = []

    @lg.trace(tracer_provider=tracer_provider)
    def inner() -> str:
        record = lg.current_call()
        assert record is not None
        parents.append(record.parent)
        # While the outer call runs, its record carries its span (for guards' events).
        assert record.parent is not None
        assert record.parent.span is not None
        span_ids.append(record.parent.span.get_span_context().span_id)
        return "x"

    @lg.trace(tracer_provider=tracer_provider)
    def outer(q: str, model: str = MODEL) -> str:
        return inner() + q

    for _ in range(2):  # the second call runs on the lane with every type seen
        exporter.clear()
        parents.clear()
        assert "xq" == outer("q")
        (parent,) = parents
        assert parent is not None
        assert parent.function.endswith("outer")
        spans = {s.name: s for s in exporter.get_finished_spans()}
        outer_span = spans[f"chat {MODEL}"]
        inner_span = next(s for s in spans.values() if s is not outer_span)
        assert inner_span.parent is not None
        assert outer_span.context.span_id == inner_span.parent.span_id
        assert [outer_span.context.span_id] == span_ids[-1:]


def test_a_trace_inside_another_on_one_call_gives_the_record_back_the_outer_span(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """``@trace @g @trace``: after the inner span ends, what ``g`` says lands on the outer span.

    Neither trace builds the record for its span (each notes it), so the
    inner one must hand the outer span back to the record built later.
    """
    from llmguard._runner import Guard

    class Says(Guard):
        name = "says"

        @staticmethod
        def leave(call: Any, state: Any, result: Any) -> Any:  # noqa: ARG004
            _events.emit("test.after_inner", call.record, note="hello")
            return result

    @lg.trace("outer", tracer_provider=tracer_provider)
    @Says()
    @lg.trace("inner", tracer_provider=tracer_provider)
    def ask(q: str) -> str:
        return q

    for _ in range(2):  # the second call with every result type seen
        exporter.clear()
        assert "q" == ask("q")
        spans = {s.name: s for s in exporter.get_finished_spans()}
        assert ["test.after_inner"] == [e.name for e in spans["outer"].events]
        assert [] == [e.name for e in spans["inner"].events]


def test_facts_a_guard_notes_without_building_the_record_reach_the_span(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A guard inside trace that writes facts with ``call.note`` (no record built) still has them on the span."""
    from llmguard._runner import Guard

    class Notes(Guard):
        name = "notes"

        @staticmethod
        def leave(call: Any, state: Any, result: Any) -> Any:  # noqa: ARG004
            call.note(cache="miss", route="small")
            return result

    @lg.trace(tracer_provider=tracer_provider)
    @Notes()
    def ask(q: str, model: str = MODEL) -> str:
        return q

    for _ in range(2):  # the second call with every result type seen
        exporter.clear()
        assert "q" == ask("q")
        (span,) = exporter.get_finished_spans()
        attributes = dict(span.attributes or {})
        assert ("miss", "small") == (attributes.get("llmguard.cache"), attributes.get("llmguard.route"))
