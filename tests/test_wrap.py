"""The wrapping core: identity, call records from real SDK calls, the finish hook."""

from __future__ import annotations

import asyncio
import gc
import inspect

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import openai
import pytest

from estimates import estimate_tokens, estimated_input
from probe import Probe

import llmguard as lg

from llmguard import GuardedStream, Outcome
from llmguard._call import Call
from llmguard._facts import _CURRENT
from llmguard._fake_provider import FakeProvider, Step
from llmguard._runner import Answer, Guard, layers_of, wrap


MODEL = "claude-sonnet-4-6"
MESSAGES = [{"role": "user", "content": "say hello to the test"}]


# -- identity ----------------------------------------------------------------


def plain(q: str, n: int = 1) -> str:
    """Plain docstring."""
    return q * n


async def coro(q: str, n: int = 1) -> str:
    """Coroutine docstring."""
    return q * n


def gen(q: str, n: int = 1) -> Iterator[str]:
    """Generator docstring."""
    yield from [q] * n


async def agen(q: str, n: int = 1) -> AsyncIterator[str]:
    """Async generator docstring."""
    for _ in range(n):
        yield q


@pytest.mark.parametrize("fn", [plain, coro, gen, agen])
def test_wrapped_function_keeps_identity(fn: Any, probe: Probe) -> None:
    """Name, qualname, doc, __wrapped__, signature and the shape predicates survive."""
    wrapped = wrap(probe, fn)

    assert fn.__name__ == wrapped.__name__
    assert fn.__qualname__ == wrapped.__qualname__
    assert fn.__doc__ == wrapped.__doc__
    assert fn is wrapped.__wrapped__
    assert inspect.signature(fn) == inspect.signature(wrapped)
    assert inspect.iscoroutinefunction(fn) == inspect.iscoroutinefunction(wrapped)
    assert inspect.isasyncgenfunction(fn) == inspect.isasyncgenfunction(wrapped)
    assert inspect.isgeneratorfunction(fn) == inspect.isgeneratorfunction(wrapped)


def test_every_shape_returns_what_the_function_returns(probe: Probe) -> None:
    """def, async def, generator and async generator give the same values guarded."""

    async def run_async() -> tuple[str, list[str]]:
        value = await wrap(probe, coro)("a", 2)
        chunks = [c async for c in wrap(probe, agen)("b", 3)]
        return value, chunks

    assert "xx" == wrap(probe, plain)("x", 2)
    assert ["y", "y"] == list(wrap(probe, gen)("y", 2))
    assert ("aa", ["b", "b", "b"]) == asyncio.run(run_async())
    assert 4 == probe.calls


def test_methods_staticmethods_and_classmethods_are_guarded(probe: Probe) -> None:
    """Instance, static and class methods bind normally and run through the layer."""

    class Service:
        factor = 3

        def __init__(self) -> None:
            self.base = "m"

        @probe
        def method(self, n: int) -> str:
            """Method doc."""
            return self.base * n

        @staticmethod
        @probe
        def static(n: int) -> int:
            return n + 1

        @probe  # the layer above the classmethod object
        @classmethod
        def klass(cls, n: int) -> int:
            return cls.factor * n

        @classmethod
        @probe
        def klass_inner(cls, n: int) -> int:
            return cls.factor + n

    svc = Service()

    assert "mm" == svc.method(2)
    assert 5 == Service.static(4)
    assert 5 == svc.static(4)
    assert 6 == Service.klass(2)
    assert 6 == svc.klass(2)
    assert 5 == Service.klass_inner(2)
    assert "Method doc." == Service.method.__doc__
    assert ["n"] == list(inspect.signature(svc.method).parameters)
    assert 6 == probe.calls


def test_method_model_argument_is_read_past_self(probe: Probe) -> None:
    """A positional `model` argument of a method lands on the record, self skipped."""

    class Client:
        @probe
        def ask(self, model: str, q: str) -> str:
            return q

    Client().ask("claude-haiku-4-5", "hi")

    assert "claude-haiku-4-5" == probe.record.request_model


@pytest.mark.parametrize("bad", [None, 42, "not a function"])
def test_wrapping_a_non_callable_names_what_was_passed(bad: object, probe: Probe) -> None:
    """Decorating something that is not callable is a TypeError saying what it got."""
    with pytest.raises(TypeError, match=r"can only decorate a callable, got") as info:
        wrap(probe, bad)  # type: ignore[arg-type]

    assert type(bad).__name__ in str(info.value)


