"""`breaker`: a circuit breaker, with the real anthropic and openai SDKs against the fake provider.

The state machine runs on the memory store and on a real redis-server (the
``store`` fixture); the shared breaker is also run across three processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import subprocess
import sys
import threading
import time
import uuid

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from shapes import MESSAGES, MODEL, SHAPES, build

import llmguard as lg

from llmguard._breaker import DEFAULT_STORE, circuit
from llmguard._fake_provider import FakeProvider, Step
from llmguard.stores.breaker import MemoryBreakerStore, Probe, RedisBreakerStore
from llmguard.testing import FakeClock, capture_events


GPT = "gpt-4o-mini"


def api_requests(fake: FakeProvider) -> int:
    return sum(1 for r in fake.requests if r.path.startswith("/v1"))


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The store a breaker keeps its circuit in: this process's memory, or a real redis-server."""
    if request.param == "memory":
        yield MemoryBreakerStore()
        return
    redis_url = request.getfixturevalue("redis_url")
    redis_store = RedisBreakerStore(redis_url, namespace=f"t{uuid.uuid4().hex[:8]}")
    yield redis_store
    redis_store.close()


@pytest.fixture
def clients(fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic) -> tuple[anthropic.Anthropic, anthropic.AsyncAnthropic]:
    """A sync and an async anthropic client; the async one opens a connection per request.

    The async shapes run each call in an event loop of its own (`shapes.build`):
    a kept-alive connection would belong to a loop that is gone by the next call.
    """
    from sdk_http import httpx  # noqa: PLC0415

    http = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0))
    return anthropic_client, anthropic.AsyncAnthropic(base_url=fake_provider.anthropic_base_url, api_key="k", max_retries=0, http_client=http)


def circuit_of(fn: Any) -> Any:
    """The `Circuit` of a function guarded by one breaker (the outermost guard)."""
    for layer in lg.describe(fn):
        if layer.name == "breaker":
            return fn_layer(fn).circuit
    raise AssertionError("no breaker")


def fn_layer(fn: Any) -> Any:
    from llmguard._runner import layers_of  # noqa: PLC0415

    return next(layer for layer in layers_of(fn) if layer.name == "breaker")


def cause(exc: BaseException | None) -> BaseException | None:
    """What a `StreamInterrupted` interrupted (anything else: itself)."""
    assert isinstance(exc, lg.StreamInterrupted), exc
    return exc.__cause__


def swallow(call: Any) -> BaseException | None:
    """Run *call*; the error it raised, or None."""
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the test reads it
        return exc
    return None


# -- opening, skipping, half-opening, closing: every call shape -------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_opens_after_n_provider_faults_then_skips_with_zero_requests(
    shape: str, clients: Any, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """Three 529s open the circuit; the next calls raise CircuitOpen at once and send nothing."""
    fake_provider.script(Step(status=529), Step(status=500), Step(status=529))
    call = build(shape, lg.breaker(failures=3, cooldown=30), *clients)

    for _ in range(3):
        error = swallow(call)
        assert isinstance(error, anthropic.APIStatusError), error
    assert 3 == api_requests(fake_provider)

    for _ in range(5):
        refused = swallow(call)
        assert isinstance(refused, lg.CircuitOpen), refused
        assert refused.retry_after == pytest.approx(30.0)
    assert 3 == api_requests(fake_provider)  # nothing sent while open


