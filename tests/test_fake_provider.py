"""The fake provider, driven by the real anthropic, openai and google-genai SDKs over HTTP."""


from __future__ import annotations

import asyncio
import json
import socket
import statistics
import threading
import time

from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anthropic
import openai
import pytest

from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from sdk_http import MID_STREAM_CUT, httpx

from llmguard._fake_provider import DEFAULT_REPLY, FakeProvider, RecordedRequest, Step
from llmguard.providers import ErrorKind, classify


API_KEY = "test-key"
MESSAGES: list[Any] = [{"role": "user", "content": "one two three four"}]
CHAT: list[Any] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "one two three four"},
]
SCRIPTED_USAGE = {
    "input_tokens": 100,
    "output_tokens": 20,
    "cache_read_tokens": 30,
    "cache_write_tokens": 10,
    "reasoning_tokens": 5,
}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


@pytest.fixture
def fp(server: FakeProvider) -> FakeProvider:
    server.reset()
    return server


def anthropic_client(fp: FakeProvider, **options: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=fp.anthropic_base_url, api_key=API_KEY, max_retries=0, **options
    )


def async_anthropic_client(fp: FakeProvider, **options: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=fp.anthropic_base_url, api_key=API_KEY, max_retries=0, **options
    )


def openai_client(fp: FakeProvider, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=fp.openai_base_url, api_key=API_KEY, max_retries=0, **options)


def async_openai_client(fp: FakeProvider, **options: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=fp.openai_base_url, api_key=API_KEY, max_retries=0, **options
    )


def google_client(fp: FakeProvider) -> genai.Client:
    return genai.Client(
        api_key="x", http_options=genai_types.HttpOptions(base_url=fp.google_base_url)
    )


def read_anthropic_text(stream: Iterable[Any], texts: list[str]) -> None:
    """Append an anthropic stream's text deltas to *texts*, which survive the stream failing."""
    for event in stream:
        if event.type == "content_block_delta":
            texts.append(event.delta.text)


def read_chat_text(stream: Iterable[Any], texts: list[str]) -> None:
    """Append a chat stream's content deltas to *texts*, which survive the stream failing."""
    texts.extend(chunk.choices[0].delta.content or "" for chunk in stream)


def create_message(client: anthropic.Anthropic, **options: Any) -> Any:
    return client.messages.create(model="claude-test", max_tokens=50, messages=MESSAGES, **options)


# --------------------------------------------------------------------------- anthropic


def test_anthropic_message_is_schema_complete_and_counts_words() -> None:
    """A plain Message passes strict validation and its usage is the request's word count."""
    with FakeProvider() as fp, anthropic_client(fp, _strict_response_validation=True) as client:
        message = client.messages.create(
            model="claude-test", max_tokens=50, system="be brief", messages=MESSAGES
        )
    assert DEFAULT_REPLY == message.content[0].text  # type: ignore[union-attr]
    assert "claude-test" == message.model
    assert "end_turn" == message.stop_reason
    assert (6, 5, 0, 0) == (
        message.usage.input_tokens,
        message.usage.output_tokens,
        message.usage.cache_read_input_tokens,
        message.usage.cache_creation_input_tokens,
    )


def test_anthropic_usage_is_scripted_with_uncached_input(fp: FakeProvider) -> None:
    """Scripted usage maps to anthropic fields, input_tokens being the uncached part."""
    fp.script(Step(reply="custom reply", model="claude-other", usage=SCRIPTED_USAGE))
    with anthropic_client(fp, _strict_response_validation=True) as client:
        message = create_message(client)
    usage = message.usage
    assert "custom reply" == message.content[0].text
    assert "claude-other" == message.model
    assert (60, 20, 30, 10) == (
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_input_tokens,
        usage.cache_creation_input_tokens,
    )
    details: Any = usage.output_tokens_details  # type: ignore[attr-defined,unused-ignore]
    # anthropic < 1.x keeps the field it does not declare as a plain dict
    assert 5 == (details["thinking_tokens"] if isinstance(details, dict) else details.thinking_tokens)


def test_anthropic_stream_text_equals_reply_and_usage_arrives_in_message_delta(
    fp: FakeProvider,
) -> None:
    """A raw stream's deltas join to the reply; message_start says 1 output token, message_delta the count."""
    reply = "  Spaced\tout\nreply  with  gaps "
    fp.script(Step(reply=reply, usage=SCRIPTED_USAGE))
    with anthropic_client(fp) as client:
        events = list(create_message(client, stream=True))
    kinds = [event.type for event in events]
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    start, delta = events[0], events[-2]
    assert reply == text
    assert ["message_start", "content_block_start"] == kinds[:2]
    assert ["content_block_stop", "message_delta", "message_stop"] == kinds[-3:]
    assert (60, 1, 30, 10) == (
        start.message.usage.input_tokens,
        start.message.usage.output_tokens,
        start.message.usage.cache_read_input_tokens,
        start.message.usage.cache_creation_input_tokens,
    )
    assert 20 == delta.usage.output_tokens


