"""llmguard.providers against real SDK objects.

Every SDK object here is made by the real SDK client talking to an
``httpx.MockTransport`` (the transport of the HTTP client the SDKs use), so
the objects, streams and exceptions are exactly what users get.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
import time

from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import anthropic
import openai
import pydantic
import pytest

from google import genai
from google.genai import types as gtypes
from sdk_http import httpx

from llmguard import providers
from llmguard._record import ErrorKind, Usage
from llmguard.errors import BudgetExceeded, CircuitOpen, GuardTimeout, LLMGuardError
from llmguard.providers import ErrorInfo, StreamAccumulator, classify, observe_result


Handler = Callable[[httpx.Request], httpx.Response]

# ----------------------------------------------------------------- wire bodies

ANTHROPIC_MESSAGE: dict[str, Any] = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "world"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_creation_input_tokens": 3,
        "cache_read_input_tokens": 20,
    },
}
ANTHROPIC_USAGE = Usage(
    input_tokens=33, output_tokens=5, cache_read_tokens=20, cache_write_tokens=3
)

CHAT_COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-01",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hi there", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "total_tokens": 120,
        "prompt_tokens_details": {"cached_tokens": 40},
        "completion_tokens_details": {"reasoning_tokens": 8},
    },
}
CHAT_USAGE = Usage(input_tokens=100, output_tokens=20, cache_read_tokens=40, reasoning_tokens=8)

RESPONSE: dict[str, Any] = {
    "id": "resp_01",
    "object": "response",
    "created_at": 1700000000,
    "status": "completed",
    "model": "gpt-5-2025-08-07",
    "output": [
        {
            "type": "message",
            "id": "msg_01",
            "status": "completed",
            "role": "assistant",
            "content": [
                {
                    "type": "output_text",
                    "text": "Hello from responses",
                    "annotations": [],
                    "logprobs": [],
                }
            ],
        }
    ],
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "usage": {
        "input_tokens": 50,
        "input_tokens_details": {"cached_tokens": 10},
        "output_tokens": 30,
        "output_tokens_details": {"reasoning_tokens": 12},
        "total_tokens": 80,
    },
}
RESPONSE_USAGE = Usage(input_tokens=50, output_tokens=30, cache_read_tokens=10, reasoning_tokens=12)

EMBEDDINGS: dict[str, Any] = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
    "model": "text-embedding-3-small",
    "usage": {"prompt_tokens": 7, "total_tokens": 7},
}

GOOGLE_RESPONSE: dict[str, Any] = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {"text": "thinking...", "thought": True},
                    {"text": "Gemini "},
                    {"text": "says hi"},
                ],
            },
            "finishReason": "STOP",
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 12,
        "candidatesTokenCount": 6,
        "thoughtsTokenCount": 4,
        "cachedContentTokenCount": 5,
        "totalTokenCount": 22,
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "gresp-01",
}
GOOGLE_USAGE = Usage(input_tokens=12, output_tokens=10, cache_read_tokens=5, reasoning_tokens=4)


# --------------------------------------------------------------------- helpers


def sse(events: list[tuple[str | None, Any]]) -> bytes:
    """An SSE body: (event name or None, data dict or raw string) pairs."""
    out = []
    for name, data in events:
        if name is not None:
            out.append(f"event: {name}\n")
        out.append(f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n")
    return "".join(out).encode()


def reply(status: int = 200, body: Any = None, headers: dict[str, str] | None = None) -> Handler:
    """A handler that answers every request with *body* (JSON, or SSE bytes)."""

    def handle(request: httpx.Request) -> httpx.Response:
        if isinstance(body, bytes):
            return httpx.Response(
                status,
                content=body,
                headers={"content-type": "text/event-stream", **(headers or {})},
            )
        return httpx.Response(status, json=body, headers=headers)

    return handle


def fail_with(exc: Exception) -> Handler:
    """A handler whose transport raises *exc* (dropped connection, timeout...)."""

    def handle(request: httpx.Request) -> httpx.Response:
        raise exc

    return handle


def anthropic_client(handler: Handler) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="k",
        base_url="http://anthropic.test",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )


def openai_client(handler: Handler) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="k",
        base_url="http://openai.test/v1",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )


def google_client(handler: Handler) -> genai.Client:
    return genai.Client(
        api_key="k",
        http_options=gtypes.HttpOptions(
            base_url="http://google.test",
            httpx_client=httpx.Client(transport=httpx.MockTransport(handler)),
        ),
    )


def create_message(client: anthropic.Anthropic, **kw: Any) -> Any:
    return client.messages.create(
        model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "hi"}], **kw
    )


def create_chat(client: openai.OpenAI, **kw: Any) -> Any:
    return client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], **kw
    )


def raised(fn: Callable[[], Any]) -> BaseException:
    """The exception *fn* raises (consuming it if it returns an iterable)."""
    try:
        result = fn()
        if hasattr(result, "__iter__"):
            for _ in result:
                pass
    except BaseException as exc:  # noqa: BLE001 - the point is to capture it
        return exc
    raise AssertionError("expected an exception")


def anthropic_error(status: int, etype: str, message: str, **extra: Any) -> dict[str, Any]:
    error: dict[str, Any] = {"type": etype, "message": message, **extra}
    return {"type": "error", "error": error, "request_id": "req_01"}


def openai_error(message: str, etype: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": etype, "param": None, "code": code}}


# ------------------------------------------------------------ observe_result


def test_anthropic_message_facts() -> None:
    """A real anthropic Message yields model, total-input usage, id, stop reason and text."""
    message = create_message(anthropic_client(reply(200, ANTHROPIC_MESSAGE)))
    facts = observe_result(message)
    expected = providers.ResultFacts(
        "anthropic",
        "claude-sonnet-4-5-20250929",
        ANTHROPIC_USAGE,
        "msg_01",
        ("end_turn",),
        "Hello world",
    )
    assert expected == facts


def test_anthropic_thinking_tokens_are_reasoning_tokens() -> None:
    """output_tokens_details.thinking_tokens becomes Usage.reasoning_tokens."""
    body = json.loads(json.dumps(ANTHROPIC_MESSAGE))
    body["usage"]["output_tokens_details"] = {"thinking_tokens": 4}
    message = create_message(anthropic_client(reply(200, body)))
    assert dataclasses.replace(ANTHROPIC_USAGE, reasoning_tokens=4) == providers.usage_from(message)


def test_anthropic_beta_message_facts() -> None:
    """A BetaMessage (not a Message subclass) is recognised too."""
    client = anthropic_client(reply(200, ANTHROPIC_MESSAGE))
    message = client.beta.messages.create(
        model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    )
    assert "BetaMessage" == type(message).__name__
    assert ANTHROPIC_USAGE == providers.usage_from(message)


def test_anthropic_parsed_message_facts() -> None:
    """A ParsedMessage from messages.parse() is read like a Message."""

    class Answer(pydantic.BaseModel):
        answer: int

    body = {**ANTHROPIC_MESSAGE, "content": [{"type": "text", "text": '{"answer": 42}'}]}
    client = anthropic_client(reply(200, body))
    parsed = client.messages.parse(
        model="claude-test",
        max_tokens=100,
        messages=[{"role": "user", "content": "hi"}],
        output_format=Answer,
    )
    facts = observe_result(parsed)
    assert facts is not None
    assert (ANTHROPIC_USAGE, '{"answer": 42}') == (facts.usage, facts.text)


def test_anthropic_raw_response_is_parsed_when_body_read() -> None:
    """with_raw_response: the already-read body is parsed for the facts."""
    client = anthropic_client(reply(200, ANTHROPIC_MESSAGE, {"request-id": "req_9"}))
    raw = client.messages.with_raw_response.create(
        model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    )
    facts = observe_result(raw)
    assert facts is not None
    assert ("msg_01", ANTHROPIC_USAGE) == (facts.response_id, facts.usage)
    assert raw.parse() is raw.parse()  # the SDK's own parse cache still serves the caller


def test_streaming_raw_response_is_left_unread() -> None:
    """with_streaming_response: an unread body is not parsed (that would consume it); None."""

    def streamed(request: httpx.Request) -> httpx.Response:
        # An iterator body stays unread, as a body arriving over the network does.
        return httpx.Response(
            200,
            content=iter([json.dumps(ANTHROPIC_MESSAGE).encode()]),
            headers={"content-type": "application/json"},
        )

    client = anthropic_client(streamed)
    with client.messages.with_streaming_response.create(
        model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ) as response:
        assert observe_result(response) is None
        assert "msg_01" == json.loads(response.read())["id"]


def test_openai_chat_completion_facts() -> None:
    """A real ChatCompletion yields model, usage (cached + reasoning), id, finish reason, text."""
    completion = create_chat(openai_client(reply(200, CHAT_COMPLETION)))
    expected = providers.ResultFacts(
        "openai", "gpt-4o-2024-08-06", CHAT_USAGE, "chatcmpl-01", ("stop",), "Hi there"
    )
    assert expected == observe_result(completion)


def test_openai_chat_completion_without_usage_has_none() -> None:
    """A ChatCompletion whose usage is absent reports usage None (not zeros)."""
    body = {k: v for k, v in CHAT_COMPLETION.items() if k != "usage"}
    facts = observe_result(create_chat(openai_client(reply(200, body))))
    assert facts is not None
    assert facts.usage is None


def test_openai_parsed_chat_completion_facts() -> None:
    """chat.completions.parse() returns a ParsedChatCompletion, read like a ChatCompletion."""

    class Answer(pydantic.BaseModel):
        answer: int

    body = json.loads(json.dumps(CHAT_COMPLETION))
    body["choices"][0]["message"]["content"] = '{"answer": 42}'
    client = openai_client(reply(200, body))
    parsed = client.chat.completions.parse(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], response_format=Answer
    )
    assert CHAT_USAGE == providers.usage_from(parsed)


def test_openai_responses_facts() -> None:
    """A real Responses Response yields model, usage, id, status and output_text."""
    response = openai_client(reply(200, RESPONSE)).responses.create(model="gpt-5", input="hi")
    expected = providers.ResultFacts(
        "openai",
        "gpt-5-2025-08-07",
        RESPONSE_USAGE,
        "resp_01",
        ("completed",),
        "Hello from responses",
    )
    assert expected == observe_result(response)


def test_openai_incomplete_response_reports_the_reason() -> None:
    """An incomplete Response reports incomplete_details.reason as its finish reason."""
    body = {
        **RESPONSE,
        "status": "incomplete",
        "incomplete_details": {"reason": "max_output_tokens"},
    }
    response = openai_client(reply(200, body)).responses.create(model="gpt-5", input="hi")
    facts = observe_result(response)
    assert facts is not None
    assert ("max_output_tokens",) == facts.finish_reasons


def test_openai_embeddings_facts() -> None:
    """CreateEmbeddingResponse: prompt tokens as input, no output."""
    result = openai_client(reply(200, EMBEDDINGS)).embeddings.create(
        model="text-embedding-3-small", input="hi"
    )
    expected = providers.ResultFacts(
        "openai", "text-embedding-3-small", Usage(7, 0), None, (), None
    )
    assert expected == observe_result(result)


def test_openai_legacy_raw_response_is_parsed() -> None:
    """The openai with_raw_response (LegacyAPIResponse) is parsed for the facts."""
    client = openai_client(reply(200, CHAT_COMPLETION))
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    assert CHAT_USAGE == providers.usage_from(raw)


def test_google_response_facts() -> None:
    """A GenerateContentResponse: thoughts count as output and reasoning, thought text excluded."""
    response = gtypes.GenerateContentResponse.model_validate(GOOGLE_RESPONSE)
    expected = providers.ResultFacts(
        "google", "gemini-2.5-flash", GOOGLE_USAGE, "gresp-01", ("STOP",), "Gemini says hi"
    )
    assert expected == observe_result(response)


def test_google_client_response_facts() -> None:
    """The google-genai client's own generate_content result is read the same way."""
    response = google_client(reply(200, GOOGLE_RESPONSE)).models.generate_content(
        model="gemini-2.5-flash", contents="hi"
    )
    assert GOOGLE_USAGE == providers.usage_from(response)


