"""docs/writing-a-guard.md: its guard, imported from the page, counts real attempts on every call shape."""

from __future__ import annotations

import re
import types

from pathlib import Path
from typing import Any

import pytest

from shapes import MODEL, SHAPES, build

import llmguard as lg

from llmguard._fake_provider import FakeProvider, Step
from llmguard.testing import FakeClock


PAGE = Path(__file__).parent.parent / "docs" / "writing-a-guard.md"


def page_module() -> types.ModuleType:
    """The page's first python block, ``# count_attempts.py``, as the module it says it is."""
    first = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)[0]
    assert first.startswith("# count_attempts.py\n")
    module = types.ModuleType("count_attempts")
    exec(compile(first, str(PAGE), "exec"), module.__dict__)  # noqa: S102 - our own docs
    return module


def counter() -> Any:
    return page_module().CountAttempts()


def model_of(shape: str) -> str | None:
    """The model the shape's function asks for as an argument: only the method takes one (a default)."""
    return MODEL if shape == "method" else None


def api_requests(fake: FakeProvider) -> int:
    return sum(1 for r in fake.requests if r.path.startswith("/v1/"))


@pytest.mark.parametrize("shape", SHAPES)
def test_alone_it_counts_one_attempt(shape: str, clients: Any, fake_provider: FakeProvider) -> None:
    """Alone on any shape, one call is one attempt, under the model the function asks for, and no failure."""
    count = counter()
    call = build(shape, count, *clients)

    assert "Hello from the fake provider." == call()
    assert {model_of(shape): 1} == count.counts
    assert {} == count.failures
    assert 1 == api_requests(fake_provider)


@pytest.mark.parametrize("shape", SHAPES)
def test_below_retry_it_counts_each_real_attempt(
    shape: str, clients: Any, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """Under `retry`, a 429 then a success are two attempts, one failed: the requests the provider got."""
    fake_provider.script(Step(status=429, headers={"retry-after": "1"}), Step(reply="second"))
    count = counter()
    call = build(shape, lambda fn: lg.retry(count(fn)), *clients)

    assert "second" == call()
    assert {model_of(shape): 2} == count.counts
    assert {model_of(shape): 1} == count.failures
    assert 2 == api_requests(fake_provider)
    assert 1 == len(fake_clock.sleeps)


@pytest.mark.parametrize("shape", SHAPES)
def test_above_retry_it_counts_calls(
    shape: str, clients: Any, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    """Above `retry` (the wrong place for it), the same two requests count as one call that succeeded."""
    fake_provider.script(Step(status=429, headers={"retry-after": "1"}), Step(reply="second"))
    count = counter()
    call = build(shape, lambda fn: count(lg.retry(fn)), *clients)

    assert "second" == call()
    assert {model_of(shape): 1} == count.counts
    assert {} == count.failures
    assert 2 == api_requests(fake_provider)


def test_each_attempt_counts_under_the_model_it_asks_for(anthropic_client: Any, fake_provider: FakeProvider) -> None:
    """The model is the call's `model` argument, keyword, positional or default."""
    count = counter()

    @count
    def ask(q: str, model: str = MODEL) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=64, messages=[{"role": "user", "content": q}])

    ask("a")
    ask("b", model="claude-haiku-4-5")
    ask("c", "claude-haiku-4-5")

    assert {MODEL: 1, "claude-haiku-4-5": 2} == count.counts
    assert ["claude-sonnet-4-6", "claude-haiku-4-5", "claude-haiku-4-5"] == [r.body["model"] for r in fake_provider.requests]