def test_describe_lists_layers_outermost_first() -> None:
    """describe() walks the stack of guards, outermost first, with settings."""
    outer, inner = Probe("outer"), Probe("inner")

    @outer
    @inner
    def fn() -> None:
        pass

    assert [("probe", {"label": "outer"}), ("probe", {"label": "inner"})] == [
        (g.name, g.settings) for g in lg.describe(fn)
    ]
    assert [] == lg.describe(plain)


# -- one record per call, shared by its layers ---------------------------------


def test_stacked_layers_share_one_record_and_nested_calls_get_their_own() -> None:
    """Layers of one call see the same record; a guarded call inside is its child."""
    outer, inner, nested = Probe(), Probe(), Probe()

    @nested
    def child() -> str:
        return "c"

    @outer
    @inner
    def parent() -> str:
        return child()

    parent()

    assert outer.record is inner.record
    assert nested.record is not outer.record
    assert outer.record is nested.record.parent
    assert 1 == outer.record.attempt_count


def test_async_stacked_layers_share_one_record() -> None:
    """The record handoff works for async functions too, and nested calls nest."""
    outer, inner, nested = Probe(), Probe(), Probe()

    @nested
    async def child() -> str:
        return "c"

    @outer
    @inner
    async def parent() -> str:
        return await child()

    asyncio.run(parent())

    assert outer.record is inner.record
    assert outer.record is nested.record.parent


def test_no_context_variable_is_held_across_a_yield(probe: Probe) -> None:
    """Between chunks the caller sees no llmguard context; the generator body does."""
    seen_inside: list[object] = []

    @probe
    def numbers() -> Iterator[int]:
        for i in range(3):
            seen_inside.append(lg.current_call())
            yield i

    seen_outside = []
    for _ in numbers():
        seen_outside.append(_CURRENT.get())

    assert [None] * 3 == seen_outside
    assert [probe.record] * 3 == seen_inside


def test_report_usage_reaches_the_record(probe: Probe) -> None:
    """Usage reported from inside a call of another client lands on the attempt."""

    @probe
    def custom_client() -> str:
        assert lg.report_usage(input_tokens=10, output_tokens=4, model="my-model")
        return "ok"

    custom_client()

    assert lg.Usage(10, 4) == probe.record.usage
    assert "my-model" == probe.record.model
    assert lg.report_usage(input_tokens=1) is False


def test_report_usage_rejects_negative_numbers() -> None:
    """Bad usage figures are refused with the parameter named."""
    with pytest.raises(ValueError, match=r"report_usage\(output_tokens=...\)"):
        lg.report_usage(output_tokens=-1)


# -- records from the real SDKs ------------------------------------------------

USAGE = {"input_tokens": 120, "output_tokens": 17, "cache_read_tokens": 30, "cache_write_tokens": 20}
EXPECTED = lg.Usage(120, 17, 30, 20)


def test_anthropic_message_usage_and_model(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider, probe: Probe
) -> None:
    """A non-streaming Message fills usage (cache classes too), model, id, finish."""
    fake_provider.script(Step(usage=USAGE, model="claude-sonnet-4-6-20260217"))

    @probe
    def ask(model: str = MODEL) -> anthropic.types.Message:
        return anthropic_client.messages.create(model=model, max_tokens=64, messages=MESSAGES)  # type: ignore[arg-type]

    ask()
    rec = probe.record

    assert EXPECTED == rec.usage
    assert MODEL == rec.request_model
    assert "claude-sonnet-4-6-20260217" == rec.model
    assert "anthropic" == rec.attempts[0].provider
    assert ("end_turn",) == rec.attempts[0].finish_reasons
    assert lg.cost_of(EXPECTED, "claude-sonnet-4-6-20260217") == rec.cost_usd
    assert Outcome.OK == rec.outcome


async def test_anthropic_async_message_usage(
    async_anthropic_client: anthropic.AsyncAnthropic, fake_provider: FakeProvider, probe: Probe
) -> None:
    """An awaited Message fills the record like a sync one."""
    fake_provider.script(Step(usage=USAGE))

    @probe
    async def ask() -> anthropic.types.Message:
        return await async_anthropic_client.messages.create(
            model=MODEL, max_tokens=64, messages=MESSAGES  # type: ignore[arg-type]
        )

    await ask()

    assert EXPECTED == probe.record.usage


