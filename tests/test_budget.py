"""`budget`: reserve before, settle after; every test runs on the memory and the Redis store."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import threading
import time
import types
import uuid

from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

from estimates import estimate_tokens, estimated_input, reserved_input
from sdk_http import httpx

import llmguard as lg

from llmguard import providers
from llmguard._binder import Binder
from llmguard._budget import Budget, budget, budget_spend
from llmguard._budget_estimate import names_read
from llmguard._budget_ledger import used
from llmguard._fake_provider import DEFAULT_REPLY, FakeProvider, Step
from llmguard.stores.budget import (
    PICO,
    BucketSpec,
    BudgetStore,
    BudgetStoreError,
    Line,
    MemoryBudgetStore,
    RedisBudgetStore,
    Refusal,
)
from llmguard.testing import CapturedEvent, FakeClock


CLAUDE = "claude-sonnet-4-6"  # $3 in, $15 out, $0.30 cache read, $3.75 cache write per Mtok
GPT = "gpt-4o"  # $2.50 in, $10 out: no separate cache-write rate, so the worst case is exact
MESSAGES: Any = [{"role": "user", "content": "say hello to the test"}]
HEADER = "x-fake-script"


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[BudgetStore]:
    """A fresh budget store: in memory, or in a real redis-server (own namespace)."""
    if request.param == "memory":
        yield MemoryBudgetStore()
        return
    url = request.getfixturevalue("redis_url")
    redis_store = RedisBudgetStore(url, namespace=uuid.uuid4().hex)
    yield redis_store
    await redis_store.aclose()  # on the test's loop, which async tests' calls used


def pico(usage: lg.Usage, model: str) -> int:
    """What the ledger must hold for *usage* on *model*: its exact cost in pico-dollars."""
    cost = lg.cost_of(usage, model)
    assert cost is not None
    return round(cost * PICO)


def _in_threads(n: int, target: Any) -> None:
    """Run *target* in *n* threads at once; return when all have finished."""
    threads = [threading.Thread(target=target) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def ledger_pico(target: Any, key: str | None = None) -> int:
    return int(budget_spend(target, key).exact_usd * PICO)


def script(**step: Any) -> dict[str, str]:
    """Per-request fake-provider script, as a header (so concurrent calls each get theirs)."""
    return {HEADER: json.dumps(step)}


def worst(input_tokens: int, output_tokens: int, model: str = GPT) -> float:
    """The worst case the guard reserves for a gpt-4o call, in dollars."""
    cost = lg.cost_of(lg.Usage(input_tokens, output_tokens), model)
    assert cost is not None
    return cost


# -- configuration ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"usd": -1}, r"budget\(usd=\.\.\.\) must be > 0, got -1"),
        ({"usd": 0}, r"budget\(usd=\.\.\.\) must be > 0"),
        ({"usd": "5"}, r"budget\(usd=\.\.\.\) must be a number"),
        ({"usd": 1e9}, r"budget\(usd=\.\.\.\) must be <= 9,000,000"),
        ({"tokens": 1.5}, r"budget\(tokens=\.\.\.\) must be an int"),
        ({"usd": 1, "per": "week"}, r"budget\(per=\.\.\.\) must be None, 'call', 'minute', 'hour' or 'day'"),
        ({"usd": 1, "key": 42}, r"budget\(key=\.\.\.\) must be a string or a callable"),
        ({"usd": 1, "unknown_cost": "maybe"}, r"budget\(unknown_cost=\.\.\.\)"),
        ({"usd": 1, "unknown_cost": -0.5}, r"budget\(unknown_cost=\.\.\.\)"),
        ({"usd": 1, "alert_at": (0.5, -1)}, r"budget\(alert_at=\.\.\.\) fractions must be > 0"),
        ({"usd": 1, "alert_at": "high"}, r"budget\(alert_at=\.\.\.\)"),
        ({"usd": 1, "on_store_error": "ignore"}, r"budget\(on_store_error=\.\.\.\)"),
        ({"usd": 1, "store": "postgres://x"}, r"budget\(store=\.\.\.\)"),
        ({"usd": 1, "max_output": 0}, r"budget\(max_output=\.\.\.\) must be"),
        ({"usd": 1, "reservation_ttl": 0}, r"budget\(reservation_ttl=\.\.\.\) must be > 0"),
        ({"usd": 1, "model": ""}, r"budget\(model=\.\.\.\) must be a non-empty string"),
        ({"per": "day"}, r"budget\(per=\.\.\.\) needs a limit: pass usd=\.\.\. or tokens=\.\.\."),
        ({"usd": 1, "per": "call", "key": "k"}, r"budget\(key=\.\.\.\) has no effect with per='call'"),
    ],
)
def test_bad_configuration_fails_at_decoration_naming_the_parameter(kwargs: dict[str, Any], match: str) -> None:
    """Each bad argument is a ValueError (a TypeError for a wrong type) naming it, raised when the budget is built."""
    with pytest.raises((ValueError, TypeError), match=match):
        budget(**kwargs)


def test_a_scope_needs_a_limit_and_a_shared_scope_needs_a_name(redis_url: str) -> None:
    """`with lg.budget()` has nothing to enforce; a Redis scope must be findable by name."""
    with pytest.raises(ValueError, match=r"scope needs usd=\.\.\. or tokens=\.\.\."), budget():
        pass
    with pytest.raises(ValueError, match=r"budget\(name=\.\.\.\) is required"), budget(usd=1, store=redis_url):
        pass


def test_decorated_function_keeps_identity_and_describes_its_budget() -> None:
    """Name, docstring, signature survive; describe() shows the budget's settings."""

    @budget(usd=2.5, per="day", max_output=100, model="claude-haiku-4-5")
    def ask(q: str, user: str = "anon") -> str:
        """Ask."""
        return q

    (info,) = lg.describe(ask)

    assert ("ask", "Ask.") == (ask.__name__, ask.__doc__)
    assert "budget" == info.name
    assert (2.5, "day", "MemoryBudgetStore") == (info.settings["usd"], info.settings["per"], info.settings["store"])


# -- the ledger equals what the server reported ----------------------------------------


def test_ledger_equals_reported_usage_exactly_across_call_kinds(
    store: BudgetStore,
    anthropic_client: anthropic.Anthropic,
    openai_client: openai.OpenAI,
    fake_provider: FakeProvider,
) -> None:
    """Messages, chat completions, streams, an aborted stream and a 429: the ledger is their exact sum."""
    shared = budget(usd=10.0, per="day", store=store, name="ledger")
    usages = {
        "message": lg.Usage(1200, 80, cache_read_tokens=1000),
        "cached_write": lg.Usage(900, 40, cache_write_tokens=800),
        "stream": lg.Usage(300, 25),
        "chat": lg.Usage(500, 60, cache_read_tokens=128, reasoning_tokens=20),
    }

    def wire(u: lg.Usage) -> dict[str, int]:
        return {
            "input_tokens": u.input_tokens,
            "output_tokens": u.output_tokens,
            "cache_read_tokens": u.cache_read_tokens,
            "cache_write_tokens": u.cache_write_tokens,
            "reasoning_tokens": u.reasoning_tokens,
        }

    @shared
    def claude(stream: bool = False, max_tokens: int = 200, model: str = CLAUDE) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=max_tokens, messages=MESSAGES, stream=stream)

    @shared
    def gpt(max_tokens: int = 200, model: str = GPT) -> Any:
        return openai_client.chat.completions.create(model=model, max_tokens=max_tokens, messages=MESSAGES)

    fake_provider.script(
        Step(usage=wire(usages["message"])),
        Step(usage=wire(usages["cached_write"])),
        Step(reply="one two three four", usage=wire(usages["stream"])),
        Step(usage=wire(usages["chat"])),
        Step(reply="alpha beta gamma delta epsilon", usage={"input_tokens": 70, "output_tokens": 5}),
        Step(status=429, headers={"retry-after": "1"}),
    )
    claude()
    claude()
    for _ in claude(stream=True):
        pass
    gpt()
    aborted = claude(stream=True)
    next(aborted)
    next(aborted)
    aborted.close()
    with pytest.raises(anthropic.RateLimitError):
        claude()
    partial = aborted.record.usage
    assert partial is not None
    expected = (
        pico(usages["message"], CLAUDE)
        + pico(usages["cached_write"], CLAUDE)
        + pico(usages["stream"], CLAUDE)
        + pico(usages["chat"], GPT)
        + pico(partial, CLAUDE)
    )
    spend = shared.spend()

    assert partial.estimated
    assert partial.input_tokens == 70  # what message_start reported stands
    assert expected == int(spend.exact_usd * PICO)
    assert sum(u.total_tokens for u in (*usages.values(), partial)) == spend.tokens
    assert (0, 0) == (spend.reserved_usd, spend.reserved_tokens)
    assert (6, 1) == (spend.calls, spend.estimated_calls)


async def test_async_stream_ledger_is_exact(
    store: BudgetStore, async_openai_client: openai.AsyncOpenAI, fake_provider: FakeProvider
) -> None:
    """An async openai stream with include_usage settles with the final usage chunk, exactly."""
    fake_provider.script(Step(reply="streamed words here", usage={"input_tokens": 44, "output_tokens": 3}))

    @budget(usd=1.0, store=store, model=GPT)
    async def ask(messages: Any, max_tokens: int = 50) -> Any:
        return await async_openai_client.chat.completions.create(
            model=GPT, messages=messages, max_tokens=max_tokens, stream=True, stream_options={"include_usage": True}
        )

    stream = await ask(MESSAGES)
    assert 0 < budget_spend(ask).reserved_usd
    async for _ in stream:
        pass
    spend = budget_spend(ask)

    assert pico(lg.Usage(44, 3), GPT) == int(spend.exact_usd * PICO)
    assert (47, 0.0, 0) == (spend.tokens, spend.reserved_usd, spend.estimated_calls)


async def test_stream_without_usage_is_charged_an_estimate_never_zero(
    store: BudgetStore, async_openai_client: openai.AsyncOpenAI, fake_provider: FakeProvider
) -> None:
    """A stream that ends without a usage chunk is charged what the record estimated, flagged."""
    fake_provider.script(Step(reply="a reply of several words here"))

    @budget(usd=1.0, store=store, model=GPT)
    async def ask(messages: Any, max_tokens: int = 50) -> Any:
        return await async_openai_client.chat.completions.create(
            model=GPT, messages=messages, max_tokens=max_tokens, stream=True
        )

    stream = await ask(MESSAGES)
    async for _ in stream:
        pass
    usage = stream.record.usage
    spend = budget_spend(ask)

    assert usage is not None
    assert usage.estimated
    assert usage.total_tokens == spend.tokens > 0
    assert pico(usage, GPT) == int(spend.exact_usd * PICO) > 0
    assert 1 == spend.estimated_calls


def sent_estimate(model: str, output_text: str = "") -> tuple[int, int]:
    """What an attempt that reported no usage but whose request left is charged: (tokens, pico-dollars).

    The input estimated from the call's SDK-shaped arguments (here MESSAGES),
    plus the output estimated from the text it showed (the documented rule).
    """
    usage = lg.Usage(estimated_input(MESSAGES), estimate_tokens(output_text), estimated=True)
    return usage.total_tokens, pico(usage, model)