@pytest.mark.parametrize("shape", SHAPES)
def test_half_opens_after_the_cooldown_and_a_probe_success_closes(
    shape: str, clients: Any, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """Past the cooldown one probe goes through; its success closes the circuit for everyone."""
    fake_provider.script(Step(status=529), Step(status=529), Step(reply="back again"))
    call = build(shape, lg.breaker(failures=2, cooldown=10), *clients)
    swallow(call)
    swallow(call)
    fake_clock.advance(9.9)
    assert isinstance(swallow(call), lg.CircuitOpen)
    fake_clock.advance(0.1)

    assert "back again" == call()  # the probe
    assert "Hello from the fake provider." == call()  # closed: calls go through
    assert 4 == api_requests(fake_provider)


@pytest.mark.parametrize("shape", ["def", "async def", "generator"])
def test_a_failed_probe_reopens_with_the_cooldown_doubled_up_to_the_cap(
    shape: str, clients: Any, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """Each failed probe doubles the cooldown (10, 20, 40) until max_cooldown (50); a success resets it."""
    call = build(shape, lg.breaker(failures=1, cooldown=10, max_cooldown=50), *clients)
    fake_provider.script(*[Step(status=503)] * 5)
    swallow(call)
    waits = []
    for _ in range(4):
        refused = swallow(call)
        assert isinstance(refused, lg.CircuitOpen)
        waits.append(refused.retry_after)
        fake_clock.advance(refused.retry_after or 0)
        swallow(call)  # the probe: 503 again
    assert [10.0, 20.0, 40.0, 50.0] == waits
    refused = swallow(call)
    assert isinstance(refused, lg.CircuitOpen)
    fake_clock.advance(refused.retry_after or 0)
    assert call()  # the probe succeeds: closed, cooldown back to 10
    fake_provider.script(Step(status=503))
    swallow(call)
    refused = swallow(call)
    assert isinstance(refused, lg.CircuitOpen)
    assert refused.retry_after == pytest.approx(10.0)


def test_openai_sync_and_async_open_and_skip(
    openai_client: openai.OpenAI, async_openai_client: openai.AsyncOpenAI, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """The openai SDK's 500s and timeouts open the circuit too, sync and async; then nothing is sent."""

    @lg.breaker(failures=2)
    def ask() -> Any:
        return openai_client.chat.completions.create(model=GPT, messages=MESSAGES)

    @lg.breaker(failures=2)
    async def aask() -> Any:
        return await async_openai_client.chat.completions.create(model=GPT, messages=MESSAGES)

    fake_provider.script(Step(status=500), Step(drop=True), Step(status=502), Step(drop=True))
    assert isinstance(swallow(ask), openai.InternalServerError)
    assert isinstance(swallow(ask), openai.APIConnectionError)
    assert isinstance(swallow(ask), lg.CircuitOpen)

    async def run() -> list[BaseException | None]:
        out: list[BaseException | None] = []
        for _ in range(3):
            try:
                await aask()
            except Exception as exc:  # noqa: BLE001
                out.append(exc)
        return out

    errors = asyncio.run(run())
    assert [openai.InternalServerError, openai.APIConnectionError, lg.CircuitOpen] == [type(e) for e in errors]
    assert 4 == api_requests(fake_provider)


# -- what counts ---------------------------------------------------------------------


def test_a_400_does_not_count(anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider, fake_clock: FakeClock) -> None:
    """400s are the caller's fault: however many, the circuit stays closed and every one is sent."""

    @lg.breaker(failures=1)
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)

    fake_provider.script(*[Step(status=400)] * 4, Step(status=401), Step(status=404))
    for _ in range(6):
        assert isinstance(swallow(ask), anthropic.APIStatusError)
    assert 6 == api_requests(fake_provider)
    assert "closed" == circuit_of(ask).state


def test_a_400_between_faults_shows_the_provider_answering(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """529, 400, 529 with failures=2: the 400 was an answer, so the faults are not consecutive."""

    @lg.breaker(failures=2)
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)

    fake_provider.script(Step(status=529), Step(status=400), Step(status=529), Step(status=529))
    for _ in range(3):
        swallow(ask)
    assert "closed" == circuit_of(ask).state
    swallow(ask)
    assert "open" == circuit_of(ask).state


@pytest.mark.parametrize("api", ["anthropic", "openai"])
def test_429_with_retry_after_2_opens_for_2_seconds_only(
    api: str, anthropic_client: anthropic.Anthropic, openai_client: openai.OpenAI, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """One 429 with Retry-After: 2 opens the circuit at once, for exactly 2 s (not the 30 s cooldown)."""

    @lg.breaker(failures=5, cooldown=30)
    def ask() -> Any:
        if api == "anthropic":
            return anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
        return openai_client.chat.completions.create(model=GPT, messages=MESSAGES)

    fake_provider.script(Step(status=429, headers={"retry-after": "2"}))
    assert isinstance(swallow(ask), (anthropic.RateLimitError, openai.RateLimitError))
    refused = swallow(ask)
    assert isinstance(refused, lg.CircuitOpen)
    assert refused.retry_after == pytest.approx(2.0)
    fake_clock.advance(1.9)
    assert isinstance(swallow(ask), lg.CircuitOpen)
    fake_clock.advance(0.1)
    assert ask()  # the probe, then closed
    assert "closed" == circuit_of(ask).state
    assert 2 == api_requests(fake_provider)


@pytest.mark.parametrize(
    ("api", "step"),
    [
        ("openai", Step(status=429, error_type="insufficient_quota", error_code="insufficient_quota")),
        ("anthropic", Step(status=402)),  # billing_error
        ("anthropic", Step(status=429, error_code="contract_spend_limit_reached")),
    ],
    ids=["openai-insufficient_quota", "anthropic-billing_error", "anthropic-spend-limit"],
)
def test_quota_exhaustion_opens_for_the_long_cooldown(
    api: str, step: Step, anthropic_client: anthropic.Anthropic, openai_client: openai.OpenAI,
    fake_provider: FakeProvider, fake_clock: FakeClock,
) -> None:
    """An exhausted quota or billing error opens the circuit at once for max_cooldown, whatever failures= says."""

    @lg.breaker(failures=5, cooldown=30, max_cooldown=900)
    def ask() -> Any:
        if api == "anthropic":
            return anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
        return openai_client.chat.completions.create(model=GPT, messages=MESSAGES)

    fake_provider.script(step)
    assert isinstance(swallow(ask), (anthropic.APIStatusError, openai.APIStatusError))
    refused = swallow(ask)
    assert isinstance(refused, lg.CircuitOpen)
    assert refused.retry_after == pytest.approx(900.0)
    assert 1 == api_requests(fake_provider)


def test_the_classifier_marks_quota_exhaustion_and_nothing_else(
    anthropic_client: anthropic.Anthropic, openai_client: openai.OpenAI, fake_provider: FakeProvider
) -> None:
    """ErrorInfo.exhausted: insufficient_quota, billing_error, a spend limit; not a plain 429 or a 500."""

    def error_of(api: str, step: Step) -> BaseException | None:
        fake_provider.script(step)
        if api == "anthropic":
            return swallow(lambda: anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES))
        return swallow(lambda: openai_client.chat.completions.create(model=GPT, messages=MESSAGES))

    def exhausted(api: str, step: Step) -> bool:
        error = error_of(api, step)
        assert error is not None
        return lg.classify(error).exhausted

    assert exhausted("openai", Step(status=429, error_type="insufficient_quota", error_code="insufficient_quota"))
    assert exhausted("anthropic", Step(status=402))
    assert exhausted("anthropic", Step(status=429, error_code="enforced_spend_limit_reached"))
    assert not exhausted("openai", Step(status=429))
    assert not exhausted("anthropic", Step(status=429))
    assert not exhausted("anthropic", Step(status=500))


def test_a_ratio_over_the_window_opens_with_a_minimum_of_calls(fake_clock: FakeClock, store: Any) -> None:
    """ratio=0.5, min_calls=4: 2 faults in 4 calls open it; faults older than the window are forgotten."""
    outcomes: list[BaseException | None] = []

    @lg.breaker(failures=None, ratio=0.5, window=10, min_calls=4, store=store)
    def call() -> str:
        exc = outcomes.pop(0)
        if exc is not None:
            raise exc
        return "ok"

    def run(*errors: BaseException | None) -> None:
        outcomes.extend(errors)
        for _ in errors:
            swallow(call)

    run(TimeoutError(), TimeoutError(), None)  # 2 of 3: below min_calls
    assert "closed" == circuit_of(call).state
    fake_clock.advance(11)  # those fall out of the window
    run(None, None, TimeoutError())
    assert "closed" == circuit_of(call).state
    run(TimeoutError())  # 2 of 4
    assert "open" == circuit_of(call).state


# -- exactly `probes` probes, everyone else refused at once -------------------------------


@pytest.mark.parametrize("probes", [1, 3])
def test_half_open_lets_exactly_probes_through_under_20_threads(
    probes: int, anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider, fake_clock: FakeClock, store: Any
) -> None:
    """20 threads at a half-open circuit: exactly `probes` requests; the rest get CircuitOpen while the probes are out."""
    release = threading.Event()

    @lg.breaker(failures=1, cooldown=5, probes=probes, store=store, name=f"probe-{uuid.uuid4().hex[:6]}")
    def ask() -> Any:
        assert release.wait(30), "the refused callers never all returned"
        return anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)

    release.set()
    fake_provider.script(Step(status=529))
    swallow(ask)
    release.clear()
    fake_clock.advance(5)

    barrier = threading.Barrier(20)
    results: list[Any] = []
    refused = [0]
    lock = threading.Lock()

    def caller() -> None:
        barrier.wait()
        try:
            outcome: Any = ask().content[0].text
        except lg.CircuitOpen as exc:
            outcome = exc
            with lock:
                refused[0] += 1
                if refused[0] == 20 - probes:
                    release.set()  # every refused caller returned while the probes were still out
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=caller) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert 20 - probes == sum(isinstance(r, lg.CircuitOpen) for r in results)
    assert probes == sum(isinstance(r, str) for r in results)
    assert 1 + probes == api_requests(fake_provider)
    assert "closed" == circuit_of(ask).state


