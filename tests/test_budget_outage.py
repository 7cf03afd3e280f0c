"""`budget` on Redis through an outage: a real redis-server, stopped and restarted with its data.

A settlement that cannot reach Redis is kept and applied once the server is
back, so the reservation it replaces is released then (not when its lease
expires), and a settlement applied twice (a retry, or a reply lost after the
server ran it) charges once.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import threading
import time
import uuid

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

import llmguard as lg
import llmguard.wire

from llmguard._budget import budget, budget_spend
from llmguard._fake_provider import DEFAULT_REPLY, FakeProvider
from llmguard.stores.budget import PICO, BucketSpec, BudgetStoreError, RedisBudgetStore
from llmguard.testing import CapturedEvent


GPT = "gpt-4o"
MESSAGES: Any = [{"role": "user", "content": "say hello to the test"}]


class RedisProcess:
    """A redis-server on a fixed port that can be stopped and started again with its data (AOF)."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("no redis-server: install it (apt-get install redis-server)")
        self.binary = binary
        self.workdir = workdir
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - our own fixed arguments
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
                "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--enable-debug-command", "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis  # noqa: PLC0415 - optional dependency

        client = redis.Redis.from_url(self.url)
        try:
            for _ in range(200):
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    time.sleep(0.05)
            pytest.fail(f"redis-server on port {self.port} did not start")
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM: redis-server flushes its append-only file and exits."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path)
    server.start()
    yield server
    server.stop()


def served(requests: list[Any]) -> tuple[int, int]:
    """What the fake provider served for *requests* of the default reply: (tokens, pico-dollars)."""
    tokens = usd = 0
    for req in requests:
        usage = lg.Usage(sum(len(m["content"].split()) for m in req.body["messages"]), len(DEFAULT_REPLY.split()))
        cost = lg.cost_of(usage, GPT)
        assert cost is not None
        tokens += usage.total_tokens
        usd += round(cost * PICO)
    return tokens, usd


def ledger(target: Any) -> tuple[int, int, float, int]:
    """(tokens, pico-dollars, reserved dollars, calls) of *target*'s ledger."""
    spend = budget_spend(target)
    return spend.tokens, int(spend.exact_usd * PICO), spend.reserved_usd, spend.calls


@pytest.mark.parametrize("path", ["fast", "general"])
def test_settlement_failed_during_an_outage_is_applied_when_redis_is_back(
    restartable_redis: RedisProcess,
    openai_client: openai.OpenAI,
    fake_provider: FakeProvider,
    llmguard_events: list[CapturedEvent],
    path: str,
) -> None:
    """Redis dies while the request is in flight; back with its data, the reservation is released and charged once."""
    store = RedisBudgetStore(restartable_redis.url + "?socket_timeout=0.5&socket_connect_timeout=0.5", namespace=uuid.uuid4().hex)
    key = None if path == "fast" else (lambda **_: None)  # a callable key: the general path
    stop = [True]

    @budget(usd=1.0, store=store, key=key, name="outage")
    def ask(messages: Any, max_tokens: int = 100, model: str = GPT) -> Any:
        answer = openai_client.chat.completions.create(model=model, max_tokens=max_tokens, messages=messages)
        if stop.pop() if stop else False:
            restartable_redis.stop()  # the settlement after this return cannot reach Redis
        return answer

    ask(MESSAGES)
    failed = [e for e in llmguard_events if e.name == "llmguard.budget.store_error" and e["stage"] == "settle"]
    restartable_redis.start()  # the reservation comes back held, from the append-only file

    assert (*served(fake_provider.requests), 0.0, 1) == ledger(ask)  # read: a round trip, which applies it
    assert [True] == [e.fields.get("queued") for e in failed]
    assert 0 == store.pending_settlements
    ask(MESSAGES)  # Redis up all along: nothing is applied twice
    assert (*served(fake_provider.requests), 0.0, 2) == ledger(ask)
    store.close()