def test_unread_stream_that_is_dropped_is_charged_its_input_estimate(
    store: BudgetStore, anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """A stream nobody reads was sent: it is charged its input estimate (flagged estimated), not its worst case."""

    @budget(usd=1.0, store=store, model=CLAUDE)
    def ask(messages: Any, max_tokens: int = 100) -> Any:
        return anthropic_client.messages.create(model=CLAUDE, max_tokens=max_tokens, messages=messages, stream=True)

    stream = ask(MESSAGES)
    reserved = budget_spend(ask).reserved_usd
    stream.response.close()
    del stream
    gc.collect()
    spend = budget_spend(ask)

    assert reserved > 0
    assert sent_estimate(CLAUDE) == (spend.tokens, ledger_pico(ask))
    assert (0.0, 1, 1) == (spend.reserved_usd, spend.calls, spend.estimated_calls)


@pytest.mark.parametrize("path", ["lane", "stacked"])
def test_a_stream_ended_early_is_reserved_and_charged_from_one_input_count(
    path: str, store: BudgetStore, openai_client: openai.OpenAI, fake_provider: FakeProvider
) -> None:
    """Reservation and estimated charge of a stream cut short are two readings of one count (docs/estimates.md).

    The count is the UTF-8 bytes of the input arguments (messages, tools, ...);
    the budget reserves its worst case (bytes / 3), the stream that ended
    without usage is charged its best guess (bytes / 4) of the same bytes.
    """
    fake_provider.script(Step(reply="one two three four five six seven"))
    conversation: Any = [
        {"role": "system", "content": "r\u00e9ponds bri\u00e8vement \u4e2d\u6587"},
        {"role": "user", "content": "say hello to the test " * 20},
    ]
    tools: Any = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]

    def ask(messages: Any, tools: Any, max_tokens: int = 50) -> Any:
        return openai_client.chat.completions.create(
            model=GPT, messages=messages, tools=tools, max_tokens=max_tokens, stream=True
        )

    guarded = budget(tokens=100_000, store=store, model=GPT)(ask)
    if path == "stacked":
        guarded = lg.retry(attempts=1)(guarded)
    stream = guarded(conversation, tools)
    reserved = budget_spend(guarded).reserved_tokens
    next(iter(stream))
    stream.close()
    usage = stream.record.usage

    assert usage is not None
    assert usage.estimated
    assert (reserved_input(conversation, tools) + 50, estimated_input(conversation, tools)) == (
        reserved,
        usage.input_tokens,
    )
    assert usage.total_tokens == budget_spend(guarded).tokens


def test_a_stream_ended_early_without_input_arguments_is_reserved_and_charged_from_all_its_arguments(
    store: BudgetStore, openai_client: openai.OpenAI, fake_provider: FakeProvider
) -> None:
    """With none of the input argument names, the one count is of every argument given (docs/estimates.md)."""
    fake_provider.script(Step(reply="one two three four five six seven"))

    @budget(tokens=100_000, store=store, model=GPT)
    def ask(question: str, user: str, max_tokens: int = 50) -> Any:
        return openai_client.chat.completions.create(
            model=GPT, messages=[{"role": "user", "content": question}], max_tokens=max_tokens, stream=True
        )

    question = "\u4e2d\u6587\u7684\u95ee\u9898 " * 30
    stream = ask(question, user="u-42")
    reserved = budget_spend(ask).reserved_tokens
    next(iter(stream))
    stream.close()
    usage = stream.record.usage

    assert usage is not None
    assert (reserved_input(question, "u-42") + 50, estimated_input(question, "u-42")) == (reserved, usage.input_tokens)


def _until(condition: Any, seconds: float = 20.0) -> None:
    """Wait (generously) until *condition()* holds, e.g. abandoned workers finishing in the background.

    Returns at the latest after *seconds*: the test's own assertions then say what differs.
    """
    end = time.monotonic() + seconds
    while not condition() and time.monotonic() < end:
        time.sleep(0.02)


def served_pico(model: str, requests: list[Any]) -> tuple[int, int]:
    """What the fake provider served for *requests* of the default reply: (tokens, pico-dollars)."""
    tokens = usd = 0
    for req in requests:
        words = sum(len(m["content"].split()) for m in req.body["messages"])
        usage = lg.Usage(words, len(DEFAULT_REPLY.split()))
        tokens += usage.total_tokens
        usd += pico(usage, model)
    return tokens, usd


@pytest.mark.parametrize("path", ["fast", "general"])
def test_sync_attempt_abandoned_at_its_deadline_is_charged_what_it_used(
    store: BudgetStore, openai_client: openai.OpenAI, fake_provider: FakeProvider, path: str
) -> None:
    """Budget outside timeout (the README's order): the caller gets GuardTimeout, the worker runs on.

    At once the attempt is charged its input estimate (never its worst
    case); when the abandoned worker returns, the ledger is corrected to
    what the server served, to the pico-dollar, and the call counted once.
    """
    key = None if path == "fast" else (lambda **_: "k")

    @budget(usd=1.0, store=store, key=key)
    @lg.timeout(0.1)
    def ask(messages: Any, max_tokens: int = 500, model: str = GPT) -> Any:
        return openai_client.chat.completions.create(
            model=model, max_tokens=max_tokens, messages=messages, extra_headers=script(delay=0.6)
        )

    k = None if key is None else "k"
    with pytest.raises(lg.GuardTimeout):
        ask(MESSAGES)
    at_deadline = budget_spend(ask, k)
    if at_deadline.tokens == sent_estimate(GPT)[0]:  # else the worker already finished: nothing to see here
        assert (at_deadline.calls, at_deadline.estimated_calls, at_deadline.reserved_usd) == (1, 1, 0.0)
    _until(lambda: budget_spend(ask, k).tokens != sent_estimate(GPT)[0])
    spend = budget_spend(ask, k)

    assert served_pico(GPT, fake_provider.requests) == (spend.tokens, ledger_pico(ask, k))
    assert (1, 0.0) == (spend.calls, spend.reserved_usd)


class _EndsAfterItsUsageIsRead(lg.Attempt):
    """A sync worker that ends (usage, then outcome, as `_facts` sets them) just after the budget reads its usage."""

    _usage: lg.Usage | None = None

    @property  # type: ignore[override]
    def usage(self) -> lg.Usage | None:
        seen = self._usage
        if self.outcome is lg.Outcome.PENDING:  # the worker returns now, between the budget's two reads
            self._usage = lg.Usage(1000, 200)
            self.outcome = lg.Outcome.OK
        return seen

    @usage.setter
    def usage(self, value: lg.Usage | None) -> None:
        self._usage = value


def test_attempt_ending_while_settled_is_followed_not_charged_zero() -> None:
    """An abandoned worker that ends between the budget's reads of its usage and its outcome.

    Read usage-then-outcome, it looked ended without usage: charged 0 and
    never corrected. The outcome is read first, so it is seen running
    (charged its input estimate, followed) and the correction charges
    what it used.
    """
    record = lg.CallRecord("ask")
    record.attempts.append(_EndsAfterItsUsageIsRead(1, GPT))
    call: Any = types.SimpleNamespace(estimated_input_tokens=lambda: 7)

    usd, tokens, estimated, unpriced, running = used(record, 0, GPT, call, 1)
    assert (tokens, estimated, unpriced, running) == (7, True, False, True)
    assert usd > 0
    assert used(record, 0, GPT, call, 1)[1:] == (1200, False, False, False)


class _SlowCorrections(MemoryBudgetStore):
    """A memory store whose first correction stalls (a slow round trip) until another one reaches it (at most 5 s)."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = 0
        self.overlapped = threading.Event()
        self._count = threading.Lock()

    def charge(self, lines: list[Line], now: float, *, count: bool, estimated: bool) -> Any:
        if not count:  # a correction
            with self._count:
                self.inside += 1
                if self.inside == 2:
                    self.overlapped.set()
            self.overlapped.wait(5)
            with self._count:
                self.inside -= 1
        return super().charge(lines, now, count=count, estimated=estimated)


def test_a_slow_correction_does_not_hold_up_another_calls(
    openai_client: openai.OpenAI, fake_provider: FakeProvider
) -> None:
    """Two calls abandoned at their deadline: the second one's correction reaches the store while the first's is in it.

    Before: one lock for every correction was held across the store's round
    trip (for Redis: up to its socket timeout, plus the replay of kept
    settlements), so every other call's correction waited. The ledger still
    ends at what the server served.
    """
    store = _SlowCorrections()

    @budget(usd=1.0, store=store)
    @lg.timeout(0.1)
    def ask(messages: Any, max_tokens: int = 500, model: str = GPT) -> Any:
        return openai_client.chat.completions.create(
            model=model, max_tokens=max_tokens, messages=messages, extra_headers=script(delay=0.8)
        )

    for _ in range(2):
        with pytest.raises(lg.GuardTimeout):
            ask(MESSAGES)
    _until(lambda: budget_spend(ask).tokens == served_pico(GPT, fake_provider.requests)[0] and not store.inside)

    assert store.overlapped.is_set()
    assert 2 == len(fake_provider.requests)
    assert served_pico(GPT, fake_provider.requests)[1] == ledger_pico(ask)


def test_abandoned_attempt_corrected_alone_when_a_retry_follows(
    store: BudgetStore, openai_client: openai.OpenAI, fake_provider: FakeProvider
) -> None:
    """With retry > budget > timeout, the first attempt is abandoned, the second answers; each is charged once.

    The late correction of the first reservation counts its own attempt
    only, not the retry's that followed on the same record.
    """
    fake_provider.script(Step(delay=0.6), Step())

    @lg.retry(attempts=2, initial=0.01)
    @budget(usd=1.0, store=store)
    @lg.timeout(0.2)
    def ask(messages: Any, max_tokens: int = 500, model: str = GPT) -> Any:
        return openai_client.chat.completions.create(model=model, max_tokens=max_tokens, messages=messages)

    ask(MESSAGES)
    _until(lambda: budget_spend(ask).estimated_calls == 1 and budget_spend(ask).tokens == served_pico(GPT, fake_provider.requests)[0])
    spend = budget_spend(ask)

    assert 2 == len(fake_provider.requests)
    assert served_pico(GPT, fake_provider.requests) == (spend.tokens, ledger_pico(ask))
    assert (2, 0.0) == (spend.calls, spend.reserved_usd)


def test_sync_stream_abandoned_at_its_deadline_is_charged_its_input_estimate(
    store: BudgetStore, anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """An abandoned worker's stream arrives late and is closed unread: it stays at its input estimate."""

    @budget(usd=1.0, store=store, model=CLAUDE)
    @lg.timeout(0.1)
    def ask(messages: Any, max_tokens: int = 500) -> Any:
        return anthropic_client.messages.create(
            model=CLAUDE, max_tokens=max_tokens, messages=messages, stream=True, extra_headers=script(delay=0.8)
        )

    with pytest.raises(lg.GuardTimeout):
        ask(MESSAGES)
    _until(lambda: bool(fake_provider.requests))
    time.sleep(0.6)  # past the server's delay: the worker has the stream (and closes it)
    gc.collect()
    spend = budget_spend(ask)

    assert sent_estimate(CLAUDE) == (spend.tokens, ledger_pico(ask))
    assert (1, 1, 0.0) == (spend.calls, spend.estimated_calls, spend.reserved_usd)


@pytest.mark.parametrize("path", ["fast", "general"])
async def test_call_cancelled_after_its_request_left_is_charged_its_input_estimate(
    store: BudgetStore, async_openai_client: openai.AsyncOpenAI, fake_provider: FakeProvider, path: str
) -> None:
    """A task cancelled while waiting for the response releases its reservation and is charged its input estimate.

    The request reached the server (which may bill it), so it is never
    charged zero; nor its worst case. On the fast path (a lone budget: the
    lane) and the general one (a key callable), which settle by one rule.
    """
    key = None if path == "fast" else (lambda **_: "k")

    @budget(usd=1.0, store=store, key=key)
    async def ask(messages: Any, max_tokens: int = 100, model: str = GPT) -> Any:
        return await async_openai_client.chat.completions.create(
            model=model, max_tokens=max_tokens, messages=messages, extra_headers=script(delay=5)
        )

    task = asyncio.create_task(ask(MESSAGES))
    while not fake_provider.requests:  # noqa: ASYNC110 - the server is another thread, with no event to await
        await asyncio.sleep(0.01)
    k = None if key is None else "k"
    held = budget_spend(ask, k).reserved_usd
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    spend = budget_spend(ask, k)

    assert held > 0
    assert sent_estimate(GPT) == (spend.tokens, ledger_pico(ask, k))
    assert (0.0, 1, 1) == (spend.reserved_usd, spend.calls, spend.estimated_calls)



