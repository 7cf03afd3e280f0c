"""What a new user meets first: real signatures, warnings at their own line, safe defaults, order warnings."""

from __future__ import annotations

import inspect
import warnings

from typing import Any

import anthropic
import pytest

from shapes import SHAPES, build

import llmguard as lg

from llmguard._fake_provider import FakeProvider, Step
from llmguard.testing import FakeClock


@pytest.mark.parametrize(
    "name", ["retry", "budget", "cache", "timeout", "trace", "breaker", "fallback", "validate", "route", "ratelimit"]
)
def test_every_decorator_shows_its_real_parameters(name: str) -> None:
    """help() and inspect.signature show each setting, never a bare **kwargs (fallback's *alternates are real)."""
    params = inspect.signature(getattr(lg, name)).parameters
    kinds = {p.kind for p in params.values()}
    assert inspect.Parameter.VAR_KEYWORD not in kinds
    assert (inspect.Parameter.VAR_POSITIONAL in kinds) == (name == "fallback")
    assert len(params) >= 3


def test_retry_shows_attempts_and_its_settings() -> None:
    params = inspect.signature(lg.retry).parameters
    assert ["attempts", "on", "initial", "max_delay"] == list(params)[:4]
    assert 60.0 == params["max_elapsed"].default


@pytest.mark.parametrize("shape", SHAPES)
def test_retry_has_an_overall_cap_by_default(
    shape: str, clients: Any, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """Three 429s asking retry-after: 250: the default cap (60 s) gives up at once instead of waiting 750 s."""
    fake_provider.script(*[Step(status=429, headers={"retry-after": "250"})] * 3, Step(reply="too late"))
    call = build(shape, lg.retry, *clients)

    with pytest.raises(anthropic.RateLimitError) as info:
        call()

    assert [] == fake_clock.sleeps
    assert "max_elapsed" in info.value.__notes__[0]


def test_no_cap_when_asked() -> None:
    assert lg.retry(max_elapsed=None).max_elapsed is None


# -- orders known to surprise ----------------------------------------------------


def _answer(q: str) -> str:
    return q


def test_a_surprising_order_warns_at_the_decorating_line() -> None:
    """Cache above trace: hits would leave no span; the warning says so, at this file's line."""
    with pytest.warns(lg.OrderWarning, match="cache above trace: .*hits leave no span") as caught:

        @lg.cache
        @lg.trace
        def ask(q: str) -> str:
            return q

    assert {__file__} == {w.filename for w in caught if issubclass(w.category, lg.OrderWarning)}
    assert "hi" == ask("hi")


@pytest.mark.parametrize(
    ("outer", "inner", "says"),
    [
        (lambda: lg.budget(usd=1.0, max_output=64, model="claude-sonnet-4-6"), lg.cache, "budget above cache: every cache hit reserves money"),
        (lg.cache, lg.trace, "cache above trace"),
    ],
)
def test_describe_warns_about_each_surprise(outer: Any, inner: Any, says: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn = outer()(inner()(_answer))
    with pytest.warns(lg.OrderWarning, match=says):
        names = [g.name for g in lg.describe(fn)]
    assert 2 == len(names)


def test_the_canonical_order_is_quiet() -> None:
    """The README's stack, in the canonical order: no warning, at decoration or from describe."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")

        @lg.trace
        @lg.cache
        @lg.retry(attempts=4)
        @lg.budget(usd=5.0, per="day", max_output=64, model="claude-sonnet-4-6")
        @lg.timeout(30)
        def ask(q: str) -> str:
            return q

        assert ["trace", "cache", "retry", "budget", "timeout"] == [g.name for g in lg.describe(ask)]


def test_on_refused_must_be_callable_and_needs_a_limit() -> None:
    with pytest.raises(ValueError, match=r"budget\(on_refused=...\) must be callable"):
        lg.budget(usd=1.0, on_refused=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"budget\(on_refused=...\) needs a limit"):
        lg.budget(on_refused=print)


# -- one error family for a stream that failed after it started -------------------


STACKS: dict[str, Any] = {
    "timeout alone": lg.timeout(idle=0.3),
    "retry over timeout": lambda f: lg.retry(lg.timeout(idle=0.3)(f)),
    "trace, cache, retry, budget, timeout": lambda f: lg.trace(
        lg.cache(lg.retry(lg.budget(usd=5.0, max_output=64)(lg.timeout(idle=0.3)(f))))
    ),
    "timeout over retry": lambda f: lg.timeout(idle=0.3)(lg.retry(f)),
}


@pytest.mark.parametrize("stack", list(STACKS))
@pytest.mark.parametrize("shape", ["def->stream", "generator"])
def test_a_stall_after_the_first_chunk_is_one_class_whatever_the_order(
    stack: str, shape: str, anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """Catch lg.StreamInterrupted: a stall mid-stream is a StreamTimedOut (also a GuardTimeout), whatever the stack."""
    fake_provider.script(Step(reply="a b c d e f", stall_after=2, stall=3.0))

    def stream(q: str, model: str = "claude-sonnet-4-6") -> Any:
        return anthropic_client.messages.create(
            model=model, max_tokens=64, messages=[{"role": "user", "content": q}], stream=True
        )

    def generator(q: str, model: str = "claude-sonnet-4-6") -> Any:
        yield from stream(q, model)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lg.OrderWarning)
        ask = STACKS[stack](stream if shape == "def->stream" else generator)
    got = []
    with pytest.raises(lg.StreamInterrupted) as info:
        got.extend(ask("hi"))

    assert got
    assert isinstance(info.value, lg.StreamTimedOut)
    assert isinstance(info.value, lg.GuardTimeout)
    assert "idle" == info.value.limit
    assert 1 == len(fake_provider.requests)  # nothing replayed


def test_an_sdk_error_after_the_first_chunk_is_stream_interrupted_with_the_error_beneath(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    """With trace alone (no retry to prime the stream), the caller still gets StreamInterrupted; the span names the real error."""
    fake_provider.script(Step(reply="one two three four", error_after=2))

    @lg.trace
    def ask() -> Any:
        return anthropic_client.messages.create(
            model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": "hi"}], stream=True
        )

    stream = ask()
    with pytest.raises(lg.StreamInterrupted) as info:
        list(stream)
    assert isinstance(info.value.__cause__, anthropic.APIStatusError)
    assert stream.record.attempt is not None
    assert isinstance(stream.record.attempt.error, anthropic.APIStatusError)  # the record names the real failure
