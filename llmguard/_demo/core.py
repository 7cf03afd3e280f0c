"""Demo section: what the wrapping core's call record says about real SDK calls."""

from __future__ import annotations

import asyncio

from typing import Any

import anthropic
import openai

from .._call import Call
from .._record import CallRecord
from .._runner import Guard
from .._stream import AsyncGuardedStream, GuardedStream
from ..testing import FakeProvider, Step


ORDER = 0
TITLE = "the call record: usage, model, cost and outcome of real SDK calls"


class _Show(Guard):
    """Prints each call's record when the call (or its stream) ends."""

    name = "show"

    def leave(self, call: Call, state: None, result: Any) -> Any:  # noqa: ARG002
        if isinstance(result, (GuardedStream, AsyncGuardedStream)):
            result.on_finish(lambda _outcome, _exc: print_record(call.record))
        else:
            print_record(call.record)
        return result

    def fail(self, call: Call, state: None, exc: BaseException) -> None:  # noqa: ARG002
        if isinstance(exc, Exception):
            print_record(call.record)


show = _Show()


def print_record(rec: CallRecord) -> None:
    """Print one line of what *rec* says."""
    att = rec.attempt
    usage = rec.usage
    cost = rec.cost_usd
    ttft = rec.time_to_first_chunk
    error = att.error_kind.value if att and att.error_kind else "-"
    provider = (att.provider if att else None) or "-"
    est = " (est)" if rec.usage_estimated else "      "
    print(
        f"  {rec.function.rpartition('.')[2]:<14} {provider:<9} {rec.model or '-':<26} "
        f"{'stream' if rec.stream else 'call':<6} attempts={rec.attempt_count} "
        f"in={usage.input_tokens if usage else '-':<4} out={usage.output_tokens if usage else '-':<4}{est} "
        f"cost={f'${cost:.6f}' if cost is not None else 'unpriced':<10} "
        f"ttft={f'{ttft * 1000:.0f}ms' if ttft is not None else '-':<6} error={error}"
    )


def run(fake: FakeProvider) -> None:
    """Four calls through a watching layer, each printing its record."""
    messages: Any = [{"role": "user", "content": "Write a haiku about retries."}]
    claude = anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key="demo", max_retries=0)
    gpt = openai.OpenAI(base_url=fake.openai_base_url, api_key="demo", max_retries=0)
    agpt = openai.AsyncOpenAI(base_url=fake.openai_base_url, api_key="demo", max_retries=0)

    @show
    def ask_claude(q: str) -> Any:
        return claude.messages.create(
            model="claude-sonnet-4-6", max_tokens=256, messages=[{"role": "user", "content": q}]
        )

    @show
    def stream_claude(q: str) -> Any:
        return claude.messages.create(
            model="claude-haiku-4-5",
            max_tokens=256,
            messages=[{"role": "user", "content": q}],
            stream=True,
        )

    @show
    async def stream_gpt(messages: Any) -> Any:
        return await agpt.chat.completions.create(
            model="gpt-4o-mini", messages=messages, stream=True
        )

    @show
    def ask_gpt() -> Any:
        return gpt.chat.completions.create(model="gpt-4o", messages=messages)

    print("a Message, with cache reads priced by class:")
    fake.script(Step(usage={"input_tokens": 1200, "output_tokens": 80, "cache_read_tokens": 1000}))
    ask_claude("Write a haiku about retries.")

    print("an anthropic stream: usage settles when the stream ends:")
    fake.script(Step(reply="Backoff, then again / the server breathes, answers slow / jitter keeps us kind"))
    for _ in stream_claude("Write a haiku about jitter."):
        pass

    print("an async openai stream without usage, read halfway and closed: estimated, never zero:")

    async def half() -> None:
        stream = await stream_gpt(messages)
        async for chunk in stream:
            if chunk.choices and "two" in (chunk.choices[0].delta.content or ""):
                break
        await stream.aclose()

    fake.script(Step(reply="one two three four five six seven"))
    asyncio.run(half())

    print("a 429 from the provider: the SDK's own exception passes through, classified:")
    fake.script(Step(status=429, headers={"retry-after": "2"}))
    try:
        ask_gpt()
    except openai.RateLimitError as exc:
        print(f"  -> raised {type(exc).__module__}.{type(exc).__qualname__} (status {exc.status_code})")
    claude.close()
    gpt.close()
