"""`ratelimit`: requests and tokens per minute, callers waiting their turn in FIFO order.

Real SDKs against the fake provider; the fake clock where waits are long;
memory and Redis stores. Each user bug the research lists is a test here:
concurrent callers slipping through a TPM check (litellm#18730), streams
never counted (litellm#41610), bursts past the rate (aiolimiter#298), and
the wait past ``max_wait`` only found out after sleeping (PyrateLimiter#128).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import subprocess
import sys
import threading
import time
import uuid

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import pytest

from shapes import MESSAGES, MODEL, SHAPES, build

import llmguard as lg

from llmguard.stores.ratelimit import (
    Grant,
    MemoryRateLimitStore,
    RateLimitStore,
    RedisRateLimitStore,
)
from llmguard.testing import FakeClock, FakeProvider, Step


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[RateLimitStore]:
    """A fresh rate-limit store: in memory, or in a real redis-server (own namespace)."""
    if request.param == "memory":
        yield MemoryRateLimitStore()
        return
    url = request.getfixturevalue("redis_url")
    redis_store = RedisRateLimitStore(url, namespace=uuid.uuid4().hex)
    yield redis_store
    await redis_store.aclose()


# -- waiting, in order --------------------------------------------------------------


class RecordingStore(MemoryRateLimitStore):
    """A memory store recording each caller's turn (when it asked + its wait), and saying when one is given."""

    def __init__(self) -> None:
        super().__init__()
        self.turns: list[float] = []
        self.turn_taken = threading.Event()

    def acquire(self, cells: list[tuple[str, float]], max_wait: float) -> Grant:
        asked = time.monotonic()
        grant = super().acquire(cells, max_wait)
        assert grant.admitted
        self.turns.append(asked + grant.wait)
        self.turn_taken.set()
        return grant


def test_fifo_threads_get_turns_in_arrival_order_one_interval_apart(anthropic_client: anthropic.Anthropic) -> None:
    """50 threads past the rate: each is given the next turn as it asks, and runs no earlier than its turn."""
    store = RecordingStore()
    period = 60.0 / 1200  # rpm=1200: a turn every 50 ms
    ran: dict[int, float] = {}

    @lg.ratelimit(rpm=1200, store=store)
    def ask(i: int) -> Any:
        ran[i] = time.monotonic()
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    threads = []
    for i in range(50):
        store.turn_taken.clear()
        t = threading.Thread(target=ask, args=(i,))
        t.start()
        threads.append(t)
        assert store.turn_taken.wait(10)  # caller i has its turn before caller i + 1 asks
    for t in threads:
        t.join()
    turns = store.turns
    assert len(turns) == len(ran) == 50
    for i in range(1, 50):
        assert turns[i] - turns[i - 1] >= period - 1e-3  # in arrival order, one interval apart at least
    for i in range(50):
        assert ran[i] >= turns[i] - 1e-3  # nobody ran before its turn


async def test_fifo_tasks_run_in_arrival_order(async_anthropic_client: anthropic.AsyncAnthropic) -> None:
    """50 asyncio tasks past the rate run in the order they asked, none before its turn."""
    order: list[int] = []
    loop = asyncio.get_running_loop()
    times: list[float] = []

    @lg.ratelimit(rpm=1200)
    async def ask(i: int) -> Any:
        order.append(i)
        times.append(loop.time())
        return await async_anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    # The tasks ask in the order they were created, all in the loop's next step, before any
    # request is in flight: each is given its turn then, and only the first goes at once.
    tasks = [asyncio.create_task(ask(i)) for i in range(50)]
    await asyncio.gather(*tasks)
    assert order == list(range(50))
    assert times[-1] - times[0] >= 49 * 0.05 - 0.01  # 49 intervals of 50 ms: no burst