def test_half_open_lets_exactly_one_probe_through_under_20_tasks(
    async_anthropic_client: anthropic.AsyncAnthropic, fake_provider: FakeProvider, fake_clock: FakeClock, store: Any
) -> None:
    """20 asyncio tasks at a half-open circuit: one request; 19 get CircuitOpen while it is out."""

    async def main() -> list[Any]:
        release = asyncio.Event()
        release.set()

        @lg.breaker(failures=1, cooldown=5, store=store, name=f"tasks-{uuid.uuid4().hex[:6]}")
        async def ask() -> Any:
            await asyncio.wait_for(release.wait(), 30)
            return await async_anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)

        fake_provider.script(Step(status=529))
        with contextlib.suppress(anthropic.APIStatusError):
            await ask()
        release.clear()
        fake_clock.advance(5)
        refused: list[Any] = []

        async def caller() -> Any:
            try:
                return (await ask()).content[0].text
            except lg.CircuitOpen as exc:
                refused.append(exc)
                if len(refused) == 19:
                    release.set()
                return exc

        return await asyncio.gather(*(caller() for _ in range(20)))

    results = asyncio.run(main())
    assert 19 == sum(isinstance(r, lg.CircuitOpen) for r in results)
    assert 1 == sum(isinstance(r, str) for r in results)
    assert 2 == api_requests(fake_provider)