def test_anthropic_stream_helper_accumulates_final_message(fp: FakeProvider) -> None:
    """messages.stream() yields the reply as text and a final message with the scripted usage."""
    fp.script(Step(reply="streamed via helper", usage={"input_tokens": 9, "output_tokens": 3}))
    with (
        anthropic_client(fp) as client,
        client.messages.stream(model="claude-test", max_tokens=50, messages=MESSAGES) as stream,
    ):
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "streamed via helper" == text
    assert (9, 3) == (final.usage.input_tokens, final.usage.output_tokens)


def test_async_anthropic_create_and_stream(fp: FakeProvider) -> None:
    """The async anthropic client gets the same message and stream as the sync one."""
    fp.script(Step(reply="async one"), Step(reply="async two words"))

    async def main() -> tuple[str, str, int]:
        async with async_anthropic_client(fp, _strict_response_validation=True) as client:
            message = await client.messages.create(
                model="claude-test", max_tokens=50, messages=MESSAGES
            )
            stream = await client.messages.create(
                model="claude-test", max_tokens=50, messages=MESSAGES, stream=True
            )
            parts, output = [], 0
            async for event in stream:
                if event.type == "content_block_delta":
                    parts.append(event.delta.text)  # type: ignore[union-attr]
                if event.type == "message_delta":
                    output = event.usage.output_tokens
            return message.content[0].text, "".join(parts), output  # type: ignore[union-attr]

    assert ("async one", "async two words", 3) == asyncio.run(main())


def test_anthropic_count_tokens_returns_word_count(fp: FakeProvider) -> None:
    """count_tokens answers with the prompt's word count, or the scripted input_tokens."""
    fp.script(Step(), Step(usage={"input_tokens": 1234}))
    with anthropic_client(fp, _strict_response_validation=True) as client:
        counts = [
            client.messages.count_tokens(model="claude-test", messages=MESSAGES).input_tokens
            for _ in range(2)
        ]
    assert [4, 1234] == counts
    assert ["/v1/messages/count_tokens"] * 2 == [r.path for r in fp.requests]


@pytest.mark.parametrize(
    ("status", "names"),
    [
        (400, ("BadRequestError",)),
        (401, ("AuthenticationError",)),
        (403, ("PermissionDeniedError",)),
        (404, ("NotFoundError",)),
        (429, ("RateLimitError",)),
        (500, ("InternalServerError",)),
        (503, ("ServiceUnavailableError", "InternalServerError")),  # anthropic < 1: the latter
        (529, ("OverloadedError",)),
    ],
)
def test_anthropic_error_statuses_raise_the_sdk_exception(
    fp: FakeProvider, status: int, names: tuple[str, ...]
) -> None:
    """Each scripted status raises the anthropic exception class the SDK maps it to."""
    fp.script(Step(status=status))
    with anthropic_client(fp) as client, pytest.raises(anthropic.APIStatusError) as caught:
        create_message(client)
    assert type(caught.value).__name__ in names
    assert status == caught.value.status_code
    assert caught.value.request_id is not None
    assert caught.value.request_id.startswith("req_fake_")


def test_anthropic_rate_limit_error_carries_headers_and_typed_body(fp: FakeProvider) -> None:
    """A 429 exposes retry-after, request-id and anthropic-ratelimit-* headers and a typed body."""
    fp.script(Step(status=429, headers={"retry-after": "2", "Retry-After-Ms": "2000"}))
    with anthropic_client(fp) as client, pytest.raises(anthropic.RateLimitError) as caught:
        create_message(client)
    headers = caught.value.response.headers
    assert "2" == headers["retry-after"]
    assert "2000" == headers["retry-after-ms"]
    assert headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert "0" == headers["anthropic-ratelimit-requests-remaining"]
    assert "rate_limit_error" == caught.value.body["error"]["type"]  # type: ignore[index]
    assert "error" == caught.value.body["type"]  # type: ignore[index]