def test_max_wait_refused_at_once_with_nothing_sent(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic, fake_clock: FakeClock, llmguard_events: list[Any]
) -> None:
    """A turn further than max_wait is refused before anyone sleeps, saying the wait it needed."""

    @lg.ratelimit(rpm=1, max_wait=10)
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    ask()
    with pytest.raises(lg.RateLimited) as info:
        ask()
    assert info.value.wait == pytest.approx(60.0)
    assert info.value.limit == "rpm"
    assert info.value.max_wait == 10
    assert len(fake_provider.requests) == 1  # the refused call sent nothing
    assert fake_clock.sleeps == []  # and nobody slept to find out
    assert [e.name for e in llmguard_events if e.name.startswith("llmguard.ratelimit")] == ["llmguard.ratelimit.rejected"]


async def test_max_wait_refusal_async_and_on_every_store(
    fake_provider: FakeProvider, async_anthropic_client: anthropic.AsyncAnthropic, store: RateLimitStore
) -> None:
    """The same refusal on an event loop, in memory and in Redis (whose clock is the server's)."""

    @lg.ratelimit(rpm=1, max_wait=10, store=store, name=f"t-{uuid.uuid4().hex}")
    async def ask() -> Any:
        return await async_anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    await ask()
    started = time.monotonic()
    with pytest.raises(lg.RateLimited) as info:
        await ask()
    assert 55 < info.value.wait <= 60.0
    assert time.monotonic() - started < 5  # at once, not after sleeping
    assert len(fake_provider.requests) == 1


def test_max_wait_refusal_sync_on_every_store(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic, store: RateLimitStore
) -> None:
    """The refusal from threads, in memory and in Redis."""
    limiter = lg.ratelimit(rpm=1, max_wait=10, store=store, name=f"t-{uuid.uuid4().hex}")

    @limiter
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    ask()
    with pytest.raises(lg.RateLimited) as info:
        ask()
    assert 55 < info.value.wait <= 60.0
    assert 55 < limiter.wait_for() <= 60.0  # the refusal took nothing
    assert len(fake_provider.requests) == 1


def test_a_wait_is_an_event_and_on_the_record(anthropic_client: anthropic.Anthropic, fake_clock: FakeClock, llmguard_events: list[Any]) -> None:
    @lg.ratelimit(rpm=6, name="waits")
    def ask() -> Any:
        assert (record := lg.current_call()) is not None
        waits.append(record.extra.get("ratelimit_wait"))
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    waits: list[Any] = []
    ask()
    ask()
    assert waits == [None, 10.0]
    waited = [e for e in llmguard_events if e.name == "llmguard.ratelimit.waited"]
    assert len(waited) == 1
    assert waited[0]["wait"] == 10.0
    assert waited[0]["limiter"] == "waits"


def test_max_wait_zero_never_waits_and_none_waits_without_limit(anthropic_client: anthropic.Anthropic, fake_clock: FakeClock) -> None:
    never = lg.ratelimit(rpm=60, max_wait=0)(lambda: anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES))
    never()
    with pytest.raises(lg.RateLimited):
        never()
    always = lg.ratelimit(rpm=1, max_wait=None)(lambda: anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES))
    always()
    always()
    assert fake_clock.sleeps == [60.0]


def test_a_wait_of_exactly_max_wait_is_admitted(anthropic_client: anthropic.Anthropic, fake_clock: FakeClock) -> None:
    """PyrateLimiter#289: an off-by-one at the boundary gave spurious timeouts. A turn exactly max_wait away is taken."""

    @lg.ratelimit(rpm=6, max_wait=10)
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    ask()
    ask()
    assert fake_clock.sleeps == [10.0]


async def test_each_waiter_sleeps_once_no_polling(async_anthropic_client: anthropic.AsyncAnthropic, fake_clock: FakeClock) -> None:
    """aiolimiter#73: every waiter woken on every tick. Here each of 20 waiters sleeps exactly once, until its turn."""

    @lg.ratelimit(rpm=60)
    async def ask() -> Any:
        return await async_anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    await asyncio.gather(*(ask() for _ in range(21)))
    assert len(fake_clock.sleeps) == 20


