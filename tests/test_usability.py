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


@pytest.mark.parametrize("name", ["retry", "budget", "cache", "timeout", "trace"])
def test_every_decorator_shows_its_real_parameters(name: str) -> None:
    """help() and inspect.signature show each setting, never a bare (*args, **kwargs)."""
    params = inspect.signature(getattr(lg, name)).parameters
    kinds = {p.kind for p in params.values()}
    assert inspect.Parameter.VAR_KEYWORD not in kinds
    assert inspect.Parameter.VAR_POSITIONAL not in kinds
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

    assert {w.filename for w in caught} == {__file__}
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