def test_google_blocked_prompt_reports_block_reason() -> None:
    """A prompt blocked for safety (no candidates) reports the block reason."""
    response = gtypes.GenerateContentResponse.model_validate(
        {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}}
    )
    facts = observe_result(response)
    assert facts is not None
    assert ("SAFETY",) == facts.finish_reasons


@pytest.mark.parametrize(
    ("body", "provider", "usage", "text"),
    [
        (ANTHROPIC_MESSAGE, "anthropic", ANTHROPIC_USAGE, "Hello world"),
        (CHAT_COMPLETION, "openai", CHAT_USAGE, "Hi there"),
        (RESPONSE, "openai", RESPONSE_USAGE, "Hello from responses"),
        (EMBEDDINGS, "openai", Usage(7, 0), None),
        (GOOGLE_RESPONSE, "google", GOOGLE_USAGE, "Gemini says hi"),
    ],
    ids=["anthropic", "chat", "responses", "embeddings", "google"],
)
def test_dict_shapes_match_sdk_objects(
    body: dict[str, Any], provider: str, usage: Usage, text: str | None
) -> None:
    """A json.loads of a raw HTTP body yields the same facts as the SDK object."""
    facts = observe_result(json.loads(json.dumps(body)))
    assert facts is not None
    assert (provider, usage, text) == (facts.provider, facts.usage, facts.text)


def test_google_snake_case_dict_is_read() -> None:
    """A model_dump() of a google response (snake_case keys) is read too."""
    dumped = gtypes.GenerateContentResponse.model_validate(GOOGLE_RESPONSE).model_dump()
    assert GOOGLE_USAGE == providers.usage_from(dumped)