async def test_a_waiting_key_does_not_hold_up_another(async_anthropic_client: anthropic.AsyncAnthropic) -> None:
    """PyrateLimiter#304: the sync wait held the limiter's lock, serializing every key. Bob goes while Alice waits."""
    limiter = lg.ratelimit(rpm=6, key=lambda user, **_: user)

    @limiter
    async def ask(user: str) -> Any:
        return await async_anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    await ask("alice")
    alice = asyncio.create_task(ask("alice"))  # her turn is 10 s away
    await asyncio.sleep(0.01)
    started = time.monotonic()
    await ask("bob")
    assert time.monotonic() - started < 5
    assert not alice.done()
    alice.cancel()
    with pytest.raises(asyncio.CancelledError):
        await alice


def test_no_burst_after_idle(anthropic_client: anthropic.Anthropic, fake_clock: FakeClock) -> None:
    """After a long idle time the rate is still the rate: calls are spaced, not let through in a burst (aiolimiter#298)."""

    @lg.ratelimit(rpm=6)
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    fake_clock.advance(3600)
    for _ in range(4):
        ask()
    assert fake_clock.sleeps == [10.0, 10.0, 10.0]


def test_a_deadline_nearer_than_max_wait_refuses_at_once(anthropic_client: anthropic.Anthropic, fake_clock: FakeClock) -> None:
    @lg.ratelimit(rpm=2, max_wait=60)
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    ask()
    with lg.timeout(5), pytest.raises(lg.RateLimited) as info:
        ask()
    assert info.value.max_wait == pytest.approx(5.0)
    assert fake_clock.sleeps == []


async def test_cancelled_wait_gives_its_turn_back(async_anthropic_client: anthropic.AsyncAnthropic) -> None:
    """A task cancelled while waiting gives its turn back: the next caller does not wait for it."""
    limiter = lg.ratelimit(rpm=6)

    @limiter
    async def ask() -> Any:
        return await async_anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    await ask()
    waiting = asyncio.create_task(ask())
    await asyncio.sleep(0.05)
    assert limiter.wait_for() > 15  # its turn (10 s away) is taken: the next would come 10 s after it
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert 9 < limiter.wait_for() <= 10.0  # only the first call's interval is held


# -- tokens -------------------------------------------------------------------------------


def _usage_tokens(message: Any) -> int:
    return int(message.usage.input_tokens + message.usage.output_tokens)


def test_tpm_reservation_corrected_by_real_usage(anthropic_client: anthropic.Anthropic, fake_clock: FakeClock) -> None:
    """The estimate (input + max_tokens) is held while the call runs, then replaced by the reported usage."""
    limiter = lg.ratelimit(tpm=6000)  # 10 ms a token
    held: list[float] = []

    @limiter
    def ask(max_tokens: int = 500) -> Any:
        held.append(limiter.wait_for())
        return anthropic_client.messages.create(model=MODEL, max_tokens=max_tokens, messages=MESSAGES)

    message = ask()
    assert held[0] >= 500 * 0.01  # the whole output cap was reserved while it ran
    assert limiter.wait_for() == pytest.approx(_usage_tokens(message) * 0.01)  # then only what it used


async def test_tpm_correction_async_on_every_store(
    async_anthropic_client: anthropic.AsyncAnthropic, store: RateLimitStore
) -> None:
    limiter = lg.ratelimit(tpm=60, store=store, name=f"t-{uuid.uuid4().hex}")  # one token a second

    @limiter
    async def ask(max_tokens: int = 500) -> Any:
        return await async_anthropic_client.messages.create(model=MODEL, max_tokens=max_tokens, messages=MESSAGES)

    message = await ask()
    used = _usage_tokens(message)
    assert used - 2 < limiter.wait_for() <= used  # the real clock moves on a little; far from the 500+ reserved


