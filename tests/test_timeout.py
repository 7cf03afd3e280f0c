"""`timeout`: total deadlines, stream stalls, and deadlines that propagate.

These are real-time tests (a guard that must interrupt waiting cannot be shown
on a fake clock), kept to a few hundred milliseconds each.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import openai
import pytest

from shapes import SHAPES, build

import llmguard as lg

from llmguard._fake_provider import FakeProvider, Step
from llmguard._runner import Guard
from llmguard.testing import FakeClock


MODEL = "claude-sonnet-4-6"
MESSAGES: Any = [{"role": "user", "content": "hello there"}]
SLACK = 0.1  # the contract: control back within the deadline + 100 ms


def test_sync_call_returns_control_within_the_deadline(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """A slow sync call gives GuardTimeout (a TimeoutError) at the deadline, not when it ends."""
    fake_provider.script(Step(delay=2.0))

    @lg.timeout(0.3)
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    start = time.monotonic()
    with pytest.raises(lg.GuardTimeout) as info:
        ask()
    elapsed = time.monotonic() - start

    assert isinstance(info.value, TimeoutError)
    assert "total" == info.value.limit
    assert elapsed < 0.3 + SLACK


async def test_async_call_is_cancelled_at_the_deadline(
    async_anthropic_client: anthropic.AsyncAnthropic, fake_provider: FakeProvider
) -> None:
    """A slow async call is cancelled and raises GuardTimeout within the deadline."""
    fake_provider.script(Step(delay=2.0))
    cancelled = []

    @lg.timeout(0.3)
    async def ask() -> Any:
        try:
            return await async_anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    start = time.monotonic()
    with pytest.raises(lg.GuardTimeout):
        await ask()

    assert time.monotonic() - start < 0.3 + SLACK
    assert [True] == cancelled


def test_remaining_inside_the_call_ends_the_abandoned_request_too(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """Passing lg.remaining() to the SDK makes the abandoned sync request time out as well."""
    fake_provider.script(Step(delay=2.0))
    seen: list[float | None] = []
    errors: list[BaseException] = []

    @lg.timeout(0.3)
    def ask() -> Any:
        seen.append(lg.remaining())
        try:
            return anthropic_client.messages.create(
                model=MODEL, max_tokens=8, messages=MESSAGES, timeout=lg.remaining()
            )
        except BaseException as exc:
            errors.append(exc)
            raise

    with pytest.raises(lg.GuardTimeout):
        ask()
    # The worker's own SDK timeout fires right at the deadline (well before
    # the 2 s reply); wait for it without assuming how busy the machine is.
    give_up = time.monotonic() + 1.5
    while not errors and time.monotonic() < give_up:
        time.sleep(0.02)

    assert seen[0] is not None
    assert 0 < seen[0] <= 0.3
    assert 1 == len(errors)
    assert isinstance(errors[0], anthropic.APITimeoutError)


def test_fast_calls_pass_through_untouched(anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider) -> None:
    """Within the deadline the result comes back as it was."""
    fake_provider.script(Step(reply="quick"))

    @lg.timeout(5)
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    assert "quick" == ask().content[0].text


# -- streams -----------------------------------------------------------------


def sync_stream(client: anthropic.Anthropic, guard: Any) -> Any:
    @guard
    def ask() -> Any:
        return client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, stream=True)

    return ask


def sync_generator(client: anthropic.Anthropic, guard: Any) -> Any:
    @guard
    def texts() -> Iterator[str]:
        for e in client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, stream=True):
            if e.type == "content_block_delta":
                yield e.delta.text

    return texts


@pytest.mark.parametrize("make", [sync_stream, sync_generator])
def test_stalled_sync_stream_is_stopped_by_idle(
    make: Any, anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """A stream that goes silent mid-way raises GuardTimeout(limit="idle") after `idle` seconds."""
    fake_provider.script(Step(reply="a b c d e f", stall_after=2, stall=5.0))
    ask = make(anthropic_client, lg.timeout(idle=0.3))

    got = []
    start = time.monotonic()
    with pytest.raises(lg.GuardTimeout) as info:
        got.extend(ask())
    elapsed = time.monotonic() - start

    assert "idle" == info.value.limit
    assert elapsed < 0.3 + 0.5
    assert elapsed >= 0.3


@pytest.mark.parametrize("make", [sync_stream, sync_generator])
def test_slow_first_byte_is_stopped_by_first_token(
    make: Any, anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """A server slow to send anything raises GuardTimeout(limit="first_token")."""
    fake_provider.script(Step(delay=2.0))
    ask = make(anthropic_client, lg.timeout(first_token=0.3))

    start = time.monotonic()
    with pytest.raises(lg.GuardTimeout) as info:
        list(ask())

    assert "first_token" == info.value.limit
    assert time.monotonic() - start < 0.3 + SLACK


async def test_stalled_async_stream_is_stopped_by_idle(
    async_openai_client: openai.AsyncOpenAI, fake_provider: FakeProvider
) -> None:
    """An async SDK stream that stalls is stopped by idle=, and its stream is closed."""
    fake_provider.script(Step(reply="a b c d e f", stall_after=2, stall=5.0))
    probe_outcomes: list[lg.Outcome] = []

    @lg.timeout(idle=0.3)
    async def ask() -> Any:
        return await async_openai_client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)

    stream = await ask()
    stream.on_finish(lambda outcome, exc: probe_outcomes.append(outcome))
    start = time.monotonic()
    with pytest.raises(lg.GuardTimeout) as info:
        async for _ in stream:
            pass

    assert "idle" == info.value.limit
    assert time.monotonic() - start < 0.3 + 0.5
    assert [lg.Outcome.ERROR] == probe_outcomes


async def test_slow_first_token_of_an_async_generator(
    async_anthropic_client: anthropic.AsyncAnthropic, fake_provider: FakeProvider
) -> None:
    """An async generator whose first chunk is late raises GuardTimeout(first_token)."""
    fake_provider.script(Step(delay=2.0))

    @lg.timeout(first_token=0.3)
    async def texts() -> AsyncIterator[str]:
        async for e in await async_anthropic_client.messages.create(
            model=MODEL, max_tokens=64, messages=MESSAGES, stream=True
        ):
            yield e.type

    start = time.monotonic()
    with pytest.raises(lg.GuardTimeout) as info:
        _ = [t async for t in texts()]

    assert "first_token" == info.value.limit
    assert time.monotonic() - start < 0.3 + SLACK


async def test_async_generator_total_bounds_the_whole_stream() -> None:
    """total= bounds a slow async generator end to end."""

    @lg.timeout(0.3)
    async def ticks() -> AsyncIterator[int]:
        for i in range(100):
            await asyncio.sleep(0.05)
            yield i

    with pytest.raises(lg.GuardTimeout) as info:
        _ = [t async for t in ticks()]

    assert "total" == info.value.limit


def test_retry_over_timeout_retries_a_stalled_first_token(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider, fake_clock: Any
) -> None:
    """A first-token timeout is a failure before any chunk: retry makes a second request."""
    fake_provider.script(Step(delay=2.0), Step(reply="second try"))

    @lg.retry
    @lg.timeout(first_token=0.3)
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, stream=True)

    text = "".join(e.delta.text for e in ask() if e.type == "content_block_delta")

    assert "second try" == text
    assert 2 == sum(1 for r in fake_provider.requests if r.path == "/v1/messages")


def test_idle_stall_after_chunks_is_stream_interrupted_under_retry(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider, fake_clock: Any
) -> None:
    """A stall after chunks reached the caller is not retried: StreamInterrupted from the timeout."""
    fake_provider.script(Step(reply="a b c d", stall_after=2, stall=5.0), Step(reply="never"))

    @lg.retry
    @lg.timeout(idle=0.3)
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, stream=True)

    with pytest.raises(lg.StreamInterrupted) as info:
        list(ask())

    assert isinstance(info.value.__cause__, lg.GuardTimeout)
    assert 1 == sum(1 for r in fake_provider.requests if r.path == "/v1/messages")


# -- the context manager -------------------------------------------------------


def test_context_manager_sets_a_deadline_nested_take_the_smaller() -> None:
    """With lg.timeout(...) sets remaining(); nested blocks take the smaller deadline."""
    assert lg.remaining() is None
    with lg.timeout(10):
        outer = lg.remaining()
        with lg.timeout(2):
            inner = lg.remaining()
        with lg.timeout(60):
            wider = lg.remaining()
    assert lg.remaining() is None

    assert outer is not None
    assert inner is not None
    assert wider is not None
    assert 9 < outer <= 10
    assert 1 < inner <= 2
    assert 9 < wider <= 10


def test_inner_timeout_guard_shortens_to_the_active_deadline(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """A guard with a long total inside a short block times out at the block's deadline."""
    fake_provider.script(Step(delay=2.0))

    @lg.timeout(30)
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    start = time.monotonic()
    with lg.timeout(0.3), pytest.raises(lg.GuardTimeout):
        ask()

    assert time.monotonic() - start < 0.3 + SLACK