def test_anthropic_stream_usage_from_events(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider, probe: Probe
) -> None:
    """A returned anthropic Stream passes events through and settles usage at the end."""
    fake_provider.script(Step(reply="one two three", usage=USAGE))

    @probe
    def ask() -> Any:
        return anthropic_client.messages.create(
            model=MODEL, max_tokens=64, messages=MESSAGES, stream=True  # type: ignore[arg-type]
        )

    stream = ask()
    events = [e.type for e in stream]

    assert "message_start" == events[0]
    assert "message_stop" == events[-1]
    assert EXPECTED == probe.record.usage
    assert "one two three" == stream.text
    assert [Outcome.OK] == probe.finishes
    assert probe.record.stream


async def test_anthropic_async_stream_usage(
    async_anthropic_client: anthropic.AsyncAnthropic, fake_provider: FakeProvider, probe: Probe
) -> None:
    """A returned AsyncStream is guarded and settles usage at the end."""
    fake_provider.script(Step(reply="alpha beta", usage=USAGE))

    @probe
    async def ask() -> Any:
        return await async_anthropic_client.messages.create(
            model=MODEL, max_tokens=64, messages=MESSAGES, stream=True  # type: ignore[arg-type]
        )

    stream = await ask()
    async with stream:
        texts = [e.delta.text async for e in stream if e.type == "content_block_delta"]

    assert "alpha beta" == "".join(texts)
    assert EXPECTED == probe.record.usage
    assert [Outcome.OK] == probe.finishes


def test_anthropic_stream_manager(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider, probe: Probe
) -> None:
    """messages.stream() returned from the function works as a manager, usage settled on exit."""
    fake_provider.script(Step(reply="managed reply", usage=USAGE))

    @probe
    def ask() -> Any:
        return anthropic_client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES)  # type: ignore[arg-type]

    with ask() as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert "managed reply" == text
    assert final.usage.output_tokens == probe.record.usage.output_tokens  # type: ignore[union-attr]
    assert EXPECTED == probe.record.usage
    assert [Outcome.OK] == probe.finishes


async def test_anthropic_async_stream_manager(
    async_anthropic_client: anthropic.AsyncAnthropic, fake_provider: FakeProvider, probe: Probe
) -> None:
    """An AsyncMessageStreamManager is entered with async with and settles usage."""
    fake_provider.script(Step(reply="async managed", usage=USAGE))

    @probe
    def ask() -> Any:
        return async_anthropic_client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES)  # type: ignore[arg-type]

    async with ask() as stream:
        events = [e async for e in stream]

    assert events
    assert EXPECTED == probe.record.usage


def test_openai_chat_usage(openai_client: openai.OpenAI, fake_provider: FakeProvider, probe: Probe) -> None:
    """A ChatCompletion fills usage with cached and reasoning tokens."""
    fake_provider.script(Step(usage={**USAGE, "cache_write_tokens": 0, "reasoning_tokens": 5}))

    @probe
    def ask() -> Any:
        return openai_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]

    ask()

    assert lg.Usage(120, 17, 30, 0, 5) == probe.record.usage
    assert "openai" == probe.record.attempts[0].provider
    assert "gpt-4o" == probe.record.model


def test_openai_chat_stream_with_include_usage(
    openai_client: openai.OpenAI, fake_provider: FakeProvider, probe: Probe
) -> None:
    """The include_usage last chunk settles usage for an openai Stream."""
    fake_provider.script(Step(reply="streamed words", usage={"input_tokens": 9, "output_tokens": 2}))

    @probe
    def ask() -> Any:
        return openai_client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}  # type: ignore[arg-type]
        )

    text = "".join(c.choices[0].delta.content or "" for c in ask() if c.choices)

    assert "streamed words" == text
    assert lg.Usage(9, 2) == probe.record.usage
    assert not probe.record.usage_estimated


