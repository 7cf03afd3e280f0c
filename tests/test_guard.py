"""`lg.guard(...)`: the recommended stack in the canonical order, from keyword arguments."""

from __future__ import annotations

import warnings

from typing import Any

import anthropic
import pydantic
import pytest

import llmguard as lg

from llmguard._fake_provider import FakeProvider, Step
from llmguard.testing import FakeClock


MODEL = "claude-sonnet-4-6"


class Answer(pydantic.BaseModel):
    """What the test asks for."""

    city: str


def test_keywords_in_any_order_give_the_canonical_stack_with_one_runner() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the canonical order: no OrderWarning

        @lg.guard(
            timeout=30,
            budget={"usd": 5.0, "per": "day", "max_output": 64, "model": MODEL},
            ratelimit={"rpm": 600},
            breaker=True,
            retry=4,
            fallback=[{"model": "claude-haiku-4-5"}],
            route=["claude-haiku-4-5", MODEL],
            cache=True,
            validate=Answer,
            trace=True,
        )
        def ask(q: str, model: str = MODEL) -> str:
            return q

        names = [g.name for g in lg.describe(ask)]
    assert ["trace", "validate", "cache", "route", "fallback", "retry", "breaker", "budget", "ratelimit", "timeout"] == names
    assert 4 == lg.describe(ask)[5].settings["attempts"]


@pytest.mark.parametrize("shape", ["def", "async def"])
def test_the_stack_works_on_a_real_sdk_call(
    shape: str, fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic,
    async_anthropic_client: anthropic.AsyncAnthropic, fake_clock: FakeClock,
) -> None:
    """A 529 retried, a bad answer re-asked, the validated value returned; budget charged both answers."""
    fake_provider.script(Step(status=529), Step(reply="not json"), Step(reply='{"city": "Paris"}'))
    stack = lg.guard(validate=Answer, retry=True, budget={"usd": 5.0, "max_output": 64}, timeout=30)

    if shape == "def":

        @stack
        def ask(messages: Any, model: str = MODEL) -> Any:
            return anthropic_client.messages.create(model=model, max_tokens=64, messages=messages)

        answer = ask([{"role": "user", "content": "Where is the Louvre?"}])
    else:
        import asyncio

        @stack
        async def aask(messages: Any, model: str = MODEL) -> Any:
            return await async_anthropic_client.messages.create(model=model, max_tokens=64, messages=messages)

        async def main() -> Any:
            async with async_anthropic_client:  # closed on its own loop: no transport left open
                return await aask([{"role": "user", "content": "Where is the Louvre?"}])

        answer = asyncio.run(main())

    assert Answer(city="Paris") == answer
    assert 3 == len(fake_provider.requests)


def test_a_built_guard_is_taken_as_it_is() -> None:
    retrying = lg.retry(attempts=2)
    made = lg.guard(retry=retrying, cache={"ttl": 60})(lambda q: q)
    assert [("cache", 60.0), ("retry", 2)] == [
        (g.name, g.settings.get("ttl", g.settings.get("attempts"))) for g in lg.describe(made)
    ]


@pytest.mark.parametrize(
    ("kwargs", "error", "says"),
    [
        ({}, TypeError, r"guard\(\) needs at least one guard"),
        ({"retry": "often"}, TypeError, r"guard\(retry=...\)"),
        ({"validate": True}, TypeError, r"guard\(validate=True\) needs its settings"),
        ({"cache": lg.retry()}, TypeError, r"guard\(cache=...\) got a retry guard"),
        ({"retry": {"attempts": 0}}, ValueError, r"retry\(attempts=...\)"),
        ({"budget": {"usd": -1}}, ValueError, r"budget\(usd=...\)"),
        ({"timeout": float("nan")}, ValueError, r"timeout"),
    ],
)
def test_bad_settings_fail_when_the_stack_is_built(kwargs: dict[str, Any], error: type[Exception], says: str) -> None:
    with pytest.raises(error, match=says):
        lg.guard(**kwargs)


def test_false_and_none_leave_a_guard_out() -> None:
    made = lg.guard(trace=False, cache=None, retry=True)(lambda q: q)
    assert ["retry"] == [g.name for g in lg.describe(made)]