class _Plain:
    usage_note = "not usage"


@pytest.mark.parametrize(
    "value",
    [
        "text",
        b"bytes",
        42,
        1.5,
        None,
        [1, 2],
        ("a",),
        {"unrelated": 1},
        _Plain(),
        object(),
        ValueError("x"),
    ],
)
def test_unrecognised_objects_are_none(value: object) -> None:
    """Anything that is not a provider result yields None (and does so again from the cache)."""
    assert observe_result(value) is None
    assert observe_result(value) is None


def test_unrecognised_type_is_cached() -> None:
    """A type seen once is cached (as None), so repeats are a single dict lookup."""
    observe_result("x")
    assert providers._RESULT_CACHE[str] is None


def test_duck_typed_object_with_usage_field() -> None:
    """A foreign object declaring a usage field (e.g. another client library) is read by shape."""

    @dataclasses.dataclass
    class FakeUsage:
        prompt_tokens: int
        completion_tokens: int

    @dataclasses.dataclass
    class FakeResult:
        model: str
        usage: FakeUsage

    facts = observe_result(FakeResult("local-llama", FakeUsage(9, 4)))
    assert facts is not None
    assert (None, "local-llama", Usage(9, 4)) == (facts.provider, facts.model, facts.usage)


def test_usage_from_bare_usage_objects() -> None:
    """usage_from also accepts a bare SDK usage object or usage dict."""
    message = create_message(anthropic_client(reply(200, ANTHROPIC_MESSAGE)))
    assert ANTHROPIC_USAGE == providers.usage_from(message.usage)
    assert ANTHROPIC_USAGE == providers.usage_from(ANTHROPIC_MESSAGE["usage"])
    assert CHAT_USAGE == providers.usage_from(CHAT_COMPLETION["usage"])
    assert providers.usage_from("nothing") is None


# ------------------------------------------------------------- observe_usage


@dataclasses.dataclass
class _DuckUsage:
    prompt_tokens: int
    completion_tokens: int


@dataclasses.dataclass
class _DuckResult:
    model: str
    usage: _DuckUsage


class _BrokenUsage:
    """Declares a usage field whose reading fails."""

    usage: Any

    def __getattribute__(self, name: str) -> Any:
        if name == "usage":
            raise RuntimeError("usage unavailable")
        return object.__getattribute__(self, name)


def _no_usage(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "usage"}


_RESULTS: dict[str, Callable[[], object]] = {
    "anthropic message": lambda: create_message(anthropic_client(reply(200, ANTHROPIC_MESSAGE))),
    "anthropic beta message": lambda: anthropic_client(reply(200, ANTHROPIC_MESSAGE)).beta.messages.create(
        model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ),
    "anthropic raw response": lambda: anthropic_client(reply(200, ANTHROPIC_MESSAGE)).messages.with_raw_response.create(
        model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ),
    "chat completion": lambda: create_chat(openai_client(reply(200, CHAT_COMPLETION))),
    "chat completion without usage": lambda: create_chat(openai_client(reply(200, _no_usage(CHAT_COMPLETION)))),
    "responses": lambda: openai_client(reply(200, RESPONSE)).responses.create(model="gpt-5", input="hi"),
    "responses without usage": lambda: openai_client(reply(200, _no_usage(RESPONSE))).responses.create(
        model="gpt-5", input="hi"
    ),
    "embeddings": lambda: openai_client(reply(200, EMBEDDINGS)).embeddings.create(
        model="text-embedding-3-small", input="hi"
    ),
    "google": lambda: gtypes.GenerateContentResponse.model_validate(GOOGLE_RESPONSE),
    "google without usage": lambda: gtypes.GenerateContentResponse.model_validate(_no_usage(GOOGLE_RESPONSE)),
    "anthropic dict": lambda: json.loads(json.dumps(ANTHROPIC_MESSAGE)),
    "chat dict": lambda: json.loads(json.dumps(CHAT_COMPLETION)),
    "google dict": lambda: json.loads(json.dumps(GOOGLE_RESPONSE)),
    "duck-typed result": lambda: _DuckResult("local-llama", _DuckUsage(9, 4)),
    "broken duck": _BrokenUsage,
    "text": lambda: "text",
    "plain object": _Plain,
}


@pytest.mark.parametrize("make", list(_RESULTS.values()), ids=list(_RESULTS))
def test_observe_usage_is_what_observe_result_says_of_usage_model_and_provider(make: Callable[[], object]) -> None:
    """observe_usage agrees with observe_result on every kind of result (None where it has no usage), twice."""
    result = make()
    facts = observe_result(result)
    expected = None if facts is None or facts.usage is None else (facts.usage, facts.model, facts.provider)

    assert expected == providers.observe_usage(result)
    assert expected == providers.observe_usage(result)  # from the type cache
    # usage_extractor: the same reader, looked up once per class (it may raise where observe_usage says None).
    extractor = providers.usage_extractor(type(result))
    if expected is None:
        assert extractor is None or _none_or_raises(extractor, result)
    else:
        assert extractor is not None
        assert expected == extractor(result)


def _none_or_raises(extractor: Callable[[object], object], result: object) -> bool:
    try:
        return extractor(result) is None
    except Exception:  # noqa: BLE001 - a malformed result may raise: that is the contract
        return True


def test_a_result_whose_text_cannot_be_read_still_gives_its_usage() -> None:
    """A Message built without validation, its content malformed: observe_result keeps usage, model and provider."""
    import anthropic.types as at

    broken = at.Message.model_construct(
        id="msg_1", type="message", role="assistant", model="claude-sonnet-4-6",
        content=["not a content block"], stop_reason="end_turn",
        usage=at.Usage(input_tokens=300, output_tokens=20),
    )
    facts = observe_result(broken)

    assert facts is not None
    assert (Usage(300, 20), "claude-sonnet-4-6", "anthropic") == (facts.usage, facts.model, facts.provider)
    assert (facts.usage, facts.model, facts.provider) == providers.observe_usage(broken)


def test_observe_usage_of_sdk_results_skips_the_other_facts() -> None:
    """The SDKs' usual results are read by a usage-only extractor, not through their full facts."""
    results = [
        create_message(anthropic_client(reply(200, ANTHROPIC_MESSAGE))),
        create_chat(openai_client(reply(200, CHAT_COMPLETION))),
        openai_client(reply(200, RESPONSE)).responses.create(model="gpt-5", input="hi"),
        gtypes.GenerateContentResponse.model_validate(GOOGLE_RESPONSE),
    ]
    usages = [providers.observe_usage(r) for r in results]

    assert [ANTHROPIC_USAGE, CHAT_USAGE, RESPONSE_USAGE, GOOGLE_USAGE] == [u[0] for u in usages if u is not None]
    assert set(providers._USAGE_ONLY.values()) >= {providers._USAGE_CACHE[type(r)] for r in results}