async def test_async_settlement_failed_during_an_outage_is_applied_on_the_next_round_trip(
    restartable_redis: RedisProcess, async_openai_client: openai.AsyncOpenAI, fake_provider: FakeProvider
) -> None:
    """The async path keeps its failed settlement too; the next call's reservation applies it, and each call is charged once."""
    store = RedisBudgetStore(restartable_redis.url + "?socket_timeout=0.5&socket_connect_timeout=0.5", namespace=uuid.uuid4().hex)
    stop = [True]

    @budget(usd=1.0, store=store, name="outage")
    async def ask(messages: Any, max_tokens: int = 100, model: str = GPT) -> Any:
        answer = await async_openai_client.chat.completions.create(model=model, max_tokens=max_tokens, messages=messages)
        if stop.pop() if stop else False:
            await asyncio.to_thread(restartable_redis.stop)
        return answer

    await ask(MESSAGES)
    await asyncio.to_thread(restartable_redis.start)
    await ask(MESSAGES)  # its reservation is the first round trip back: the kept settlement goes with it

    assert (*served(fake_provider.requests), 0.0, 2) == ledger(ask)
    assert 0 == store.pending_settlements
    await store.aclose()


def test_a_settlement_whose_reply_never_came_is_applied_once(restartable_redis: RedisProcess) -> None:
    """Redis stalls past the client's socket timeout: the settlement is kept and applied once, on the next round trip."""
    import redis  # noqa: PLC0415 - optional dependency

    store = RedisBudgetStore(restartable_redis.url + "?socket_timeout=0.3&socket_connect_timeout=0.3", namespace=uuid.uuid4().hex)
    spec = BucketSpec("stall::all", 10 * PICO, None, None)
    rid = store.hold(spec, 500, 100, time.time(), 600)
    assert isinstance(rid, str)

    sleeper = redis.Redis.from_url(restartable_redis.url)
    stall = threading.Thread(target=sleeper.execute_command, args=("DEBUG", "SLEEP", "1.2"))
    stall.start()
    time.sleep(0.1)  # the server is asleep
    with contextlib.suppress(BudgetStoreError):  # the reply never came (whether or not the server ran it)
        store.release(rid, spec, 500, 100, 300, 60, time.time(), False)
    stall.join()
    sleeper.close()
    store.ledger("stall::all", time.time())
    bucket = store.ledger("stall::all", time.time())

    assert (300, 60, 0, 0, 1) == (bucket.usd, bucket.tokens, bucket.reserved_usd, bucket.reserved_tokens, bucket.calls)
    store.close()


def test_settling_one_reservation_twice_charges_once(redis_url: str) -> None:
    """What makes a kept settlement safe to apply: a second settlement of the same reservation is skipped.

    Also after its lease expired and was purged (the hold given back first):
    the late settlement still charges, once.
    """
    store = RedisBudgetStore(redis_url, namespace=uuid.uuid4().hex)
    spec = BucketSpec("twice::all", 10 * PICO, None, None)
    now = time.time()
    live = store.hold(spec, 500, 100, now, 600)
    late = store.hold(spec, 500, 100, now, 1)
    assert isinstance(live, str)
    assert isinstance(late, str)
    store.ledger("twice::all", now + 5)  # the short lease expires and is purged

    for _ in range(2):
        store.release(live, spec, 500, 100, 300, 60, now + 5, False)
        store.release(late, spec, 500, 100, 200, 40, now + 5, False)
    bucket = store.ledger("twice::all", now + 5)

    assert (500, 100, 0, 0, 2) == (bucket.usd, bucket.tokens, bucket.reserved_usd, bucket.reserved_tokens, bucket.calls)
    store.close()


def test_pending_settlements_is_validated() -> None:
    with pytest.raises(ValueError, match="pending_settlements"):
        RedisBudgetStore("redis://127.0.0.1:1/0", pending_settlements=-1)


