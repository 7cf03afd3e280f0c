"""The wire: usage measured from the SDKs' own HTTP exchange, whatever the guarded function returns.

Real anthropic, openai and google-genai SDKs against the fake provider; a real OTel SDK.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
import warnings

from collections.abc import Callable
from typing import Any

import anthropic
import openai
import pydantic
import pytest

from google import genai
from google.genai import types as genai_types
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sdk_http import httpx

import llmguard as lg
import llmguard.wire

from llmguard import _facts, _wire
from llmguard._fake_provider import FakeProvider, Step
from llmguard.testing import capture_events


CLAUDE = "claude-sonnet-4-6"
GPT = "gpt-4o"
GEMINI = "gemini-2.5-flash"
USAGE = {"input_tokens": 1234, "output_tokens": 56, "cache_read_tokens": 200, "cache_write_tokens": 30}
SENT = lg.Usage(1234, 56, 200, 30)
MESSAGES: Any = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def google_client(fp: FakeProvider) -> genai.Client:
    return genai.Client(api_key="x", http_options=genai_types.HttpOptions(base_url=fp.google_base_url))


class Answer(pydantic.BaseModel):
    """What instructor-like code returns: a pydantic model built from the reply."""

    text: str


# Each case: (name, the provider's usage as the fake sends it, what the record must say,
# a factory making the function's body from the clients).
Body = Callable[[FakeProvider, anthropic.Anthropic, anthropic.AsyncAnthropic, openai.OpenAI, openai.AsyncOpenAI], Any]


def _anthropic_text(fp: FakeProvider, a: Any, aa: Any, o: Any, ao: Any) -> Any:
    def ask(q: str) -> str:
        return str(a.messages.create(model=CLAUDE, max_tokens=64, messages=MESSAGES).content[0].text)

    return ask


def _anthropic_async_text(fp: FakeProvider, a: Any, aa: Any, o: Any, ao: Any) -> Any:
    async def ask(q: str) -> str:
        return str((await aa.messages.create(model=CLAUDE, max_tokens=64, messages=MESSAGES)).content[0].text)

    return ask


def _anthropic_stream_text(fp: FakeProvider, a: Any, aa: Any, o: Any, ao: Any) -> Any:
    def ask(q: str) -> str:
        with a.messages.stream(model=CLAUDE, max_tokens=64, messages=MESSAGES) as s:
            return "".join(s.text_stream)

    return ask


def _anthropic_async_stream_text(fp: FakeProvider, a: Any, aa: Any, o: Any, ao: Any) -> Any:
    async def ask(q: str) -> str:
        async with aa.messages.stream(model=CLAUDE, max_tokens=64, messages=MESSAGES) as s:
            return "".join([t async for t in s.text_stream])

    return ask


def _anthropic_model(fp: FakeProvider, a: Any, aa: Any, o: Any, ao: Any) -> Any:
    def ask(q: str) -> Answer:
        return Answer(text=a.messages.create(model=CLAUDE, max_tokens=64, messages=MESSAGES).content[0].text)

    return ask


def _anthropic_none(fp: FakeProvider, a: Any, aa: Any, o: Any, ao: Any) -> Any:
    def ask(q: str) -> None:
        a.messages.create(model=CLAUDE, max_tokens=64, messages=MESSAGES)

    return ask


def _openai_dict(fp: FakeProvider, a: Any, aa: Any, o: Any, ao: Any) -> Any:
    def ask(q: str) -> dict[str, Any]:
        r = o.chat.completions.create(model=GPT, messages=MESSAGES)
        return {"answer": r.choices[0].message.content}

    return ask


def _openai_async_stream(fp: FakeProvider, a: Any, aa: Any, o: Any, ao: Any) -> Any:
    async def ask(q: str) -> str:
        s = await ao.chat.completions.create(
            model=GPT, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        return "".join([c.choices[0].delta.content or "" async for c in s if c.choices])

    return ask


def _openai_responses_stream(fp: FakeProvider, a: Any, aa: Any, o: Any, ao: Any) -> Any:
    def ask(q: str) -> str:
        s = o.responses.create(model=GPT, input="hello there", stream=True)
        return "".join(e.delta for e in s if e.type == "response.output_text.delta")

    return ask


def _google_text(fp: FakeProvider, a: Any, aa: Any, o: Any, ao: Any) -> Any:
    client = google_client(fp)

    def ask(q: str) -> str:
        return str(client.models.generate_content(model=GEMINI, contents="hello there").text)

    return ask


def _google_stream(fp: FakeProvider, a: Any, aa: Any, o: Any, ao: Any) -> Any:
    client = google_client(fp)

    def ask(q: str) -> str:
        return "".join(c.text or "" for c in client.models.generate_content_stream(model=GEMINI, contents="hello there"))

    return ask


CASES: dict[str, Body] = {
    "anthropic text": _anthropic_text,
    "anthropic async text": _anthropic_async_text,
    "anthropic stream text": _anthropic_stream_text,
    "anthropic async stream text": _anthropic_async_stream_text,
    "anthropic pydantic model": _anthropic_model,
    "anthropic None": _anthropic_none,
    "openai dict": _openai_dict,
    "openai async stream text": _openai_async_stream,
    "openai responses stream text": _openai_responses_stream,
    "google text": _google_text,
    "google stream text": _google_stream,
}
# What each API can carry: google has no cache-write count.
EXPECTED = {"google": lg.Usage(1234, 56, 200, 0)}


def _expected(name: str) -> lg.Usage:
    return EXPECTED.get(name.split(maxsplit=1)[0], SENT)


def recording(records: list[lg.CallRecord]) -> Callable[[Any], Any]:
    """A plain decorator (not a guard) keeping the record of the guarded call the function runs in."""

    def decorate(fn: Any) -> Any:
        if asyncio.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def arecorded(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await fn(*args, **kwargs)
                finally:
                    records.append(lg.current_call())  # type: ignore[arg-type]

            return arecorded

        @functools.wraps(fn)
        def recorded(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            finally:
                records.append(lg.current_call())  # type: ignore[arg-type]

        return recorded

    return decorate


def _run(fn: Any, *args: Any) -> Any:
    return asyncio.run(fn(*args)) if asyncio.iscoroutinefunction(fn) else fn(*args)


@pytest.mark.parametrize("case", list(CASES))
def test_a_function_returning_no_sdk_object_is_charged_traced_and_recorded_with_what_the_server_sent(
    case: str,
    fake_provider: FakeProvider,
    anthropic_client: anthropic.Anthropic,
    async_anthropic_client: anthropic.AsyncAnthropic,
    openai_client: openai.OpenAI,
    async_openai_client: openai.AsyncOpenAI,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    """Text, a pydantic model, a dict or None: budget, record and span carry the server's usage, to the token."""
    fake_provider.script(Step(usage=USAGE))
    body = CASES[case](fake_provider, anthropic_client, async_anthropic_client, openai_client, async_openai_client)
    records: list[lg.CallRecord] = []
    spend = lg.budget(usd=10.0, max_output=64, model=CLAUDE, name=f"wire {case}")
    guarded = lg.trace(tracer_provider=tracer_provider)(spend(recording(records)(body)))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*no usage was measured")  # measured: not estimated
        _run(guarded, "q")

    want = _expected(case)
    assert 1 == len(fake_provider.requests)
    (record,) = records
    assert want == record.usage
    assert not record.usage.estimated
    assert record.attempts[0].wire == 1
    assert record.attempts[0].request_id or case.startswith("google")  # the fake sends google none
    assert want.input_tokens + want.output_tokens == lg.budget_spend(spend).tokens
    assert 0 == lg.budget_spend(spend).estimated_calls
    (span,) = exporter.get_finished_spans()
    attrs = dict(span.attributes or {})
    assert want.input_tokens == attrs["gen_ai.usage.input_tokens"]
    assert want.output_tokens == attrs["gen_ai.usage.output_tokens"]