# --------------------------------------------------------------- streams

ANTHROPIC_STREAM = sse(
    [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    **ANTHROPIC_MESSAGE,
                    "content": [],
                    "stop_reason": None,
                    "usage": {
                        "input_tokens": 10,
                        "output_tokens": 1,
                        "cache_creation_input_tokens": 3,
                        "cache_read_input_tokens": 20,
                    },
                },
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hello "},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hello "},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "world"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 12},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
)
ANTHROPIC_STREAM_USAGE = Usage(33, 12, 20, 3)
ANTHROPIC_STREAM_TEXT = "Hello Hello world"  # a repeated delta must be kept: it is real text


def test_anthropic_raw_stream_usage_is_cumulative() -> None:
    """Raw events: message_start gives input/cache usage, message_delta's cumulative output overrides."""
    acc = StreamAccumulator()
    for event in create_message(anthropic_client(reply(200, ANTHROPIC_STREAM)), stream=True):
        acc.feed(event)
    assert ("anthropic", "claude-sonnet-4-5-20250929", "msg_01") == (
        acc.provider,
        acc.model,
        acc.response_id,
    )
    assert (ANTHROPIC_STREAM_USAGE, ("end_turn",), ANTHROPIC_STREAM_TEXT) == (
        acc.usage,
        acc.finish_reasons,
        acc.text,
    )


def test_anthropic_stream_thinking_tokens_are_reasoning_tokens() -> None:
    """message_delta's output_tokens_details.thinking_tokens (a plain dict on SDKs that predate it) counts."""
    plain = b'"usage": {"output_tokens": 12}'
    assert plain in ANTHROPIC_STREAM
    body = ANTHROPIC_STREAM.replace(
        plain, b'"usage": {"output_tokens": 12, "output_tokens_details": {"thinking_tokens": 4}}'
    )
    acc = StreamAccumulator()
    for event in create_message(anthropic_client(reply(200, body)), stream=True):
        acc.feed(event)
    assert dataclasses.replace(ANTHROPIC_STREAM_USAGE, reasoning_tokens=4) == acc.usage


def test_anthropic_message_delta_overrides_only_fields_it_sets() -> None:
    """A message_delta carrying cumulative input/cache counts overrides those; absent ones stay."""
    acc = StreamAccumulator()
    acc.feed(
        {
            "type": "message_start",
            "message": {
                "model": "m",
                "id": "i",
                "usage": {"input_tokens": 10, "output_tokens": 1, "cache_read_input_tokens": 5},
            },
        }
    )
    acc.feed(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "max_tokens"},
            "usage": {"output_tokens": 7, "input_tokens": 11},
        }
    )
    assert (Usage(16, 7, 5, 0), ("max_tokens",)) == (acc.usage, acc.finish_reasons)