def test_a_charge_without_reservation_is_kept_and_added_once(restartable_redis: RedisProcess) -> None:
    """`charge` (a fail_open call let through unreserved) fails while Redis is down, is kept, and is added once when it is back."""
    store = RedisBudgetStore(restartable_redis.url + "?socket_timeout=0.5&socket_connect_timeout=0.5", namespace=uuid.uuid4().hex)
    spec = BucketSpec("charge::all", 10 * PICO, None, None)
    line = spec.line(0, 0, time.time())
    line.charge_usd, line.charge_tokens = 300, 60
    restartable_redis.stop()
    with pytest.raises(BudgetStoreError) as failed:
        store.charge([line], time.time(), count=True, estimated=False)
    kept = list(store._pending)
    restartable_redis.start()
    store.ledger("charge::all", time.time())  # applies the kept charge
    store._pending.extend(kept)  # and once more, as a replay would: Redis remembers its id
    bucket = store.ledger("charge::all", time.time())

    assert failed.value.queued
    assert 1 == len(kept)
    assert (300, 60, 1) == (bucket.usd, bucket.tokens, bucket.calls)
    store.close()


def test_the_ids_redis_remembers_are_dropped_after_a_day(redis_url: str) -> None:
    """The charges (fail_open calls, corrections) and expired leases Redis remembers, to apply each once, go after a day.

    Also on a budget without a window (its bucket never expires) and while
    no lease expires: every call that settles in time must not leave the set
    growing for ever.
    """
    import redis  # noqa: PLC0415 - optional dependency

    store = RedisBudgetStore(redis_url, namespace=uuid.uuid4().hex)
    spec = BucketSpec("ids::all", 10 * PICO, None, None)
    now = time.time()
    for _ in range(20):
        line = spec.line(0, 0, now)
        line.charge_usd, line.charge_tokens = 3, 1
        store.charge([line], now, count=False, estimated=False)
    remembered = store._prefix + "ids::all:rx"
    client = redis.Redis.from_url(redis_url)
    assert 20 == client.zcard(remembered)

    later = now + 2 * 86400  # two days on: calls reserve and settle in time, as usual
    rid = store.hold(spec, 5, 1, later, 600)
    assert isinstance(rid, str)
    store.release(rid, spec, 5, 1, 5, 1, later, False)
    store.ledger("ids::all", later)

    assert 0 == client.zcard(remembered)
    client.close()
    store.close()


@pytest.fixture
def no_wire() -> Iterator[None]:
    """The wire off: usage is learned only when the function returns (what a correction corrects)."""
    lg.wire.uninstall()
    try:
        yield
    finally:
        lg.wire.install()


def test_a_correction_kept_through_an_outage_is_charged_once(
    restartable_redis: RedisProcess, openai_client: openai.OpenAI, fake_provider: FakeProvider, no_wire: None
) -> None:
    """Two sync attempts abandoned at their deadline; the first one's correction fails (Redis down) and is kept.

    When the second worker ends (Redis back), every correction hook of the
    call runs again: the first attempt's correction, already kept, must not
    be charged a second time. The ledger ends at what the server served.
    (Without the wire: with it, the usage is measured as the response arrives,
    before the deadline, and the abandoned attempt is charged exactly at once,
    leaving nothing to correct.)
    """
    store = RedisBudgetStore(restartable_redis.url + "?socket_timeout=0.5&socket_connect_timeout=0.5", namespace=uuid.uuid4().hex)
    gates = [threading.Event(), threading.Event()]
    started: list[int] = []
    records: list[lg.CallRecord] = []

    @lg.retry(attempts=2, initial=0.01, max_delay=0.01)
    @budget(usd=1.0, store=store, name="corrected")
    @lg.timeout(0.3)
    def ask(messages: Any, max_tokens: int = 100, model: str = GPT) -> Any:
        record = lg.current_call()
        assert record is not None
        records.append(record)
        i = len(started)
        started.append(i)
        answer = openai_client.chat.completions.create(model=model, max_tokens=max_tokens, messages=messages)
        gates[i].wait(30)  # the worker returns when the test says so
        return answer

    with pytest.raises(lg.GuardTimeout):
        ask(MESSAGES)
    assert 2 == len(started)
    restartable_redis.stop()
    gates[0].set()  # the first worker ends: its correction cannot reach Redis, and is kept
    until = time.monotonic() + 20
    while store.pending_settlements < 1 and time.monotonic() < until:
        time.sleep(0.02)
    assert 1 == store.pending_settlements
    restartable_redis.start()
    gates[1].set()  # the second ends with Redis back: its correction, and the kept one, are applied
    record = records[0]
    while (
        any(a.outcome is lg.Outcome.PENDING for a in record.attempts) or store.pending_settlements
    ) and time.monotonic() < until:
        time.sleep(0.02)
    time.sleep(0.5)  # the hooks run once the worker's future is done

    assert 2 == len(fake_provider.requests)
    tokens, usd, reserved, _ = ledger(ask)
    assert (*served(fake_provider.requests), 0.0) == (tokens, usd, reserved)
    store.close()