async def test_openai_async_chat_stream_without_usage_is_estimated_not_zero(
    async_openai_client: openai.AsyncOpenAI, fake_provider: FakeProvider, probe: Probe
) -> None:
    """A stream that ends without usage gets an estimate, flagged, never zero."""
    fake_provider.script(Step(reply="a reply of several words here"))

    @probe
    async def ask(messages: Any) -> Any:
        return await async_openai_client.chat.completions.create(
            model="gpt-4o", messages=messages, stream=True
        )

    async for _ in await ask(MESSAGES):
        pass

    # Input from the ``messages`` argument, output from the text streamed.
    expected = lg.Usage(estimated_input(MESSAGES), estimate_tokens("a reply of several words here"), estimated=True)
    assert expected == probe.record.usage


def test_openai_responses_usage(openai_client: openai.OpenAI, fake_provider: FakeProvider, probe: Probe) -> None:
    """A Responses API Response fills usage and model."""
    fake_provider.script(Step(usage={"input_tokens": 50, "output_tokens": 8, "reasoning_tokens": 3}))

    @probe
    def ask() -> Any:
        return openai_client.responses.create(model="gpt-4o", input="hello there")

    ask()

    assert lg.Usage(50, 8, reasoning_tokens=3) == probe.record.usage


def test_openai_responses_stream_usage(
    openai_client: openai.OpenAI, fake_provider: FakeProvider, probe: Probe
) -> None:
    """response.completed settles usage for a Responses stream."""
    fake_provider.script(Step(reply="resp stream", usage={"input_tokens": 7, "output_tokens": 2}))

    @probe
    def ask() -> Any:
        return openai_client.responses.create(model="gpt-4o", input="hello", stream=True)

    for _ in ask():
        pass

    assert lg.Usage(7, 2) == probe.record.usage


def test_generator_function_over_an_sdk_stream_reports_usage(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider, probe: Probe
) -> None:
    """A generator yielding text sees usage through report_usage, else an estimate."""
    fake_provider.script(Step(reply="gen one", usage={"input_tokens": 5, "output_tokens": 2}))

    @probe
    def texts() -> Iterator[str]:
        with anthropic_client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as s:  # type: ignore[arg-type]
            yield from s.text_stream
            u = s.get_final_message().usage
            lg.report_usage(input_tokens=u.input_tokens, output_tokens=u.output_tokens)

    assert "gen one" == "".join(texts())
    assert lg.Usage(5, 2) == probe.record.usage


def test_errors_are_recorded_with_their_kind(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider, probe: Probe
) -> None:
    """A 429 from the real SDK passes through unchanged and is classified on the record."""
    fake_provider.script(Step(status=429, headers={"retry-after": "2"}))

    @probe
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)  # type: ignore[arg-type]

    with pytest.raises(anthropic.RateLimitError):
        ask()

    assert lg.ErrorKind.RATE_LIMITED == probe.record.error_kind
    assert Outcome.ERROR == probe.record.outcome
    assert lg.ErrorKind.RATE_LIMITED == probe.record.attempts[0].error_kind


# -- the finish hook: exactly once, every way a stream can end -----------------


def counting_gen(n: int = 5, fail_at: int | None = None) -> Iterator[int]:
    for i in range(n):
        if i == fail_at:
            raise RuntimeError("boom")
        yield i


async def counting_agen(n: int = 5, fail_at: int | None = None) -> AsyncIterator[int]:
    for i in range(n):
        if i == fail_at:
            raise RuntimeError("boom")
        yield i


def test_finish_on_exhaustion(probe: Probe) -> None:
    """Reading a generator to the end finishes once with OK."""
    assert [0, 1, 2, 3, 4] == list(wrap(probe, counting_gen)())
    assert [Outcome.OK] == probe.finishes


def test_finish_on_exception(probe: Probe) -> None:
    """An exception in the generator finishes once with ERROR and propagates (after chunks: as StreamInterrupted)."""
    with pytest.raises(lg.StreamInterrupted) as info:
        list(wrap(probe, counting_gen)(5, 2))
    assert isinstance(info.value.__cause__, RuntimeError)

    assert [Outcome.ERROR] == probe.finishes


def test_finish_on_close(probe: Probe) -> None:
    """close() finishes once with CLOSED and closes the generator underneath."""
    closed = []

    @probe
    def body() -> Iterator[int]:
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    stream = body()
    next(stream)
    stream.close()
    stream.close()

    assert [Outcome.CLOSED] == probe.finishes
    assert [True] == closed


def test_finish_on_with_block_exit(probe: Probe) -> None:
    """Leaving a with block over a stream early finishes once."""
    with wrap(probe, counting_gen)() as stream:
        next(stream)

    assert [Outcome.CLOSED] == probe.finishes