def test_a_function_returning_the_sdk_object_too_is_counted_once(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """The wire and the returned Message say the same thing: it is counted once."""
    fake_provider.script(Step(usage=USAGE))
    spend = lg.budget(usd=10.0, name="wire once")
    records: list[lg.CallRecord] = []

    @lg.trace
    @spend
    @recording(records)
    def ask(model: str = CLAUDE, max_tokens: int = 64) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=max_tokens, messages=MESSAGES)

    ask()
    assert SENT == records[0].usage
    assert SENT.input_tokens + SENT.output_tokens == lg.budget_spend(spend).tokens


def test_a_report_of_the_sdks_numbers_is_not_added_to_what_the_wire_measured(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """The old workaround (report_usage with the SDK's numbers) does not double the charge."""
    fake_provider.script(Step(usage=USAGE))
    records: list[lg.CallRecord] = []

    @lg.trace
    @recording(records)
    def ask() -> str:
        m = anthropic_client.messages.create(model=CLAUDE, max_tokens=64, messages=MESSAGES)
        lg.report_usage(input_tokens=1234, output_tokens=56)
        return str(m.content[0].text)

    ask()
    assert SENT == records[0].usage


def test_every_request_of_one_attempt_adds_up(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic, openai_client: openai.OpenAI
) -> None:
    """An agent-like function making three requests to two providers is charged all three."""
    fake_provider.script(
        Step(usage={"input_tokens": 10, "output_tokens": 1}),
        Step(usage={"input_tokens": 20, "output_tokens": 2}),
        Step(usage={"input_tokens": 30, "output_tokens": 3}),
    )
    records: list[lg.CallRecord] = []

    @lg.trace
    @recording(records)
    def agent() -> str:
        anthropic_client.messages.create(model=CLAUDE, max_tokens=64, messages=MESSAGES)
        anthropic_client.messages.create(model=CLAUDE, max_tokens=64, messages=MESSAGES)
        return str(openai_client.chat.completions.create(model=GPT, messages=MESSAGES).choices[0].message.content)

    agent()
    assert lg.Usage(60, 6) == records[0].usage
    assert 3 == records[0].attempts[0].wire


def test_rate_limit_headers_and_request_id_are_on_the_attempt(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    fake_provider.script(
        Step(headers={"anthropic-ratelimit-tokens-remaining": "4000", "request-id": "req_wire_1"})
    )
    records: list[lg.CallRecord] = []

    @lg.trace
    @recording(records)
    def ask() -> str:
        return str(anthropic_client.messages.create(model=CLAUDE, max_tokens=64, messages=MESSAGES).content[0].text)

    ask()
    attempt = records[0].attempts[0]
    assert "req_wire_1" == attempt.request_id
    assert {"anthropic-ratelimit-tokens-remaining": "4000"}.items() <= (attempt.rate_limits or {}).items()


# -- outside any guard: exactly as before ------------------------------------------------


def test_outside_any_guard_the_patched_transport_changes_nothing_and_records_nothing(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """Same bytes, the library's own stream object, no attempt anywhere; the off switch restores the method."""
    assert lg.wire.installed()
    assert getattr(httpx.Client._send_single_request, "__llmguard_wire__", False)
    fake_provider.script(Step(usage=USAGE))
    raw = anthropic_client.messages.with_raw_response.create(model=CLAUDE, max_tokens=64, messages=MESSAGES)
    assert not isinstance(raw.http_response.stream, _wire._SyncObserved)
    body = json.loads(raw.http_response.content)
    assert 1234 - 230 == body["usage"]["input_tokens"]
    assert _facts._CURRENT.get() is None

    patched = httpx.Client._send_single_request
    lg.wire.uninstall()
    try:
        assert not lg.wire.installed()
        assert not getattr(httpx.Client._send_single_request, "__llmguard_wire__", False)
        fake_provider.script(Step(usage=USAGE))
        raw2 = anthropic_client.messages.with_raw_response.create(model=CLAUDE, max_tokens=64, messages=MESSAGES)
        assert body["usage"] == json.loads(raw2.http_response.content)["usage"]
    finally:
        lg.wire.install()
        lg.wire.install()  # idempotent
    assert httpx.Client._send_single_request is not patched  # a fresh patch...
    assert getattr(httpx.Client._send_single_request, "__llmguard_wire__", False)  # ...once
    assert 2 == len(_wire._PATCHED) // len([n for n in _wire.LIBRARIES if _installed(n)])


def _installed(name: str) -> bool:
    import importlib.util  # noqa: PLC0415

    return importlib.util.find_spec(name) is not None


def test_with_the_wire_off_a_text_function_is_estimated_flagged_and_warned_about(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """No wire (another client, in effect): the estimate, flagged, one event per call, one warning per function."""
    records: list[lg.CallRecord] = []

    @lg.trace
    @recording(records)
    def ask(messages: Any) -> str:
        return str(anthropic_client.messages.create(model=CLAUDE, max_tokens=64, messages=messages).content[0].text)

    lg.wire.uninstall()
    try:
        with capture_events("llmguard.usage") as events, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ask(MESSAGES)
            ask(MESSAGES)
    finally:
        lg.wire.install()
    usage = records[0].usage
    assert usage is not None
    assert usage.estimated
    assert usage.input_tokens > 0
    assert usage.output_tokens > 0
    assert ["llmguard.usage.estimated"] * 2 == [e.name for e in events]
    mine = [w for w in caught if "no usage was measured" in str(w.message)]
    assert 1 == len(mine)
    assert "report_usage" in str(mine[0].message)


# -- bad input never crashes the observation, never makes usage silently zero -----------


def _anthropic_raw(usage: dict[str, Any]) -> str:
    return json.dumps(
        {
            "id": "msg_bad",
            "type": "message",
            "role": "assistant",
            "model": CLAUDE,
            "content": [{"type": "text", "text": "an answer of several words"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
    )


@pytest.mark.parametrize(
    "usage",
    [
        {"input_tokens": -5, "output_tokens": 10},
        {"input_tokens": 10**12, "output_tokens": 10},
        {"input_tokens": "many", "output_tokens": "few"},
        {"input_tokens": 0, "output_tokens": 0},
    ],
    ids=["negative", "huge", "strings", "zero"],
)
def test_absurd_usage_on_the_wire_is_estimated_not_taken(
    usage: dict[str, Any], fake_provider: FakeProvider, openai_client: openai.OpenAI
) -> None:
    """Usage the wire cannot believe is not a measurement: the call is estimated and flagged."""
    body = json.dumps(
        {
            "id": "chatcmpl-bad",
            "object": "chat.completion",
            "created": 0,
            "model": GPT,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "an answer"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": usage["input_tokens"], "completion_tokens": usage["output_tokens"]},
        }
    )
    fake_provider.script(Step(raw_body=body))
    records: list[lg.CallRecord] = []

    @lg.trace
    @recording(records)
    def ask(messages: Any) -> Any:
        try:
            r = openai_client.chat.completions.create(model=GPT, messages=messages)
        except (openai.APIError, pydantic.ValidationError):
            return None  # the SDK refused the body itself
        return r.choices[0].message.content

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ask(MESSAGES)
    got = records[0].usage
    assert got is not None
    assert got.estimated
    assert 0 < got.input_tokens < 10**6
    assert 1 == records[0].attempts[0].wire


def test_a_body_that_is_not_json_is_estimated(fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic) -> None:
    fake_provider.script(Step(raw_body="this is { not json"))
    records: list[lg.CallRecord] = []

    @lg.trace
    @recording(records)
    def ask(messages: Any) -> str:
        raw = anthropic_client.messages.with_raw_response.create(model=CLAUDE, max_tokens=64, messages=messages)
        return str(raw.http_response.text)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert "this is { not json" == ask(MESSAGES)
    got = records[0].usage
    assert got is not None
    assert got.estimated
    assert got.input_tokens > 0


@pytest.mark.parametrize("fault", ["drop_after", "error_after"])
def test_a_cut_stream_or_a_200_with_an_error_event_is_estimated_from_what_was_seen(
    fault: str, fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """The stream's usage so far is not a measurement of the whole: estimated, flagged, never zero."""
    fake_provider.script(Step(usage=USAGE, **{fault: 1}))
    records: list[lg.CallRecord] = []

    @lg.trace
    @recording(records)
    def ask(messages: Any) -> str:
        texts: list[str] = []
        try:
            for event in anthropic_client.messages.create(model=CLAUDE, max_tokens=64, messages=messages, stream=True):
                if event.type == "content_block_delta":
                    texts.append(event.delta.text)
        except Exception:  # noqa: BLE001, S110 - the function keeps what it read
            pass
        return "".join(texts)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = ask(MESSAGES)
    assert text
    got = records[0].usage
    assert got is not None
    assert got.estimated
    assert got.input_tokens > 0
    assert got.output_tokens > 0


def test_a_gzip_body_is_read_through_the_content_encoding(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """A compressed body (real providers send gzip) is decoded for the wire, not mistaken for garbage."""
    import gzip  # noqa: PLC0415

    payload = gzip.compress(_anthropic_raw({"input_tokens": 7, "output_tokens": 3}).encode())

    def handler(request: Any) -> Any:
        return httpx.Response(
            200, content=payload, headers={"content-type": "application/json", "content-encoding": "gzip"}
        )

    client = anthropic.Anthropic(
        api_key="k", base_url="http://wire.test", http_client=httpx.Client(transport=httpx.MockTransport(handler))
    )
    records: list[lg.CallRecord] = []

    @lg.trace
    @recording(records)
    def ask() -> str:
        return str(client.messages.create(model=CLAUDE, max_tokens=64, messages=MESSAGES).content[0].text)

    assert "an answer of several words" == ask()
    assert lg.Usage(7, 3) == records[0].usage


# -- deadlines on the wire (sync timeout without a thread per call) ---------------------


def test_a_request_inside_a_deadline_carries_the_time_left_as_its_own_timeout() -> None:
    """Each phase of the request's timeout is the smaller of the SDK's and the time left."""
    seen: list[dict[str, Any]] = []

    def handler(request: Any) -> Any:
        seen.append(dict(request.extensions["timeout"]))
        return httpx.Response(200, json=json.loads(_anthropic_raw({"input_tokens": 7, "output_tokens": 3})))

    client = anthropic.Anthropic(
        api_key="k", base_url="http://wire.test", http_client=httpx.Client(transport=httpx.MockTransport(handler))
    )
    client.messages.create(model=CLAUDE, max_tokens=64, messages=MESSAGES)
    with lg.timeout(2):
        client.messages.create(model=CLAUDE, max_tokens=64, messages=MESSAGES)
    outside, inside = seen
    assert all(v is None or v > 2 for v in outside.values())  # the SDK's own (600 s)
    assert set(inside) == {"connect", "read", "write", "pool"}
    assert all(0 < v <= 2 for v in inside.values())


def test_a_timeout_block_around_unguarded_sync_code_ends_a_stalled_request_at_its_deadline(
    fake_provider: FakeProvider,
) -> None:
    """`with lg.timeout(0.5)` around a plain SDK call (the SDK's own retries on): GuardTimeout, one request, not the stall."""
    fake_provider.script(Step(delay=10.0), Step(delay=10.0), Step(delay=10.0))
    client = anthropic.Anthropic(base_url=fake_provider.anthropic_base_url, api_key="k", max_retries=2)
    started = time.monotonic()
    with pytest.raises(lg.GuardTimeout), lg.timeout(0.5):
        client.messages.create(model=CLAUDE, max_tokens=64, messages=MESSAGES)
    elapsed = time.monotonic() - started
    assert elapsed < 5.0  # the stall is 10 s, three of them with the SDK's retries
    assert 1 == len(fake_provider.requests)  # the SDK did not retry past the deadline
    client.close()


def test_a_wire_mode_timeout_runs_on_the_callers_thread_and_ends_a_stalled_request(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """`mode="wire"`: no worker thread; the SDK request carries the deadline; GuardTimeout, then a success."""
    threads: list[int] = []

    @lg.timeout(2.0, mode="wire")
    def ask() -> str:
        threads.append(threading.get_ident())
        return str(anthropic_client.messages.create(model=CLAUDE, max_tokens=64, messages=MESSAGES).content[0].text)

    fake_provider.script(Step(delay=10.0), Step())
    started = time.monotonic()
    with pytest.raises(lg.GuardTimeout) as caught:
        ask()
    assert time.monotonic() - started < 6.0  # the stall is 10 s
    assert "total" == caught.value.limit
    assert "Hello from the fake provider." == ask()
    assert [threading.get_ident()] * 2 == threads


def test_timeout_mode_is_checked_when_the_guard_is_built() -> None:
    with pytest.raises(ValueError, match="mode"):
        lg.timeout(1, mode="threads")
    assert "wire" == lg.describe(lg.timeout(1, mode="wire")(lambda: None))[0].settings["mode"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_trace_alone_on_a_text_function_has_the_servers_usage_on_its_span(
    stream: bool,
    fake_provider: FakeProvider,
    anthropic_client: anthropic.Anthropic,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    """`trace` alone reads a plain result without building the record: it reads the wire there too."""
    fake_provider.script(Step(usage=USAGE))

    @lg.trace(tracer_provider=tracer_provider)
    def ask() -> str:
        if stream:
            with anthropic_client.messages.stream(model=CLAUDE, max_tokens=64, messages=MESSAGES) as s:
                return "".join(s.text_stream)
        return str(anthropic_client.messages.create(model=CLAUDE, max_tokens=64, messages=MESSAGES).content[0].text)

    ask()
    (span,) = exporter.get_finished_spans()
    attrs = dict(span.attributes or {})
    assert (SENT.input_tokens, SENT.output_tokens) == (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"])
    assert "llmguard.usage.estimated" not in attrs


# -- budget scopes reach every request -------------------------------------------------


def test_a_budget_scope_around_unguarded_code_charges_each_request_and_never_sends_the_one_beyond_its_cap(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """No guard anywhere: each request reserved and charged what the server sent; the one that cannot fit is not sent."""
    fake_provider.script(*[Step(usage={"input_tokens": 1000, "output_tokens": 100})] * 10)
    scope = lg.budget(tokens=3000, name="wire scope")
    sent = 0
    with pytest.raises(lg.BudgetExceeded), scope:  # noqa: PT012 - the loop runs until the refusal
        for _ in range(10):
            anthropic_client.messages.create(model=CLAUDE, max_tokens=200, messages=MESSAGES)
            sent += 1
    assert 3 == sent == len(fake_provider.requests)  # 3 x 1100 spent: the 4th's worst case does not fit
    spend = lg.budget_spend(scope)
    assert (3300, 3, 0) == (spend.tokens, spend.calls, spend.estimated_calls)


async def test_a_budget_scope_reaches_a_retry_only_async_function_once_per_request(
    fake_provider: FakeProvider, async_openai_client: openai.AsyncOpenAI
) -> None:
    """A guarded function without a budget of its own: the scope charges each of its requests (retries included)."""
    fake_provider.script(Step(status=500), Step(usage={"input_tokens": 40, "output_tokens": 4}))

    @lg.retry(attempts=3, initial=0.01, max_delay=0.01)
    async def ask() -> str:
        r = await async_openai_client.chat.completions.create(model=GPT, messages=MESSAGES)
        return str(r.choices[0].message.content)

    scope = lg.budget(usd=1.0, name="wire retry scope")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the failed attempt's request is estimated
        async with scope:
            await ask()
    spend = lg.budget_spend(scope)
    assert 2 == spend.calls == len(fake_provider.requests)
    assert spend.tokens >= 44


def test_a_budgeted_function_in_a_scope_is_charged_once(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """The function's own budget guard reserves for its requests, scopes included: the wire does not charge them again."""
    fake_provider.script(Step(usage={"input_tokens": 100, "output_tokens": 10}))

    @lg.budget(usd=1.0, max_output=64, model=CLAUDE)
    def ask() -> str:
        return str(anthropic_client.messages.create(model=CLAUDE, max_tokens=64, messages=MESSAGES).content[0].text)

    scope = lg.budget(usd=1.0, name="wire once scope")
    with scope:
        ask()
    assert (110, 1) == (lg.budget_spend(scope).tokens, lg.budget_spend(scope).calls)