def test_no_lock_is_held_while_the_function_runs(fake_clock: FakeClock) -> None:
    """Two calls of a closed circuit run at once: one blocks in user code while the other completes."""
    inside = threading.Event()
    release = threading.Event()

    @lg.breaker(failures=1)
    def slow(block: bool) -> str:
        if block:
            inside.set()
            assert release.wait(30)
        return "done"

    worker = threading.Thread(target=slow, args=(True,))
    worker.start()
    assert inside.wait(30)
    assert "done" == slow(False)  # not blocked behind the first call
    release.set()
    worker.join(30)


# -- stacks ---------------------------------------------------------------------------


def test_retry_above_stops_at_circuit_open_and_budget_below_reserves_nothing(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """retry(5) over breaker(failures=2) over budget: two 529s, then CircuitOpen ends the call; two requests, no third reservation."""
    reservations: list[int] = []

    @lg.retry(attempts=5)
    @lg.breaker(failures=2)
    @lg.budget(usd=10.0, per="day", model=MODEL, max_output=64)
    def ask() -> Any:
        reservations.append(1)
        return anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)

    fake_provider.script(*[Step(status=529)] * 5)
    with pytest.raises(lg.CircuitOpen):
        ask()
    assert 2 == api_requests(fake_provider)
    assert 2 == len(reservations)
    spend = lg.budget_spend(ask)
    assert 0.0 == spend.usd
    assert spend.remaining_usd == pytest.approx(10.0)  # the refused attempt holds nothing
    assert [g.name for g in lg.describe(ask)] == ["retry", "breaker", "budget"]