def test_anthropic_error_fields_can_be_overridden(fp: FakeProvider) -> None:
    """error_message and error_code reach the SDK; the code selects anthropic's code-specific subclass."""
    too_long = "prompt is too long: 210000 tokens > 200000 maximum"
    fp.script(
        Step(status=400, error_message=too_long),
        Step(status=429, error_code="contract_spend_limit_reached"),
    )
    with anthropic_client(fp) as client:
        with pytest.raises(anthropic.BadRequestError) as bad:
            create_message(client)
        # anthropic < 2 has no code-specific subclass: the code is in the body.
        spent_class = getattr(anthropic, "ContractSpendLimitReachedError", anthropic.RateLimitError)
        with pytest.raises(spent_class) as spent:
            create_message(client)
    assert too_long == bad.value.body["error"]["message"]  # type: ignore[index]
    assert "invalid_request_error" == bad.value.body["error"]["type"]  # type: ignore[index]
    assert {"error_code": "contract_spend_limit_reached"} == spent.value.body["error"]["details"]  # type: ignore[index]
    assert "spend limit reached (contract_spend_limit_reached)" in classify(spent.value).message


def test_anthropic_in_stream_error_is_raised_while_iterating(fp: FakeProvider) -> None:
    """error_after sends that many deltas, then an overloaded error the SDK raises as APIStatusError."""
    fp.script(Step(reply="one two three four", error_after=2))
    texts: list[str] = []
    with anthropic_client(fp) as client, pytest.raises(anthropic.APIStatusError) as caught:
        read_anthropic_text(create_message(client, stream=True), texts)
    assert ["one ", "two "] == texts
    assert 200 == caught.value.status_code
    assert "overloaded_error" == caught.value.body["error"]["type"]  # type: ignore[index]


def test_anthropic_drop_after_cuts_the_stream(fp: FakeProvider) -> None:
    """drop_after closes the socket mid-body; the stream ends in an error llmguard calls a connection error."""
    fp.script(Step(reply="one two three four", drop_after=1))
    texts: list[str] = []
    # anthropic < 2.17 lets the transport's RemoteProtocolError through; 2.17 wraps it in
    # APIConnectionError. Either is a dropped connection to llmguard.
    with anthropic_client(fp) as client, pytest.raises(MID_STREAM_CUT) as caught:
        read_anthropic_text(create_message(client, stream=True), texts)
    assert ["one "] == texts
    assert ErrorKind.CONNECTION == classify(caught.value).kind


def test_stall_after_pauses_the_stream_between_chunks(fp: FakeProvider) -> None:
    """stall_after=2 puts the stall between the second and third delta, and nowhere else."""
    fp.script(Step(reply="a b c d", stall_after=2, stall=0.3))
    arrivals: list[float] = []
    with anthropic_client(fp) as client:
        for event in create_message(client, stream=True):
            if event.type == "content_block_delta":
                arrivals.append(time.monotonic())
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:], strict=False)]
    assert 4 == len(arrivals)
    assert gaps[1] >= 0.25
    assert max(gaps[0], gaps[2]) < 0.2


def test_stream_delay_spaces_every_chunk(fp: FakeProvider) -> None:
    """stream_delay waits before each delta, so n deltas take at least n delays."""
    fp.script(Step(reply="a b c", stream_delay=0.05))
    started = time.monotonic()
    with anthropic_client(fp) as client:
        events = list(create_message(client, stream=True))
    assert 3 == sum(event.type == "content_block_delta" for event in events)
    assert time.monotonic() - started >= 0.15


def test_anthropic_omit_usage_sends_no_usage(fp: FakeProvider) -> None:
    """omit_usage leaves usage out of the message and of the stream's start and delta events."""
    fp.script(Step(omit_usage=True), Step(omit_usage=True))
    with anthropic_client(fp) as client:
        message = create_message(client)
        events = list(create_message(client, stream=True))
    assert message.usage is None
    assert events[0].message.usage is None
    assert events[-2].usage is None


# --------------------------------------------------------------------------- openai chat


def test_openai_chat_completion_is_schema_complete_with_scripted_usage(fp: FakeProvider) -> None:
    """A chat completion passes strict validation; prompt_tokens is the total incl. cached."""
    fp.script(Step(reply="chat reply", usage=SCRIPTED_USAGE))
    with openai_client(fp, _strict_response_validation=True) as client:
        completion = client.chat.completions.create(model="gpt-test", messages=CHAT)
    usage = completion.usage
    assert usage is not None
    assert "chat reply" == completion.choices[0].message.content
    assert "gpt-test" == completion.model
    assert (100, 20, 120) == (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)
    assert usage.prompt_tokens_details is not None
    assert usage.completion_tokens_details is not None
    assert 30 == usage.prompt_tokens_details.cached_tokens
    assert 10 == usage.prompt_tokens_details.cache_write_tokens
    assert 5 == usage.completion_tokens_details.reasoning_tokens