def test_concurrent_callers_cannot_slip_through_a_tpm_check(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic, fake_clock: FakeClock
) -> None:
    """litellm#18730: 5 concurrent requests got 663 tokens through a 100 TPM limit. Here one goes, four wait or are refused."""
    limiter = lg.ratelimit(tpm=100, max_wait=0)
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(5)

    @limiter
    def ask(max_tokens: int = 120) -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=max_tokens, messages=MESSAGES)

    def caller() -> None:
        start.wait()
        try:
            ask()
            result = "sent"
        except lg.RateLimited:
            result = "refused"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=caller) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["refused"] * 4 + ["sent"]
    assert len(fake_provider.requests) == 1


async def test_concurrent_tasks_cannot_slip_through_a_tpm_check(
    fake_provider: FakeProvider, async_anthropic_client: anthropic.AsyncAnthropic, fake_clock: FakeClock
) -> None:
    """litellm#18730 with asyncio tasks: the check and the reservation are one step."""

    @lg.ratelimit(tpm=100, max_wait=0)
    async def ask(max_tokens: int = 120) -> Any:
        return await async_anthropic_client.messages.create(model=MODEL, max_tokens=max_tokens, messages=MESSAGES)

    results = await asyncio.gather(*(ask() for _ in range(5)), return_exceptions=True)
    assert sum(isinstance(r, lg.RateLimited) for r in results) == 4
    assert len(fake_provider.requests) == 1


@pytest.mark.parametrize("shape", ["def->stream", "async generator"])
def test_a_stream_holds_its_tokens_until_it_ends(
    shape: str, clients: tuple[anthropic.Anthropic, anthropic.AsyncAnthropic], fake_clock: FakeClock
) -> None:
    """litellm#41610: streams were never counted. Here the reservation holds while it streams, and is corrected at its end."""
    limiter = lg.ratelimit(tpm=6000, max_output=500)
    sync, aclient = clients
    seen: list[float] = []

    if shape == "def->stream":

        @limiter
        def stream() -> Any:
            return sync.messages.create(model=MODEL, max_tokens=500, messages=MESSAGES, stream=True)

        for i, _ in enumerate(stream()):
            if i == 1:
                seen.append(limiter.wait_for())
    else:

        @limiter
        async def agen() -> AsyncIterator[str]:
            async for e in await aclient.messages.create(model=MODEL, max_tokens=500, messages=MESSAGES, stream=True):
                yield e.type

        async def consume() -> None:
            i = 0
            async for _ in agen():
                if i == 1:
                    seen.append(limiter.wait_for())
                i += 1

        asyncio.run(consume())
    assert seen[0] >= 500 * 0.01  # held while it streamed
    assert 0 < limiter.wait_for() < 1.0  # corrected to the usage it reported at its end


def test_tpm_without_a_way_to_estimate_fails_at_decoration() -> None:
    with pytest.raises(ValueError, match=r"ratelimit\(tpm=\.\.\.\).*max_output="):

        @lg.ratelimit(tpm=1000)
        def ask(q: str) -> str:
            return q

    @lg.ratelimit(tpm=1000, max_output=100)
    def fine(q: str) -> str:
        return q

    @lg.ratelimit(tpm=1000, estimate=lambda q, **_: (len(q), 100))
    def fine_too(q: str) -> str:
        return q

    assert fine("x") == fine_too("x") == "x"


# -- the provider's word ----------------------------------------------------------------


def test_a_429_holds_the_key_for_retry_after_then_halves_the_rate(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic, fake_clock: FakeClock
) -> None:
    limiter = lg.ratelimit(rpm=600, max_wait=0)  # 100 ms a request

    @limiter
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    fake_provider.script(Step(status=429, headers={"retry-after": "5"}))
    with pytest.raises(anthropic.RateLimitError):
        ask()
    with pytest.raises(lg.RateLimited) as info:
        ask()
    assert info.value.wait == pytest.approx(5.0)
    fake_clock.advance(5)
    ask()
    assert limiter.wait_for() == pytest.approx(0.2)  # two intervals: the rate is halved for a while
    fake_clock.advance(61)
    ask()
    assert limiter.wait_for() == pytest.approx(0.1)  # and back to the configured rate
    assert len(fake_provider.requests) == 3