@pytest.mark.parametrize("shape", SHAPES)
def test_under_retry_every_shape_stops_when_the_circuit_opens(
    shape: str, clients: Any, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """retry(5) over breaker(failures=2), every call shape (streams fail before their first chunk): two requests, then CircuitOpen."""
    fake_provider.script(*[Step(status=529)] * 5)
    call = build(shape, lambda f: lg.retry(attempts=5)(lg.breaker(failures=2)(f)), *clients)
    assert isinstance(swallow(call), lg.CircuitOpen)
    assert 2 == api_requests(fake_provider)


def test_retry_waits_out_a_retry_after_and_the_breaker_lets_the_probe_through(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """A 429 with Retry-After: 1 opens the breaker for 1 s; retry sleeps that long, and its next attempt is the probe."""

    @lg.retry(attempts=3)
    @lg.breaker()
    @lg.budget(usd=10.0, per="day", model=MODEL, max_output=64)
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)

    fake_provider.script(Step(status=429, headers={"retry-after": "1"}), Step(reply="through"))
    with capture_events("llmguard.breaker.") as events:
        assert "through" == ask().content[0].text
    assert 2 == api_requests(fake_provider)
    assert [1.0] == fake_clock.sleeps
    assert ["llmguard.breaker.opened", "llmguard.breaker.half_opened", "llmguard.breaker.closed"] == [e.name for e in events]
    assert "rate limited" in events[0]["reason"]
    assert lg.budget_spend(ask).usd > 0


def test_events_on_each_state_change(fake_clock: FakeClock, store: Any) -> None:
    """Events opened (with why and for how long), half_opened and closed: one each, naming the circuit."""
    fail = [True]

    @lg.breaker(failures=2, cooldown=7, store=store, name=f"events-{uuid.uuid4().hex[:6]}")
    def call() -> str:
        if fail[0]:
            raise ConnectionError("down")
        return "ok"

    with capture_events("llmguard.breaker.") as events:
        swallow(call)
        swallow(call)
        swallow(call)
        fake_clock.advance(7)
        fail[0] = False
        call()
    assert ["llmguard.breaker.opened", "llmguard.breaker.half_opened", "llmguard.breaker.closed"] == [e.name for e in events]
    assert events[0]["seconds"] == 7.0
    assert "2 consecutive failures (connection)" == events[0]["reason"]
    assert all(e["breaker"].startswith("events-") for e in events)


def test_a_stream_is_counted_when_it_ends(fake_clock: FakeClock) -> None:
    """A generator that fails while read is a fault, counted at its end; one read to the end, or closed early, a success.

    The caller gets `StreamInterrupted` (chunks had reached it); the breaker counts the error underneath.
    """
    plan: list[str] = []

    @lg.breaker(failures=2)
    def chunks() -> Iterator[str]:
        yield "a"
        if plan.pop(0) == "fail":
            raise TimeoutError("stalled")
        yield "b"

    plan.extend(["fail", "ok", "fail"])
    assert isinstance(cause(swallow(lambda: list(chunks()))), TimeoutError)
    assert ["a", "b"] == list(chunks())  # resets the count
    assert isinstance(cause(swallow(lambda: list(chunks()))), TimeoutError)
    assert "closed" == circuit_of(chunks).state
    stream = chunks()
    assert "a" == next(stream)
    stream.close()  # the caller had enough: not a fault
    plan.extend(["fail"])
    assert isinstance(cause(swallow(lambda: list(chunks()))), TimeoutError)
    assert "closed" == circuit_of(chunks).state
    plan.extend(["fail"])
    swallow(lambda: list(chunks()))
    assert "open" == circuit_of(chunks).state


def test_cancelled_probe_frees_its_slot(fake_clock: FakeClock) -> None:
    """A probe cancelled (neither success nor fault) lets the next caller probe."""
    circ = circuit("cancelled-probe-" + uuid.uuid4().hex[:6], failures=1, cooldown=1)
    circ.record(circ.admit(), TimeoutError())
    fake_clock.advance(1)
    probe = circ.admit()
    assert isinstance(probe, Probe)
    with pytest.raises(lg.CircuitOpen) as refused:
        circ.admit()
    assert 0.0 == refused.value.retry_after
    circ.record(probe, asyncio.CancelledError())
    assert isinstance(circ.admit(), Probe)


def test_what_each_error_means_for_the_circuit() -> None:
    """A GuardTimeout is a fault; its refusals, a bug, a cancellation are not counted; a 429 with no wait is a fault."""
    from llmguard._breaker import judge  # noqa: PLC0415
    from llmguard.stores._breaker_base import FAULT, NEUTRAL, OK, Rules  # noqa: PLC0415

    rules = Rules(5, None, 60.0, 10, 30.0, 600.0, 1)

    class Bare429(Exception):
        status_code = 429

    assert FAULT == judge(lg.GuardTimeout("late"), rules)[0]
    assert FAULT == judge(ConnectionResetError(), rules)[0]
    assert FAULT == judge(Bare429(), rules)[0]
    assert OK == judge(None, rules)[0]
    for silent in (lg.CircuitOpen("open"), lg.BudgetExceeded("no"), RuntimeError("bug"), asyncio.CancelledError(), KeyboardInterrupt()):
        assert NEUTRAL == judge(silent, rules)[0], silent


def test_redis_out_of_reach_lets_calls_through_uncounted(fake_clock: FakeClock) -> None:
    """With no Redis to ask, calls go through (a breaker never fails the application) and store_error says why."""
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed

    @lg.breaker(failures=1, store=f"redis://127.0.0.1:{port}/0")
    def call(fail: bool) -> str:
        if fail:
            raise TimeoutError
        return "ok"

    with capture_events("llmguard.breaker.") as events:
        assert isinstance(swallow(lambda: call(True)), TimeoutError)
        assert "ok" == call(False)
    assert {"llmguard.breaker.store_error"} == {e.name for e in events}
    assert "admit" == events[0]["stage"]


# -- the Circuit interface (what fallback uses) --------------------------------------


def test_circuit_interface_sync_and_async(fake_clock: FakeClock, store: Any) -> None:
    """admit/record and aadmit/arecord drive one circuit; a ticket from before it opened changes nothing."""
    circ = circuit("iface-" + uuid.uuid4().hex[:6], failures=2, cooldown=3, store=store)
    assert "closed" == circ.state
    early = circ.admit()
    circ.record(circ.admit(), TimeoutError())
    circ.record(circ.admit(), anthropic_overloaded())
    assert "open" == circ.state
    circ.record(early, None)  # a call let through before it opened succeeds late: still open
    assert "open" == circ.state
    with pytest.raises(lg.CircuitOpen) as refused:
        circ.admit()
    assert refused.value.retry_after == pytest.approx(3.0)
    assert refused.value.target == circ.name
    fake_clock.advance(3)
    assert "half_open" == circ.state

    async def probe() -> None:
        ticket = await circ.aadmit()
        assert isinstance(ticket, Probe)
        with pytest.raises(lg.CircuitOpen):
            await circ.aadmit()
        await circ.arecord(ticket, None)

    asyncio.run(probe())
    assert "closed" == circ.state
    circ.record(early, TimeoutError())  # stale: the circuit closed since
    circ.record(circ.admit(), TimeoutError())
    assert "closed" == circ.state


def anthropic_overloaded() -> Exception:
    """An anthropic 529 as the SDK raises it (built by the SDK from a real HTTP response)."""
    from sdk_http import httpx  # noqa: PLC0415

    request = httpx.Request("POST", "https://api.anthropic.com/v1/messages")
    response = httpx.Response(529, request=request, json={"type": "error", "error": {"type": "overloaded_error", "message": "x"}})
    return anthropic.Anthropic(api_key="k")._make_status_error_from_response(response)


def test_one_name_is_one_circuit(fake_clock: FakeClock) -> None:
    """Two functions (and a circuit() caller) naming one circuit share it; unnamed functions do not."""
    name = "shared-" + uuid.uuid4().hex[:6]

    @lg.breaker(failures=1, name=name)
    def a() -> str:
        raise TimeoutError

    @lg.breaker(failures=1, name=name)
    def b() -> str:
        return "b"

    swallow(a)
    assert isinstance(swallow(b), lg.CircuitOpen)
    assert "open" == circuit(name, failures=1).state

    @lg.breaker(failures=1)
    def c() -> str:
        raise TimeoutError

    @lg.breaker(failures=1)
    def d() -> str:
        return "d"

    swallow(c)
    assert "d" == d()
    with pytest.raises(ValueError, match=r"breaker\(name=\.\.\.\)"):
        circuit(name, failures=2)  # the same name with other settings
    assert name in repr(DEFAULT_STORE._cells)


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "error", "named"),
    [
        ({"failures": 0}, ValueError, "failures"),
        ({"failures": -1}, ValueError, "failures"),
        ({"failures": 2.5}, TypeError, "failures"),
        ({"failures": True}, TypeError, "failures"),
        ({"failures": None}, ValueError, "failures"),
        ({"probes": 0}, ValueError, "probes"),
        ({"cooldown": -1}, ValueError, "cooldown"),
        ({"cooldown": 0}, ValueError, "cooldown"),
        ({"cooldown": math.nan}, ValueError, "cooldown"),
        ({"cooldown": math.inf}, ValueError, "cooldown"),
        ({"cooldown": "30"}, TypeError, "cooldown"),
        ({"ratio": 0}, ValueError, "ratio"),
        ({"ratio": 1.5}, ValueError, "ratio"),
        ({"ratio": math.nan}, ValueError, "ratio"),
        ({"window": -5}, ValueError, "window"),
        ({"min_calls": 0}, ValueError, "min_calls"),
        ({"max_cooldown": 5, "cooldown": 10}, ValueError, "max_cooldown"),
        ({"store": 42}, TypeError, "store"),
        ({"name": ""}, ValueError, "name"),
    ],
)
def test_bad_configuration_fails_at_decoration_naming_the_parameter(settings: dict[str, Any], error: type[Exception], named: str) -> None:
    """Bad settings raise when the decorator is built (and circuit() raises the same), never on a call."""
    with pytest.raises(error, match=rf"breaker\({named}=\.\.\.\)"):
        lg.breaker(**settings)
    if "name" in settings:
        return  # circuit() takes the name as its first argument
    with pytest.raises(error, match=rf"breaker\({named}=\.\.\.\)"):
        circuit("cfg", **settings)