def test_a_charge_to_a_new_bucket_remembers_its_id_only_as_long_as_the_bucket(redis_url: str) -> None:
    """A charge without a reservation (a fail_open call) to a bucket nobody reserved in yet: nothing it leaves outlives the bucket.

    Its id is remembered next to the bucket, to be added once; that set must
    expire with the bucket (a window's buckets are never touched again).
    """
    import redis  # noqa: PLC0415 - optional dependency

    store = RedisBudgetStore(redis_url, namespace=uuid.uuid4().hex)
    now = time.time()
    spec = BucketSpec("fresh::60", 10 * PICO, None, now + 120)
    line = spec.line(0, 0, now)
    line.charge_usd, line.charge_tokens = 3, 1
    store.charge([line], now, count=True, estimated=False)
    client = redis.Redis.from_url(redis_url)
    bucket = store._prefix + "fresh::60"

    assert 1 == client.zcard(bucket + ":rx")
    # Absolute expiry times (PEXPIRETIME), not PTTLs read one after the other: the clock moves
    # between two reads, and a millisecond tick between them made this flaky.
    assert 0 < client.pexpiretime(bucket + ":rx") <= client.pexpiretime(bucket)
    client.close()
    store.close()


@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_kept_settlement_redis_refuses_is_dropped_and_the_rest_applied(
    restartable_redis: RedisProcess, llmguard_events: list[CapturedEvent], path: str
) -> None:
    """A kept charge Redis refuses on replay (its bucket became a string: WRONGTYPE) is dropped, reported and counted.

    Before: it stayed at the head of the queue, failed on every round trip,
    and the charge behind it was never applied.
    """
    import redis  # noqa: PLC0415 - optional dependency

    store = RedisBudgetStore(restartable_redis.url + "?socket_timeout=0.5&socket_connect_timeout=0.5", namespace=uuid.uuid4().hex)
    lines = []
    for name in ("broken::all", "fine::all"):
        line = BucketSpec(name, 10 * PICO, None, None).line(0, 0, time.time())
        line.charge_usd, line.charge_tokens = 300, 60
        lines.append(line)
    restartable_redis.stop()
    for line in lines:
        with pytest.raises(BudgetStoreError):
            store.charge([line], time.time(), count=True, estimated=False)
    assert 2 == store.pending_settlements
    restartable_redis.start()
    admin = redis.Redis.from_url(restartable_redis.url)
    admin.set(store._prefix + "broken::all", "not a hash")  # HINCRBY on it: WRONGTYPE
    admin.close()

    if path == "sync":
        bucket = store.ledger("fine::all", time.time())  # a round trip: replays both
    else:
        async def replay() -> None:
            await store.aledger("fine::all", time.time())  # the async client's round trip replays them
            await store.aclose()

        asyncio.run(replay())
        bucket = store.ledger("fine::all", time.time())
    dropped = [e for e in llmguard_events if e.name == "llmguard.budget.store_error" and e["stage"] == "replay"]

    assert (0, 1) == (store.pending_settlements, store.dropped_settlements)
    assert (300, 60, 1) == (bucket.usd, bucket.tokens, bucket.calls)
    assert 1 == len(dropped)
    assert ("broken::all", 300 / PICO, 60, True) == (
        dropped[0]["buckets"], dropped[0]["lost_usd"], dropped[0]["lost_tokens"], dropped[0]["dropped"]
    )
    assert "WRONGTYPE" in dropped[0]["error"]
    store.close()