def test_anthropic_message_stream_events_do_not_double_text() -> None:
    """MessageStream yields a raw delta and a `text` event per delta; text is counted once."""
    client = anthropic_client(reply(200, ANTHROPIC_STREAM))
    acc = StreamAccumulator()
    with client.messages.stream(
        model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        for event in stream:
            acc.feed(event)
        final = stream.get_final_message()
    assert (ANTHROPIC_STREAM_TEXT, ANTHROPIC_STREAM_USAGE) == (acc.text, acc.usage)
    assert final.usage.output_tokens == ANTHROPIC_STREAM_USAGE.output_tokens  # the SDK agrees


def test_anthropic_text_stream_str_chunks() -> None:
    """Plain str chunks (MessageStream.text_stream) accumulate as text only."""
    client = anthropic_client(reply(200, ANTHROPIC_STREAM))
    acc = StreamAccumulator()
    with client.messages.stream(
        model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        for text in stream.text_stream:
            acc.feed(text)
        assert (ANTHROPIC_STREAM_TEXT, None) == (acc.text, acc.usage)
        acc.finish_from(stream)
    assert (ANTHROPIC_STREAM_USAGE, "claude-sonnet-4-5-20250929", ("end_turn",)) == (
        acc.usage,
        acc.model,
        acc.finish_reasons,
    )


def test_finish_from_stream_manager() -> None:
    """finish_from on the MessageStreamManager finds the stream it opened."""
    client = anthropic_client(reply(200, ANTHROPIC_STREAM))
    manager = client.messages.stream(
        model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    )
    with manager as stream:
        stream.until_done()
    acc = StreamAccumulator()
    acc.finish_from(manager)
    assert ANTHROPIC_STREAM_USAGE == acc.usage


def test_finish_from_never_raises_and_keeps_fed_facts() -> None:
    """finish_from ignores junk sources and never overrides what feed() saw."""
    acc = StreamAccumulator()
    acc.feed(
        {
            "type": "message_start",
            "message": {
                "model": "fed-model",
                "id": "x",
                "usage": {"input_tokens": 1, "output_tokens": 1},
            },
        }
    )
    acc.finish_from(object())
    acc.finish_from(None)
    acc.finish_from(ANTHROPIC_MESSAGE)
    assert ("fed-model", Usage(1, 1), ("end_turn",)) == (acc.model, acc.usage, acc.finish_reasons)


def chat_chunk(
    delta: dict[str, Any] | None, finish: str | None = None, usage: Any = None
) -> dict[str, Any]:
    choices = (
        []
        if delta is None
        else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    )
    return {
        "id": "chatcmpl-01",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-2024-08-06",
        "choices": choices,
        "usage": usage,
    }


CHAT_STREAM = sse(
    [
        (None, chat_chunk({"role": "assistant", "content": ""})),
        (None, chat_chunk({"content": "Hi "})),
        (None, chat_chunk({"content": "there"})),
        (None, chat_chunk({}, "stop")),
        (None, chat_chunk(None, usage=CHAT_COMPLETION["usage"])),
        (None, "[DONE]"),
    ]
)


def test_openai_chat_stream_with_include_usage() -> None:
    """Chat chunks: delta text, finish reason, and usage from the include_usage last chunk."""
    acc = StreamAccumulator()
    stream = create_chat(
        openai_client(reply(200, CHAT_STREAM)), stream=True, stream_options={"include_usage": True}
    )
    for chunk in stream:
        acc.feed(chunk)
    assert ("openai", "gpt-4o-2024-08-06", "chatcmpl-01") == (
        acc.provider,
        acc.model,
        acc.response_id,
    )
    assert ("Hi there", ("stop",), CHAT_USAGE, 5) == (
        acc.text,
        acc.finish_reasons,
        acc.usage,
        acc.chunks,
    )


def test_openai_chat_stream_without_usage_has_none() -> None:
    """Without include_usage no chunk carries usage: usage stays None."""
    body = sse(
        [(None, chat_chunk({"content": "Hi"})), (None, chat_chunk({}, "stop")), (None, "[DONE]")]
    )
    acc = StreamAccumulator()
    for chunk in create_chat(openai_client(reply(200, body)), stream=True):
        acc.feed(chunk)
    assert ("Hi", None) == (acc.text, acc.usage)


def test_openai_chat_stream_empty_first_chunk_model() -> None:
    """A first chunk with model "" (Azure's prompt-filter chunk) does not hide the real model."""
    acc = StreamAccumulator()
    acc.feed({**chat_chunk(None), "model": "", "id": ""})
    acc.feed(chat_chunk({"content": "Hi"}))
    assert ("gpt-4o-2024-08-06", "chatcmpl-01", "Hi") == (acc.model, acc.response_id, acc.text)


def test_openai_chat_completion_stream_helper_events() -> None:
    """ChatCompletionStream events (chunk + content.delta) count text once; finish_from agrees."""
    client = openai_client(reply(200, CHAT_STREAM))
    acc = StreamAccumulator()
    with client.chat.completions.stream(
        model="gpt-4o",
        messages=[{"role": "user", "content": "hi"}],
        stream_options={"include_usage": True},
    ) as stream:
        for event in stream:
            acc.feed(event)
        late = StreamAccumulator()
        late.finish_from(stream)
    assert ("Hi there", CHAT_USAGE) == (acc.text, acc.usage)
    assert (CHAT_USAGE, "gpt-4o-2024-08-06", "Hi there") == (late.usage, late.model, late.text)


def response_events() -> list[tuple[str | None, Any]]:
    item = {
        "type": "message",
        "id": "msg_01",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    created = {**RESPONSE, "status": "in_progress", "output": [], "usage": None}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": created},
        {"type": "response.in_progress", "response": created},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {
            "type": "response.content_part.added",
            "item_id": "msg_01",
            "output_index": 0,
            "content_index": 0,
            "part": part,
        },
        {
            "type": "response.output_text.delta",
            "item_id": "msg_01",
            "output_index": 0,
            "content_index": 0,
            "delta": "Hello from ",
            "logprobs": [],
        },
        {
            "type": "response.output_text.delta",
            "item_id": "msg_01",
            "output_index": 0,
            "content_index": 0,
            "delta": "responses",
            "logprobs": [],
        },
        {
            "type": "response.output_text.done",
            "item_id": "msg_01",
            "output_index": 0,
            "content_index": 0,
            "text": "Hello from responses",
            "logprobs": [],
        },
        {
            "type": "response.content_part.done",
            "item_id": "msg_01",
            "output_index": 0,
            "content_index": 0,
            "part": {**part, "text": "Hello from responses"},
        },
        {"type": "response.output_item.done", "output_index": 0, "item": RESPONSE["output"][0]},
        {"type": "response.completed", "response": RESPONSE},
    ]
    return [(e["type"], {**e, "sequence_number": i}) for i, e in enumerate(events)]


def test_openai_responses_stream_events() -> None:
    """Responses stream: output_text deltas, then usage/model/id/status from response.completed."""
    acc = StreamAccumulator()
    client = openai_client(reply(200, sse(response_events())))
    for event in client.responses.create(model="gpt-5", input="hi", stream=True):
        acc.feed(event)
    assert ("openai", "gpt-5-2025-08-07", "resp_01") == (acc.provider, acc.model, acc.response_id)
    assert ("Hello from responses", RESPONSE_USAGE, ("completed",)) == (
        acc.text,
        acc.usage,
        acc.finish_reasons,
    )


def test_openai_response_stream_helper_and_finish_from() -> None:
    """responses.stream() events accumulate the same; finish_from reads the completed response."""
    client = openai_client(reply(200, sse(response_events())))
    acc = StreamAccumulator()
    with client.responses.stream(model="gpt-5", input="hi") as stream:
        for event in stream:
            acc.feed(event)
        late = StreamAccumulator()
        late.finish_from(stream)
    assert ("Hello from responses", RESPONSE_USAGE) == (acc.text, acc.usage)
    assert (RESPONSE_USAGE, "resp_01") == (late.usage, late.response_id)


def google_chunks() -> list[dict[str, Any]]:
    return [
        {
            "candidates": [{"content": {"role": "model", "parts": [{"text": "Gemini "}]}}],
            "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 1},
            "modelVersion": "gemini-2.5-flash",
            "responseId": "gresp-01",
        },
        {
            "candidates": [
                {
                    "content": {"role": "model", "parts": [{"text": "says hi"}]},
                    "finishReason": "STOP",
                }
            ],
            "usageMetadata": GOOGLE_RESPONSE["usageMetadata"],
            "modelVersion": "gemini-2.5-flash",
            "responseId": "gresp-01",
        },
    ]


def test_google_stream_chunks_last_usage_wins() -> None:
    """Google chunks: text concatenates; the last (cumulative) usage_metadata wins."""
    client = google_client(reply(200, sse([(None, c) for c in google_chunks()])))
    acc = StreamAccumulator()
    for chunk in client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"):
        acc.feed(chunk)
    assert ("google", "gemini-2.5-flash", "gresp-01") == (acc.provider, acc.model, acc.response_id)
    assert ("Gemini says hi", GOOGLE_USAGE, ("STOP",)) == (acc.text, acc.usage, acc.finish_reasons)


@pytest.mark.parametrize(
    ("chunks", "text", "usage"),
    [
        (
            [
                json.loads(line[6:])
                for line in ANTHROPIC_STREAM.decode().splitlines()
                if line.startswith("data: ")
            ],
            ANTHROPIC_STREAM_TEXT,
            ANTHROPIC_STREAM_USAGE,
        ),
        (
            [
                json.loads(line[6:])
                for line in CHAT_STREAM.decode().splitlines()
                if line.startswith("data: {")
            ],
            "Hi there",
            CHAT_USAGE,
        ),
        ([data for _, data in response_events()], "Hello from responses", RESPONSE_USAGE),
        (google_chunks(), "Gemini says hi", GOOGLE_USAGE),
    ],
    ids=["anthropic", "chat", "responses", "google"],
)
def test_dict_chunks(chunks: list[dict[str, Any]], text: str, usage: Usage) -> None:
    """Decoded SSE data dicts accumulate like the SDK objects."""
    acc = StreamAccumulator()
    for chunk in chunks:
        acc.feed(chunk)
    assert (text, usage) == (acc.text, acc.usage)


def test_unknown_and_malformed_chunks_are_ignored() -> None:
    """Unknown chunks are counted but ignored; a malformed known one never raises."""
    acc = StreamAccumulator()
    for chunk in (
        1,
        None,
        object(),
        b"raw",
        {"unrelated": True},
        {"type": "message_start", "message": "junk"},
        "ok",
    ):
        acc.feed(chunk)
    assert ("ok", None, 7) == (acc.text, acc.usage, acc.chunks)


# --------------------------------------------------------------- classify


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (
            400,
            anthropic_error(
                400, "invalid_request_error", "prompt is too long: 250000 tokens > 200000 maximum"
            ),
            ErrorKind.CONTEXT_TOO_LONG,
        ),
        (
            400,
            anthropic_error(400, "invalid_request_error", "max_tokens: field required"),
            ErrorKind.BAD_REQUEST,
        ),
        (401, anthropic_error(401, "authentication_error", "invalid x-api-key"), ErrorKind.AUTH),
        (403, anthropic_error(403, "permission_error", "no access"), ErrorKind.AUTH),
        (404, anthropic_error(404, "not_found_error", "model: nope"), ErrorKind.NOT_FOUND),
        (408, anthropic_error(408, "timeout_error", "timed out"), ErrorKind.TIMEOUT),
        (409, anthropic_error(409, "invalid_request_error", "conflict"), ErrorKind.CONFLICT),
        (
            413,
            anthropic_error(413, "request_too_large", "Request exceeds the maximum size"),
            ErrorKind.CONTEXT_TOO_LONG,
        ),
        (
            422,
            anthropic_error(422, "invalid_request_error", "unprocessable"),
            ErrorKind.BAD_REQUEST,
        ),
        (429, anthropic_error(429, "rate_limit_error", "slow down"), ErrorKind.RATE_LIMITED),
        (500, anthropic_error(500, "api_error", "internal"), ErrorKind.SERVER),
        (503, anthropic_error(503, "api_error", "unavailable"), ErrorKind.SERVER),
        (529, anthropic_error(529, "overloaded_error", "Overloaded"), ErrorKind.OVERLOADED),
    ],
)
def test_anthropic_status_errors(status: int, body: dict[str, Any], kind: ErrorKind) -> None:
    """Each anthropic HTTP error the SDK raises maps to its kind."""
    exc = raised(lambda: create_message(anthropic_client(reply(status, body))))
    assert isinstance(exc, anthropic.APIStatusError)
    info = classify(exc)
    assert (kind, status, "anthropic") == (info.kind, info.status, info.provider)