def test_ratio_one_and_bare_decorator_are_accepted(fake_clock: FakeClock) -> None:
    """ratio=1 (every call failed) is a valid rule; @lg.breaker bare uses the defaults."""
    lg.breaker(ratio=1, failures=None)

    @lg.breaker
    def f() -> str:
        return "f"

    assert "f" == f()
    assert 5 == fn_layer(f).rules.failures


# -- Redis: one breaker across processes ------------------------------------------------------


def _worker(redis_url: str, namespace: str, base_url: str) -> None:
    """One process: say ready; then, for each line read (a clock offset), one call through the shared breaker."""
    from llmguard import _clock  # noqa: PLC0415

    client = openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0)

    @lg.breaker(failures=3, cooldown=600, store=RedisBreakerStore(redis_url, namespace=namespace), name="shared")
    def ask() -> Any:
        return client.chat.completions.create(model=GPT, messages=MESSAGES)

    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:  # the parent says go to all three at once
        offset = float(line)
        if offset:  # this process's clock runs ahead: past the cooldown
            _clock.set_clock(FakeClock(start=time.monotonic(), wall=time.time() + offset))
        try:
            ask()
            outcome = "ok"
        except lg.CircuitOpen:
            outcome = "open"
        except openai.APIStatusError:
            outcome = "fault"
        sys.stdout.write(json.dumps(outcome) + "\n")
        sys.stdout.flush()