def test_openai_chat_default_usage_counts_words(fp: FakeProvider) -> None:
    """Without a script, prompt_tokens counts the words of every message and completion the reply's."""
    with openai_client(fp, _strict_response_validation=True) as client:
        completion = client.chat.completions.create(model="gpt-test", messages=CHAT)
    assert completion.usage is not None
    assert (6, 5) == (completion.usage.prompt_tokens, completion.usage.completion_tokens)


def test_openai_chat_stream_with_include_usage_ends_with_a_usage_chunk(fp: FakeProvider) -> None:
    """include_usage gives every chunk usage=None and a last chunk with no choices and the usage."""
    fp.script(Step(reply="streamed chat reply", usage=SCRIPTED_USAGE))
    with openai_client(fp) as client:
        chunks = list(
            client.chat.completions.create(
                model="gpt-test",
                messages=CHAT,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    last = chunks[-1]
    assert "streamed chat reply" == text
    assert [] == last.choices
    assert last.usage is not None
    assert (100, 20) == (last.usage.prompt_tokens, last.usage.completion_tokens)
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert "stop" == chunks[-2].choices[0].finish_reason


def test_openai_chat_stream_without_include_usage_has_no_usage(fp: FakeProvider) -> None:
    """Without include_usage no chunk carries usage and none has empty choices."""
    with openai_client(fp) as client:
        chunks = list(client.chat.completions.create(model="gpt-test", messages=CHAT, stream=True))
    assert DEFAULT_REPLY == "".join(c.choices[0].delta.content or "" for c in chunks)
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)


def test_openai_chat_omit_usage_drops_the_usage_chunk(fp: FakeProvider) -> None:
    """omit_usage leaves out the include_usage chunk and the completion's usage."""
    fp.script(Step(omit_usage=True), Step(omit_usage=True))
    with openai_client(fp) as client:
        completion = client.chat.completions.create(model="gpt-test", messages=CHAT)
        chunks = list(
            client.chat.completions.create(
                model="gpt-test",
                messages=CHAT,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert completion.usage is None
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)


def test_async_openai_chat_create_and_stream(fp: FakeProvider) -> None:
    """The async openai client gets the completion and the streamed text with usage."""
    fp.script(Step(reply="async chat"), Step(reply="async stream", usage={"output_tokens": 7}))

    async def main() -> tuple[str | None, str, int | None]:
        async with async_openai_client(fp, _strict_response_validation=True) as client:
            completion = await client.chat.completions.create(model="gpt-test", messages=CHAT)
            stream = await client.chat.completions.create(
                model="gpt-test",
                messages=CHAT,
                stream=True,
                stream_options={"include_usage": True},
            )
            parts, output = [], None
            async for chunk in stream:
                if chunk.choices:
                    parts.append(chunk.choices[0].delta.content or "")
                if chunk.usage is not None:
                    output = chunk.usage.completion_tokens
            return completion.choices[0].message.content, "".join(parts), output

    assert ("async chat", "async stream", 7) == asyncio.run(main())


@pytest.mark.parametrize(
    ("status", "exception"),
    [(429, openai.RateLimitError), (500, openai.InternalServerError)],
)
def test_openai_error_statuses_raise_the_sdk_exception(
    fp: FakeProvider, status: int, exception: type[openai.APIStatusError]
) -> None:
    """429 and 500 raise openai's classes, with the request id and retry-after visible."""
    fp.script(Step(status=status, headers={"retry-after": "3"}))
    with openai_client(fp) as client, pytest.raises(exception) as caught:
        client.chat.completions.create(model="gpt-test", messages=CHAT)
    assert status == caught.value.status_code
    assert "3" == caught.value.response.headers["retry-after"]
    assert caught.value.request_id is not None
    assert caught.value.request_id.startswith("req_fake_")


def test_openai_rate_limit_error_has_code_and_ratelimit_headers(fp: FakeProvider) -> None:
    """An openai 429 has code rate_limit_exceeded and x-ratelimit-* headers."""
    fp.script(Step(status=429))
    with openai_client(fp) as client, pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-test", messages=CHAT)
    headers = caught.value.response.headers
    assert "rate_limit_exceeded" == caught.value.code
    assert "1s" == headers["x-ratelimit-reset-requests"]
    assert "0" == headers["x-ratelimit-remaining-requests"]


def test_openai_error_code_and_message_can_be_overridden(fp: FakeProvider) -> None:
    """error_code and error_message reach openai's BadRequestError (context length, content filter)."""
    fp.script(
        Step(status=400, error_code="context_length_exceeded", error_message="too long"),
        Step(status=400, error_code="content_filter"),
    )
    seen: list[tuple[str | None, str]] = []
    with openai_client(fp) as client:
        for _ in range(2):
            with pytest.raises(openai.BadRequestError) as caught:
                client.chat.completions.create(model="gpt-test", messages=CHAT)
            seen.append((caught.value.code, caught.value.body["message"]))  # type: ignore[index]
    assert ("context_length_exceeded", "too long") == seen[0]
    assert "content_filter" == seen[1][0]


def test_openai_chat_in_stream_error_is_raised_while_iterating(fp: FakeProvider) -> None:
    """error_after in a chat stream makes the SDK raise openai.APIError mid-iteration."""
    fp.script(Step(reply="one two three", error_after=1, error_message="boom"))
    texts: list[str] = []
    with openai_client(fp) as client, pytest.raises(openai.APIError) as caught:
        read_chat_text(
            client.chat.completions.create(model="gpt-test", messages=CHAT, stream=True), texts
        )
    assert ["", "one "] == texts
    assert "boom" == caught.value.message
    assert not isinstance(caught.value, openai.APIStatusError)


def test_openai_drop_after_raises_api_connection_error(fp: FakeProvider) -> None:
    """drop_after cuts a chat stream: a transport error, classified as a connection error."""
    fp.script(Step(reply="one two three", drop_after=2))
    texts: list[str] = []
    with openai_client(fp) as client, pytest.raises(MID_STREAM_CUT) as caught:
        read_chat_text(
            client.chat.completions.create(model="gpt-test", messages=CHAT, stream=True), texts
        )
    assert ["", "one ", "two "] == texts
    assert ErrorKind.CONNECTION == classify(caught.value).kind


# --------------------------------------------------------------------------- openai responses


def test_openai_response_is_schema_complete_with_scripted_usage(fp: FakeProvider) -> None:
    """A Responses API response passes strict validation and maps the scripted usage."""
    fp.script(Step(reply="responses reply", usage=SCRIPTED_USAGE))
    with openai_client(fp, _strict_response_validation=True) as client:
        response = client.responses.create(model="gpt-test", input="one two", instructions="hi")
    usage = response.usage
    assert usage is not None
    assert "responses reply" == response.output_text
    assert "hi" == response.instructions
    assert (100, 20, 120) == (usage.input_tokens, usage.output_tokens, usage.total_tokens)
    assert 30 == usage.input_tokens_details.cached_tokens
    assert 10 == usage.input_tokens_details.cache_write_tokens
    assert 5 == usage.output_tokens_details.reasoning_tokens


def test_openai_response_default_usage_counts_instructions_and_input(fp: FakeProvider) -> None:
    """Default Responses usage counts the words of instructions and input items."""
    items: Any = [{"role": "user", "content": [{"type": "input_text", "text": "a b c"}]}]
    with openai_client(fp, _strict_response_validation=True) as client:
        response = client.responses.create(model="gpt-test", input=items, instructions="x y")
    assert response.usage is not None
    assert (5, 5) == (response.usage.input_tokens, response.usage.output_tokens)


def test_openai_responses_stream_yields_text_and_completed_usage(fp: FakeProvider) -> None:
    """A Responses stream sends numbered events, the reply as deltas and usage on completed."""
    fp.script(Step(reply="response stream", usage=SCRIPTED_USAGE))
    with openai_client(fp) as client:
        events = list(client.responses.create(model="gpt-test", input="hi", stream=True))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    completed = events[-1]
    assert "response stream" == text
    assert list(range(len(events))) == [e.sequence_number for e in events]
    assert "response.completed" == completed.type
    assert completed.response.usage is not None
    assert 30 == completed.response.usage.input_tokens_details.cached_tokens


def test_openai_responses_stream_helper_returns_final_response(fp: FakeProvider) -> None:
    """responses.stream() accumulates a final response with the reply and usage."""
    fp.script(Step(reply="helper text", usage={"input_tokens": 3, "output_tokens": 2}))
    with (
        openai_client(fp) as client,
        client.responses.stream(model="gpt-test", input="hi") as stream,
    ):
        final = stream.get_final_response()
    assert "helper text" == final.output_text
    assert final.usage is not None
    assert (3, 2) == (final.usage.input_tokens, final.usage.output_tokens)


def test_async_openai_responses_create_and_stream(fp: FakeProvider) -> None:
    """The async client gets the Responses reply and the streamed text."""
    fp.script(Step(reply="async response"), Step(reply="async streamed response"))

    async def main() -> tuple[str, str]:
        async with async_openai_client(fp, _strict_response_validation=True) as client:
            response = await client.responses.create(model="gpt-test", input="hi")
            stream = await client.responses.create(model="gpt-test", input="hi", stream=True)
            parts = [e.delta async for e in stream if e.type == "response.output_text.delta"]
            return response.output_text, "".join(parts)

    assert ("async response", "async streamed response") == asyncio.run(main())


def test_openai_responses_in_stream_error_is_an_error_event(fp: FakeProvider) -> None:
    """error_after in a Responses stream sends an `error` event (yielded, not raised) and ends."""
    fp.script(Step(reply="one two three", error_after=1, error_code="server_error"))
    with openai_client(fp) as client:
        events = list(client.responses.create(model="gpt-test", input="hi", stream=True))
    last = events[-1]
    assert "error" == last.type
    assert "server_error" == last.code
    assert 1 == sum(e.type == "response.output_text.delta" for e in events)


# --------------------------------------------------------------------------- transport faults


def test_drop_raises_api_connection_error_in_both_sdks(fp: FakeProvider) -> None:
    """A dropped connection (no response at all) raises APIConnectionError in both SDKs."""
    fp.script(Step(drop=True), Step(drop=True))
    with anthropic_client(fp) as client, pytest.raises(anthropic.APIConnectionError):
        create_message(client)
    with openai_client(fp) as oclient, pytest.raises(openai.APIConnectionError):
        oclient.chat.completions.create(model="gpt-test", messages=CHAT)


def test_delay_beyond_the_sdk_timeout_raises_api_timeout_error(fp: FakeProvider) -> None:
    """A first byte slower than timeout= raises APITimeoutError in both SDKs."""
    fp.script(Step(delay=0.4), Step(delay=0.4))
    with anthropic_client(fp) as client, pytest.raises(anthropic.APITimeoutError):
        create_message(client, timeout=0.1)
    with openai_client(fp) as oclient, pytest.raises(openai.APITimeoutError):
        oclient.chat.completions.create(model="gpt-test", messages=CHAT, timeout=0.1)


def test_delay_within_the_timeout_just_slows_the_reply(fp: FakeProvider) -> None:
    """A delay shorter than the timeout delays the reply but still succeeds."""
    fp.script(Step(delay=0.15))
    started = time.monotonic()
    with anthropic_client(fp) as client:
        message = create_message(client, timeout=5)
    assert DEFAULT_REPLY == message.content[0].text
    assert time.monotonic() - started >= 0.15


def test_raw_body_sends_invalid_json(fp: FakeProvider) -> None:
    """raw_body is sent verbatim; invalid JSON surfaces from the SDKs as a JSONDecodeError."""
    fp.script(Step(raw_body="{not json"), Step(raw_body="{not json"))
    with anthropic_client(fp) as client, pytest.raises(json.JSONDecodeError):
        create_message(client)
    with openai_client(fp) as oclient, pytest.raises(json.JSONDecodeError):
        oclient.chat.completions.create(model="gpt-test", messages=CHAT)


def test_raw_body_with_error_status_keeps_the_status(fp: FakeProvider) -> None:
    """raw_body with status=500 gives the SDK's status exception with the raw text as body."""
    fp.script(Step(status=500, raw_body="upstream exploded"))
    with openai_client(fp) as client, pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="gpt-test", messages=CHAT)
    assert "upstream exploded" == caught.value.response.text


# --------------------------------------------------------------------------- google-genai


def test_google_generate_content_reports_usage_metadata(fp: FakeProvider) -> None:
    """generate_content returns the reply and the scripted usage as usage_metadata."""
    fp.script(Step(reply="gemini says hi", usage=SCRIPTED_USAGE))
    client = google_client(fp)
    try:
        response = client.models.generate_content(model="gemini-test", contents="one two")
    finally:
        client.close()
    usage = response.usage_metadata
    assert usage is not None
    assert "gemini says hi" == response.text
    assert "gemini-test" == response.model_version
    assert (100, 15, 30, 5, 120) == (
        usage.prompt_token_count,
        usage.candidates_token_count,
        usage.cached_content_token_count,
        usage.thoughts_token_count,
        usage.total_token_count,
    )
    # google-genai's default API version: v1 since 3.x (httpx2), v1beta before.
    assert fp.requests[0].path in {f"/{v}/models/gemini-test:generateContent" for v in ("v1", "v1beta")}
    assert "google" == fp.requests[0].api


def test_google_default_usage_counts_system_and_contents(fp: FakeProvider) -> None:
    """Default google usage counts the words of the system instruction and the contents."""
    client = google_client(fp)
    try:
        response = client.models.generate_content(
            model="gemini-test",
            contents="one two three",
            config=genai_types.GenerateContentConfig(system_instruction="be brief"),
        )
    finally:
        client.close()
    assert response.usage_metadata is not None
    assert 5 == response.usage_metadata.prompt_token_count


def test_google_stream_uses_sse_and_ends_with_usage(fp: FakeProvider) -> None:
    """generate_content_stream gets the reply in chunks, the last carrying usage_metadata."""
    fp.script(Step(reply="streamed gemini reply"))
    client = google_client(fp)
    try:
        chunks = list(client.models.generate_content_stream(model="gemini-test", contents="hi"))
    finally:
        client.close()
    assert "streamed gemini reply" == "".join(c.text or "" for c in chunks)
    assert chunks[-1].usage_metadata is not None
    assert 3 == chunks[-1].usage_metadata.candidates_token_count
    assert fp.requests[0].stream


def test_google_rate_limit_raises_client_error(fp: FakeProvider) -> None:
    """A 429 on generate_content raises genai ClientError with RESOURCE_EXHAUSTED."""
    fp.script(Step(status=429, headers={"retry-after": "4"}))
    client = google_client(fp)
    try:
        with pytest.raises(genai_errors.ClientError) as caught:
            client.models.generate_content(model="gemini-test", contents="hi")
    finally:
        client.close()
    assert (429, "RESOURCE_EXHAUSTED") == (caught.value.code, caught.value.status)


# --------------------------------------------------------------------------- scripting and records


def test_script_is_fifo_then_falls_back_to_the_default_step(fp: FakeProvider) -> None:
    """Queued steps are used once each, in order; afterwards the default reply applies."""
    fp.script(Step(reply="first"), Step(reply="second"))
    with anthropic_client(fp) as client:
        texts = [create_message(client).content[0].text for _ in range(3)]
    assert ["first", "second", DEFAULT_REPLY] == texts


def test_script_header_overrides_the_queue_without_consuming_it(fp: FakeProvider) -> None:
    """An x-fake-script header scripts one call and leaves the queued step for the next."""
    fp.script(Step(reply="queued"))
    script = json.dumps({"status": 429, "headers": {"retry-after": "9"}})
    with anthropic_client(fp) as client:
        with pytest.raises(anthropic.RateLimitError) as caught:
            create_message(client, extra_headers={"x-fake-script": script})
        text = create_message(client).content[0].text
    assert "9" == caught.value.response.headers["retry-after"]
    assert "queued" == text


def test_invalid_script_header_is_a_bad_request(fp: FakeProvider) -> None:
    """An x-fake-script naming an unknown field is answered with a 400 that names it."""
    with openai_client(fp) as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="gpt-test", messages=CHAT, extra_headers={"x-fake-script": '{"stauts": 500}'}
        )
    assert "stauts" in caught.value.message