def test_anthropic_rate_limit_headers_are_read() -> None:
    """A 429's retry-after and x-should-retry headers reach ErrorInfo."""
    headers = {"retry-after": "7", "x-should-retry": "true", "request-id": "req_1"}
    exc = raised(
        lambda: create_message(
            anthropic_client(reply(429, anthropic_error(429, "rate_limit_error", "slow"), headers))
        )
    )
    assert isinstance(exc, anthropic.RateLimitError)
    expected = ErrorInfo(ErrorKind.RATE_LIMITED, 429, 7.0, True, "anthropic", str(exc))
    assert expected == classify(exc)


def test_anthropic_spend_limit_is_rate_limited_with_note() -> None:
    """A 429 for a spend limit stays RATE_LIMITED, and the message says it is a spend limit."""
    body = anthropic_error(
        429,
        "rate_limit_error",
        "spend limit",
        details={"error_code": "enforced_spend_limit_reached"},
    )
    exc = raised(lambda: create_message(anthropic_client(reply(429, body))))
    assert isinstance(exc, anthropic.RateLimitError)
    info = classify(exc)
    assert ErrorKind.RATE_LIMITED == info.kind
    assert info.message.startswith("spend limit reached (enforced_spend_limit_reached)")


@pytest.mark.parametrize(
    ("etype", "kind"),
    [
        ("overloaded_error", ErrorKind.OVERLOADED),
        ("api_error", ErrorKind.SERVER),
        ("rate_limit_error", ErrorKind.RATE_LIMITED),
    ],
)
def test_anthropic_in_stream_error(etype: str, kind: ErrorKind) -> None:
    """An error event mid-stream (HTTP 200 APIStatusError) is classified by its body type."""
    body = sse(
        [
            (
                "message_start",
                {"type": "message_start", "message": {**ANTHROPIC_MESSAGE, "content": []}},
            ),
            ("error", {"type": "error", "error": {"type": etype, "message": "boom"}}),
        ]
    )
    exc = raised(lambda: create_message(anthropic_client(reply(200, body)), stream=True))
    assert isinstance(exc, anthropic.APIStatusError)
    assert (kind, 200) == (classify(exc).kind, classify(exc).status)


def test_anthropic_dropped_connection_is_connection() -> None:
    """A dropped connection (RemoteProtocolError) surfaces as APIConnectionError -> CONNECTION."""
    exc = raised(
        lambda: create_message(
            anthropic_client(fail_with(httpx.RemoteProtocolError("peer closed")))
        )
    )
    assert type(exc) is anthropic.APIConnectionError
    assert ErrorKind.CONNECTION == classify(exc).kind


def test_anthropic_timeout_is_timeout() -> None:
    """A read timeout surfaces as APITimeoutError -> TIMEOUT."""
    exc = raised(lambda: create_message(anthropic_client(fail_with(httpx.ReadTimeout("slow")))))
    assert isinstance(exc, anthropic.APITimeoutError)
    assert ErrorKind.TIMEOUT == classify(exc).kind


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (
            429,
            openai_error("Rate limit reached", "requests", "rate_limit_exceeded"),
            ErrorKind.RATE_LIMITED,
        ),
        (500, openai_error("The server had an error", "server_error", None), ErrorKind.SERVER),
        (503, openai_error("Service unavailable", "server_error", None), ErrorKind.SERVER),
        (
            400,
            openai_error(
                "This model's maximum context length is 128000 tokens.",
                "invalid_request_error",
                "context_length_exceeded",
            ),
            ErrorKind.CONTEXT_TOO_LONG,
        ),
        (
            400,
            openai_error("The response was filtered", "invalid_request_error", "content_filter"),
            ErrorKind.CONTENT_FILTERED,
        ),
        (
            400,
            openai_error("Invalid 'messages'", "invalid_request_error", None),
            ErrorKind.BAD_REQUEST,
        ),
        (
            401,
            openai_error("Incorrect API key", "invalid_request_error", "invalid_api_key"),
            ErrorKind.AUTH,
        ),
        (
            404,
            openai_error("model not found", "invalid_request_error", "model_not_found"),
            ErrorKind.NOT_FOUND,
        ),
        (409, openai_error("conflict", "invalid_request_error", None), ErrorKind.CONFLICT),
    ],
)
def test_openai_status_errors(status: int, body: dict[str, Any], kind: ErrorKind) -> None:
    """Each openai HTTP error the SDK raises maps to its kind."""
    exc = raised(lambda: create_chat(openai_client(reply(status, body))))
    assert isinstance(exc, openai.APIStatusError)
    info = classify(exc)
    assert (kind, status, "openai") == (info.kind, info.status, info.provider)