async def test_async_context_manager_cancels_the_block() -> None:
    """Async with lg.timeout(...) cancels the block at the deadline with GuardTimeout."""
    start = time.monotonic()
    with pytest.raises(lg.GuardTimeout):
        async with lg.timeout(0.2):
            await asyncio.sleep(5)

    assert time.monotonic() - start < 0.2 + SLACK


async def test_one_timeout_object_entered_by_many_tasks() -> None:
    """A shared timeout object used as a context manager by concurrent tasks keeps each deadline apart."""
    shared = lg.timeout(5)

    async def worker() -> float | None:
        async with shared:
            await asyncio.sleep(0.01)
            return lg.remaining()

    results = await asyncio.gather(*(worker() for _ in range(20)))

    assert all(r is not None and 4 < r <= 5 for r in results)
    assert lg.remaining() is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"total": 0}, r"timeout\(total=...\) must be > 0, got 0"),
        ({"total": -1}, r"timeout\(total=...\) must be > 0, got -1"),
        ({"first_token": 0}, r"timeout\(first_token=...\) must be > 0"),
        ({"idle": -0.5}, r"timeout\(idle=...\) must be > 0"),
        ({}, r"needs at least one of total=, first_token= or idle="),
        ({"total": "soon"}, r"timeout\(total=...\) must be a number of seconds"),
    ],
)
def test_bad_limits_are_rejected_at_decoration(kwargs: dict[str, Any], message: str) -> None:
    """Zero, negative or missing limits fail when the decorator is built, naming the parameter."""
    with pytest.raises((ValueError, TypeError), match=message):
        lg.timeout(**kwargs)