def test_backoff_false_ignores_the_429(fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic, fake_clock: FakeClock) -> None:
    limiter = lg.ratelimit(rpm=600, max_wait=0, backoff=False)

    @limiter
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    fake_provider.script(Step(status=429, headers={"retry-after": "5"}))
    with pytest.raises(anthropic.RateLimitError):
        ask()
    fake_clock.advance(0.1)
    ask()
    assert limiter.wait_for() == pytest.approx(0.1)


def _rfc3339(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_headers_of_a_200_hold_the_key_until_the_reset(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic, openai_client: openai.OpenAI, fake_clock: FakeClock
) -> None:
    """A success saying a limit is exhausted (remaining 0) holds the key until its reset, before any 429."""
    limiter = lg.ratelimit(rpm=600, max_wait=0)

    @limiter
    def ask() -> Any:
        return anthropic_client.messages.with_raw_response.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    reset = _rfc3339(fake_clock.time() + 30)
    fake_provider.script(
        Step(headers={"anthropic-ratelimit-requests-remaining": "0", "anthropic-ratelimit-requests-reset": reset})
    )
    assert ask().parse().content[0].text
    with pytest.raises(lg.RateLimited) as info:
        ask()
    assert 29 <= info.value.wait <= 30

    other = lg.ratelimit(rpm=600, max_wait=0)

    @other
    def chat() -> Any:
        return openai_client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)

    fake_provider.script(Step(headers={"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "20s"}))
    chat()
    assert other.wait_for() == pytest.approx(20.0)
    fake_provider.script(Step(headers={"x-ratelimit-remaining-tokens": "10", "x-ratelimit-reset-tokens": "20s"}))
    fake_clock.advance(20)
    chat()
    assert other.wait_for() == pytest.approx(0.1)  # a limit not exhausted holds nothing


def test_headers_of_a_streamed_200_hold_the_key(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic, fake_clock: FakeClock
) -> None:
    """An SDK stream's HTTP response is read for the headers as soon as the stream is returned."""
    limiter = lg.ratelimit(rpm=600, max_wait=0)

    @limiter
    def stream() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES, stream=True)

    reset = _rfc3339(fake_clock.time() + 30)
    fake_provider.script(
        Step(headers={"anthropic-ratelimit-tokens-remaining": "0", "anthropic-ratelimit-tokens-reset": reset})
    )
    events = stream()
    assert 29 <= limiter.wait_for() <= 30  # held before a chunk is read
    assert list(events)
    with pytest.raises(lg.RateLimited):
        stream()


# -- shapes, stacks, scopes, keys --------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_every_call_shape_waits_its_turn(
    shape: str, fake_provider: FakeProvider, clients: tuple[anthropic.Anthropic, anthropic.AsyncAnthropic], fake_clock: FakeClock
) -> None:
    limiter = lg.ratelimit(rpm=60, tpm=60_000, max_output=64)  # the shapes' functions hide max_tokens=64
    for _ in range(3):  # three functions of this shape on one limit (a new async client per event loop)
        aclient = anthropic.AsyncAnthropic(base_url=fake_provider.anthropic_base_url, api_key="k", max_retries=0)
        assert build(shape, limiter, clients[0], aclient)()
    assert fake_clock.sleeps == [1.0, 1.0]
    assert len(fake_provider.requests) == 3
    assert limiter.wait_for() == pytest.approx(1.0)


def test_in_a_stack_with_retry_budget_and_timeout(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic, fake_clock: FakeClock
) -> None:
    """Below retry, each attempt takes a turn; a 429 holds the key, so the retry goes when the provider said."""
    limiter = lg.ratelimit(rpm=60)

    @lg.retry(attempts=3)
    @lg.budget(usd=1.0, max_output=8, model=MODEL)
    @limiter
    @lg.timeout(30)
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    fake_provider.script(Step(status=429, headers={"retry-after": "3"}), Step(reply="ok"))
    assert ask().content[0].text == "ok"
    assert len(fake_provider.requests) == 2
    assert [g.name for g in lg.describe(ask)] == ["retry", "budget", "ratelimit", "timeout"]
    assert sum(fake_clock.sleeps) >= 3.0  # the second attempt went no sooner than retry-after


def test_a_scope_reaches_the_calls_inside_it(anthropic_client: anthropic.Anthropic, fake_clock: FakeClock) -> None:
    """`with lg.ratelimit(...)`: every ratelimit-guarded call inside shares its limit, bare ones included."""

    @lg.ratelimit
    def one() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    @lg.ratelimit(rpm=6000)
    def two() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    one()
    one()
    assert fake_clock.sleeps == []  # outside any scope a bare one has no limit
    with lg.ratelimit(rpm=6) as scope:
        one()
        two()
        one()
    assert fake_clock.sleeps == [10.0, 10.0]
    assert scope.wait_for() == pytest.approx(10.0)
    one()
    assert fake_clock.sleeps == [10.0, 10.0]


async def test_a_scope_in_async_code(async_anthropic_client: anthropic.AsyncAnthropic, fake_clock: FakeClock) -> None:
    @lg.ratelimit
    async def one() -> Any:
        return await async_anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    async with lg.ratelimit(rpm=6) as scope:
        await asyncio.gather(one(), one(), one())
    assert sum(fake_clock.sleeps) == 20.0  # turns 10 and 20 s away (the fake clock moves with each sleep)
    assert scope.wait_for() == pytest.approx(10.0)


def test_key_gives_each_user_a_limit_of_their_own(anthropic_client: anthropic.Anthropic, fake_clock: FakeClock) -> None:
    limiter = lg.ratelimit(rpm=6, key=lambda user, **_: user, max_wait=0)

    @limiter
    def ask(user: str) -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    ask("alice")
    ask("bob")
    with pytest.raises(lg.RateLimited) as info:
        ask("alice")
    assert info.value.key == "alice"
    assert limiter.wait_for("bob") == pytest.approx(10.0)
    assert limiter.wait_for("carol") == 0.0


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "named"),
    [
        ({"rpm": 0}, ValueError, "rpm"),
        ({"rpm": -5}, ValueError, "rpm"),
        ({"rpm": math.nan}, ValueError, "rpm"),
        ({"tpm": math.inf}, ValueError, "tpm"),
        ({"rpm": "60"}, TypeError, "rpm"),
        ({"rpm": 60, "max_wait": -1}, ValueError, "max_wait"),
        ({"rpm": 60, "max_wait": math.nan}, ValueError, "max_wait"),
        ({"rpm": 60, "key": 42}, TypeError, "key"),
        ({"rpm": 60, "backoff": "yes"}, TypeError, "backoff"),
        ({"rpm": 60, "store": "memcached://x"}, ValueError, "store"),
        ({"rpm": 60, "on_store_error": "ignore"}, ValueError, "on_store_error"),
        ({"key": "alice"}, ValueError, "key"),
        ({"rpm": 60, "key": lambda tenant: tenant}, TypeError, "key"),
    ],
)
def test_bad_configuration_fails_at_decoration_naming_the_parameter(kwargs: dict[str, Any], error: type[Exception], named: str) -> None:
    def ask(q: str, max_tokens: int = 10) -> str:
        return q

    with pytest.raises(error, match=rf"ratelimit\({named}="):
        lg.ratelimit(**kwargs)(ask)