def test_openai_rate_limit_reset_headers_are_read() -> None:
    """An openai 429 with only x-ratelimit reset headers gets its wait from the exhausted limit."""
    headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    exc = raised(
        lambda: create_chat(
            openai_client(
                reply(429, openai_error("slow", "requests", "rate_limit_exceeded"), headers)
            )
        )
    )
    assert 1.0 == classify(exc).retry_after


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (
            {"message": "The server had an error", "type": "server_error", "code": None},
            ErrorKind.SERVER,
        ),
        (
            {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"},
            ErrorKind.RATE_LIMITED,
        ),
    ],
)
def test_openai_in_stream_error(error: dict[str, Any], kind: ErrorKind) -> None:
    """An error inside a chat stream (bare APIError, no status) is classified by its body."""
    body = sse([(None, chat_chunk({"content": "Hi"})), (None, {"error": error})])
    exc = raised(lambda: create_chat(openai_client(reply(200, body)), stream=True))
    assert type(exc) is openai.APIError
    assert (kind, None) == (classify(exc).kind, classify(exc).status)


def test_openai_content_filter_finish_reason_error() -> None:
    """parse() raising ContentFilterFinishReasonError is CONTENT_FILTERED."""

    class Answer(pydantic.BaseModel):
        answer: int

    body = json.loads(json.dumps(CHAT_COMPLETION))
    body["choices"][0]["finish_reason"] = "content_filter"
    client = openai_client(reply(200, body))
    exc = raised(
        lambda: client.chat.completions.parse(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], response_format=Answer
        )
    )
    assert isinstance(exc, openai.ContentFilterFinishReasonError)
    assert ErrorKind.CONTENT_FILTERED == classify(exc).kind


@pytest.mark.parametrize(
    ("transport_error", "kind"),
    [
        (httpx.ConnectError("refused"), ErrorKind.CONNECTION),
        (httpx.ReadTimeout("slow"), ErrorKind.TIMEOUT),
    ],
)
def test_openai_connection_and_timeout(transport_error: Exception, kind: ErrorKind) -> None:
    """The openai APIConnectionError / APITimeoutError map to CONNECTION / TIMEOUT."""
    exc = raised(lambda: create_chat(openai_client(fail_with(transport_error))))
    assert isinstance(exc, openai.APIConnectionError)
    assert kind == classify(exc).kind


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (
            429,
            {
                "error": {
                    "code": 429,
                    "message": "Resource exhausted",
                    "status": "RESOURCE_EXHAUSTED",
                }
            },
            ErrorKind.RATE_LIMITED,
        ),
        (
            503,
            {"error": {"code": 503, "message": "The model is overloaded", "status": "UNAVAILABLE"}},
            ErrorKind.SERVER,
        ),
        (
            400,
            {
                "error": {
                    "code": 400,
                    "message": "The input token count (2000000) exceeds the maximum number of tokens allowed (1048576).",
                    "status": "INVALID_ARGUMENT",
                }
            },
            ErrorKind.CONTEXT_TOO_LONG,
        ),
        (
            403,
            {"error": {"code": 403, "message": "denied", "status": "PERMISSION_DENIED"}},
            ErrorKind.AUTH,
        ),
    ],
)
def test_google_errors(status: int, body: dict[str, Any], kind: ErrorKind) -> None:
    """google-genai ClientError / ServerError map by HTTP code and message."""
    client = google_client(reply(status, body, {"retry-after": "3"}))
    exc = raised(lambda: client.models.generate_content(model="gemini-2.5-flash", contents="hi"))
    assert isinstance(exc, genai.errors.APIError)
    assert isinstance(exc, genai.errors.ClientError if status < 500 else genai.errors.ServerError)
    info = classify(exc)
    assert (kind, status, "google", 3.0) == (
        info.kind,
        info.status,
        info.provider,
        info.retry_after,
    )


def test_httpx2_status_error() -> None:
    """httpx.HTTPStatusError (raise_for_status) is classified by status, with headers."""
    request = httpx.Request("POST", "http://x.test")
    response = httpx.Response(429, headers={"Retry-After": "2"}, request=request)
    exc = raised(response.raise_for_status)
    assert isinstance(exc, httpx.HTTPStatusError)
    assert ErrorInfo(ErrorKind.RATE_LIMITED, 429, 2.0, None, None, str(exc)) == classify(exc)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ConnectError("refused"), ErrorKind.CONNECTION),
        (httpx.RemoteProtocolError("closed"), ErrorKind.CONNECTION),
        (httpx.ReadTimeout("slow"), ErrorKind.TIMEOUT),
        (httpx.PoolTimeout("pool"), ErrorKind.TIMEOUT),
        (TimeoutError(), ErrorKind.TIMEOUT),
        (ConnectionResetError(), ErrorKind.CONNECTION),
        (BrokenPipeError(), ErrorKind.CONNECTION),
        (ValueError("nope"), ErrorKind.UNKNOWN),
        (KeyboardInterrupt(), ErrorKind.UNKNOWN),
    ],
)
def test_transport_and_builtin_errors(exc: BaseException, kind: ErrorKind) -> None:
    """httpx2 transport errors and builtin timeouts / connection errors map by class."""
    assert kind == classify(exc).kind


class StatusError(Exception):
    """An exception from some other HTTP library: just a status and headers."""

    def __init__(self, status_code: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.headers = headers or {}


class _Resp:
    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.headers = headers


class ResponseError(Exception):
    """An exception carrying the status on a `.response` object."""

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        super().__init__("failed")
        self.response = _Resp(status, headers)


@pytest.mark.parametrize(
    ("exc", "kind", "retry_after"),
    [
        (StatusError(503, {"Retry-After": "4"}), ErrorKind.SERVER, 4.0),
        (StatusError(529), ErrorKind.OVERLOADED, None),
        (StatusError(408), ErrorKind.TIMEOUT, None),
        (StatusError(401), ErrorKind.AUTH, None),
        (ResponseError(429, {"RETRY-AFTER-MS": "250"}), ErrorKind.RATE_LIMITED, 0.25),
    ],
)
def test_plain_objects_with_status(
    exc: Exception, kind: ErrorKind, retry_after: float | None
) -> None:
    """Any exception carrying .status_code / .status (or .response.status) is classified by it."""
    info = classify(exc)
    assert (kind, retry_after) == (info.kind, info.retry_after)


@pytest.mark.parametrize(
    "exc",
    [BudgetExceeded("over"), GuardTimeout("late"), CircuitOpen("open"), LLMGuardError("x")],
)
def test_llmguard_errors_are_guard(exc: LLMGuardError) -> None:
    """Errors llmguard raises itself are GUARD, even GuardTimeout (also a TimeoutError)."""
    assert ErrorKind.GUARD == classify(exc).kind


def test_classify_never_raises() -> None:
    """An exception whose attributes and str() blow up still classifies (as UNKNOWN)."""

    class Nasty(Exception):
        @property
        def status_code(self) -> int:
            raise RuntimeError("no")

        def __str__(self) -> str:
            raise RuntimeError("no str either")

    info = classify(Nasty())
    assert (ErrorKind.UNKNOWN, "Nasty") == (info.kind, info.message)


# ------------------------------------------------------------- retry_after

NOW = 1_700_000_000.0


def _iso(seconds_from_now: float) -> str:
    return datetime.fromtimestamp(NOW + seconds_from_now, UTC).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": "0"}, 0.0),
        (
            {"retry-after": format_datetime(datetime.fromtimestamp(NOW + 30, UTC), usegmt=True)},
            30.0,
        ),
        ({"retry-after": format_datetime(datetime.fromtimestamp(NOW - 30, UTC), usegmt=True)}, 0.0),
        ({"retry-after": time.asctime(time.gmtime(NOW + 30))}, 30.0),
        ({"retry-after-ms": "150"}, 0.15),
        ({"Retry-After-Ms": "150"}, 0.15),
        (
            {
                "anthropic-ratelimit-requests-remaining": "0",
                "anthropic-ratelimit-requests-reset": _iso(12),
            },
            12.0,
        ),
        (
            {
                "anthropic-ratelimit-tokens-remaining": "5",
                "anthropic-ratelimit-tokens-reset": _iso(12),
            },
            None,
        ),
        (
            {
                "anthropic-ratelimit-input-tokens-remaining": "0",
                "anthropic-ratelimit-input-tokens-reset": _iso(5),
                "anthropic-ratelimit-output-tokens-remaining": "0",
                "anthropic-ratelimit-output-tokens-reset": _iso(9),
            },
            9.0,
        ),
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}, 360.0),
        ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1s"}, 1.0),
        ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "20ms"}, 0.02),
        ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1h2m3.5s"}, 3723.5),
        ({"x-ratelimit-remaining-tokens": "10", "x-ratelimit-reset-tokens": "1s"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-5"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after-ms": "garbage", "retry-after": "3"}, 3.0),
        ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6 minutes"}, None),
        (
            {
                "anthropic-ratelimit-requests-remaining": "0",
                "anthropic-ratelimit-requests-reset": "tomorrow",
            },
            None,
        ),
        ({}, None),
        (None, None),
    ],
)
def test_retry_after_header_forms(headers: dict[str, str] | None, expected: float | None) -> None:
    """Each header form parses to seconds; garbage and unexhausted limits are ignored."""
    result = providers.retry_after(headers, now=NOW)
    assert expected == (None if result is None else pytest.approx(result))