@pytest.mark.parametrize("shape", ["def", "async def"])
async def test_attempt_whose_sdk_timed_out_waiting_for_the_response_is_charged_its_input_estimate(
    store: BudgetStore,
    openai_client: openai.OpenAI,
    async_openai_client: openai.AsyncOpenAI,
    fake_provider: FakeProvider,
    shape: str,
) -> None:
    """The SDK's own timeout (the README's ``timeout=lg.remaining()``, or any) ends an attempt whose request left.

    The request was sent and the SDK gave up *reading* the response (an HTTP
    read timeout under the SDK's APITimeoutError): the provider may bill it,
    so it is charged its input estimate like any attempt whose request left,
    never zero. (With ``lg.remaining()`` and a sync `timeout` outside, which of
    the two fires first is a race: when ours does, the abandoned worker's
    correction must not bring it to zero either.)
    """

    @budget(usd=1.0, store=store)
    def ask(messages: Any, max_tokens: int = 100, model: str = GPT) -> Any:
        return openai_client.chat.completions.create(
            model=model, max_tokens=max_tokens, messages=messages, timeout=0.3, extra_headers=script(delay=2)
        )

    @budget(usd=1.0, store=store)
    async def aask(messages: Any, max_tokens: int = 100, model: str = GPT) -> Any:
        return await async_openai_client.chat.completions.create(
            model=model, max_tokens=max_tokens, messages=messages, timeout=0.3, extra_headers=script(delay=2)
        )

    target: Any = ask if shape == "def" else aask

    async def call() -> Any:
        return ask(MESSAGES) if shape == "def" else await aask(MESSAGES)

    with pytest.raises(openai.APITimeoutError):
        await call()
    spend = budget_spend(target)

    assert 1 == len(fake_provider.requests)
    assert sent_estimate(GPT) == (spend.tokens, ledger_pico(target))
    assert (0.0, 1, 1) == (spend.reserved_usd, spend.calls, spend.estimated_calls)


@pytest.mark.parametrize("handled", ["raise inside except", "raise from None"])
def test_a_read_timeout_the_function_turns_into_its_own_error_is_still_charged(
    store: BudgetStore, openai_client: openai.OpenAI, fake_provider: FakeProvider, handled: str
) -> None:
    """Whether the request left is a fact about the request, not about how the error reads.

    The function catches the SDK's APITimeoutError and raises its own error
    (no ``from``, or ``from None``): the attempt's error is not a timeout,
    but its request was sent and may be billed, so it is charged its input
    estimate like the bare timeout above.
    """

    @budget(usd=1.0, store=store)
    def ask(messages: Any, max_tokens: int = 100, model: str = GPT) -> Any:
        try:
            return openai_client.chat.completions.create(
                model=model, max_tokens=max_tokens, messages=messages, timeout=0.3, extra_headers=script(delay=2)
            )
        except openai.APITimeoutError:
            if handled == "raise from None":
                raise LookupError("no answer in time") from None
            raise LookupError("no answer in time")  # noqa: B904 - the implicit context is the point

    with pytest.raises(LookupError):
        ask(MESSAGES)
    spend = budget_spend(ask)

    assert 1 == len(fake_provider.requests)
    assert sent_estimate(GPT) == (spend.tokens, ledger_pico(ask))
    assert (0.0, 1, 1) == (spend.reserved_usd, spend.calls, spend.estimated_calls)


def test_a_429_of_a_call_made_while_the_caller_handles_a_read_timeout_is_charged_nothing(
    store: BudgetStore, openai_client: openai.OpenAI, fake_provider: FakeProvider
) -> None:
    """The caller's own timed-out request (its ``except`` block) is not the guarded call's: a 429 it got is free."""

    @budget(usd=1.0, store=store)
    def ask(messages: Any, max_tokens: int = 100, model: str = GPT) -> Any:
        return openai_client.chat.completions.create(
            model=model, max_tokens=max_tokens, messages=messages, extra_headers=script(status=429)
        )

    with pytest.raises(openai.RateLimitError):  # noqa: PT012 - the fallback runs in the handler
        try:
            openai_client.chat.completions.create(
                model=GPT, max_tokens=100, messages=MESSAGES, timeout=0.3, extra_headers=script(delay=2)
            )
        except openai.APITimeoutError:
            ask(MESSAGES)

    assert (0, 0) == (budget_spend(ask).tokens, ledger_pico(ask))

def test_stream_that_fails_midway_is_charged_what_it_consumed(
    store: BudgetStore, anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """An in-stream error after some chunks: the confirmed input plus the output seen, flagged estimated."""
    fake_provider.script(Step(reply="one two three four five six", error_after=3, usage={"input_tokens": 40, "output_tokens": 6}))

    @budget(usd=1.0, store=store)
    def ask(messages: Any, max_tokens: int = 100, model: str = CLAUDE) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=max_tokens, messages=messages, stream=True)

    stream = ask(MESSAGES)
    with pytest.raises(lg.StreamInterrupted) as info:
        for _ in stream:
            pass
    assert isinstance(info.value.__cause__, anthropic.APIStatusError)
    usage = stream.record.usage
    spend = budget_spend(ask)

    assert usage is not None
    assert usage.estimated
    assert 40 == usage.input_tokens
    assert usage.total_tokens == spend.tokens
    assert pico(usage, CLAUDE) == int(spend.exact_usd * PICO)
    assert (0.0, 1) == (spend.reserved_usd, spend.estimated_calls)


def test_redis_store_is_one_round_trip_to_reserve_and_one_to_settle(redis_url: str, openai_client: openai.OpenAI) -> None:
    """The server sees exactly two scripts per guarded call, and nothing else."""
    store = RedisBudgetStore(redis_url, namespace=uuid.uuid4().hex)

    @budget(usd=1.0, store=store)
    def ask(messages: Any, max_tokens: int = 10, model: str = GPT) -> Any:
        return openai_client.chat.completions.create(model=model, max_tokens=max_tokens, messages=messages)

    ask(MESSAGES)  # loads the scripts
    client = store.client
    sent: list[str] = []
    execute = client.execute_command

    def counting(*args: Any, **kwargs: Any) -> Any:
        sent.append(str(args[0]))
        return execute(*args, **kwargs)

    client.execute_command = counting
    for _ in range(10):
        ask(MESSAGES)
    store.close()

    assert ["EVALSHA"] * 20 == sent


def test_key_callable_of_a_method_gets_its_arguments_without_self(store: BudgetStore, openai_client: openai.OpenAI) -> None:
    """key= sees the method's arguments by name, defaults applied, and not self."""
    seen: list[dict[str, Any]] = []

    def key(**arguments: Any) -> str:
        seen.append(arguments)
        return str(arguments["tenant"])

    class Service:
        @budget(usd=1.0, store=store, key=key, model=GPT)
        def ask(self, tenant: str, max_tokens: int = 10) -> Any:
            return openai_client.chat.completions.create(model=GPT, max_tokens=max_tokens, messages=MESSAGES)

    Service().ask("acme")

    assert [{"tenant": "acme", "max_tokens": 10}] == seen
    assert 1 == budget_spend(Service.ask, key="acme").calls


def test_a_key_that_never_reads_its_rest_is_given_its_own_parameters_alike() -> None:
    """A ``key=`` whose ``**_`` its code never reads gets only what it names (`names_read`), with the same values.

    Keyword, positional, default, a keyword its function's ``**extra`` took,
    and a name the call lacks (the key's own default), method or not: what a
    key reading every argument sees of the same names.
    """
    narrow_seen: list[tuple[Any, ...]] = []
    wide_seen: list[tuple[Any, ...]] = []

    def narrow(user: str, tier: str = "none", region: str = "eu", **_: Any) -> str:
        narrow_seen.append((user, tier, region))
        return user

    def wide(user: str, tier: str = "none", region: str = "eu", **rest: Any) -> str:
        wide_seen.append((user, tier, region, sorted(rest)))
        return user

    def sdk(messages: Any, user: str = "anon", *, tier: str = "free", max_tokens: int = 16, **extra: Any) -> str:
        return "ok"

    class Service:
        def ask(self, user: str, max_tokens: int = 16, tier: str = "std") -> str:
            return "ok"

    binder = Binder(sdk)
    assert ("user", "tier", "region") == names_read(narrow, binder)
    assert names_read(wide, binder) is None  # it reads **rest: every argument, as documented
    assert names_read(lambda user, **_: locals(), binder) is None
    assert names_read(lambda user: user, binder) is None  # no ** parameter: it must see every name

    for key in (narrow, wide):
        f = budget(usd=1.0, key=key, model=GPT)(sdk)
        f(MESSAGES)
        f(MESSAGES, "bob")
        f(MESSAGES, user="cy", tier="pro")
        f(MESSAGES, "dd", region="us")
        m = budget(usd=1.0, key=key, model=GPT)(Service.ask)
        m(Service(), "ed")
        m(Service(), user="fi", tier="gold")

    expected = [("anon", "free", "eu"), ("bob", "free", "eu"), ("cy", "pro", "eu"), ("dd", "free", "us"), ("ed", "std", "eu"), ("fi", "gold", "eu")]
    assert expected == narrow_seen
    assert expected == [t[:3] for t in wide_seen]


# -- refusing before the request leaves ---------------------------------------------


def test_a_call_that_cannot_fit_is_refused_before_any_request(
    store: BudgetStore, openai_client: openai.OpenAI, fake_provider: FakeProvider, llmguard_events: list[CapturedEvent]
) -> None:
    """The refusal says scope, limit, spent, reserved and requested; the server sees nothing."""
    limit = 0.01

    @budget(usd=limit, per="hour", store=store, model=GPT)
    def ask(messages: Any, max_tokens: int = 100) -> Any:
        return openai_client.chat.completions.create(
            model=GPT, max_tokens=max_tokens, messages=messages, extra_headers=script(usage={"input_tokens": 3800, "output_tokens": 10})
        )

    ask(MESSAGES)
    spent = 3800 * 2.5e-6 + 10 * 10e-6
    with pytest.raises(lg.BudgetExceeded) as info:
        ask(MESSAGES)
    exc = info.value

    assert 1 == len(fake_provider.requests)
    assert exc.scope.endswith("ask/hour")
    assert ("usd", limit, 0.0) == (exc.unit, exc.limit, exc.reserved)
    assert spent == pytest.approx(exc.spent, abs=1e-12)
    assert exc.spent + exc.requested > exc.limit
    assert "refused before sending" in str(exc)
    assert lg.ErrorKind.GUARD == providers.classify(exc).kind  # so retry never retries it
    assert ["llmguard.budget.exceeded"] == [e.name for e in llmguard_events if e.name.endswith("exceeded")]


def test_token_limits_count_input_plus_output(store: BudgetStore, openai_client: openai.OpenAI, fake_provider: FakeProvider) -> None:
    """A token budget reserves input estimate + output cap and charges input + output."""

    @budget(tokens=1000, store=store)
    def ask(messages: Any, max_tokens: int) -> Any:
        return openai_client.chat.completions.create(
            model=GPT, max_tokens=max_tokens, messages=messages, extra_headers=script(usage={"input_tokens": 10, "output_tokens": 20})
        )

    ask(MESSAGES, 200)
    with pytest.raises(lg.BudgetExceeded) as info:
        ask(MESSAGES, 990)

    assert 30 == budget_spend(ask).tokens
    assert ("tokens", 1000, 30) == (info.value.unit, info.value.limit, info.value.spent)
    assert 1 == len(fake_provider.requests)


def test_under_retry_each_attempt_is_reserved_and_a_refusal_is_not_retried(
    store: BudgetStore, fake_clock: FakeClock, openai_client: openai.OpenAI, fake_provider: FakeProvider
) -> None:
    """With retry above budget, a 429 attempt costs nothing, the retry is charged; BudgetExceeded is final."""

    @lg.retry(attempts=3)
    @budget(usd=0.01, store=store)
    def ask(messages: Any, max_tokens: int = 100, model: str = GPT) -> Any:
        return openai_client.chat.completions.create(model=model, max_tokens=max_tokens, messages=messages)

    fake_provider.script(Step(status=429, headers={"retry-after": "1"}), Step(usage={"input_tokens": 3800, "output_tokens": 10}))
    ask(MESSAGES)
    spend = budget_spend(ask)
    with pytest.raises(lg.BudgetExceeded):
        ask(MESSAGES)

    assert (2, 2) == (spend.calls, len(fake_provider.requests))
    assert pico(lg.Usage(3800, 10), GPT) == int(spend.exact_usd * PICO)
    assert [1.0] == fake_clock.sleeps  # the 429's Retry-After; the refusal slept nothing


# -- every shape ---------------------------------------------------------------------

SHAPES = ["def", "async def", "generator", "async generator", "sdk stream", "async sdk stream", "method"]