def test_requests_records_method_path_headers_body_and_api(fp: FakeProvider) -> None:
    """fp.requests holds each request's method, path, lower-cased headers, JSON body and API."""
    with anthropic_client(fp) as client:
        create_message(client, stream=True).close()
    with openai_client(fp) as oclient:
        oclient.chat.completions.create(model="gpt-test", messages=CHAT)
        oclient.responses.create(model="gpt-test", input="hi")
    first, second, third = fp.requests
    assert isinstance(first, RecordedRequest)
    assert ("POST", "/v1/messages", "anthropic", True) == (
        first.method,
        first.path,
        first.api,
        first.stream,
    )
    # anthropic >= 1 sends the key as a bearer token, earlier releases as x-api-key.
    sent = first.headers.get("x-api-key") or first.headers["authorization"].removeprefix("Bearer ")
    assert "test-key" == sent
    assert "0" == first.headers["x-stainless-retry-count"]
    assert MESSAGES == first.body["messages"]
    assert ("openai.chat", False) == (second.api, second.stream)
    assert "openai.responses" == third.api
    assert first.time <= second.time <= third.time


def test_reset_clears_queue_and_records(fp: FakeProvider) -> None:
    """reset() forgets both the scripted steps and the recorded requests."""
    fp.script(Step(reply="never used"))
    with anthropic_client(fp) as client:
        create_message(client)
    fp.script(Step(reply="never used either"))
    fp.reset()
    assert [] == fp.requests
    with anthropic_client(fp) as client:
        assert DEFAULT_REPLY == create_message(client).content[0].text