def test_finish_on_break_and_dropped_reference(probe: Probe) -> None:
    """Break out of a for loop over a temporary stream finishes it (as abandoned)."""
    for _ in wrap(probe, counting_gen)():
        break
    gc.collect()

    assert [Outcome.ABANDONED] == probe.finishes


def test_finish_on_generator_exit_of_a_consumer(probe: Probe) -> None:
    """A consuming generator closed mid-way (GeneratorExit) ends the guarded stream."""

    def consumer() -> Iterator[int]:
        yield from wrap(probe, counting_gen)()

    c = consumer()
    next(c)
    c.close()

    assert 1 == len(probe.finishes)


def test_finish_on_garbage_collection(probe: Probe) -> None:
    """A started stream that is dropped is finished by the collector as a last resort."""
    stream = wrap(probe, counting_gen)()
    next(stream)
    del stream
    gc.collect()

    assert [Outcome.ABANDONED] == probe.finishes


def test_unstarted_generator_runs_nothing(probe: Probe) -> None:
    """Calling a guarded generator function runs no layer until the first chunk."""
    stream = wrap(probe, counting_gen)()

    assert 0 == probe.calls
    del stream
    gc.collect()
    assert [] == probe.finishes


async def test_async_finish_on_exhaustion_and_error(probe: Probe) -> None:
    """An async generator finishes once with OK, or once with ERROR."""
    assert [0, 1, 2] == [i async for i in wrap(probe, counting_agen)(3)]
    with pytest.raises(lg.StreamInterrupted) as info:
        _ = [i async for i in wrap(probe, counting_agen)(3, 1)]
    assert isinstance(info.value.__cause__, RuntimeError)

    assert [Outcome.OK, Outcome.ERROR] == probe.finishes


async def test_async_finish_on_aclose_and_async_with(probe: Probe) -> None:
    """aclose() and leaving async with early both finish once with CLOSED."""
    stream = wrap(probe, counting_agen)()
    await stream.__anext__()
    await stream.aclose()
    await stream.aclose()
    async with wrap(probe, counting_agen)() as s2:
        await s2.__anext__()

    assert [Outcome.CLOSED, Outcome.CLOSED] == probe.finishes


async def test_async_finish_on_task_cancellation(probe: Probe) -> None:
    """Cancelling the task reading a stream finishes it once with CANCELLED."""
    started = asyncio.Event()

    @probe
    async def slow() -> AsyncIterator[int]:
        yield 0
        started.set()
        await asyncio.sleep(30)
        yield 1

    async def reader() -> None:
        async for _ in slow():
            pass

    task = asyncio.create_task(reader())
    await started.wait()
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert [Outcome.CANCELLED] == probe.finishes


async def test_async_finish_on_dropped_reference(probe: Probe) -> None:
    """A started async stream that is dropped is finished by the collector."""
    stream = wrap(probe, counting_agen)()
    await stream.__anext__()
    del stream
    gc.collect()

    assert [Outcome.ABANDONED] == probe.finishes


@pytest.mark.parametrize("how", ["exhaust", "break", "close", "with", "drop"])
def test_sdk_stream_finishes_exactly_once(
    how: str, anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider, probe: Probe
) -> None:
    """A returned anthropic Stream finishes once whichever way the caller ends it."""
    fake_provider.script(Step(reply="a b c d e f"))

    @probe
    def ask() -> Any:
        return anthropic_client.messages.create(
            model=MODEL, max_tokens=64, messages=MESSAGES, stream=True  # type: ignore[arg-type]
        )

    if how == "exhaust":
        for _ in ask():
            pass
    elif how == "break":
        for _ in ask():
            break
    elif how == "close":
        s = ask()
        next(s)
        s.close()
        s.close()
    elif how == "with":
        with ask() as s:
            next(s)
    else:
        s = ask()
        next(s)
        del s
    gc.collect()

    assert 1 == len(probe.finishes)
    assert probe.record.ended_at is not None