def _shaped(
    shape: str, b: Budget, client: anthropic.Anthropic, aclient: anthropic.AsyncAnthropic
) -> Any:
    """A function of *shape* guarded by *b*, and how to run it to the end (async)."""
    kw: dict[str, Any] = {"model": CLAUDE, "max_tokens": 50, "messages": MESSAGES}

    if shape == "def":

        @b
        def fn(max_tokens: int = 50) -> Any:
            return client.messages.create(**kw)

        async def run() -> None:
            fn()

    elif shape == "async def":

        @b
        async def afn(max_tokens: int = 50) -> Any:
            return await aclient.messages.create(**kw)

        async def run() -> None:
            await afn()

    elif shape == "generator":

        @b
        def gen(max_tokens: int = 50) -> Iterator[str]:
            with client.messages.stream(**kw) as s:
                yield from s.text_stream
                u = s.get_final_message().usage
                lg.report_usage(input_tokens=u.input_tokens, output_tokens=u.output_tokens)

        async def run() -> None:
            list(gen())

    elif shape == "async generator":

        @b
        async def agen(max_tokens: int = 50) -> AsyncIterator[str]:
            async with aclient.messages.stream(**kw) as s:
                async for text in s.text_stream:
                    yield text
                u = (await s.get_final_message()).usage
                lg.report_usage(input_tokens=u.input_tokens, output_tokens=u.output_tokens)

        async def run() -> None:
            _ = [t async for t in agen()]

    elif shape == "sdk stream":

        @b
        def sfn(max_tokens: int = 50) -> Any:
            return client.messages.create(**kw, stream=True)

        async def run() -> None:
            for _ in sfn():
                pass

    elif shape == "async sdk stream":

        @b
        async def asfn(max_tokens: int = 50) -> Any:
            return await aclient.messages.create(**kw, stream=True)

        async def run() -> None:
            async for _ in await asfn():
                pass

    else:

        class Service:
            @b
            def ask(self, max_tokens: int = 50) -> Any:
                return client.messages.create(**kw)

        svc = Service()

        async def run() -> None:
            svc.ask()

    return run


@pytest.mark.parametrize("shape", SHAPES)
async def test_every_shape_settles_exactly_and_refuses_before_sending(
    shape: str,
    store: BudgetStore,
    anthropic_client: anthropic.Anthropic,
    async_anthropic_client: anthropic.AsyncAnthropic,
    fake_provider: FakeProvider,
) -> None:
    """def, async def, generators, returned SDK streams and methods: exact charge, then a refusal."""
    b = budget(usd=0.01, store=store, name=f"shape-{shape}", model=CLAUDE)
    run = _shaped(shape, b, anthropic_client, async_anthropic_client)
    first = lg.Usage(3000, 20)  # $0.0093 of $0.01: the next worst case cannot fit
    fake_provider.script(Step(usage={"input_tokens": 3000, "output_tokens": 20}))

    await run()
    with pytest.raises(lg.BudgetExceeded):
        await run()
    spend = b.spend()

    assert 1 == len(fake_provider.requests)
    assert pico(first, CLAUDE) == int(spend.exact_usd * PICO)
    assert (1, 0.0) == (spend.calls, spend.reserved_usd)


# -- estimation ---------------------------------------------------------------------


def test_reservation_uses_sdk_shaped_arguments_as_documented(
    store: BudgetStore, anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """Input: the worst-case reading of the documented count of messages and system; output: max_tokens; worst input rate."""
    messages = [{"role": "user", "content": "x" * 300}]
    system = "be brief"

    @budget(usd=1.0, store=store)
    def ask(messages: Any, system: str, max_tokens: int, model: str = CLAUDE) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=max_tokens, messages=messages, system=system, stream=True)

    stream = ask(messages, system, 400)
    held = budget_spend(ask)
    stream.close()
    input_tokens = reserved_input(messages, system)

    assert input_tokens + 400 == held.reserved_tokens
    # Input at the cache-write rate ($3.75), the worst Claude can bill it at.
    assert (input_tokens * 3.75 + 400 * 15) / 1e6 == pytest.approx(held.reserved_usd, rel=1e-9)


@pytest.mark.parametrize("signature", ["named", "kwargs"])
@pytest.mark.parametrize("path", ["lane", "stacked", "scoped"])
def test_openai_n_multiplies_max_tokens_in_the_worst_case(
    path: str, signature: str, openai_client: openai.OpenAI, fake_provider: FakeProvider
) -> None:
    """``n=2`` completions of up to 300 tokens each can bill 600: a 500-token budget refuses it, sends nothing.

    ``n=1`` fits. The same on the lane, under another guard and inside a
    scope, whether ``n`` is a parameter of the function or in its ``**kwargs``.
    """
    b = budget(tokens=500, store=MemoryBudgetStore())
    usage = script(usage={"input_tokens": 10, "output_tokens": 20})
    if signature == "named":

        def named(messages: Any, max_tokens: int, n: int = 1, model: str = GPT) -> Any:
            return openai_client.chat.completions.create(
                model=model, messages=messages, max_tokens=max_tokens, n=n, extra_headers=usage
            )

        guarded = b(named)
        ask = lambda n: guarded(MESSAGES, 300, n=n)  # noqa: E731
    else:

        def loose(**kwargs: Any) -> Any:
            return openai_client.chat.completions.create(**kwargs, extra_headers=usage)

        guarded = b(loose)
        ask = lambda n: guarded(model=GPT, messages=MESSAGES, max_tokens=300, n=n)  # noqa: E731
    if path == "stacked":
        guarded = lg.retry(attempts=1)(guarded)

    def run(n: int) -> Any:
        if path == "scoped":
            with lg.budget(tokens=100_000):
                return ask(n)
        return ask(n)

    input_tokens = reserved_input(MESSAGES)
    with pytest.raises(lg.BudgetExceeded) as info:
        run(2)

    assert [] == fake_provider.requests
    assert ("tokens", 500, input_tokens + 2 * 300) == (info.value.unit, info.value.limit, info.value.requested)
    assert run(1).choices
    assert 1 == len(fake_provider.requests)
    assert 30 == budget_spend(guarded).tokens