def test_bare_timeout_is_a_clear_error() -> None:
    """@lg.timeout without limits says how to use it."""
    with pytest.raises(TypeError, match=r"use @timeout\(seconds\)"):

        @lg.timeout  # type: ignore[arg-type]
        def f() -> None:
            pass


def test_timeout_keeps_identity_and_shape() -> None:
    """A timed function keeps its name, signature and coroutine-ness."""

    @lg.timeout(1)
    async def ask(q: str) -> str:
        """Doc."""
        return q

    assert "ask" == ask.__name__
    assert asyncio.iscoroutinefunction(ask)
    assert "x" == asyncio.run(ask("x"))
    assert {"total": 1.0, "first_token": None, "idle": None, "mode": "thread"} == lg.describe(ask)[0].settings


def test_abandoned_attempt_and_its_retry_stay_separate_attempts(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """A timed-out sync attempt that finishes later in its worker keeps its own usage; the retry keeps its own."""
    fake_provider.script(
        Step(delay=0.6, usage={"input_tokens": 10, "output_tokens": 1}),
        Step(reply="fast", usage={"input_tokens": 20, "output_tokens": 2}),
    )
    calls: list[Any] = []

    class ReadsTheRecordLate(Guard):  # the record is built only after the call
        def leave(self, call: Any, state: None, result: Any) -> Any:
            calls.append(call)
            return result

    @ReadsTheRecordLate()
    @lg.retry(initial=0.01, max_delay=0.01)
    @lg.timeout(0.3)
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    assert "fast" == ask().content[0].text
    time.sleep(0.6)  # the abandoned first attempt completes in its worker
    record = calls[0].record

    assert [1, 2] == [a.number for a in record.attempts]
    assert [10, 20] == sorted(a.usage.input_tokens for a in record.attempts if a.usage)
    assert lg.Usage(30, 3) == record.usage


async def test_an_async_generator_body_sees_the_deadline() -> None:
    """lg.remaining() inside a timed async generator is the deadline's, as in a sync one."""

    @lg.timeout(5)
    async def agen() -> AsyncIterator[float | None]:
        yield lg.remaining()

    @lg.timeout(5)
    def sgen() -> Iterator[float | None]:
        yield lg.remaining()

    [async_left] = [x async for x in agen()]
    [sync_left] = list(sgen())

    assert async_left is not None
    assert sync_left is not None
    assert 4 < async_left <= 5
    assert 4 < sync_left <= 5


def test_a_timed_generator_keeps_one_context_across_its_yields() -> None:
    """A context variable set before a yield is still there after it, and its token resets cleanly."""
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    @lg.timeout(10, idle=5)
    def body() -> Iterator[str]:
        token = var.set("mine")
        yield "first"
        yield var.get()
        var.reset(token)

    @lg.timeout(10, idle=5)
    def nested() -> Iterator[float | None]:
        with lg.timeout(3):
            yield 1.0
            yield lg.remaining()

    assert ["first", "mine"] == list(body())
    first, left = list(nested())
    assert left is not None
    assert 2 < left <= 3


def test_the_timeout_message_names_the_deadline_that_fired(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """Inside `with lg.timeout(0.3)`, a guard of 30 s reports the 0.3 s that actually fired."""
    fake_provider.script(Step(delay=2.0))

    @lg.timeout(30)
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    with lg.timeout(0.3), pytest.raises(lg.GuardTimeout) as info:
        ask()

    assert info.value.seconds <= 0.3
    assert "30s" not in str(info.value)


# -- the per-loop timer wheel behind async timeouts ------------------------------


async def test_many_concurrent_timed_calls_share_one_timer_and_each_gets_its_own_verdict() -> None:
    """200 tasks on one loop, deadlines interleaved: the slow ones time out, the fast ones return.

    All share the loop's one wheel; what is left armed afterwards is nothing.
    """
    from llmguard import _timers

    @lg.timeout(0.2)
    async def work(delay: float) -> float:
        await asyncio.sleep(delay)
        return delay

    delays = [0.4 if i % 3 == 0 else 0.01 * (i % 7) for i in range(200)]
    results = await asyncio.gather(*(work(d) for d in delays), return_exceptions=True)

    for delay, result in zip(delays, results, strict=True):
        if delay > 0.2:
            assert isinstance(result, lg.GuardTimeout)
            assert "total" == result.limit
        else:
            assert delay == result
    wheel = _timers._wheel_of(asyncio.get_running_loop())
    assert [] == [e for e in wheel._heap if e[_timers._TASK] is not None]


async def test_an_earlier_deadline_reschedules_the_timer() -> None:
    """A long timeout armed first, a short one second: the short one still fires on time."""

    @lg.timeout(30)
    async def long_wait() -> str:
        await asyncio.sleep(0.5)
        return "long"

    @lg.timeout(0.05)
    async def short_wait() -> str:
        await asyncio.sleep(5)
        return "short"

    long_task = asyncio.create_task(long_wait())
    await asyncio.sleep(0)
    start = time.monotonic()
    with pytest.raises(lg.GuardTimeout):
        await short_wait()
    assert time.monotonic() - start < 0.5
    assert "long" == await long_task


async def test_finished_calls_leave_no_entries_behind() -> None:
    """Calls that finish out of deadline order are swept; the heap does not grow with traffic."""
    from llmguard import _timers

    @lg.timeout(60)
    async def quick(i: int) -> int:
        await asyncio.sleep(0.001 * (i % 5))
        return i

    for _ in range(5):
        assert list(range(100)) == await asyncio.gather(*(quick(i) for i in range(100)))
    wheel = _timers._wheel_of(asyncio.get_running_loop())
    assert len(wheel._heap) <= _timers._Wheel.SWEEP_AFTER * 2


def test_a_closed_loop_leaves_the_wheel_registry() -> None:
    """Each asyncio.run gets a wheel; when its loop is collected, so is the registry entry."""
    import gc

    from llmguard import _timers

    loops: list[int] = []

    @lg.timeout(5)
    async def ok() -> str:
        key = id(asyncio.get_running_loop())
        assert key in _timers._WHEELS  # the call armed this loop's wheel
        loops.append(key)
        return "ok"

    for _ in range(3):
        assert "ok" == asyncio.run(ok())
    _timers._LAST_WHEEL = None
    gc.collect()
    assert [] == [key for key in loops if key in _timers._WHEELS]


async def test_someone_elses_cancel_is_not_turned_into_a_timeout() -> None:
    """Cancelling the task from outside stays a CancelledError, and the wheel forgets it."""

    @lg.timeout(10)
    async def slow() -> None:
        await asyncio.sleep(10)

    task = asyncio.create_task(slow())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_idle_only_async_call_lets_its_own_error_and_a_cancel_through() -> None:
    """``timeout(idle=...)`` alone on an ``async def`` has no deadline to arm: its error and an outside cancel stand."""

    @lg.timeout(idle=5)
    async def fails() -> None:
        raise ValueError("its own")

    @lg.timeout(idle=5)
    async def waits() -> None:
        await asyncio.sleep(10)

    with pytest.raises(ValueError, match="its own"):
        await fails()
    task = asyncio.create_task(waits())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_stream_chunks_are_timed_on_the_wheel_and_leave_nothing_armed() -> None:
    """idle= bounds each chunk on the loop's wheel: many streams read together, nothing left armed after."""
    from llmguard import _timers

    armed: list[bool] = []

    @lg.timeout(30, idle=5)
    async def ticks(n: int) -> AsyncIterator[int]:
        for i in range(n):
            await asyncio.sleep(0)
            # While a chunk is awaited, this task's deadline is on the wheel.
            wheel = _timers._wheel_of(asyncio.get_running_loop())
            armed.append(any(e[_timers._TASK] is asyncio.current_task() for e in wheel._heap))
            yield i

    async def read(n: int) -> list[int]:
        return [t async for t in ticks(n)]

    results = await asyncio.gather(*(read(50) for _ in range(20)))

    assert [list(range(50))] * 20 == results
    assert [True] * 1000 == armed
    wheel = _timers._wheel_of(asyncio.get_running_loop())
    assert [] == [e for e in wheel._heap if e[_timers._TASK] is not None]


async def test_a_chunk_stalled_past_idle_is_a_timeout_and_the_rest_of_the_stream_is_not_read() -> None:
    """The third chunk stalls: GuardTimeout(idle) after about idle seconds, the generator closed."""
    closed: list[bool] = []

    @lg.timeout(idle=0.2)
    async def ticks() -> AsyncIterator[int]:
        try:
            for i in range(5):
                await asyncio.sleep(5 if i == 2 else 0)
                yield i
        finally:
            closed.append(True)

    seen: list[int] = []

    async def read() -> None:
        async for t in ticks():
            seen.append(t)

    start = time.monotonic()
    with pytest.raises(lg.GuardTimeout) as info:
        await read()

    assert ("idle", [0, 1], [True]) == (info.value.limit, seen, closed)
    assert time.monotonic() - start < 0.2 + SLACK


def _stalled_reader(idle: float) -> Any:
    """A coroutine function reading a timed async generator whose second chunk stalls for 10 s."""

    @lg.timeout(idle=idle)
    async def ticks() -> AsyncIterator[int]:
        yield 0
        await asyncio.sleep(10)
        yield 1

    async def read() -> list[int]:
        return [t async for t in ticks()]

    return read


async def test_someone_elses_cancel_while_a_chunk_is_awaited_stays_a_cancel() -> None:
    """A task cancelled from outside while reading a timed stream: CancelledError, not GuardTimeout."""
    task = asyncio.create_task(_stalled_reader(10)())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_chunk_timeout_in_a_task_that_caught_a_cancel_before_is_still_a_timeout() -> None:
    """A cancel caught earlier in the task (cancelling() stays 1): a stalled chunk is a GuardTimeout all the same.

    As with asyncio.timeout, "our cancel alone" is measured against the
    task's cancelling() count when the chunk's deadline was armed.
    """
    read = _stalled_reader(0.2)

    async def consumer() -> BaseException | None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(1)  # caught, never uncancelled
        assert 1 == task.cancelling()
        try:
            await read()
        except BaseException as exc:  # noqa: BLE001 - what it is, is the point
            return exc
        return None

    found = await consumer()

    assert isinstance(found, lg.GuardTimeout)
    assert "idle" == found.limit


async def test_the_deadline_is_on_the_record_when_an_outer_layer_built_it_first() -> None:
    """Under a layer that builds the record before timeout arms (trace with an SDK, a probe), record.deadline is set."""
    from probe import Probe

    seen: list[bool] = []

    async def ask() -> str:
        call = lg.current_call()
        assert call is not None
        seen.append(call.deadline is not None)
        return "ok"

    alone = lg.timeout(5, first_token=1)(ask)
    under = Probe()(lg.timeout(5, first_token=1)(ask))
    under_total = Probe()(lg.timeout(5)(ask))

    assert ["ok"] * 3 == [await alone(), await under(), await under_total()]
    assert [True, True, True] == seen


def test_a_stream_an_abandoned_worker_returns_later_is_closed(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """The caller got GuardTimeout; the worker later returns a stream nobody will read: it is closed, its record ended."""
    from probe import Probe

    inner = Probe()
    fake_provider.script(Step(delay=0.6))

    @lg.timeout(0.2)
    @inner
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, stream=True)

    with pytest.raises(lg.GuardTimeout):
        ask()
    deadline = time.monotonic() + 5
    while not inner.finishes and time.monotonic() < deadline:
        time.sleep(0.05)

    assert [lg.Outcome.CLOSED] == inner.finishes
    assert inner.record.ended_at is not None


@pytest.mark.parametrize(
    ("advance", "raised", "caller_gets"),
    [
        (1.0, TimeoutError("sdk timeout"), lg.GuardTimeout),  # both deadlines passed: ours
        (1.0, ValueError("bad"), ValueError),  # not a timeout: the function's own error
        (0.0, TimeoutError("early"), TimeoutError),  # before our deadline: the function's own
    ],
)
def test_a_timeout_the_worker_raises_at_our_deadline_is_reported_as_ours(
    advance: float, raised: Exception, caller_gets: type[Exception], fake_clock: FakeClock
) -> None:
    """The SDK's own timeout (set from lg.remaining()) and ours fire together: the caller gets GuardTimeout, from it."""

    @lg.timeout(0.5)
    def ask() -> None:
        fake_clock.advance(advance)
        raise raised

    with pytest.raises(caller_gets) as info:
        ask()
    if caller_gets is lg.GuardTimeout:
        assert info.value.__cause__ is raised
    else:
        assert info.value is raised


@pytest.mark.parametrize("shape", ["def->stream", "async def->stream", "generator", "async generator"])
def test_an_idle_wait_that_would_pass_the_total_deadline_ends_at_the_deadline(
    shape: str, fake_provider: FakeProvider
) -> None:
    """``timeout(1.0, idle=0.4)``, a chunk every 0.3 s: never idle, but the stream ends at 1.0 s (total), not at 2.4 s.

    Near the deadline a chunk's wait is what is left of the total, not a
    whole ``idle`` that would run past it.
    """
    fake_provider.script(Step(reply="one two three four five six seven eight", stream_delay=0.3))
    sync = anthropic.Anthropic(base_url=fake_provider.anthropic_base_url, api_key="k", max_retries=0)
    aclient = anthropic.AsyncAnthropic(base_url=fake_provider.anthropic_base_url, api_key="k", max_retries=0)
    read = build(shape, lg.timeout(1.0, idle=0.4), sync, aclient)

    start = time.monotonic()
    with pytest.raises(lg.GuardTimeout) as info:
        read()
    elapsed = time.monotonic() - start
    sync.close()

    assert "total" == info.value.limit
    assert 0.95 <= elapsed < 1.0 + 0.8  # the whole stream takes 2.4 s


@pytest.mark.parametrize(
    "guard",
    [lg.timeout(30), lg.timeout(30, first_token=20), "stacked"],
    ids=["total alone", "with first_token", "under another guard"],
)
async def test_a_long_async_timeout_inside_a_short_plain_with_block_obeys_the_block(
    guard: Any, async_anthropic_client: anthropic.AsyncAnthropic, fake_provider: FakeProvider
) -> None:
    """``@timeout(30)`` on an ``async def`` called in ``with lg.timeout(0.3)``: remaining() <= 0.3 inside, GuardTimeout at 0.3 s.

    A plain ``with`` (not ``async with``) cancels nothing itself: the guard
    must take the block's deadline. Three configurations: ``total`` alone,
    with ``first_token``, and under another guard.
    """
    fake_provider.script(Step(delay=3.0))
    seen: list[float | None] = []

    async def ask() -> Any:
        seen.append(lg.remaining())
        return await async_anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    guarded = lg.retry(attempts=1)(lg.timeout(30)(ask)) if guard == "stacked" else guard(ask)

    start = time.monotonic()
    with lg.timeout(0.3), pytest.raises(lg.GuardTimeout) as info:
        await guarded()
    elapsed = time.monotonic() - start

    (left,) = seen
    assert left is not None
    assert 0 < left <= 0.3
    assert "total" == info.value.limit
    assert elapsed < 0.3 + 1.0  # the request takes 3 s
# -- huge and non-finite limits ---------------------------------------------------


@pytest.mark.parametrize("seconds", [1e10, 1e300, 1e9])
@pytest.mark.parametrize("shape", SHAPES)
def test_a_huge_finite_limit_works_on_every_shape(
    shape: str, seconds: float, fake_provider: FakeProvider, clients: Any
) -> None:
    """A limit past what threading can wait (~9.2e9 s) behaves as "no limit soon", on every call shape.

    Before: a plain def under timeout(1e10) raised GuardTimeout at once ("took longer than 1e+10s").
    """
    fake_provider.script(Step(reply="in time"))
    call = build(shape, lg.timeout(seconds, first_token=seconds, idle=seconds), *clients)
    assert "in time" == call()


@pytest.mark.parametrize("seconds", [1e10, 1e300])
def test_a_huge_limit_leaves_remaining_usable_as_the_sdk_timeout(
    seconds: float, fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """``timeout=lg.remaining()`` under a huge limit is a wait the SDK (and Python's sockets) can make."""
    fake_provider.script(Step(reply="in time"), Step(reply="in time"))

    @lg.timeout(seconds)
    def ask() -> Any:
        return anthropic_client.messages.create(
            model=MODEL, max_tokens=8, messages=MESSAGES, timeout=lg.remaining()
        )

    assert "in time" == ask().content[0].text
    with lg.timeout(seconds):
        assert "in time" == ask().content[0].text


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("name", ["total", "first_token", "idle"])
def test_non_finite_limits_are_rejected_naming_the_parameter(name: str, value: float) -> None:
    """Infinities and NaN are refused when the guard is built (no limit: leave the parameter out)."""
    with pytest.raises(ValueError, match=rf"timeout\({name}=\.\.\.\) must be finite"):
        lg.timeout(**{name: value})


# -- how late the deadline arrives under load -------------------------------------


def test_deadlines_arrive_on_time_for_many_concurrent_callers(
    anthropic_client: anthropic.Anthropic, async_anthropic_client: anthropic.AsyncAnthropic, fake_provider: FakeProvider
) -> None:
    """40 tasks on one loop and 8 threads, all under ``with lg.timeout(0.5)`` and expiring together, each get control back soon after it.

    Lateness is measured, not timed tightly: on an idle machine the last of
    50 expiries arrives ~30 ms late (calls expiring together on one loop
    unwind one after another), and a loaded one adds its delays; the
    bounds here are far above that and far below what a broken delivery
    gives (the server answers after 3 s: control back only when the request
    ends is 2.5 s late).
    """
    fake_provider.script(*[Step(delay=3.0)] * 48)
    limit = 0.5

    @lg.timeout(5)
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    @lg.timeout(5)
    async def aask() -> Any:
        return await async_anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    late: list[float] = []

    def thread_caller() -> None:
        start = time.monotonic()
        with contextlib.suppress(lg.GuardTimeout), lg.timeout(limit):
            ask()
        late.append(time.monotonic() - start - limit)

    async def task_caller() -> None:
        start = time.monotonic()
        with contextlib.suppress(lg.GuardTimeout), lg.timeout(limit):
            await aask()
        late.append(time.monotonic() - start - limit)

    async def tasks() -> None:
        await asyncio.gather(*(task_caller() for _ in range(40)))

    threads = [threading.Thread(target=thread_caller) for _ in range(8)]
    for t in threads:
        t.start()
    asyncio.run(tasks())
    for t in threads:
        t.join()

    late.sort()
    assert 48 == len(late)
    assert late[0] >= -0.01, late  # never early
    assert late[len(late) // 2] < 0.25, late  # the median
    assert late[-1] < 1.0, late
