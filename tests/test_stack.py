"""The guards together, in the canonical order, on every call shape."""

from __future__ import annotations

import gc

from collections.abc import Callable
from typing import Any

import pytest

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from shapes import SHAPES, build

import llmguard as lg

from llmguard._fake_provider import FakeProvider, Step
from llmguard.testing import FakeClock


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def stack(exporter: InMemorySpanExporter) -> Callable[[Any], Any]:
    """Trace → cache → retry → budget → timeout, in the canonical order (README, "Example")."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    def decorate(fn: Any) -> Any:
        guarded = lg.timeout(30, first_token=10, idle=10)(fn)
        guarded = lg.budget(usd=5.0, per="day", max_output=64, model="claude-sonnet-4-6")(guarded)
        guarded = lg.retry(attempts=3)(guarded)
        guarded = lg.cache(ttl=60)(guarded)
        return lg.trace(tracer_provider=provider)(guarded)

    return decorate


def sent(fake: FakeProvider) -> int:
    return sum(1 for r in fake.requests if r.path == "/v1/messages")


@pytest.mark.parametrize("shape", SHAPES)
def test_full_stack_retries_then_caches_every_shape(
    shape: str, clients: Any, fake_provider: FakeProvider, fake_clock: FakeClock, exporter: InMemorySpanExporter
) -> None:
    """A 429 then success: retried once; the same call again is a cache hit; every span ends once."""
    fake_provider.script(Step(status=429, headers={"retry-after": "1"}), Step(reply="stacked answer"))
    call = build(shape, stack(exporter), *clients)

    assert "stacked answer" == call()
    assert "stacked answer" == call()
    gc.collect()

    assert 2 == sent(fake_provider)
    assert [1.0] == [s for s in fake_clock.sleeps if s >= 1.0]
    spans = exporter.get_finished_spans()
    assert 2 == len(spans)
    retried = [e.name for e in spans[0].events]
    assert "llmguard.retry.scheduled" in retried


@pytest.mark.parametrize("shape", SHAPES)
def test_full_stack_budget_refuses_before_sending_on_every_shape(
    shape: str, clients: Any, fake_provider: FakeProvider, fake_clock: FakeClock, exporter: InMemorySpanExporter
) -> None:
    """Inside a scope too small for the worst case, nothing is sent and nothing is retried."""
    call = build(shape, stack(exporter), *clients)

    with lg.budget(usd=1e-7), pytest.raises(lg.BudgetExceeded):
        call()

    assert 0 == sent(fake_provider)
    assert [] == fake_clock.sleeps