def test_retry_after_precedence() -> None:
    """retry-after-ms beats retry-after, which beats the reset headers."""
    reset = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "9s"}
    assert 0.5 == providers.retry_after(
        {"retry-after-ms": "500", "retry-after": "3", **reset}, now=NOW
    )
    assert 3.0 == providers.retry_after({"retry-after": "3", **reset}, now=NOW)
    assert 9.0 == providers.retry_after(reset, now=NOW)


def test_retry_after_accepts_httpx2_headers() -> None:
    """httpx.Headers (case-insensitive, possibly repeated names) are read."""
    assert 2.0 == providers.retry_after(httpx.Headers({"Retry-After": "2"}), now=NOW)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-should-retry": "true"}, True),
        ({"X-Should-Retry": "FALSE"}, False),
        ({"x-should-retry": "maybe"}, None),
        ({}, None),
    ],
)
def test_should_retry_header(headers: dict[str, str], expected: bool | None) -> None:
    """x-should-retry true/false is read case-insensitively; anything else is None."""
    assert expected == providers.should_retry_header(headers)


# ------------------------------------------------------------ misc helpers


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100), ("\u00e9", 1), ("\u4e2d\u6587", 2), ("\u4e2d" * 4, 3)],
)
def test_estimate_tokens_is_ceil_utf8_bytes_over_4(text: str, expected: int) -> None:
    """estimate_tokens is ceil(UTF-8 bytes / 4): a CJK character (3 bytes) counts 3/4 of a token."""
    assert expected == providers.estimate_tokens(text)


def test_provider_of() -> None:
    """provider_of names the SDK of results, exceptions, clients and bound methods."""
    client = anthropic_client(reply(200, ANTHROPIC_MESSAGE))
    message = create_message(client)
    oa = openai_client(reply(200, CHAT_COMPLETION))
    got = [
        providers.provider_of(message),
        providers.provider_of(client.messages.create),
        providers.provider_of(anthropic.RateLimitError),
        providers.provider_of(oa),
        providers.provider_of(gtypes.GenerateContentResponse.model_validate(GOOGLE_RESPONSE)),
        providers.provider_of({"model": "x"}),
        providers.provider_of("text"),
    ]
    assert ["anthropic", "anthropic", "anthropic", "openai", "google", None, None] == got


def _run(code: str) -> str:
    result = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert 0 == result.returncode, result.stderr
    return result.stdout.strip()


def test_import_does_not_import_sdks() -> None:
    """Importing llmguard.providers (and llmguard.prices) imports no SDK."""
    out = _run(
        """
        import sys
        import llmguard.providers, llmguard.prices
        print(sorted(m for m in ("anthropic", "openai", "google.genai", "genai_prices") if m in sys.modules))
        """
    )
    assert "[]" == out


def test_works_without_sdks_installed() -> None:
    """With anthropic/openai/google unimportable, everything still works on dicts and builtins."""
    out = _run(
        """
        import sys
        for name in ("anthropic", "openai", "google", "google.genai"):
            sys.modules[name] = None
        from llmguard import providers
        acc = providers.StreamAccumulator()
        acc.feed({"type": "message_start", "message": {"model": "m", "usage": {"input_tokens": 3, "output_tokens": 1}}})
        facts = providers.observe_result({"object": "chat.completion", "model": "gpt-4o", "choices": [],
                                          "usage": {"prompt_tokens": 2, "completion_tokens": 1}})
        print(providers.classify(TimeoutError()).kind, acc.usage.input_tokens, facts.usage.input_tokens,
              providers.observe_result("x"))
        """
    )
    assert "timeout 3 2 None" == out


def test_result_facts_are_independent_of_sdk_objects() -> None:
    """Facts are plain values: mutating the usage does not touch the SDK object."""
    message = create_message(anthropic_client(reply(200, ANTHROPIC_MESSAGE)))
    usage = providers.usage_from(message)
    assert usage is not None
    usage.input_tokens = 0
    assert 10 == message.usage.input_tokens


def test_a_responses_stream_says_it_failed_with_an_error_or_response_failed_event() -> None:
    """`error` and `response.failed` events leave the accumulator's `failure` set (the SDK raises on neither)."""
    errored, failed, fine = StreamAccumulator(), StreamAccumulator(), StreamAccumulator()
    errored.feed({"type": "response.output_text.delta", "delta": "par"})
    errored.feed({"type": "error", "code": "server_error", "message": "the model crashed"})
    failed.feed({
        "type": "response.failed",
        "response": {"id": "r1", "model": "gpt-5", "status": "failed", "error": {"code": "server_error", "message": "boom"}},
    })
    fine.feed({"type": "response.completed", "response": {"id": "r2", "model": "gpt-5", "status": "completed"}})

    assert ("the model crashed", "boom", None) == (errored.failure, failed.failure, fine.failure)
    assert "par" == errored.text