def test_a_kept_settlement_still_unreachable_on_replay_waits(restartable_redis: RedisProcess) -> None:
    """Only a refusal drops a kept settlement: Redis gone again during the replay keeps it (and the rest) queued."""
    store = RedisBudgetStore(restartable_redis.url + "?socket_timeout=0.5&socket_connect_timeout=0.5", namespace=uuid.uuid4().hex)
    line = BucketSpec("wait::all", 10 * PICO, None, None).line(0, 0, time.time())
    line.charge_usd, line.charge_tokens = 300, 60
    restartable_redis.stop()
    for _ in range(2):
        with pytest.raises(BudgetStoreError):
            store.charge([line], time.time(), count=True, estimated=False)
    store._retry_pending()  # the replay itself finds Redis unreachable

    assert (2, 0) == (store.pending_settlements, store.dropped_settlements)
    restartable_redis.start()
    bucket = store.ledger("wait::all", time.time())
    assert (0, 0) == (store.pending_settlements, store.dropped_settlements)
    assert (600, 120, 2) == (bucket.usd, bucket.tokens, bucket.calls)
    store.close()


def _stall(url: str, seconds: float) -> threading.Thread:
    """A thread that puts the redis-server at *url* to sleep for *seconds* (started; join it)."""
    import redis  # noqa: PLC0415 - optional dependency

    sleeper = redis.Redis.from_url(url)

    def sleep() -> None:
        try:
            sleeper.execute_command("DEBUG", "SLEEP", str(seconds))
        finally:
            sleeper.close()

    thread = threading.Thread(target=sleep)
    thread.start()
    time.sleep(0.3)  # the server is asleep
    return thread


def test_a_reservation_whose_reply_never_came_is_released_and_the_call_charged_once(
    restartable_redis: RedisProcess,
    openai_client: openai.OpenAI,
    fake_provider: FakeProvider,
    llmguard_events: list[CapturedEvent],
) -> None:
    """Redis stalls past the socket timeout while it has the reserve: the server holds it, the caller was told it failed.

    ``fail_open`` lets the call through and charges it without a
    reservation; the reservation the server did make is released on the
    next round trip (not when its lease ends), and the call is charged once.
    """
    store = RedisBudgetStore(restartable_redis.url + "?socket_timeout=0.3&socket_connect_timeout=0.3", namespace=uuid.uuid4().hex)

    @budget(usd=1.0, store=store, name="lost_reserve", on_store_error="fail_open")
    def ask(messages: Any, max_tokens: int = 100, model: str = GPT) -> Any:
        return openai_client.chat.completions.create(model=model, max_tokens=max_tokens, messages=messages)

    ask(MESSAGES)  # the scripts are loaded: the stalled reserve is one the server runs when it wakes
    stall = _stall(restartable_redis.url, 1.5)
    ask(MESSAGES)
    stall.join()
    assert ["reserve"] == [e["stage"] for e in llmguard_events if e.name == "llmguard.budget.store_error"][:1]

    assert (*served(fake_provider.requests), 0.0, 2) == ledger(ask)  # a round trip: what was kept is applied
    assert 0 == store.pending_settlements
    ask(MESSAGES)  # nothing applied twice
    assert (*served(fake_provider.requests), 0.0, 3) == ledger(ask)
    store.close()