@pytest.mark.parametrize("how", ["exhaust", "break", "close", "cancel", "drop"])
async def test_sdk_async_stream_finishes_exactly_once(
    how: str, async_openai_client: openai.AsyncOpenAI, fake_provider: FakeProvider, probe: Probe
) -> None:
    """A returned openai AsyncStream finishes once whichever way the caller ends it."""
    fake_provider.script(Step(reply="a b c d e f", stream_delay=0.01))

    @probe
    async def ask() -> Any:
        return await async_openai_client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True  # type: ignore[arg-type]
        )

    if how == "exhaust":
        async for _ in await ask():
            pass
    elif how == "break":
        async for _ in await ask():
            break
    elif how == "close":
        s = await ask()
        await s.__anext__()
        await s.close()
    elif how == "cancel":

        async def reader() -> None:
            async for _ in await ask():
                await asyncio.sleep(10)

        task = asyncio.create_task(reader())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        s = await ask()
        await s.__anext__()
        del s
    gc.collect()

    assert 1 == len(probe.finishes)


def test_hooks_run_innermost_first_with_usage_settled(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """An outer layer's finish hook already sees the usage the innermost one settled."""
    fake_provider.script(Step(reply="x y", usage={"input_tokens": 3, "output_tokens": 2}))
    seen: list[lg.Usage | None] = []

    class Reader(Probe):
        def _watch(self, result: Any) -> Any:
            result.on_finish(lambda o, e: seen.append(self.record.usage))
            return result

    outer = Reader()

    @outer
    @Probe()
    def ask() -> Any:
        return anthropic_client.messages.create(
            model=MODEL, max_tokens=64, messages=MESSAGES, stream=True  # type: ignore[arg-type]
        )

    for _ in ask():
        break
    gc.collect()

    assert 1 == len(seen)
    assert seen[0] is not None
    assert 3 == seen[0].input_tokens
    assert seen[0].estimated


def test_stream_attributes_pass_through(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider, probe: Probe
) -> None:
    """Attributes of the SDK stream (response headers) are reachable on the guarded one."""

    @probe
    def ask() -> Any:
        return anthropic_client.messages.create(
            model=MODEL, max_tokens=64, messages=MESSAGES, stream=True  # type: ignore[arg-type]
        )

    stream = ask()

    assert isinstance(stream, GuardedStream)
    assert 200 == stream.response.status_code
    stream.close()


def test_entering_an_outer_stream_enters_the_manager_underneath(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """With over two stacked guards opens the SDK stream manager, so its helpers work at once."""
    fake_provider.script(Step(reply="stacked manager"))

    @Probe()
    @Probe()
    def ask() -> Any:
        return anthropic_client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES)  # type: ignore[arg-type]

    with ask() as stream:
        text = stream.get_final_text()

    assert "stacked manager" == text


def test_input_estimate_falls_back_to_string_arguments(probe: Probe) -> None:
    """A stream cut short with no SDK-shaped arguments estimates input from its string arguments."""

    @probe
    def ask(question: str) -> Iterator[str]:
        yield from question.split()

    question = "a question with quite a few words in it to estimate"
    for _ in ask(question):
        break
    gc.collect()

    # Input from the string argument, output from the one chunk read ("a").
    assert lg.Usage(estimated_input(question), estimate_tokens("a"), estimated=True) == probe.record.usage


class ReadsLate(Guard):
    """Reads the call's record only after the call returned (the record is built then)."""

    name = "reads-late"

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def leave(self, call: Call, state: None, result: Any) -> Any:
        self.calls.append(call)
        return result


def test_a_record_read_late_has_the_attempt_of_a_new_result_type() -> None:
    """A result of a type never seen before still lands as the call's attempt when read late."""

    class NeverSeen:
        usage = {"input_tokens": 7, "output_tokens": 3}

    late = ReadsLate()

    @late
    def ask() -> NeverSeen:
        return NeverSeen()

    ask()
    record = late.calls[0].record

    assert 1 == record.attempt_count
    assert lg.Outcome.OK == record.attempts[0].outcome


def test_a_record_read_late_has_the_usage_of_a_message_and_a_stream(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """Read after the call, the record has the Message's usage, and the stream's once it ends."""
    fake_provider.script(Step(usage={"input_tokens": 9, "output_tokens": 2}), Step(reply="a b", usage={"input_tokens": 4, "output_tokens": 2}))
    late = ReadsLate()

    @late
    def ask(stream: bool = False) -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES, stream=stream)  # type: ignore[call-overload]

    ask()
    for _ in ask(stream=True):
        pass
    message_record, stream_record = (c.record for c in late.calls)

    assert lg.Usage(9, 2) == message_record.usage
    assert lg.Usage(4, 2) == stream_record.usage
    assert [1, 1] == [message_record.attempt_count, stream_record.attempt_count]


def test_a_chunk_hook_added_after_prime_still_sees_the_first_chunk(probe: Probe) -> None:
    """A layer that primes a stream must not hide its first chunk from hooks added above it."""
    seen: list[int] = []

    class Primes(Guard):
        primes = True

    class Records(Guard):
        def leave(self, call: Call, state: None, stream: Any) -> Any:
            stream.on_chunk(seen.append)
            return stream

    @Records()
    @Primes()
    def numbers() -> Iterator[int]:
        yield from range(3)

    assert [0, 1, 2] == list(numbers())
    assert [0, 1, 2] == seen


def test_an_sdk_stream_dropped_unread_still_finishes(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider, probe: Probe
) -> None:
    """A returned SDK stream that is never iterated, then dropped, finishes once as abandoned."""

    @probe
    def ask() -> Any:
        return anthropic_client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES, stream=True)  # type: ignore[call-overload]

    stream = ask()
    record = stream.record
    del stream
    gc.collect()

    assert [Outcome.ABANDONED] == probe.finishes
    assert record.ended_at is not None