@pytest.mark.parametrize("path", ["lane", "stacked", "scoped"])
def test_input_estimate_counts_message_text_list_items_and_str_of_the_rest(path: str) -> None:
    """A text message: its UTF-8 bytes + 40; a list: its items; content blocks and the rest: str(); all / 3.

    (Spelled out here, and in tests/estimates.py, independently.)

    The same figure on the lane, on the general path's shortcut (budget
    under another guard) and on the full general path (inside a scope).
    """
    blocks = {"role": "user", "content": [{"type": "text", "text": "look"}]}
    conversation = [
        {"role": "user", "content": "h\u00e9llo " * 50},  # non-ASCII: bytes, not characters
        {"role": "assistant", "content": "ok"},
        blocks,
    ]
    system = ["be brief", {"cache_control": "ephemeral"}]
    size = len(("h\u00e9llo " * 50).encode()) + 40 + 2 + 40 + len(str(blocks)) + len("be brief") + len(str(system[1]))
    seen: list[int] = []
    store = MemoryBudgetStore()
    b = budget(usd=1.0, store=store, name="estimate")

    def ask(messages: Any, system: Any = None, model: str = CLAUDE, max_tokens: int = 100) -> str:
        seen.append(b.spend().reserved_tokens)
        lg.report_usage(input_tokens=1, output_tokens=1, model=model, provider="anthropic")
        return "ok"

    guarded = b(ask)
    if path == "stacked":
        guarded = lg.retry(attempts=1)(guarded)
    if path == "scoped":
        with lg.budget(usd=1.0):
            guarded(conversation, system)
    else:
        guarded(conversation, system)

    assert [(size + 2) // 3 + 100] == seen
    assert [reserved_input(conversation, system) + 100] == seen


def test_input_estimate_of_a_list_containing_itself_is_its_str() -> None:
    """A self-containing list (or one nested deep) is counted by its str(), never recursed into."""
    looped: list[Any] = ["abc"]
    looped.append(looped)
    seen: list[int] = []
    b = budget(usd=1.0, store=MemoryBudgetStore())

    @b
    def ask(messages: Any, model: str = CLAUDE, max_tokens: int = 10) -> str:
        seen.append(b.spend().reserved_tokens)
        lg.report_usage(input_tokens=1, output_tokens=1, model=model, provider="anthropic")
        return "ok"

    assert "ok" == ask(looped)
    assert [(3 + len(str(looped)) + 2) // 3 + 10] == seen


def test_estimate_callable_overrides_the_arguments(store: BudgetStore, openai_client: openai.OpenAI) -> None:
    """estimate= gets the call's arguments by name and its (input, output) is what is reserved."""
    seen: list[dict[str, Any]] = []

    def estimate(**arguments: Any) -> tuple[int, int]:
        seen.append(arguments)
        return 1000, 500

    @budget(usd=worst(1000, 500) * 1.5, store=store, estimate=estimate, model=GPT)
    def ask(q: str, user: str = "anon") -> Any:
        return openai_client.chat.completions.create(
            model=GPT, messages=[{"role": "user", "content": q}], extra_headers=script(usage={"input_tokens": 1000, "output_tokens": 500})
        )

    ask("hi")
    with pytest.raises(lg.BudgetExceeded) as info:
        ask("hi")

    assert [{"q": "hi", "user": "anon"}] * 2 == seen
    assert worst(1000, 500) == pytest.approx(info.value.requested, rel=1e-9)


def test_unknown_output_cap_follows_unknown_cost(store: BudgetStore, openai_client: openai.OpenAI, fake_provider: FakeProvider) -> None:
    """No output cap: reject fails at decoration; allow reserves the input only; a fixed amount reserves it."""

    def make(usd: float, **kw: Any) -> Any:
        @budget(usd=usd, store=store, model=GPT, **kw)
        def ask(q: str) -> Any:
            return openai_client.chat.completions.create(
                model=GPT, messages=[{"role": "user", "content": q}], extra_headers=script(usage={"input_tokens": 5, "output_tokens": 77})
            )

        return ask

    input_tokens = reserved_input("hello")  # no input argument: every argument
    # With reject, no call could ever run: refused when decorated, naming the fix.
    with pytest.raises(ValueError, match=r"budget\(max_output=...\) is needed .*unknown_cost='reject'"):
        make(1.0)
    with pytest.raises(lg.BudgetExceeded) as allowed:
        make(1e-9, unknown_cost="allow")("hello")
    with pytest.raises(lg.BudgetExceeded) as fixed:
        make(0.1, unknown_cost=0.25)("hello")
    ok = make(1.0, unknown_cost="allow")
    ok("hello")

    assert input_tokens * 2.5e-6 == pytest.approx(allowed.value.requested, rel=1e-9)
    assert 0.25 == fixed.value.requested
    assert 1 == len(fake_provider.requests)
    assert pico(lg.Usage(5, 77), GPT) == ledger_pico(ok)


def test_observed_output_bounds_later_reservations(openai_client: openai.OpenAI) -> None:
    """After a call, the largest output seen (of the last 100) is the output cap of uncapped calls."""

    @budget(usd=1.0, model=GPT, unknown_cost="allow")
    def ask(q: str) -> Any:
        return openai_client.chat.completions.create(
            model=GPT, messages=[{"role": "user", "content": q}], extra_headers=script(usage={"input_tokens": 5, "output_tokens": 77})
        )

    ask("hello")
    with pytest.raises(lg.BudgetExceeded) as info, budget(tokens=10):
        ask("hello")

    input_tokens = reserved_input("hello")  # no input argument: every argument
    assert ("tokens", input_tokens + 77) == (info.value.unit, info.value.requested)


def test_unknown_price_follows_unknown_cost(store: BudgetStore, openai_client: openai.OpenAI, fake_provider: FakeProvider) -> None:
    """A model without a price is refused under reject; a fixed amount is reserved and charged."""

    @budget(usd=1.0, store=store)
    def reject(messages: Any, model: str, max_tokens: int = 10) -> Any:
        return openai_client.chat.completions.create(model=model, max_tokens=max_tokens, messages=messages)

    @budget(usd=1.0, store=store, unknown_cost=0.05)
    def fixed(messages: Any, model: str, max_tokens: int = 10) -> Any:
        return openai_client.chat.completions.create(model=model, max_tokens=max_tokens, messages=messages)

    with pytest.raises(lg.BudgetExceeded, match=r"no price known for model 'my-finetune-7'"):
        reject(MESSAGES, "my-finetune-7")
    fixed(MESSAGES, "my-finetune-7")

    assert 1 == len(fake_provider.requests)
    assert Decimal("0.05") == budget_spend(fixed).exact_usd  # unpriced: the reservation stands


def test_max_call_usd_and_per_call_cap_one_call_up_front(openai_client: openai.OpenAI, fake_provider: FakeProvider) -> None:
    """A single call whose worst case is too big is refused, whatever the window holds."""

    @budget(usd=100.0, per="day", max_call_usd=0.01, model=GPT)
    def capped(messages: Any, max_tokens: int) -> Any:
        return openai_client.chat.completions.create(model=GPT, max_tokens=max_tokens, messages=messages)

    @budget(usd=0.01, per="call", model=GPT)
    def per_call(messages: Any, max_tokens: int) -> Any:
        return openai_client.chat.completions.create(model=GPT, max_tokens=max_tokens, messages=messages)

    capped(MESSAGES, 100)
    per_call(MESSAGES, 100)
    per_call(MESSAGES, 100)
    with pytest.raises(lg.BudgetExceeded, match="max_call_usd"):
        capped(MESSAGES, 5000)
    with pytest.raises(lg.BudgetExceeded, match="per-call limit"):
        per_call(MESSAGES, 5000)

    assert 3 == len(fake_provider.requests)


# -- windows, keys, scopes ------------------------------------------------------------------


def test_windows_are_calendar_aligned_and_roll_over_on_the_clock(
    store: BudgetStore, fake_clock: FakeClock, openai_client: openai.OpenAI
) -> None:
    """A full minute refuses; the next minute starts empty; the old window stays readable."""
    cost = worst(1000, 10)

    @budget(usd=cost * 2, per="minute", store=store, estimate=lambda **_: (1000, 10), model=GPT)
    def ask() -> Any:
        return openai_client.chat.completions.create(
            model=GPT, messages=MESSAGES, extra_headers=script(usage={"input_tokens": 1000, "output_tokens": 10})
        )

    fake_clock.advance(60 - fake_clock.time() % 60 + 1)  # 1 s into a minute
    first_minute = fake_clock.time()
    ask()
    ask()
    with pytest.raises(lg.BudgetExceeded):
        ask()
    fake_clock.advance(58)
    with pytest.raises(lg.BudgetExceeded):
        ask()
    fake_clock.advance(1)  # 00:00 of the next minute
    ask()
    now = budget_spend(ask)
    before = budget_spend(ask, at=first_minute)

    assert now.window_start == before.window_start + 60 == (fake_clock.time() // 60) * 60
    assert (1, 2) == (now.calls, before.calls)
    assert pico(lg.Usage(1000, 10), GPT) * 2 == int(before.exact_usd * PICO)


def test_per_key_ledgers_are_independent(store: BudgetStore, openai_client: openai.OpenAI, fake_provider: FakeProvider) -> None:
    """Alice exhausting her budget does not touch Bob's."""

    @budget(usd=worst(1000, 10) * 1.5, per="day", store=store, key=lambda user, **_: user, estimate=lambda **_: (1000, 10), model=GPT)
    def ask(q: str, user: str) -> Any:
        return openai_client.chat.completions.create(
            model=GPT, messages=MESSAGES, extra_headers=script(usage={"input_tokens": 1000, "output_tokens": 10})
        )

    ask("hi", user="alice")
    with pytest.raises(lg.BudgetExceeded) as info:
        ask("hi", user="alice")
    ask("hi", "bob")

    assert "[alice]/day" in info.value.scope
    assert (1, 1) == (budget_spend(ask, key="alice").calls, budget_spend(ask, key="bob").calls)
    assert 0 == budget_spend(ask, key="carol").calls
    assert 2 == len(fake_provider.requests)


def test_nested_scopes_all_apply(store: BudgetStore, openai_client: openai.OpenAI, fake_provider: FakeProvider) -> None:
    """A call inside two `with` scopes is charged to both, and refused by whichever is full."""
    each = worst(1000, 10)

    @budget
    def ask() -> Any:
        return openai_client.chat.completions.create(
            model=GPT, max_tokens=10, messages=MESSAGES, extra_headers=script(usage={"input_tokens": 1000, "output_tokens": 10})
        )

    with budget(usd=each * 3.5, store=store, name="outer", estimate=lambda **_: (1000, 10), model=GPT) as outer:
        with budget(usd=each * 1.5, store=store, name="inner") as inner:
            ask()
            assert each == pytest.approx(inner.spent, rel=1e-9)
            with pytest.raises(lg.BudgetExceeded, match="'inner'"):
                ask()
        ask()
        ask()
        with pytest.raises(lg.BudgetExceeded, match="'outer'"):
            ask()
        assert each * 3 == pytest.approx(outer.spent, rel=1e-9)
        assert each * 0.5 == pytest.approx(outer.remaining, rel=1e-6)
        assert 0.0 == outer.reserved
    ask()  # outside every scope, the bare decorator enforces nothing

    assert 4 == len(fake_provider.requests)
    assert 1 == inner.spend().calls


async def test_scopes_follow_tasks(async_openai_client: openai.AsyncOpenAI) -> None:
    """An `async with` scope applies to awaited calls and to the tasks started inside it."""

    @budget
    async def ask(max_tokens: int = 10) -> Any:
        return await async_openai_client.chat.completions.create(model=GPT, max_tokens=max_tokens, messages=MESSAGES)

    async with budget(usd=1.0, model=GPT) as scope:
        await ask()
        await asyncio.gather(ask(), asyncio.create_task(ask()))

    assert 3 == scope.spend().calls


# -- alerts ---------------------------------------------------------------------------


def test_alerts_fire_once_per_threshold_per_window(
    store: BudgetStore, fake_clock: FakeClock, openai_client: openai.OpenAI, llmguard_events: list[CapturedEvent]
) -> None:
    """Each of 0.5/0.8/1.0 fires once (callback and event) as spend crosses it, again next window."""
    alerts: list[lg.BudgetAlert] = []
    each = worst(1000, 10)

    @budget(usd=each * 4, per="hour", store=store, key="team", on_alert=alerts.append, estimate=lambda **_: (1000, 10), model=GPT)
    def ask() -> Any:
        return openai_client.chat.completions.create(
            model=GPT, messages=MESSAGES, extra_headers=script(usage={"input_tokens": 1000, "output_tokens": 10})
        )

    fake_clock.advance(3600 - fake_clock.time() % 3600)
    ask()  # 25%
    ask()  # 50%
    ask()  # 75%
    ask()  # 100%
    fired = [(a.threshold, a.key, a.unit) for a in alerts]
    fake_clock.advance(3600)
    ask()
    ask()

    assert [(0.5, "team", "usd"), (0.8, "team", "usd"), (1.0, "team", "usd")] == fired
    assert [0.5, 0.8, 1.0, 0.5] == [a.threshold for a in alerts]
    assert alerts[3].window_start == alerts[0].window_start + 3600
    events = [e for e in llmguard_events if e.name == "llmguard.budget.alert"]
    assert [0.5, 0.8, 1.0, 0.5] == [e["threshold"] for e in events]
    assert "ask" in events[0]["function"]


def test_on_refused_tells_the_app_who_was_refused_before_any_alert_could(
    store: BudgetStore, openai_client: openai.OpenAI
) -> None:
    """72 % spent, the next worst case does not fit: refused before the 80 % alert ever fires; on_refused hears it."""
    alerts: list[lg.BudgetAlert] = []
    refused: list[lg.BudgetExceeded] = []
    limit = worst(720, 10) / 0.72

    @budget(
        usd=limit, per="day", store=store, key=lambda user: user, on_alert=alerts.append,
        on_refused=refused.append, estimate=lambda **_: (1000, 10), model=GPT,
    )
    def ask(user: str) -> Any:
        return openai_client.chat.completions.create(
            model=GPT, messages=MESSAGES, extra_headers=script(usage={"input_tokens": 720, "output_tokens": 10})
        )

    ask("ada")
    with pytest.raises(lg.BudgetExceeded) as info:
        ask("ada")

    assert [0.5] == [a.threshold for a in alerts]
    assert [info.value] == refused
    assert "ada" in refused[0].scope
    assert refused[0].spent == pytest.approx(0.72 * limit)


def test_a_failing_refusal_callback_warns_and_the_refusal_stands() -> None:
    def broken(exc: lg.BudgetExceeded) -> None:
        raise RuntimeError("pager down")

    @budget(usd=1e-9, on_refused=broken, estimate=lambda **_: (1000, 10), model=GPT)
    def ask() -> str:
        return "never"

    with pytest.warns(RuntimeWarning, match="on_refused callback failed"), pytest.raises(lg.BudgetExceeded):
        ask()


def test_a_failing_alert_callback_does_not_lose_the_result(
    openai_client: openai.OpenAI, llmguard_events: list[CapturedEvent]
) -> None:
    """on_alert raising warns; the alert still fired (callback and event), the call is charged, its result comes back."""
    limit = worst(1000, 10) * 1.2
    alerts: list[lg.BudgetAlert] = []

    def broken(alert: lg.BudgetAlert) -> None:
        alerts.append(alert)
        raise RuntimeError("pager down")

    @budget(usd=limit, alert_at=(0.5,), on_alert=broken, estimate=lambda **_: (1000, 10), model=GPT)
    def ask() -> Any:
        return openai_client.chat.completions.create(
            model=GPT, messages=MESSAGES, extra_headers=script(usage={"input_tokens": 1000, "output_tokens": 10})
        )

    with pytest.warns(RuntimeWarning, match="pager down"):
        result = ask()

    assert result.choices
    charged = pico(lg.Usage(1000, 10), GPT)
    assert (charged, 1, 0.0) == (ledger_pico(ask), budget_spend(ask).calls, budget_spend(ask).reserved_usd)
    (alert,) = alerts
    assert (0.5, "usd", limit) == (alert.threshold, alert.unit, alert.limit)
    assert charged / PICO == pytest.approx(alert.spent, abs=1e-12)
    events = [e for e in llmguard_events if e.name == "llmguard.budget.alert"]
    assert [0.5] == [e["threshold"] for e in events]


# -- concurrency ------------------------------------------------------------------------

CALLERS = 200
FITS = 50


@pytest.fixture
def pooled_openai(fake_provider: FakeProvider) -> Iterator[openai.OpenAI]:
    """An openai client with a small connection pool, so 200 callers queue in the client.

    The fake provider's listen backlog is small; bursts of new connections
    would be dropped by the kernel, which is not what these tests are about.
    """
    http = httpx.Client(limits=httpx.Limits(max_connections=8, max_keepalive_connections=8), timeout=30)
    with openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="sk-test", max_retries=0, http_client=http) as client:
        yield client


@pytest.fixture
async def pooled_async_openai(fake_provider: FakeProvider) -> AsyncIterator[openai.AsyncOpenAI]:
    """The async twin of `pooled_openai`."""
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=8, max_keepalive_connections=8), timeout=30)
    client = openai.AsyncOpenAI(base_url=fake_provider.openai_base_url, api_key="sk-test", max_retries=0, http_client=http)
    yield client
    await client.close()


def _justified(exc: lg.BudgetExceeded) -> bool:
    return exc.spent + exc.reserved + exc.requested > exc.limit * (1 + 1e-12)


@pytest.mark.parametrize("output", [50, 7], ids=["exact-fit", "uses-less"])
def test_200_threads_never_overspend_and_every_refusal_is_justified(
    output: int, store: BudgetStore, pooled_openai: openai.OpenAI, fake_provider: FakeProvider
) -> None:
    """200 threads on a budget that fits 50 worst cases: spend <= limit, refusals only when full."""
    each = worst(100, 50)
    limit = each * FITS
    headers = script(usage={"input_tokens": 100, "output_tokens": output}, delay=0.02)

    @budget(usd=limit, per="day", store=store, estimate=lambda **_: (100, 50), model=GPT)
    def ask() -> Any:
        return pooled_openai.chat.completions.create(model=GPT, messages=MESSAGES, extra_headers=headers)

    refusals: list[lg.BudgetExceeded] = []
    done: list[int] = []
    barrier = threading.Barrier(CALLERS)

    def caller() -> None:
        barrier.wait()
        try:
            ask()
            done.append(1)
        except lg.BudgetExceeded as exc:
            refusals.append(exc)

    _in_threads(CALLERS, caller)
    spend = budget_spend(ask)

    assert CALLERS == len(done) + len(refusals)
    assert len(done) == len(fake_provider.requests)
    assert pico(lg.Usage(100, output), GPT) * len(done) == int(spend.exact_usd * PICO)
    assert spend.usd <= limit
    assert [] == [str(e) for e in refusals if not _justified(e)][:2]
    if output == 50:
        assert FITS == len(done)
    else:
        assert FITS <= len(done)
    assert 0 == spend.reserved_tokens


