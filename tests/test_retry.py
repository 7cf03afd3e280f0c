"""`retry`: provider-aware retries with the real SDKs against the fake provider."""

from __future__ import annotations

import asyncio
import warnings

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import openai
import pytest

from estimates import estimate_tokens, estimated_input
from shapes import SHAPES, build

import llmguard as lg

from llmguard._fake_provider import FakeProvider, Step
from llmguard.testing import FakeClock


MODEL = "claude-sonnet-4-6"
MESSAGES: Any = [{"role": "user", "content": "hello there"}]





def api_requests(fake: FakeProvider) -> int:
    return sum(1 for r in fake.requests if r.path.startswith("/v1/"))


@pytest.mark.parametrize("shape", SHAPES)
def test_429_with_retry_after_then_success_waits_and_retries_once(
    shape: str, clients: Any, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """429 + Retry-After: 2 then success: two requests and a wait of at least 2 s."""
    fake_provider.script(Step(status=429, headers={"retry-after": "2"}), Step(reply="ok now"))
    call = build(shape, lg.retry, *clients)

    assert "ok now" == call()
    assert 2 == api_requests(fake_provider)
    assert 1 == len(fake_clock.sleeps)
    assert fake_clock.sleeps[0] >= 2.0


@pytest.mark.parametrize("shape", SHAPES)
def test_529_then_500_then_success_makes_three_requests(
    shape: str, clients: Any, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """Overloaded, then a server error, then success: three requests."""
    fake_provider.script(Step(status=529), Step(status=500), Step(reply="third time"))
    call = build(shape, lg.retry(attempts=4), *clients)

    assert "third time" == call()
    assert 3 == api_requests(fake_provider)
    assert 2 == len(fake_clock.sleeps)


@pytest.mark.parametrize("shape", SHAPES)
def test_400_is_not_retried_and_raises_the_original(
    shape: str, clients: Any, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """A bad request makes one request and raises the SDK's BadRequestError, untouched."""
    fake_provider.script(Step(status=400), Step(reply="never"))
    call = build(shape, lg.retry, *clients)

    with pytest.raises(anthropic.BadRequestError) as info:
        call()

    assert 1 == api_requests(fake_provider)
    assert [] == fake_clock.sleeps
    assert not getattr(info.value, "__notes__", [])


@pytest.mark.parametrize("shape", SHAPES)
def test_exhaustion_reraises_the_original_class_with_a_note(
    shape: str, clients: Any, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """Three 429s with attempts=3: the last RateLimitError, noted with attempts and time."""
    fake_provider.script(*[Step(status=429, headers={"retry-after": "1"})] * 3, Step(reply="too late"))
    call = build(shape, lg.retry(attempts=3), *clients)

    with pytest.raises(anthropic.RateLimitError) as info:
        call()

    assert 3 == api_requests(fake_provider)
    notes = info.value.__notes__
    assert 1 == len(notes)
    assert "gave up after 3 attempts over" in notes[0]
    assert "attempts exhausted" in notes[0]


@pytest.mark.parametrize("shape", ["def->stream", "async def->stream", "generator", "async generator"])
def test_stream_failing_before_the_first_chunk_is_retried(
    shape: str, clients: Any, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """A dropped connection before any chunk: retried, and the caller sees one clean stream."""
    fake_provider.script(Step(drop=True), Step(reply="fresh stream"))
    call = build(shape, lg.retry, *clients)

    assert "fresh stream" == call()
    assert 2 == api_requests(fake_provider)


@pytest.mark.parametrize("shape", ["def->stream", "async def->stream", "generator", "async generator"])
def test_stream_failing_after_the_first_chunk_raises_stream_interrupted(
    shape: str, clients: Any, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """An error mid-stream is never replayed: StreamInterrupted with the partial text."""
    fake_provider.script(Step(reply="one two three four", error_after=2), Step(reply="never"))
    call = build(shape, lg.retry, *clients)

    with pytest.raises(lg.StreamInterrupted) as info:
        call()

    assert 1 == api_requests(fake_provider)
    assert info.value.text.startswith("one two")
    assert info.value.__cause__ is not None


OPENAI_STREAM_SHAPES = ["def->stream", "async def->stream", "generator", "async generator"]


def openai_stream_call(
    shape: str, fake: FakeProvider, records: list[lg.CallRecord]
) -> tuple[Any, Any]:
    """A retried function of *shape* streaming openai chat chunks, and a thunk that reads all it yields.

    The function notes its call record in *records*. SDK streams hand the
    caller every chunk (the first is the role chunk, with no text); generators
    yield only the text deltas.
    """
    client = openai.OpenAI(base_url=fake.openai_base_url, api_key="k", max_retries=0)
    aclient = openai.AsyncOpenAI(base_url=fake.openai_base_url, api_key="k", max_retries=0)
    got: list[Any] = []

    def note() -> None:
        record = lg.current_call()
        assert record is not None
        records.append(record)

    if shape == "def->stream":

        @lg.retry
        def ask(messages: Any) -> Any:
            note()
            return client.chat.completions.create(model="gpt-4o", messages=messages, stream=True)

        def run() -> None:
            got.extend(ask(MESSAGES))

    elif shape == "async def->stream":

        @lg.retry
        async def aask(messages: Any) -> Any:
            note()
            return await aclient.chat.completions.create(model="gpt-4o", messages=messages, stream=True)

        async def aread() -> None:
            async for chunk in await aask(MESSAGES):
                got.append(chunk)

        def run() -> None:
            asyncio.run(aread())

    elif shape == "generator":

        @lg.retry
        def gen(messages: Any) -> Iterator[str]:
            note()
            for c in client.chat.completions.create(model="gpt-4o", messages=messages, stream=True):
                if c.choices and c.choices[0].delta.content:
                    yield c.choices[0].delta.content

        def run() -> None:
            got.extend(gen(MESSAGES))

    else:

        @lg.retry
        async def agen(messages: Any) -> AsyncIterator[str]:
            note()
            async for c in await aclient.chat.completions.create(model="gpt-4o", messages=messages, stream=True):
                if c.choices and c.choices[0].delta.content:
                    yield c.choices[0].delta.content

        async def aread_gen() -> None:
            async for text in agen(MESSAGES):
                got.append(text)

        def run() -> None:
            asyncio.run(aread_gen())

    return run, got


@pytest.mark.parametrize("shape", OPENAI_STREAM_SHAPES)
def test_a_stream_failing_right_after_its_first_chunk_raises_stream_interrupted(
    shape: str, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """Exactly one chunk reached the caller, then the stream failed: StreamInterrupted, never a retry.

    An SDK stream's first chunk is openai's role chunk (the error comes before
    any text); a generator's is the first text delta. The error carries the
    text seen and the usage the attempt records: the input estimated from
    ``messages`` and the output from the text, flagged estimated.
    """
    records: list[lg.CallRecord] = []
    run, got = openai_stream_call(shape, fake_provider, records)
    sdk_stream = shape.endswith("->stream")
    fake_provider.script(Step(reply="one two three", error_after=0 if sdk_stream else 1), Step(reply="never"))

    with pytest.raises(lg.StreamInterrupted, match="after 1 chunk reached the caller") as info:
        run()

    text = "" if sdk_stream else "one "
    assert 1 == len(got)
    assert 1 == api_requests(fake_provider)
    assert [] == fake_clock.sleeps
    assert isinstance(info.value.__cause__, openai.APIError)
    assert text == info.value.text
    expected = lg.Usage(estimated_input(MESSAGES), estimate_tokens(text), estimated=True)
    assert expected == info.value.usage
    (record,) = records
    (attempt,) = record.attempts
    assert expected == attempt.usage


def test_stream_interrupted_carries_the_usage_seen_so_far(
    clients: Any, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """The partial usage (input confirmed by message_start) travels on the error."""
    fake_provider.script(Step(reply="a b c d e", error_after=2, usage={"input_tokens": 40, "output_tokens": 5}))
    sync, _ = clients

    @lg.retry
    def ask() -> Any:
        return sync.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, stream=True)

    with pytest.raises(lg.StreamInterrupted) as info:
        list(ask())

    assert info.value.usage is not None
    assert 40 == info.value.usage.input_tokens


def test_openai_sync_and_async_retry_rate_limits(fake_provider: FakeProvider, fake_clock: FakeClock) -> None:
    """The openai SDK's 429 (retry-after-ms) and 500 are retried, sync and async."""
    client = openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0)
    aclient = openai.AsyncOpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0)

    @lg.retry
    def ask() -> Any:
        return client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    @lg.retry
    async def aask() -> Any:
        return await aclient.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    fake_provider.script(Step(status=429, headers={"retry-after-ms": "1500"}), Step(reply="sync ok"))
    assert "sync ok" == ask().choices[0].message.content
    fake_provider.script(Step(status=500), Step(reply="async ok"))
    assert "async ok" == asyncio.run(aask()).choices[0].message.content
    assert fake_clock.sleeps[0] >= 1.5
    assert 4 == api_requests(fake_provider)


@pytest.mark.parametrize(
    ("step", "error"),
    [
        (Step(status=401), anthropic.AuthenticationError),
        (Step(status=403), anthropic.PermissionDeniedError),
        (Step(status=404), anthropic.NotFoundError),
        (Step(status=422), anthropic.UnprocessableEntityError),
        (Step(status=400, error_message="prompt is too long: 210000 tokens > 200000 maximum"), anthropic.BadRequestError),
        (Step(status=500, headers={"x-should-retry": "false"}), anthropic.InternalServerError),
    ],
)
def test_never_retried_errors_make_one_request(
    step: Step, error: type[Exception], clients: Any, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """Client errors, context-too-long and x-should-retry: false are never retried."""
    fake_provider.script(step, Step(reply="never"))
    ask = build("def", lg.retry, *clients)

    with pytest.raises(error):
        ask()

    assert 1 == api_requests(fake_provider)


def test_x_should_retry_true_retries_an_otherwise_unknown_status(
    clients: Any, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """A 418 the server marks x-should-retry: true is retried."""
    fake_provider.script(Step(status=418, headers={"x-should-retry": "true"}), Step(reply="brewed"))
    ask = build("def", lg.retry, *clients)

    assert "brewed" == ask()
    assert 2 == api_requests(fake_provider)


def test_llmguard_refusals_are_never_retried(fake_clock: FakeClock) -> None:
    """BudgetExceeded, CircuitOpen and InputRejected pass straight through, once."""
    calls = []

    for error in (lg.BudgetExceeded("no"), lg.CircuitOpen("open"), lg.InputRejected("bad")):

        @lg.retry(on=Exception)
        def refuse(error: Exception = error) -> None:
            calls.append(1)
            raise error

        with pytest.raises(type(error)):
            refuse()

    assert 3 == len(calls)
    assert [] == fake_clock.sleeps


def test_deadline_shorter_than_retry_after_fails_fast(
    clients: Any, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """Inside `with lg.timeout(1)`, a Retry-After of 5 s ends retrying without sleeping."""
    fake_provider.script(Step(status=429, headers={"retry-after": "5"}), Step(reply="never"))
    ask = build("def", lg.retry, *clients)

    with lg.timeout(1), pytest.raises(anthropic.RateLimitError) as info:
        ask()

    assert [] == fake_clock.sleeps
    assert 1 == api_requests(fake_provider)
    assert "deadline" in info.value.__notes__[0]


async def test_deadline_shorter_than_retry_after_fails_fast_async(
    clients: Any, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """The same with `async with lg.timeout(1)` around an async generator."""
    fake_provider.script(Step(status=429, headers={"retry-after": "5"}), Step(reply="never"))
    _, aclient = clients

    @lg.retry
    async def events() -> AsyncIterator[Any]:
        async for e in await aclient.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, stream=True):
            yield e

    with pytest.raises(anthropic.RateLimitError):
        async with lg.timeout(1):
            _ = [e async for e in events()]

    assert [] == fake_clock.sleeps
    assert 1 == api_requests(fake_provider)


def test_max_elapsed_stops_before_a_wait_that_would_pass_it(
    clients: Any, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """max_elapsed bounds the whole retrying: a 10 s Retry-After past it is not slept."""
    fake_provider.script(Step(status=429, headers={"retry-after": "10"}), Step(reply="never"))
    ask = build("def", lg.retry(max_elapsed=5), *clients)

    with pytest.raises(anthropic.RateLimitError) as info:
        ask()

    assert [] == fake_clock.sleeps
    assert "max_elapsed" in info.value.__notes__[0]


def test_backoff_is_capped_exponential_with_full_jitter(fake_clock: FakeClock) -> None:
    """Without jitter the waits double from initial up to max_delay; full jitter stays below."""
    exact = lg.retry(attempts=6, initial=1, max_delay=4, jitter=None, on=ConnectionError)
    jittered = lg.retry(attempts=6, initial=1, max_delay=4, on=ConnectionError)

    for layer in (exact, jittered):

        @layer
        def flaky() -> None:
            raise ConnectionError("down")

        with pytest.raises(ConnectionError):
            flaky()

    assert [1.0, 2.0, 4.0, 4.0, 4.0] == fake_clock.sleeps[:5]
    assert all(0 <= s <= cap for s, cap in zip(fake_clock.sleeps[5:], [1, 2, 4, 4, 4], strict=True))


def test_on_predicate_may_return_a_delay(fake_clock: FakeClock) -> None:
    """A predicate returning a number both retries and sets the wait."""
    attempts = []

    @lg.retry(attempts=3, on=lambda exc: 0.25 if isinstance(exc, KeyError) else False)
    def lookup() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise KeyError("later")
        return "found"

    assert "found" == lookup()
    assert [0.25, 0.25] == fake_clock.sleeps


def test_retry_events_are_emitted_and_counted_on_the_record(
    clients: Any, fake_provider: FakeProvider, fake_clock: FakeClock, llmguard_events: list[Any]
) -> None:
    """Each scheduled retry emits llmguard.retry.scheduled with attempt, delay and kind."""
    fake_provider.script(Step(status=529), Step(reply="fine"))
    ask = build("def", lg.retry, *clients)

    ask()
    scheduled = [e for e in llmguard_events if e.name == "llmguard.retry.scheduled"]

    assert 1 == len(scheduled)
    assert 1 == scheduled[0]["attempt"]
    assert "overloaded" == scheduled[0]["error_kind"]
    assert "OverloadedError" == scheduled[0]["cause"]


def test_attempts_are_counted_on_the_call_record(
    clients: Any, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """The call record keeps one attempt per real request, with each attempt's error kind."""
    from probe import Probe

    probe = Probe()
    sync, _ = clients

    @probe
    @lg.retry
    def ask() -> Any:
        return sync.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)

    fake_provider.script(Step(status=429, headers={"retry-after": "1"}), Step(status=503), Step(reply="ok"))
    ask()

    assert 3 == probe.record.attempt_count
    assert [lg.ErrorKind.RATE_LIMITED, lg.ErrorKind.SERVER, None] == [a.error_kind for a in probe.record.attempts]


def test_block_form_retries_a_block(fake_clock: FakeClock) -> None:
    """For attempt in r.attempts(): with attempt: retries the block until it passes."""
    tries = []
    for attempt in lg.retry(attempts=3, on=ConnectionError, jitter=None).attempts():
        with attempt:
            tries.append(attempt.number)
            if len(tries) < 3:
                raise ConnectionError("down")

    assert [1, 2, 3] == tries
    assert [0.5, 1.0] == fake_clock.sleeps


async def test_async_block_form_gives_up_with_the_original(fake_clock: FakeClock) -> None:
    """The async block form re-raises the last error with the note when attempts run out."""

    async def block() -> None:
        async for attempt in lg.retry(attempts=2, on=ConnectionError).attempts_async():
            with attempt:
                raise ConnectionError("still down")

    with pytest.raises(ConnectionError) as info:
        await block()

    assert "gave up after 2 attempts" in info.value.__notes__[0]


def test_retry_budget_caps_retries_under_a_storm(fake_clock: FakeClock) -> None:
    """budget_ratio=0.2: across many failing calls, retries stay near 20% of calls plus the reserve."""
    calls = 0

    @lg.retry(attempts=4, on=ConnectionError, budget_ratio=0.2)
    def always_down() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    for _ in range(100):
        with pytest.raises(ConnectionError):
            always_down()
    retries = calls - 100

    assert retries <= 10 + 0.2 * 100
    assert retries >= 10


def test_warns_once_when_the_sdk_client_also_retries(fake_provider: FakeProvider) -> None:
    """Decorating a function that uses a client with max_retries > 0 warns, naming the fix."""
    retrying_client = anthropic.Anthropic(base_url=fake_provider.anthropic_base_url, api_key="k")

    with pytest.warns(UserWarning, match="max_retries=0") as caught:

        @lg.retry
        def ask() -> Any:
            return retrying_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    # It points at the decorated line here, not into llmguard.
    assert [__file__] == [w.filename for w in caught if "max_retries=0" in str(w.message)]

    with warnings.catch_warnings():
        warnings.simplefilter("error")

        @lg.retry
        def quiet() -> int:
            return 1

    retrying_client.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attempts": 0}, r"retry\(attempts=...\) must be an int >= 1, got 0"),
        ({"initial": -1}, r"retry\(initial=...\) must be > 0, got -1"),
        ({"max_delay": 0}, r"retry\(max_delay=...\) must be > 0"),
        ({"jitter": "sometimes"}, r"retry\(jitter=...\)"),
        ({"multiplier": 0.5}, r"retry\(multiplier=...\) must be >= 1"),
        ({"budget_ratio": 2}, r"retry\(budget_ratio=...\) must be in \(0, 1\]"),
        ({"initial": 10, "max_delay": 1}, r"retry\(max_delay=...\) must be >= initial"),
        ({"on": 42}, r"retry\(on=...\) must be an exception class"),
    ],
)
def test_bad_configuration_fails_at_decoration_naming_the_parameter(kwargs: dict[str, Any], message: str) -> None:
    """Each bad setting is refused when the decorator is built, naming the parameter."""
    with pytest.raises((ValueError, TypeError), match=message):
        lg.retry(**kwargs)


def test_bare_and_called_forms_keep_identity() -> None:
    """@lg.retry and @lg.retry() both keep name, doc and signature, and describe() shows them."""

    @lg.retry
    def bare(q: str) -> str:
        """Doc."""
        return q

    @lg.retry()
    async def called(q: str) -> str:
        return q

    assert "bare" == bare.__name__
    assert "Doc." == bare.__doc__
    assert "x" == bare("x")
    assert asyncio.iscoroutinefunction(called)
    assert "retry" == lg.describe(bare)[0].name
    assert 4 == lg.describe(called)[0].settings["attempts"]


def test_a_cached_stream_under_retry_replays_every_chunk(
    clients: Any, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """Cache over retry: the hit replays the same events the miss delivered, the first one included."""
    sync, _ = clients
    fake_provider.script(Step(reply="one two"))

    @lg.cache
    @lg.retry(attempts=2)
    def ask(q: str) -> Any:
        return sync.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": q}], stream=True)

    first = [e.type for e in ask("hi")]
    second = [e.type for e in ask("hi")]

    assert "message_start" == first[0]
    assert first == second
    assert 1 == api_requests(fake_provider)


def test_on_exception_classes_replace_the_default_guard_timeout_included(fake_clock: FakeClock) -> None:
    """With on=SomeError, a GuardTimeout is retried only if on= names it (TimeoutError does)."""
    calls = {"narrow": 0, "timeouts": 0}

    @lg.retry(attempts=3, on=ConnectionError)
    def narrow() -> None:
        calls["narrow"] += 1
        raise lg.GuardTimeout("slow", limit="total")

    @lg.retry(attempts=3, on=TimeoutError)
    def timeouts() -> None:
        calls["timeouts"] += 1
        raise lg.GuardTimeout("slow", limit="total")

    with pytest.raises(lg.GuardTimeout):
        narrow()
    with pytest.raises(lg.GuardTimeout):
        timeouts()

    assert {"narrow": 1, "timeouts": 3} == calls


def test_bare_retry_and_trace_decorate_a_classmethod(fake_clock: FakeClock) -> None:
    """@lg.retry and @lg.trace over @classmethod work bare, as on any method."""

    class Service:
        factor = 3

        @lg.retry
        @classmethod
        def retried(cls, n: int) -> int:
            return cls.factor * n

        @lg.trace
        @classmethod
        def traced(cls, n: int) -> int:
            return cls.factor + n

    assert 6 == Service.retried(2)
    assert 5 == Service.traced(2)


def test_stream_interrupted_usage_is_what_the_attempt_records(
    fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """The usage on StreamInterrupted is the estimate the attempt keeps, never the raw placeholder."""
    client = openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0)
    fake_provider.script(Step(reply="one two three four five six seven eight", drop_after=4))
    seen: list[lg.CallRecord] = []

    @lg.retry
    def ask(messages: Any) -> Any:
        record = lg.current_call()
        assert record is not None
        seen.append(record)
        return client.chat.completions.create(model="gpt-4o", messages=messages, stream=True)

    with pytest.raises(lg.StreamInterrupted) as info:
        list(ask(MESSAGES))

    # Four words seen, no usage reported: the input estimated from ``messages``,
    # the output from the text, as the attempt itself records them.
    assert "one two three four " == info.value.text
    expected = lg.Usage(estimated_input(MESSAGES), estimate_tokens("one two three four "), estimated=True)
    assert expected == info.value.usage
    (attempt,) = seen[0].attempts
    assert info.value.usage == attempt.usage


@pytest.mark.parametrize("is_async", [False, True])
def test_retry_alone_keeps_the_same_record_as_a_stack(
    is_async: bool, clients: Any, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """`retry` alone runs on the core's fast lane; the record read from inside is complete.

    The first attempt fails (429) before anyone reads the record; the second
    reads it (``lg.current_call()``) while running, reports extra usage, and
    returns; the record then holds both attempts, their kinds and usage, and
    the call's end.
    """
    sync, aclient = clients
    seen: list[lg.CallRecord] = []

    def note() -> None:
        record = lg.current_call()
        assert record is not None
        seen.append(record)

    if is_async:

        @lg.retry
        async def ask() -> Any:
            reply = await aclient.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
            note()
            return reply

        run = lambda: asyncio.run(ask())  # noqa: E731
    else:

        @lg.retry
        def ask() -> Any:
            reply = sync.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
            note()
            return reply

        run = ask

    fake_provider.script(Step(status=429, headers={"retry-after": "1"}), Step(reply="ok", usage={"input_tokens": 7, "output_tokens": 3}))
    reply = run()

    assert "ok" == reply.content[0].text
    (record,) = seen
    assert 2 == record.attempt_count
    first, second = record.attempts
    assert lg.ErrorKind.RATE_LIMITED == first.error_kind
    assert (7, 3) == (second.usage.input_tokens, second.usage.output_tokens)
    assert lg.Outcome.OK == record.outcome
    assert record.ended_at is not None


def test_a_guarded_call_inside_a_lane_is_its_child(fake_clock: FakeClock) -> None:
    """A guarded call made inside a `retry`-only function records it as its parent."""
    children: list[lg.CallRecord] = []

    @lg.retry
    def inner() -> str:
        record = lg.current_call()
        assert record is not None
        children.append(record)
        return "x"

    class Service:
        @lg.retry
        def outer(self, q: str) -> str:
            return inner() + q

    assert "xq" == Service().outer("q")
    (child,) = children
    assert child.parent is not None
    assert child.parent.function.endswith("Service.outer")


@pytest.mark.parametrize("path", ["lane", "general"])
async def test_max_elapsed_counts_the_first_attempt_on_every_path(path: str, fake_clock: FakeClock) -> None:
    """An attempt that took 2 s leaves no room for a 1.5 s wait under max_elapsed=3: no retry, sync or async.

    Alone, retry runs its first attempt on the fast lane; the time it took
    counts all the same.
    """
    from probe import Probe

    calls: list[int] = []

    def slow() -> None:
        calls.append(1)
        fake_clock.advance(2.0)
        raise TimeoutError("slow")

    async def aslow() -> None:
        slow()

    policy = lg.retry(attempts=5, jitter=None, initial=1.5, max_delay=1.5, max_elapsed=3)
    sync_f, async_f = policy(slow), policy(aslow)
    if path == "general":
        sync_f, async_f = Probe()(sync_f), Probe()(async_f)

    with pytest.raises(TimeoutError) as sync_info:
        sync_f()
    with pytest.raises(TimeoutError) as async_info:
        await async_f()

    assert ([1, 1], []) == (calls, fake_clock.sleeps)
    for info in (sync_info, async_info):
        assert "after 1 attempt over 2.00s" in info.value.__notes__[0]