def test_report_usage_from_an_abandoned_attempt_lands_on_that_attempt() -> None:
    """Usage reported late by a timed-out attempt is its own, not the retry's."""
    import itertools
    import time

    counter = itertools.count()

    @ReadsLate()
    @lg.retry(attempts=2, initial=0.01, max_delay=0.01)
    @lg.timeout(0.3)
    def work() -> str:
        if next(counter) == 0:
            time.sleep(0.5)
            lg.report_usage(input_tokens=1000, output_tokens=1000)
            return "slow"
        lg.report_usage(input_tokens=10, output_tokens=10)
        return "fast"

    late = layers_of(work)[0]
    assert "fast" == work()
    time.sleep(0.4)
    record = late.calls[0].record  # type: ignore[attr-defined]

    assert [lg.Usage(1000, 1000), lg.Usage(10, 10)] == [a.usage for a in record.attempts]


# -- a guard that answers without calling ----------------------------------------


class _Answering(Guard):
    """Answers calls whose argument is "known" itself; builds the record first when asked to."""

    def __init__(self, build_record: bool = False) -> None:
        self.build_record = build_record
        self.records: list[lg.CallRecord] = []

    def enter(self, call: Call) -> Answer | None:
        if call.args[0] != "known":
            return None
        if self.build_record:
            self.records.append(call.record)
        return Answer("answered")


@pytest.mark.parametrize("build_record", [False, True])
async def test_an_answer_skips_the_function_and_ends_a_record_it_built(build_record: bool) -> None:
    """A guard's enter returning Answer answers the call; a record built for it is ended once."""
    ran: list[str] = []
    layer = _Answering(build_record)

    def f(q: str) -> str:
        ran.append(q)
        return q

    async def af(q: str) -> str:
        ran.append(q)
        return q

    sync_f, async_f = wrap(layer, f), wrap(layer, af)

    assert ("answered", "other") == (sync_f("known"), sync_f("other"))
    assert ("answered", "other") == (await async_f("known"), await async_f("other"))
    assert ["other", "other"] == ran
    if build_record:
        assert 2 == len(layer.records)
        assert all(r.outcome is Outcome.OK and r.ended_at is not None and r.attempts == [] for r in layer.records)


async def test_a_none_first_argument_named_self_is_passed_on_not_dropped(probe: Probe) -> None:
    """`def f(self, ...)` called with None first: None is an argument, not a missing instance (no shift)."""

    def ask(self: Any, messages: str = "default") -> tuple[Any, str]:
        return self, messages

    async def aask(self: Any, messages: str = "default") -> tuple[Any, str]:
        return self, messages

    class Bot:
        @probe
        def ask(self, messages: str = "default") -> tuple[Any, str]:
            return self, messages

    guarded, aguarded, stacked = probe(ask), probe(aask), Probe()(probe(ask))

    assert (None, "m") == guarded(None, "m")
    assert (None, "m") == await aguarded(None, "m")
    assert (None, "m") == stacked(None, "m")
    assert (None, "m") == Bot.ask(None, "m")
    assert probe.record.function.endswith("ask")