async def test_200_tasks_never_overspend(
    store: BudgetStore, pooled_async_openai: openai.AsyncOpenAI, fake_provider: FakeProvider
) -> None:
    """200 asyncio tasks on a budget that fits 50: exactly 50 go out, each refusal justified."""
    limit = worst(100, 50) * FITS
    headers = script(usage={"input_tokens": 100, "output_tokens": 50}, delay=0.02)

    @budget(usd=limit, per="day", store=store, estimate=lambda **_: (100, 50), model=GPT)
    async def ask() -> Any:
        return await pooled_async_openai.chat.completions.create(model=GPT, messages=MESSAGES, extra_headers=headers)

    results = await asyncio.gather(*(ask() for _ in range(CALLERS)), return_exceptions=True)
    refusals = [r for r in results if isinstance(r, lg.BudgetExceeded)]
    spend = budget_spend(ask)

    assert FITS == CALLERS - len(refusals) == len(fake_provider.requests)
    assert [] == [str(e) for e in refusals if not _justified(e)][:2]
    assert pico(lg.Usage(100, 50), GPT) * FITS == int(spend.exact_usd * PICO)
    assert spend.usd <= limit


# -- leases and store failures ---------------------------------------------------------------


def test_a_reservation_nobody_settles_expires(store: BudgetStore, fake_clock: FakeClock) -> None:
    """A holder that died leaves its reservation only until its lease runs out."""
    line = Line("leases:alice:all", 900, 10, 1000, None, None)
    assert store.reserve(store.new_id(), [line], fake_clock.time(), 30.0) is None  # then "dies"

    refused = store.reserve(store.new_id(), [Line("leases:alice:all", 200, 1, 1000, None, None)], fake_clock.time(), 30.0)
    fake_clock.advance(31)
    after = store.reserve(store.new_id(), [Line("leases:alice:all", 200, 1, 1000, None, None)], fake_clock.time(), 30.0)

    assert refused is not None
    assert (900, 200) == (refused.reserved, refused.requested)
    assert after is None
    assert (200, 1) == (store.ledger("leases:alice:all", fake_clock.time()).reserved_usd, store.ledger("leases:alice:all", fake_clock.time()).reserved_tokens)


def test_a_late_settlement_is_still_charged_once(store: BudgetStore, fake_clock: FakeClock) -> None:
    """Settling after the lease expired charges the real cost and does not release twice."""
    rid = store.new_id()
    line = Line("late:k:all", 500, 5, 1000, None, None)
    store.reserve(rid, [line], fake_clock.time(), 10.0)
    fake_clock.advance(11)
    assert store.ledger("late:k:all", fake_clock.time()).reserved_usd == 0
    line.charge_usd, line.charge_tokens = 321, 4
    store.settle(rid, [line], fake_clock.time(), count=True, estimated=False)
    ledger = store.ledger("late:k:all", fake_clock.time())

    assert (321, 4, 0, 0, 1) == (ledger.usd, ledger.tokens, ledger.reserved_usd, ledger.reserved_tokens, ledger.calls)


@pytest.fixture
def dead_redis_url() -> str:
    """A redis URL nothing listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0?socket_connect_timeout=0.2"


def test_store_down_fail_closed_refuses_with_a_clear_error(
    dead_redis_url: str, openai_client: openai.OpenAI, fake_provider: FakeProvider, llmguard_events: list[CapturedEvent]
) -> None:
    """Redis unreachable + fail_closed: BudgetExceeded saying so (cause chained), nothing sent."""

    @budget(usd=1.0, store=dead_redis_url, model=GPT)
    def ask(messages: Any, max_tokens: int = 10) -> Any:
        return openai_client.chat.completions.create(model=GPT, max_tokens=max_tokens, messages=messages)

    with pytest.raises(lg.BudgetExceeded, match="budget store is unavailable") as info:
        ask(MESSAGES)

    assert info.value.__cause__ is not None
    assert 0 == len(fake_provider.requests)
    assert ["store_error"] == [e["reason"] for e in llmguard_events if e.name == "llmguard.budget.exceeded"]


async def test_store_down_fail_open_lets_calls_through_and_says_so(
    dead_redis_url: str, async_openai_client: openai.AsyncOpenAI, fake_provider: FakeProvider, llmguard_events: list[CapturedEvent]
) -> None:
    """Redis unreachable + fail_open: the call goes out, store errors are events, never exceptions."""

    @budget(usd=1.0, store=dead_redis_url, on_store_error="fail_open", model=GPT)
    async def ask(messages: Any, max_tokens: int = 10) -> Any:
        return await async_openai_client.chat.completions.create(model=GPT, max_tokens=max_tokens, messages=messages)

    result = await ask(MESSAGES)

    assert result.choices
    assert 1 == len(fake_provider.requests)
    stages = [e["stage"] for e in llmguard_events if e.name == "llmguard.budget.store_error"]
    assert ["reserve", "settle"] == stages


def test_budget_spend_reads_decorated_functions_and_rejects_others() -> None:
    """budget_spend accepts a budget or a guarded function; anything else is a TypeError."""
    b = budget(usd=1.0, model=GPT, max_output=1)

    @b
    def fn() -> None:
        return None

    fn()

    assert budget_spend(fn) == budget_spend(b) == b.spend()
    with pytest.raises(TypeError, match=r"budget_spend\(target=\.\.\.\)"):
        budget_spend(print)


def test_a_stream_closed_before_reading_is_charged_its_reservation(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """The request of a stream closed unread was sent: it is charged like a dropped one, never $0."""

    @budget(usd=1.0)
    def ask(messages: Any, model: str = "claude-sonnet-4-6", max_tokens: int = 100) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=max_tokens, messages=messages, stream=True)

    stream = ask([{"role": "user", "content": "hello " * 200}])
    stream.close()

    assert 1 == len(fake_provider.requests)
    assert lg.budget_spend(ask).usd > 0


def test_a_budget_that_could_never_run_fails_at_decoration() -> None:
    """No output cap (or no model for a USD limit) with unknown_cost='reject': a ValueError naming the fix."""
    with pytest.raises(ValueError, match=r"budget\(max_output=...\) is needed"):

        @budget(usd=1.0)
        def no_cap(q: str, model: str = "claude-haiku-4-5") -> str:
            return q

    with pytest.raises(ValueError, match=r"budget\(model=...\) is needed"):

        @budget(usd=1.0, max_output=100)
        def no_model(q: str) -> str:
            return q

    @budget(tokens=10_000, max_output=100)
    def tokens_need_no_price(q: str) -> str:
        return q

    assert "x" == tokens_need_no_price("x")


def test_on_alert_with_per_call_is_refused() -> None:
    """per='call' keeps no ledger, so on_alert= can never fire: refused, naming it."""
    with pytest.raises(ValueError, match=r"budget\(on_alert=...\) has no effect with per='call'"):
        budget(usd=0.01, per="call", on_alert=print)


# -- a lone budget ("lane": once the core's fast lane, now the one path) ----------------
# A lone budget on a def / async def with SDK-shaped arguments (a model, an output
# cap, the messages), no estimate= and a store that answers without I/O: it reserves
# from the arguments and settles from the usage its result carries
# (`Call.plain_usage`, without the record) or the function reported.


@pytest.fixture
def lane_store() -> BudgetStore:
    """The memory store, for a lone budget."""
    return MemoryBudgetStore()


def test_lane_ledger_is_the_exact_sum_of_every_kind_of_result(
    lane_store: BudgetStore, anthropic_client: anthropic.Anthropic, openai_client: openai.OpenAI, fake_provider: FakeProvider
) -> None:
    """Messages, chat completions, reported usage and a result without usage, each twice: the exact sum.

    The result without usage (no SDK request the wire saw, nothing reported) is
    charged its estimate, flagged: input from the arguments, output from its text.
    """
    b = budget(usd=10.0, per="day", store=lane_store, name="lane")

    @b
    def claude(messages: Any, max_tokens: int = 64, model: str = CLAUDE) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=max_tokens, messages=messages)

    @b
    def gpt(messages: Any, system: str | None = None, max_tokens: int = 64, model: str = GPT) -> Any:
        # Two input arguments: read by the general loop, not the one-of-each shortcut.
        return openai_client.chat.completions.create(model=model, max_tokens=max_tokens, messages=messages)

    @b
    def reported(messages: Any, max_tokens: int = 64, model: str = GPT) -> str:
        lg.report_usage(input_tokens=40, output_tokens=7, cache_read_tokens=8, model=model, provider="openai")
        return "ok"

    @b
    def silent(messages: Any, max_tokens: int = 64, model: str = GPT) -> str:
        return "no usage reported"

    claude_usages = [lg.Usage(1200, 80, cache_read_tokens=1000), lg.Usage(900, 40, cache_write_tokens=800)]
    gpt_usages = [lg.Usage(500, 60, cache_read_tokens=128, reasoning_tokens=20), lg.Usage(70, 5)]
    fake_provider.script(
        *(
            Step(
                usage={
                    "input_tokens": u.input_tokens,
                    "output_tokens": u.output_tokens,
                    "cache_read_tokens": u.cache_read_tokens,
                    "cache_write_tokens": u.cache_write_tokens,
                    "reasoning_tokens": u.reasoning_tokens,
                }
            )
            for u in (*claude_usages, *gpt_usages)
        )
    )
    claude(MESSAGES)
    claude(MESSAGES)
    gpt(MESSAGES)
    gpt(MESSAGES, system="be brief")
    results = [reported(MESSAGES), reported(MESSAGES), silent(MESSAGES), silent(MESSAGES)]
    spend = b.spend()
    expected = sum(pico(u, CLAUDE) for u in claude_usages) + sum(pico(u, GPT) for u in gpt_usages)
    expected += 2 * pico(lg.Usage(40, 7, cache_read_tokens=8), GPT)
    silent_usage = lg.Usage(estimated_input(MESSAGES), estimate_tokens("no usage reported"), estimated=True)
    expected += 2 * pico(silent_usage, GPT)

    assert ["ok", "ok", "no usage reported", "no usage reported"] == results
    assert expected == int(spend.exact_usd * PICO)
    assert sum(u.total_tokens for u in (*claude_usages, *gpt_usages)) + 2 * 47 + 2 * silent_usage.total_tokens == spend.tokens
    assert (8, 2, 0, 0) == (spend.calls, spend.estimated_calls, spend.reserved_usd, spend.reserved_tokens)


def test_lane_prices_each_result_by_its_own_class_and_model(
    lane_store: BudgetStore, anthropic_client: anthropic.Anthropic, openai_client: openai.OpenAI, fake_provider: FakeProvider
) -> None:
    """One function whose results alternate SDKs and models: each read and priced as its own, exactly.

    The lane remembers the last result class and the last model it priced;
    a change of either must not reuse the other's reader or rates.
    """
    b = budget(usd=10.0, store=lane_store)

    @b
    def ask(messages: Any, max_tokens: int = 64, model: str = CLAUDE) -> Any:
        if model.startswith("claude"):
            return anthropic_client.messages.create(model=model, max_tokens=max_tokens, messages=messages)
        return openai_client.chat.completions.create(model=model, max_tokens=max_tokens, messages=messages)

    calls = [(CLAUDE, lg.Usage(300, 20)), (GPT, lg.Usage(200, 10)), ("claude-haiku-4-5", lg.Usage(100, 5)), (CLAUDE, lg.Usage(50, 50))]
    fake_provider.script(*(Step(usage={"input_tokens": u.input_tokens, "output_tokens": u.output_tokens}) for _, u in calls))
    for model, _ in calls:
        ask(MESSAGES, model=model)

    assert sum(pico(u, model) for model, u in calls) == ledger_pico(ask)
    assert len({pico(u, model) * 1000 // u.total_tokens for model, u in calls[:3]}) == 3  # three different rates


def test_lane_settles_at_a_price_set_after_earlier_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """set_price between calls: the lane charges the new price at once (its rates memo follows the price epoch)."""
    from llmguard import prices

    monkeypatch.setattr(prices, "_overrides", {})
    lg.set_price("my-model", input=1.0, output=0.0)
    b = budget(usd=100.0, store=MemoryBudgetStore())

    @b
    def ask(messages: Any, model: str = "my-model", max_tokens: int = 10) -> str:
        lg.report_usage(input_tokens=1_000_000, output_tokens=0, model=model, provider="openai")
        return "ok"

    try:
        ask(MESSAGES)
        ask(MESSAGES)
        spent_before = b.spend().usd
        lg.set_price("my-model", input=5.0, output=0.0)
        ask(MESSAGES)
    finally:
        prices.clear_price_cache()

    assert (2.0, 7.0) == (spent_before, b.spend().usd)


def test_a_price_set_between_calls_prices_the_next_worst_case(monkeypatch: pytest.MonkeyPatch) -> None:
    """set_price between calls: the next reservation is the worst case at the new price (its rates memo follows the price epoch)."""
    from llmguard import prices

    monkeypatch.setattr(prices, "_overrides", {})
    lg.set_price("my-model", input=0.0, output=1.0)  # $1 per Mtok out: 500 tokens' worst case is $0.0005
    b = budget(usd=0.001, store=MemoryBudgetStore())

    @b
    def ask(messages: Any, model: str = "my-model", max_tokens: int = 500) -> str:
        lg.report_usage(input_tokens=1, output_tokens=0, model=model)
        return "ok"

    try:
        first = ask(MESSAGES)
        lg.set_price("my-model", input=0.0, output=10.0)  # now $0.005: more than the whole budget
        with pytest.raises(lg.BudgetExceeded) as refused:
            ask(MESSAGES)
    finally:
        prices.clear_price_cache()

    assert "ok" == first
    assert 0.005 == pytest.approx(refused.value.requested)


def _on_path(path: str, b: Budget, fn: Any) -> Any:
    """*fn* under budget *b*: alone (the fast lane), or under a pass-through layer (the general path)."""
    from probe import Probe

    guarded = b(fn)
    return guarded if path == "lane" else Probe()(guarded)


def _message_dict(model: str, input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "type": "message", "id": "msg_1", "model": model, "role": "assistant",
        "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


@pytest.mark.parametrize("path", ["lane", "general"])
def test_reported_usage_is_priced_at_the_model_the_response_names(path: str) -> None:
    """report_usage's counts win, the response's model and provider win: as the call record says."""
    b = budget(usd=10.0, store=MemoryBudgetStore())

    def ask(messages: Any, model: str = CLAUDE, max_tokens: int = 100) -> Any:
        lg.report_usage(input_tokens=1000, output_tokens=10, model=GPT, provider="openai")
        return _message_dict("claude-opus-4-1", 100, 50)

    f = _on_path(path, b, ask)
    for _ in range(3):  # the first call of a result type and the later ones alike
        f(MESSAGES)

    assert 3 * pico(lg.Usage(1000, 10), "claude-opus-4-1") == ledger_pico(f)


@pytest.mark.parametrize("path", ["lane", "general"])
def test_the_model_remembered_for_later_estimates_is_the_requested_one(path: str) -> None:
    """A call without a model argument is priced at the model last requested, not at the response's name for it."""
    b = budget(usd=10.0, store=MemoryBudgetStore())
    reserved: list[float] = []

    def ask(messages: Any, model: str | None = None, max_tokens: int = 100) -> Any:
        reserved.append(b.spend().reserved_usd)
        return _message_dict("claude-opus-4-1", 10, 10)  # a dearer model's name in the response

    f = _on_path(path, b, ask)
    f(MESSAGES, model="claude-haiku-4-5")
    f(MESSAGES)

    assert reserved[0] == pytest.approx(reserved[1], rel=1e-9)