def test_a_scope_needs_a_limit_and_a_shared_one_a_name(redis_url: str) -> None:
    with pytest.raises(ValueError, match="rpm"), lg.ratelimit():
        pass
    with pytest.raises(ValueError, match=r"ratelimit\(name="), lg.ratelimit(rpm=1, store=redis_url):
        pass


# -- many processes, one limit -------------------------------------------------------------------

PROCESSES = 4

# One worker process: its own interpreter, RedisRateLimitStore and HTTP client. It says
# "ready", waits for "go" (so the four ask at the same time), then makes its calls
# through two shared limits and prints its admissions (epoch seconds) and refusals.
_WORKER = """
import json, sys, time
import openai
import llmguard as lg
from llmguard.stores.ratelimit import RedisRateLimitStore

redis_url, base_url, name = sys.argv[1:4]
store = RedisRateLimitStore(redis_url)
client = openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0)
messages = [{"role": "user", "content": "hello there"}]
out = {}
limits = {"refusing": lg.ratelimit(rpm=1, max_wait=0, store=store, name=name + "-refusing"),
          "waiting": lg.ratelimit(rpm=240, max_wait=60, store=store, name=name + "-waiting")}
print("ready", flush=True)
sys.stdin.readline()
for phase, calls in (("refusing", 5), ("waiting", 3)):
    admitted, refused = [], 0

    @limits[phase]
    def ask():
        admitted.append(time.time())
        return client.chat.completions.create(model="gpt-4o", messages=messages)

    for _ in range(calls):
        try:
            ask()
        except lg.RateLimited:
            refused += 1
    out[phase] = {"admitted": admitted, "refused": refused}
print(json.dumps(out), flush=True)
"""