async def test_async_a_reservation_whose_reply_never_came_is_released_and_the_call_charged_once(
    restartable_redis: RedisProcess,
    async_openai_client: openai.AsyncOpenAI,
    fake_provider: FakeProvider,
    llmguard_events: list[CapturedEvent],
) -> None:
    """The async reserve keeps its release too: the next call's round trip gives the orphaned hold back."""
    store = RedisBudgetStore(restartable_redis.url + "?socket_timeout=0.3&socket_connect_timeout=0.3", namespace=uuid.uuid4().hex)

    @budget(usd=1.0, store=store, name="lost_reserve", on_store_error="fail_open")
    async def ask(messages: Any, max_tokens: int = 100, model: str = GPT) -> Any:
        return await async_openai_client.chat.completions.create(model=model, max_tokens=max_tokens, messages=messages)

    await ask(MESSAGES)
    stall = await asyncio.to_thread(_stall, restartable_redis.url, 1.5)
    await ask(MESSAGES)
    await asyncio.to_thread(stall.join)
    assert ["reserve"] == [e["stage"] for e in llmguard_events if e.name == "llmguard.budget.store_error"][:1]
    await ask(MESSAGES)  # its reservation is the first round trip back: what was kept goes with it

    assert (*served(fake_provider.requests), 0.0, 3) == ledger(ask)
    assert 0 == store.pending_settlements
    await store.aclose()


def test_a_reserve_that_never_left_keeps_no_release(restartable_redis: RedisProcess) -> None:
    """Redis down (no connection can be made): the reserve surely did not run, so only the call's charge is kept.

    And a release of a reservation that was never made changes nothing.
    """
    store = RedisBudgetStore(restartable_redis.url + "?socket_timeout=0.3&socket_connect_timeout=0.3", namespace=uuid.uuid4().hex)
    spec = BucketSpec("never::all", 10 * PICO, None, None)
    restartable_redis.stop()
    with pytest.raises(BudgetStoreError):
        store.hold(spec, 500, 100, time.time(), 600)
    assert 0 == store.pending_settlements
    restartable_redis.start()

    lines = [spec.line(500, 100, time.time())]
    store._keep_release("never-made", store._keys(lines), lines, _lost_reply())  # as if its reply were lost
    assert 1 == store.pending_settlements
    bucket = store.ledger("never::all", time.time())
    assert (0, 0, 0, 0, 0, 0) == (bucket.usd, bucket.tokens, bucket.reserved_usd, bucket.reserved_tokens, bucket.calls, store.pending_settlements)
    store.close()


def _lost_reply() -> BudgetStoreError:
    import redis  # noqa: PLC0415 - optional dependency

    exc = BudgetStoreError("redis budget store: Timeout reading from socket")
    exc.__cause__ = redis.TimeoutError("Timeout reading from socket")
    return exc


def test_a_reserve_sent_twice_holds_once(redis_url: str) -> None:
    """A client that resends a reserve whose reply it lost (redis-py's own retries, on a client you built) holds it once.

    Else the second run adds its amounts to the bucket's reserved total
    under the same lease, and settling the one lease gives back half: the
    other half stays reserved until the bucket expires.
    """
    store = RedisBudgetStore(redis_url, namespace=uuid.uuid4().hex)
    spec = BucketSpec("resent::all", 10 * PICO, None, None)
    now = time.time()
    rid = store.new_id()
    for _ in range(2):
        assert store.reserve(rid, [spec.line(500, 100, now)], now, 600) is None
    held = store.ledger("resent::all", now)
    store.release(rid, spec, 500, 100, 300, 60, now, False)
    bucket = store.ledger("resent::all", now)

    assert (500, 100) == (held.reserved_usd, held.reserved_tokens)
    assert (300, 60, 0, 0, 1) == (bucket.usd, bucket.tokens, bucket.reserved_usd, bucket.reserved_tokens, bucket.calls)
    store.close()