def test_a_budget_decorated_before_the_fake_clock_reads_the_fake_clock() -> None:
    """Decorated before `fake_clock()` is entered: the fast lane still reads the fake clock for its windows."""
    from llmguard.testing import fake_clock

    b = budget(usd=1.0, per="day", store=MemoryBudgetStore())

    def ask(messages: Any, model: str = GPT, max_tokens: int = 10) -> str:
        lg.report_usage(input_tokens=1000, output_tokens=10, model=model, provider="openai")
        return "ok"

    lane = b(ask)
    with fake_clock() as clock:
        lane(MESSAGES)
        day_one = b.spend().calls
        clock.advance(86_400)
        lane(MESSAGES)
        day_two = b.spend().calls

    assert (1, 1) == (day_one, day_two)  # a new calendar day on the fake clock: a new window


async def test_lane_async_def_settles_exactly(
    lane_store: BudgetStore, async_anthropic_client: anthropic.AsyncAnthropic, fake_provider: FakeProvider
) -> None:
    """The async lane: the same reservation and exact settlement."""
    b = budget(usd=1.0, store=lane_store)

    @b
    async def ask(messages: Any, max_tokens: int = 64, model: str = CLAUDE) -> Any:
        return await async_anthropic_client.messages.create(model=model, max_tokens=max_tokens, messages=messages)

    fake_provider.script(Step(usage={"input_tokens": 300, "output_tokens": 9}), Step(usage={"input_tokens": 30, "output_tokens": 90}))
    await ask(MESSAGES)
    await ask(MESSAGES)
    spend = b.spend()

    assert pico(lg.Usage(300, 9), CLAUDE) + pico(lg.Usage(30, 90), CLAUDE) == int(spend.exact_usd * PICO)
    assert (2, 0.0) == (spend.calls, spend.reserved_usd)


def test_lane_prices_an_unknown_response_model_at_the_requested_one(
    lane_store: BudgetStore, anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """A response naming a model with no price is charged at the requested model's, as on the general path."""

    @budget(usd=1.0, store=lane_store)
    def ask(messages: Any, max_tokens: int = 64, model: str = CLAUDE) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=max_tokens, messages=messages)

    fake_provider.script(*(Step(model="mystery-model-7", usage={"input_tokens": 400, "output_tokens": 30}) for _ in range(2)))
    ask(MESSAGES)
    ask(MESSAGES)

    assert 2 * pico(lg.Usage(400, 30), CLAUDE) == ledger_pico(ask)


def test_lane_refuses_before_sending(
    lane_store: BudgetStore, openai_client: openai.OpenAI, fake_provider: FakeProvider, llmguard_events: list[CapturedEvent]
) -> None:
    """Once the next worst case cannot fit, the call is refused with the figures and nothing is sent."""
    limit = 0.01

    @budget(usd=limit, per="hour", store=lane_store)
    def ask(messages: Any, max_tokens: int = 100, model: str = GPT) -> Any:
        return openai_client.chat.completions.create(
            model=model, max_tokens=max_tokens, messages=messages, extra_headers=script(usage={"input_tokens": 3800, "output_tokens": 10})
        )

    ask(MESSAGES)
    with pytest.raises(lg.BudgetExceeded) as info:
        ask(MESSAGES)
    exc = info.value

    assert 1 == len(fake_provider.requests)
    assert exc.scope.endswith("ask/hour")
    assert ("usd", limit, 0.0) == (exc.unit, exc.limit, exc.reserved)
    assert pico(lg.Usage(3800, 10), GPT) / PICO == pytest.approx(exc.spent, abs=1e-12)
    assert exc.spent + exc.requested > exc.limit
    assert ["llmguard.budget.exceeded"] == [e.name for e in llmguard_events if e.name.endswith("exceeded")]
    assert (1, 0.0) == (budget_spend(ask).calls, budget_spend(ask).reserved_usd)


def test_lane_alerts_fire_once_per_threshold_and_windows_roll_over(
    lane_store: BudgetStore, fake_clock: FakeClock, llmguard_events: list[CapturedEvent]
) -> None:
    """On the lane too: each alert fires once as spend crosses it, and the next hour is a new ledger."""
    alerts: list[lg.BudgetAlert] = []
    each = pico(lg.Usage(1000, 10), GPT) / PICO

    @budget(usd=each * 4, per="hour", store=lane_store, key="team", on_alert=alerts.append)
    def ask(messages: Any, max_tokens: int = 10, model: str = GPT) -> str:
        lg.report_usage(input_tokens=1000, output_tokens=10, model=model)
        return "ok"

    fake_clock.advance(3600 - fake_clock.time() % 3600)
    first_hour = fake_clock.time()
    for _ in range(4):  # 25%, 50%, 75%, 100%
        ask(MESSAGES)
    fired = [(a.threshold, a.key, a.unit) for a in alerts]
    fake_clock.advance(3600)
    ask(MESSAGES)
    ask(MESSAGES)
    events = [e for e in llmguard_events if e.name == "llmguard.budget.alert"]

    assert [(0.5, "team", "usd"), (0.8, "team", "usd"), (1.0, "team", "usd")] == fired
    assert [0.5, 0.8, 1.0, 0.5] == [a.threshold for a in alerts]
    assert [first_hour] * 3 + [first_hour + 3600] == [a.window_start for a in alerts]
    assert [0.5, 0.8, 1.0, 0.5] == [e["threshold"] for e in events]
    assert "ask" in (alerts[0].function or "")
    assert 4 * pico(lg.Usage(1000, 10), GPT) == int(budget_spend(ask, at=first_hour).exact_usd * PICO)
    assert 2 * pico(lg.Usage(1000, 10), GPT) == ledger_pico(ask)


def test_lane_settles_a_call_that_raises_with_what_it_reported(lane_store: BudgetStore) -> None:
    """An exception after reporting usage: that usage is charged, the reservation released, the error raised."""

    @budget(usd=1.0, store=lane_store)
    def ask(messages: Any, max_tokens: int = 500, model: str = GPT, fail: bool = False) -> str:
        lg.report_usage(input_tokens=100, output_tokens=20, model=model)
        if fail:
            raise ConnectionError("dropped after the response")
        return "ok"

    ask(MESSAGES)
    with pytest.raises(ConnectionError):
        ask(MESSAGES, fail=True)
    spend = budget_spend(ask)

    assert 2 * pico(lg.Usage(100, 20), GPT) == int(spend.exact_usd * PICO)
    assert (2, 0.0, 0) == (spend.calls, spend.reserved_usd, spend.reserved_tokens)


def test_lane_settles_a_returned_stream_when_it_ends(
    lane_store: BudgetStore, anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """A returned SDK stream leaves the lane for the general path: held until read to the end, then exact."""

    @budget(usd=1.0, store=lane_store)
    def ask(messages: Any, max_tokens: int = 64, model: str = CLAUDE) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=max_tokens, messages=messages, stream=True)

    fake_provider.script(Step(reply="one two three", usage={"input_tokens": 250, "output_tokens": 12}))
    stream = ask(MESSAGES)
    held = budget_spend(ask)
    for _ in stream:
        pass
    spend = budget_spend(ask)

    assert held.reserved_usd > 0
    assert pico(lg.Usage(250, 12), CLAUDE) == int(spend.exact_usd * PICO)
    assert (1, 0.0) == (spend.calls, spend.reserved_usd)


class _LosingStore(MemoryBudgetStore):
    """Holds, but cannot settle."""

    def settle(self, *args: Any, **kwargs: Any) -> Any:
        raise BudgetStoreError("settlement lost")

    def release(self, *args: Any) -> Any:
        raise BudgetStoreError("settlement lost")


def test_lane_settlement_failure_is_reported_with_the_lost_amounts(llmguard_events: list[CapturedEvent]) -> None:
    """A settlement the store cannot take never raises into the caller; the event says what was lost."""

    @budget(usd=1.0, store=_LosingStore())
    def ask(messages: Any, max_tokens: int = 64, model: str = GPT) -> str:
        lg.report_usage(input_tokens=300, output_tokens=12, model=model)
        return "ok"

    results = [ask(MESSAGES), ask(MESSAGES)]
    lost = [e for e in llmguard_events if e.name == "llmguard.budget.store_error"]

    assert ["ok", "ok"] == results
    assert ["settle", "settle"] == [e["stage"] for e in lost]
    assert [pico(lg.Usage(300, 12), GPT) / PICO] * 2 == [e["lost_usd"] for e in lost]
    assert [312, 312] == [e["lost_tokens"] for e in lost]


def test_lane_threads_never_overspend_and_the_ledger_stays_exact(lane_store: BudgetStore) -> None:
    """100 threads at once on the lane: spend <= limit, refusals only when full, the ledger their exact sum."""
    callers = 100
    used = lg.Usage(100, 20)
    messages = [{"role": "user", "content": "x" * 297}]  # 100 tokens estimated
    worst_case = worst(100, 50)
    limit = worst_case * 25

    @budget(usd=limit, store=lane_store)
    def ask(messages: Any, max_tokens: int = 50, model: str = GPT) -> str:
        time.sleep(0.002)  # hold the reservation while the others try
        lg.report_usage(input_tokens=used.input_tokens, output_tokens=used.output_tokens, model=model)
        return "ok"

    refusals: list[lg.BudgetExceeded] = []
    done: list[int] = []
    barrier = threading.Barrier(callers)

    def caller() -> None:
        barrier.wait()
        for _ in range(3):
            try:
                ask(messages)
                done.append(1)
            except lg.BudgetExceeded as exc:
                refusals.append(exc)

    _in_threads(callers, caller)
    spend = budget_spend(ask)

    assert 3 * callers == len(done) + len(refusals)
    assert pico(used, GPT) * len(done) == int(spend.exact_usd * PICO)
    assert spend.usd <= limit
    assert [] == [str(e) for e in refusals if not _justified(e)][:2]
    assert 25 <= len(done)
    assert (len(done), 0, 0) == (spend.calls, spend.reserved_usd, spend.reserved_tokens)