def _round(procs: list[subprocess.Popen[str]], clock_offset: float = 0.0) -> list[str]:
    """One call in each worker, started together; their outcomes, sorted."""
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(f"{clock_offset}\n")
        proc.stdin.flush()
    out = []
    for proc in procs:
        assert proc.stdout is not None
        out.append(json.loads(proc.stdout.readline()))
    return sorted(out)


def test_a_redis_breaker_is_shared_by_three_processes(redis_url: str, fake_provider: FakeProvider) -> None:
    """3 processes: their 3 faults open one circuit; then all 3 are refused with no request; past the cooldown exactly one probes."""
    namespace = f"p{uuid.uuid4().hex[:8]}"
    procs = [
        subprocess.Popen(  # noqa: S603 - this file, as a script
            [sys.executable, __file__, "worker", redis_url, namespace, fake_provider.openai_base_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).parent,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert "ready" == proc.stdout.readline().strip()  # every worker imported and built its breaker

        fake_provider.script(*[Step(status=500)] * 3)
        assert ["fault", "fault", "fault"] == _round(procs)
        assert 3 == api_requests(fake_provider)

        assert ["open", "open", "open"] == _round(procs)
        assert 3 == api_requests(fake_provider)  # none sent

        fake_provider.script(Step(delay=5.0))  # the probe is out while the others ask
        assert ["ok", "open", "open"] == _round(procs, clock_offset=601)
        assert 4 == api_requests(fake_provider)
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate(timeout=30)
    shared = circuit("shared", failures=3, cooldown=600, store=RedisBreakerStore(redis_url, namespace=namespace))
    assert "closed" == shared.state  # the probe's success closed it for every process


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    _worker(*sys.argv[2:5])