def test_unknown_path_is_a_404_in_openai_shape(fp: FakeProvider) -> None:
    """A path the fake does not serve gets a 404 with an OpenAI-shaped error body."""
    response = httpx.post(fp.url + "/v1/embeddings", json={"input": "x"}, timeout=5)
    assert 404 == response.status_code
    assert "invalid_request_error" == response.json()["error"]["type"]
    assert "other" == fp.requests[0].api


def test_health_endpoint_answers_ok(fp: FakeProvider) -> None:
    """GET /_health answers 200 and is not recorded."""
    response = httpx.get(fp.url + "/_health", timeout=5)
    assert {"status": "ok"} == response.json()
    assert [] == fp.requests


def test_step_rejects_bad_values_naming_the_parameter() -> None:
    """Step validates its fields and names the offending parameter."""
    with pytest.raises(ValueError, match=r"Step\(usage=\.\.\.\) has unknown keys \['prompt'\]"):
        Step(usage={"prompt": 1})
    with pytest.raises(ValueError, match=r"Step\(status=\.\.\.\)"):
        Step(status=42)
    with pytest.raises(ValueError, match=r"Step\(delay=\.\.\.\)"):
        Step(delay=-1)


def test_addresses_follow_the_sdk_conventions(fp: FakeProvider) -> None:
    """The base URLs are the server URL, with /v1 appended for openai only."""
    host, port = fp.url.removeprefix("http://").split(":")
    assert "127.0.0.1" == host
    assert fp.url == fp.anthropic_base_url == fp.google_base_url
    assert fp.url + "/v1" == fp.openai_base_url
    with socket.create_connection((host, int(port)), timeout=5):
        pass