# -- hold and release: one bucket, no Line -----------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def any_store(request: pytest.FixtureRequest) -> AsyncIterator[BudgetStore]:
    """Each store."""
    if request.param != "redis":
        yield MemoryBudgetStore()
        return
    redis_store = RedisBudgetStore(request.getfixturevalue("redis_url"), namespace=uuid.uuid4().hex)
    yield redis_store
    await redis_store.aclose()


def held_id(held: str | Refusal) -> str:
    """The reservation id `BudgetStore.hold` returned (failing on a refusal)."""
    assert isinstance(held, str), held
    return held


def test_hold_then_release_turns_the_hold_into_the_charge(any_store: BudgetStore, fake_clock: FakeClock) -> None:
    """A hold reserves (or refuses, saying why); its release gives it back, charges, reports alert crossings."""
    spec = BucketSpec("hr:k:all", 1000, 100, None, (500, 900), ())
    now = fake_clock.time()
    rid = held_id(any_store.hold(spec, 600, 40, now, 30.0))
    held = any_store.ledger("hr:k:all", now)
    refused = any_store.hold(spec, 500, 1, now, 30.0)  # 600 + 500 > 1000
    crossings = any_store.release(rid, spec, 600, 40, 550, 30, now, True)
    after = any_store.ledger("hr:k:all", now)

    assert (600, 40) == (held.reserved_usd, held.reserved_tokens)
    assert isinstance(refused, Refusal)
    assert (0, "usd", 1000, 0, 600, 500) == (refused.index, refused.unit, refused.limit, refused.spent, refused.reserved, refused.requested)
    assert [(0, "usd", (0,), 550)] == [(c.index, c.unit, c.crossed, c.spent) for c in crossings or ()]
    assert (550, 30, 0, 0, 1, 1) == (after.usd, after.tokens, after.reserved_usd, after.reserved_tokens, after.calls, after.estimated_calls)


def test_a_hold_nobody_releases_expires(any_store: BudgetStore, fake_clock: FakeClock) -> None:
    """A hold whose holder died lasts only its lease; releasing it late charges once, releases nothing twice."""
    spec = BucketSpec("hx:k:all", 1000, None, None)
    rid = held_id(any_store.hold(spec, 900, 10, fake_clock.time(), 30.0))
    refused = any_store.hold(spec, 200, 1, fake_clock.time(), 30.0)
    fake_clock.advance(31)
    after = any_store.hold(spec, 200, 1, fake_clock.time(), 30.0)
    any_store.release(rid, spec, 900, 10, 321, 4, fake_clock.time(), False)
    ledger = any_store.ledger("hx:k:all", fake_clock.time())

    assert isinstance(refused, Refusal)
    assert isinstance(after, str)
    assert (321, 4, 200, 1, 1) == (ledger.usd, ledger.tokens, ledger.reserved_usd, ledger.reserved_tokens, ledger.calls)


def test_an_expired_reservation_of_many_lines_releases_each(store: BudgetStore, fake_clock: FakeClock) -> None:
    """A lease over two buckets expires from both."""
    lines = [Line("many:a:all", 700, 7, 1000, None, None), Line("many:b:all", 800, 8, 1000, None, None)]
    assert store.reserve(store.new_id(), lines, fake_clock.time(), 30.0) is None
    fake_clock.advance(31)
    a, b = (store.ledger(f"many:{k}:all", fake_clock.time()) for k in "ab")

    assert ((0, 0), (0, 0)) == ((a.reserved_usd, a.reserved_tokens), (b.reserved_usd, b.reserved_tokens))


def test_memory_buckets_are_kept_until_their_spec_expires() -> None:
    """A bucket lives until its spec's expiry, then is swept when another bucket is made."""
    store = MemoryBudgetStore()
    spec = BucketSpec("old:k:0", None, 1000, 500.0)
    store.release(held_id(store.hold(spec, 0, 10, 100.0, 30.0)), spec, 0, 10, 0, 7, 100.0, False)
    kept = store.ledger("old:k:0", 499.0)
    store.hold(BucketSpec("new:k:500", None, 1000, 1500.0), 0, 10, 501.0, 30.0)

    assert (7, 1) == (kept.tokens, kept.calls)
    assert (0, 0) == (store.ledger("old:k:0", 501.0).tokens, store.ledger("old:k:0", 501.0).calls)
    assert 100.0 == spec.line(1, 2, 400.0).ttl


@pytest.mark.parametrize(
    ("returned", "error"),
    [
        ((-1_000_000, 0), ValueError),
        ((10, -1), ValueError),
        ((float("nan"), 10), ValueError),
        ((float("inf"), 10), ValueError),
        ((None, 10), TypeError),
        (("100", 10), TypeError),
    ],
)
def test_an_estimate_that_is_not_a_count_is_a_clear_error_and_reserves_nothing(returned: Any, error: type[Exception]) -> None:
    """estimate= returning a negative, NaN, infinite or non-numeric count: an error naming estimate=, nothing held.

    A negative count would be a negative reservation: other calls could then spend past the limit.
    """
    b = budget(usd=1.0, store=MemoryBudgetStore(), estimate=lambda **_: returned, model=GPT)

    @b
    def ask(q: str) -> str:
        return q

    with pytest.raises(error, match=r"budget\(estimate=\.\.\.\) must return token counts >= 0"):
        ask("hi")
    assert (0, 0.0) == (b.spend().calls, b.spend().reserved_usd)


@pytest.mark.redis
async def test_a_call_cancelled_while_its_reservation_is_on_the_way_back_leaves_nothing_held(redis_url: str) -> None:
    """Redis made the reservation, the task was cancelled before the reply: the reservation is released at once."""

    class SlowReply(RedisBudgetStore):
        async def areserve(self, rid: str, lines: list[Line], now: float, lease: float) -> Any:
            refusal = await super().areserve(rid, lines, now, lease)
            await asyncio.sleep(10)  # the reply is late: the caller gives up here
            return refusal

    store = SlowReply(redis_url, namespace=uuid.uuid4().hex)
    b = budget(usd=1.0, store=store)

    @b
    async def ask(q: str, model: str = GPT, max_tokens: int = 50) -> str:
        return q

    task = asyncio.create_task(ask("hi"))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert (0.0, 0) == (b.spend().reserved_usd, b.spend().reserved_tokens)


def test_a_stream_that_fails_before_any_text_from_a_function_without_arguments_is_never_charged_zero(
    openai_client: openai.OpenAI, fake_provider: FakeProvider
) -> None:
    """No input argument to estimate from and no text seen: the input is estimated from the body the SDK sent."""
    b = budget(usd=1.0, store=MemoryBudgetStore(), max_output=64, model=GPT)

    @b
    def ask() -> Any:
        return openai_client.chat.completions.create(
            model=GPT, max_tokens=64, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )

    fake_provider.script(Step(error_after=0, usage={"input_tokens": 30, "output_tokens": 5}))
    with pytest.raises(lg.StreamInterrupted) as info:  # the role chunk had reached the caller
        list(ask())
    assert isinstance(info.value.__cause__, openai.APIError)

    spend = b.spend()
    assert (1, 1) == (spend.calls, spend.estimated_calls)
    assert spend.tokens >= len(json.dumps(MESSAGES)) // 4  # the messages were in the body it sent
    assert spend.usd > 0


def test_ledger_matches_what_the_server_served_under_faults(
    store: BudgetStore, openai_client: openai.OpenAI, anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """A small soak: threads through retry > budget > timeout, with 429s, 5xx, dropped connections and deadlines.

    Whole responses are measured, so once the abandoned workers are back
    the ledger is exactly what the server served (benchmarks/soak_ledger.py
    is the larger version, streams and cancellations included).
    """
    faults = [
        {"status": 429, "headers": {"retry-after": "0"}},
        {"status": 500},
        {"drop": True},
        {"delay": 0.5},  # past the deadline: the worker is abandoned, then returns
        {},
        {},
    ]
    calls = iter(range(10**6))
    lock = threading.Lock()

    @lg.retry(attempts=3, initial=0.01, max_delay=0.02)
    @budget(usd=10.0, store=store, max_output=200)
    @lg.timeout(0.25)
    def ask(messages: Any, model: str) -> Any:
        with lock:
            n = next(calls)
        headers = script(**faults[n % len(faults)])
        if model == CLAUDE:
            return anthropic_client.messages.create(model=model, max_tokens=200, messages=messages, extra_headers=headers)
        return openai_client.chat.completions.create(model=model, max_tokens=200, messages=messages, extra_headers=headers)

    def caller() -> None:
        for i in range(6):
            with contextlib.suppress(Exception):
                ask([{"role": "user", "content": "word " * (i + 1)}], CLAUDE if i % 2 else GPT)

    _in_threads(4, caller)

    def served() -> tuple[int, int]:
        tokens = usd = 0
        for req in fake_provider.requests:
            step = json.loads(req.headers[HEADER])
            if step.get("status", 200) != 200 or step.get("drop"):
                continue
            usage = lg.Usage(sum(len(m["content"].split()) for m in req.body["messages"]), len(DEFAULT_REPLY.split()))
            tokens += usage.total_tokens
            usd += pico(usage, req.body["model"])
        return tokens, usd

    _until(lambda: (budget_spend(ask).tokens, ledger_pico(ask)) == served())
    spend = budget_spend(ask)

    assert any(json.loads(r.headers[HEADER]).get("delay") for r in fake_provider.requests)
    assert served() == (spend.tokens, ledger_pico(ask))
    assert 0.0 == spend.reserved_usd


# -- images ---------------------------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason="review2: _estimate.size counts str() of content blocks, base64 included (300 KB image -> 100k tokens reserved; docs/estimates.md admits it, estimate= is the workaround); needs a per-block rule",
)
def test_an_image_sent_as_base64_is_not_reserved_as_text(store: BudgetStore, openai_client: openai.OpenAI, fake_provider: FakeProvider) -> None:
    """A 225 KB PNG (300 KB of base64) is at most ~1,600 input tokens to any provider, not 100,000.

    The estimate counts ``str()`` of a content-block message, base64 included,
    at 3 bytes a token: a vision call under a 20,000-token budget is refused
    before it is sent although it would have used ~800.
    """
    image = "data:image/png;base64," + "iVBORw0KGgo" * 27_300  # ~300 KB, the size of a 225 KB PNG
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "what is in this picture?"}, {"type": "image_url", "image_url": {"url": image}}]}
    ]

    @budget(tokens=20_000, store=store)
    def ask(messages: Any, max_tokens: int = 100) -> Any:
        return openai_client.chat.completions.create(
            model=GPT, max_tokens=max_tokens, messages=messages, extra_headers=script(usage={"input_tokens": 790, "output_tokens": 20})
        )

    ask(messages)

    assert 810 == budget_spend(ask).tokens
    assert 1 == len(fake_provider.requests)


def test_a_budget_keeping_output_history_charges_a_plain_result_without_building_the_record(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """No max_tokens parameter: the estimator remembers outputs, read from the facts the charge used, not a record built for it."""
    from llmguard._runner import Guard

    built: list[bool] = []

    class Recorded(Guard):
        def leave(self, call: Any, state: None, result: Any) -> Any:
            built.append(call.recorded)
            return result

    spend = lg.budget(usd=10, max_output=64)

    @Recorded()
    @spend
    def ask(q: str, model: str = "claude-sonnet-4-6") -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=64, messages=[{"role": "user", "content": q}])

    fake_provider.script(*(Step(usage={"input_tokens": 100, "output_tokens": n}) for n in (5, 7, 9)))
    ask("a first result of a type never seen builds the record once")
    ask("hi")
    ask("again")

    assert [False, False] == built[1:]
    assert lg.cost_of(lg.Usage(300, 21), "claude-sonnet-4-6") == pytest.approx(spend.spent)
