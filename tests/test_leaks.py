"""Nothing a call leaves behind keeps a dropped stream alive: it finishes when the caller lets go."""

from __future__ import annotations

import asyncio
import gc
import traceback
import weakref

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anthropic
import pytest

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import llmguard as lg

from llmguard._fake_provider import FakeProvider, Step
from llmguard._record import Outcome
from llmguard.testing import CapturedEvent, FakeClock


MODEL = "claude-sonnet-4-6"
STACKS = ["retry", "retry+budget", "readme"]
SHAPES = ["def->stream", "async def->stream", "generator", "async generator"]


def guards(stack: str, exporter: InMemorySpanExporter) -> Callable[[Any], Any]:
    """The guards of *stack*, innermost first, as the README orders them."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    def decorate(fn: Any) -> Any:
        if stack == "readme":
            fn = lg.timeout(5, first_token=2, idle=1)(fn)
        if stack != "retry":
            fn = lg.budget(usd=100, per="day", key=lambda user, **_: user, max_output=512)(fn)
        fn = lg.retry(attempts=4)(fn)
        if stack == "readme":
            fn = lg.trace(tracer_provider=provider)(lg.cache(ttl=3600)(fn))
        return fn

    return decorate


def function(shape: str, sync: anthropic.Anthropic, aclient: anthropic.AsyncAnthropic) -> Any:
    """An undecorated function of *shape* that streams from the real SDK."""

    def create(q: str, model: str) -> Any:
        return sync.messages.create(model=model, max_tokens=64, messages=[{"role": "user", "content": q}], stream=True)

    async def acreate(q: str, model: str) -> Any:
        messages: Any = [{"role": "user", "content": q}]
        return await aclient.messages.create(model=model, max_tokens=64, messages=messages, stream=True)

    def ask(q: str, user: str = "anon", model: str = MODEL) -> Any:  # noqa: ARG001 - the budget's key
        return create(q, model)

    async def aask(q: str, user: str = "anon", model: str = MODEL) -> Any:  # noqa: ARG001
        return await acreate(q, model)

    def gen(q: str, user: str = "anon", model: str = MODEL) -> Iterator[Any]:  # noqa: ARG001
        yield from create(q, model)

    async def agen(q: str, user: str = "anon", model: str = MODEL) -> AsyncIterator[Any]:  # noqa: ARG001
        async for event in await acreate(q, model):
            yield event

    return {"def->stream": ask, "async def->stream": aask, "generator": gen, "async generator": agen}[shape]


async def _open(guarded: Any, shape: str) -> Any:
    """The guarded stream, opened so its first attempt has run (and been retried)."""
    if shape == "def->stream":
        stream = guarded("hi", user="ada")
    elif shape == "async def->stream":
        stream = await guarded("hi", user="ada")
    elif shape == "generator":
        stream = guarded("hi", user="ada")
        next(stream)
    else:
        stream = guarded("hi", user="ada")
        await anext(stream)
    return stream


@pytest.mark.parametrize("retried", [True, False], ids=["retried", "first-try"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("stack", STACKS)
def test_a_stream_dropped_after_a_retried_attempt_finishes(
    stack: str,
    shape: str,
    retried: bool,  # noqa: FBT001
    clients: Any,
    fake_provider: FakeProvider,
    fake_clock: FakeClock,  # noqa: ARG001 - every wait instant
    llmguard_events: list[CapturedEvent],
) -> None:
    """A stream the caller drops unread finishes (span, event, budget), whether its first attempt failed or not.

    The failed attempt's error stays on the record; it must not keep, through
    the frames of its traceback, the stream a later attempt returned alive.
    The record is held on purpose, as a caller logging it would.
    """
    if retried:
        fake_provider.script(Step(status=429, headers={"retry-after": "0"}), Step(reply="the answer"))
    exporter = InMemorySpanExporter()
    guarded = guards(stack, exporter)(function(shape, *clients))

    async def drop() -> tuple[weakref.ref[Any], Any]:
        stream = await _open(guarded, shape)
        return weakref.ref(stream), stream.record

    alive, record = asyncio.run(drop())
    gc.collect()

    assert alive() is None
    assert (1 + retried, Outcome.ABANDONED) == (record.attempt_count, record.outcome)
    if retried:  # the error it went past is kept, and can still be told apart
        assert isinstance(record.attempts[0].error, anthropic.RateLimitError)
    if stack == "readme":
        assert 1 == len(exporter.get_finished_spans())
        assert 1 == sum(e.name == "llmguard.call" for e in llmguard_events)
    if stack != "retry":
        spend = lg.budget_spend(guarded, key="ada")
        assert (0.0, 0) == (spend.reserved_usd, spend.reserved_tokens)
        assert spend.usd > 0


def test_an_error_retried_past_lets_go_of_its_frames_and_the_one_raised_keeps_them(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """The errors of attempts retried past keep type and message, not frames; the one raised keeps its traceback."""
    fake_provider.script(*[Step(status=429, headers={"retry-after": "0"})] * 3)
    seen: list[lg.CallRecord] = []

    @lg.retry(attempts=3)
    def ask(q: str) -> Any:
        record = lg.current_call()
        assert record is not None
        seen.append(record)
        return anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": q}])

    with pytest.raises(anthropic.RateLimitError) as raised:
        ask("hi")

    first, second, last = seen[0].attempts
    assert 2 == len(fake_clock.sleeps)
    assert all(isinstance(a.error, anthropic.RateLimitError) for a in (first, second, last))
    assert (None, None) == (first.error.__traceback__, second.error.__traceback__)  # type: ignore[union-attr]
    assert "(fake provider)" in str(first.error)
    assert last.error is raised.value
    assert "in ask" in "".join(traceback.format_exception(raised.value))


@pytest.mark.parametrize("sync", [True, False], ids=["def", "async def"])
def test_a_retry_inside_an_except_block_leaves_the_callers_error_its_traceback(
    sync: bool,  # noqa: FBT001
    anthropic_client: anthropic.Anthropic,
    async_anthropic_client: anthropic.AsyncAnthropic,
    fake_provider: FakeProvider,
    fake_clock: FakeClock,  # noqa: ARG001 - every wait instant
) -> None:
    """A guarded call made while the caller handles its own error (a fallback) does not strip that error.

    Python chains the caller's error as ``__context__`` of every attempt's
    error; retry drops the tracebacks of the attempts it goes past, and must
    stop at errors that are not the call's own: the caller still logs or
    re-raises its error, and the error finally raised shows it as its context.
    """
    fake_provider.script(Step(status=429, headers={"retry-after": "0"}), Step(reply="the answer"))
    messages: Any = [{"role": "user", "content": "hi"}]

    @lg.retry(attempts=3)
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=messages)

    @lg.retry(attempts=3)
    async def aask() -> Any:
        return await async_anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=messages)

    def primary() -> None:
        raise KeyError("primary failed")

    try:
        primary()
    except KeyError as own:
        answer = ask() if sync else asyncio.run(aask())
        handled = own

    assert "the answer" in answer.content[0].text
    assert handled.__traceback__ is not None
    assert "in primary" in "".join(traceback.format_exception(handled))