def test_stop_returns_promptly_while_a_stream_is_stalled() -> None:
    """stop() wakes a 30 s stall and returns in well under 2 s; the client then sees the cut."""
    provider = FakeProvider().start()
    try:
        provider.script(Step(reply="a b c", stall_after=1, stall=30))
        with anthropic_client(provider) as client:
            stream = create_message(client, stream=True)
            events = iter(stream)
            while next(events).type != "content_block_delta":
                pass
            started = time.monotonic()
            provider.stop()
            elapsed = time.monotonic() - started
            with pytest.raises(MID_STREAM_CUT) as caught:
                list(events)
            assert ErrorKind.CONNECTION == classify(caught.value).kind
            stream.close()
    finally:
        provider.stop()
    assert elapsed < 2.0


def test_provider_can_be_restarted_and_keeps_its_records() -> None:
    """After stop(), start() serves again and earlier records are still there."""
    provider = FakeProvider()
    with pytest.raises(RuntimeError, match="not running"):
        _ = provider.url
    for _ in range(2):
        with provider, anthropic_client(provider) as client:
            create_message(client)
    assert 2 == len(provider.requests)


class _OneSendHandler(BaseHTTPRequestHandler):
    """A trivial HTTP/1.1 server: the whole response leaves in one send (Nagle cannot hold any of it)."""

    protocol_version = "HTTP/1.1"
    RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.wfile.write(self.RESPONSE)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Quiet."""


def _medians(n: int, *requests: Any) -> list[float]:
    """The median seconds of each of *requests*, timed *n* times each, taking turns (so load hits all alike)."""
    for request in requests:
        request()  # warm: the connection is open and pooled before timing
    times: list[list[float]] = [[] for _ in requests]
    for _ in range(n):
        for request, spent in zip(requests, times, strict=True):
            started = time.perf_counter()
            request()
            spent.append(time.perf_counter() - started)
    return [statistics.median(spent) for spent in times]


def test_a_request_takes_about_a_local_round_trip(fp: FakeProvider) -> None:
    """A real SDK request to the fake provider costs ~1 ms, not Nagle's ~40 ms delayed-ACK wait.

    Held as a ratio: the median anthropic ``messages.create`` against the
    median round trip of the same HTTP library to a server that answers in one
    send. Headers and body leaving in separate sends without TCP_NODELAY made
    it ~40 ms against well under 1 ms (a ratio over 40); the SDK's own work
    keeps it a few times a bare round trip.
    """
    with ThreadingHTTPServer(("127.0.0.1", 0), _OneSendHandler) as trivial:
        threading.Thread(target=trivial.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{trivial.server_address[1]}/"
        try:
            with httpx.Client() as http, anthropic_client(fp) as client:
                bare, sdk = _medians(
                    40,
                    lambda: http.post(url, content=b'{"q": 1}').raise_for_status(),
                    lambda: client.messages.create(model="claude-sonnet-4-6", max_tokens=8, messages=MESSAGES),
                )
        finally:
            trivial.shutdown()

    # Measured on 2 loaded cores: ~3x (1.1-2.2 ms against 0.4-0.7 ms); ~56x without TCP_NODELAY.
    assert sdk / bare < 15, f"fake provider {sdk * 1e3:.2f} ms a request, a bare round trip {bare * 1e3:.2f} ms"