@pytest.mark.redis
def test_four_processes_share_one_limit_on_redis(redis_url: str, fake_provider: FakeProvider) -> None:
    """4 processes on one Redis limit, started together.

    Refusing (rpm=1, max_wait=0, 5 calls each): one call in all 20 goes.
    Waiting (rpm=240: a turn every 250 ms, 3 calls each): all 12 go, and
    never faster than the shared rate (spread over 11 intervals at least).
    """
    name = f"shared-{uuid.uuid4().hex}"
    procs = [
        subprocess.Popen(  # noqa: S603 - this interpreter, our own script
            [sys.executable, "-c", _WORKER, redis_url, fake_provider.openai_base_url, name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    for p in procs:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        stdout, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    refusing = [r["refusing"] for r in results]
    assert sum(len(r["admitted"]) for r in refusing) == 1
    assert sum(r["refused"] for r in refusing) == 19
    waiting = [r["waiting"] for r in results]
    times = sorted(t for r in waiting for t in r["admitted"])
    assert len(times) == 12
    assert sum(r["refused"] for r in waiting) == 0
    assert times[-1] - times[0] >= 11 * 0.25 - 0.1  # the server's turns are 2.75 s apart end to end
    assert len(fake_provider.requests) == 13


# -- the store cannot be reached ----------------------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize("policy", ["fail_closed", "fail_open"])
def test_a_store_that_cannot_be_reached(
    policy: str, fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic, llmguard_events: list[Any]
) -> None:
    """fail_closed refuses with RateLimited (the store's error its cause), nothing sent; fail_open lets the call through."""
    dead = RedisRateLimitStore("redis://127.0.0.1:1/0")

    @lg.ratelimit(rpm=60, store=dead, on_store_error=policy)  # type: ignore[arg-type]
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    if policy == "fail_closed":
        with pytest.raises(lg.RateLimited, match="cannot be reached") as info:
            ask()
        assert info.value.__cause__ is not None
        assert len(fake_provider.requests) == 0
    else:
        assert ask().content[0].text
        assert len(fake_provider.requests) == 1
    assert [e["stage"] for e in llmguard_events if e.name == "llmguard.ratelimit.store_error"] == ["acquire"]


def test_a_correction_the_store_cannot_take_never_loses_the_result(
    anthropic_client: anthropic.Anthropic, fake_clock: FakeClock, llmguard_events: list[Any]
) -> None:
    class Flaky(MemoryRateLimitStore):
        def adjust(self, cells: list[tuple[str, float]]) -> None:
            raise ConnectionError("store went away")

    @lg.ratelimit(tpm=60_000, store=Flaky())
    def ask(max_tokens: int = 100) -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=max_tokens, messages=MESSAGES)

    assert ask().content[0].text  # the call's answer, though its correction failed
    assert [e["stage"] for e in llmguard_events if e.name == "llmguard.ratelimit.store_error"] == ["correct"]
