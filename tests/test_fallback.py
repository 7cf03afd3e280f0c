"""`fallback`: real anthropic and openai SDKs against the fake provider, every call shape.

The primary is an anthropic function; the alternate an openai function of the same shape
(it returns openai's own types), or keyword overrides of the primary. Circuits are a
private stand-in until `llmguard._breaker.circuit` exists (see `stand_in_circuits`).
"""

from __future__ import annotations

import asyncio
import json

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anthropic
import openai
import pytest

from probe import Probe

import llmguard as lg

from llmguard import _fallback
from llmguard._fake_provider import FakeProvider, Step
from llmguard.prices import cost_of
from llmguard.testing import FakeClock, capture_events


SONNET = "claude-sonnet-4-6"
HAIKU = "claude-haiku-4-5"
MINI = "gpt-4o-mini"
MESSAGES: Any = [{"role": "user", "content": "hello there"}]
SHAPES = ["def", "async def", "def->stream", "async def->stream", "generator", "async generator", "method"]


def text_of(result: Any) -> str:
    """The text of an anthropic or openai answer, or of either's stream events, or of text chunks."""
    if isinstance(result, str):
        return result
    if isinstance(result, anthropic.types.Message):
        return "".join(b.text for b in result.content if b.type == "text")
    if isinstance(result, openai.types.chat.ChatCompletion):
        return result.choices[0].message.content or ""
    out = []
    for e in result:
        if isinstance(e, str):
            out.append(e)
        elif getattr(e, "type", None) == "content_block_delta":
            out.append(e.delta.text)
        elif isinstance(e, openai.types.chat.ChatCompletionChunk) and e.choices:
            out.append(e.choices[0].delta.content or "")
    return "".join(out)


class Pair:
    """An anthropic primary and an openai alternate of one call shape, guarded; `run()` gives the text."""

    def __init__(self, shape: str, fake: FakeProvider, decorate: Callable[[Any], Any], stack: Callable[[Any], Any] = lambda f: f) -> None:
        ac = anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key="k", max_retries=0)
        aac = anthropic.AsyncAnthropic(base_url=fake.anthropic_base_url, api_key="k", max_retries=0)
        oc = openai.OpenAI(base_url=fake.openai_base_url, api_key="k", max_retries=0)
        aoc = openai.AsyncOpenAI(base_url=fake.openai_base_url, api_key="k", max_retries=0)

        def a_create(model: str, **kw: Any) -> Any:
            return ac.messages.create(model=model, max_tokens=64, messages=MESSAGES, **kw)

        def o_create(model: str, **kw: Any) -> Any:
            return oc.chat.completions.create(model=model, max_tokens=64, messages=MESSAGES, **kw)

        async def aa_create(model: str, **kw: Any) -> Any:
            return await aac.messages.create(model=model, max_tokens=64, messages=MESSAGES, **kw)

        async def ao_create(model: str, **kw: Any) -> Any:
            return await aoc.chat.completions.create(model=model, max_tokens=64, messages=MESSAGES, **kw)

        self.shape = shape
        self.run: Callable[[], str]
        self.fn: Any = None  # the guarded primary
        if shape == "def":

            def ask_openai(model: str = MINI) -> Any:
                return o_create(model)

            def ask(model: str = SONNET) -> Any:
                return a_create(model)

            self.fn = f = decorate(ask_openai)(stack(ask))
            self.run = lambda: text_of(f())
        elif shape == "async def":

            async def ask_openai(model: str = MINI) -> Any:  # type: ignore[misc]
                return await ao_create(model)

            async def ask(model: str = SONNET) -> Any:  # type: ignore[misc]
                return await aa_create(model)

            self.fn = af = decorate(ask_openai)(stack(ask))
            self.run = lambda: text_of(asyncio.run(af()))
        elif shape == "def->stream":

            def ask_openai(model: str = MINI) -> Any:
                return o_create(model, stream=True)

            def ask(model: str = SONNET) -> Any:
                return a_create(model, stream=True)

            self.fn = g = decorate(ask_openai)(stack(ask))
            self.run = lambda: text_of(list(g()))
        elif shape == "async def->stream":

            async def ask_openai(model: str = MINI) -> Any:  # type: ignore[misc]
                return await ao_create(model, stream=True)

            async def ask(model: str = SONNET) -> Any:  # type: ignore[misc]
                return await aa_create(model, stream=True)

            self.fn = ag = decorate(ask_openai)(stack(ask))

            async def consume() -> str:
                return text_of([e async for e in await ag()])

            self.run = lambda: asyncio.run(consume())
        elif shape == "generator":

            def ask_openai(model: str = MINI) -> Iterator[str]:  # type: ignore[misc]
                for c in o_create(model, stream=True):
                    if c.choices and c.choices[0].delta.content:
                        yield c.choices[0].delta.content

            def ask(model: str = SONNET) -> Iterator[str]:  # type: ignore[misc]
                for e in a_create(model, stream=True):
                    if e.type == "content_block_delta":
                        yield e.delta.text

            self.fn = gen = decorate(ask_openai)(stack(ask))
            self.run = lambda: "".join(gen())
        elif shape == "async generator":

            async def ask_openai(model: str = MINI) -> AsyncIterator[str]:  # type: ignore[misc]
                async for c in await ao_create(model, stream=True):
                    if c.choices and c.choices[0].delta.content:
                        yield c.choices[0].delta.content

            async def ask(model: str = SONNET) -> AsyncIterator[str]:  # type: ignore[misc]
                async for e in await aa_create(model, stream=True):
                    if e.type == "content_block_delta":
                        yield e.delta.text

            self.fn = agen = decorate(ask_openai)(stack(ask))

            async def consume_gen() -> str:
                return "".join([t async for t in agen()])

            self.run = lambda: asyncio.run(consume_gen())
        else:
            assert shape == "method"

            def ask_openai(self: Any, model: str = MINI) -> Any:
                return o_create(model)

            class Service:
                def ask(self, model: str = SONNET) -> Any:
                    return a_create(model)

            Service.ask = self.fn = decorate(ask_openai)(stack(Service.ask))  # type: ignore[method-assign]
            service = Service()
            self.run = lambda: text_of(service.ask())


def paths(fake: FakeProvider) -> list[str]:
    return [r.path.rsplit("/", 1)[-1] for r in fake.requests]


def models(fake: FakeProvider) -> list[str]:
    return [r.body["model"] for r in fake.requests]


# -- circuits: a stand-in for llmguard._breaker.circuit --------------------------------------


class StandInCircuit:
    """Opens after `failures` consecutive failures of any kind; never half-opens."""

    def __init__(self, name: str, failures: int = 1) -> None:
        self.name = name
        self.failures = failures
        self.count = 0
        self.state = "closed"
        self.admitted = 0
        self.recorded: list[BaseException | None] = []

    def admit(self) -> object:
        if self.state == "open":
            raise lg.CircuitOpen(f"{self.name} is open", target=self.name)
        self.admitted += 1
        return object()

    def record(self, ticket: object, exc: BaseException | None) -> None:
        self.recorded.append(exc)
        self.count = self.count + 1 if exc is not None else 0
        if self.count >= self.failures:
            self.state = "open"

    async def aadmit(self) -> object:
        return self.admit()

    async def arecord(self, ticket: object, exc: BaseException | None) -> None:
        self.record(ticket, exc)


@pytest.fixture
def circuits(monkeypatch: pytest.MonkeyPatch) -> dict[str, StandInCircuit]:
    """Every circuit fallback makes from now on, by target name (the part after the last colon)."""
    made: dict[str, StandInCircuit] = {}

    def factory(name: str, **settings: Any) -> StandInCircuit:
        made[name.rsplit(":", 1)[-1]] = circuit = StandInCircuit(name, **settings)
        return circuit

    monkeypatch.setattr(_fallback, "_circuit_factory", lambda: factory)
    return made


# -- the primary down: the other provider answers -----------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_anthropic_overloaded_then_dropped_openai_answers_on_every_shape(shape: str, fake_provider: FakeProvider, fake_clock: FakeClock) -> None:
    """529, then a dropped connection (retry's two attempts), then the openai function answers, in its own types."""
    probe = Probe()
    pair = Pair(shape, fake_provider, lambda alt: lambda f: probe(lg.fallback(alt)(f)), lg.retry(attempts=2))
    fake_provider.script(Step(status=529), Step(drop=True), Step(reply="from openai"))

    with capture_events("llmguard.fallback") as events:
        assert "from openai" == pair.run()

    assert ["messages", "messages", "completions"] == paths(fake_provider)
    record = probe.record
    assert "ask_openai" == record.fallback_target
    assert [SONNET, SONNET, MINI] == [a.model for a in record.attempts]
    assert [lg.Outcome.ERROR, lg.Outcome.ERROR, lg.Outcome.OK] == [a.outcome for a in record.attempts]
    assert [{"target": "ask", "reason": "connection (APIConnectionError)"}] == record.extra["fallback_passed_over"]
    assert [("llmguard.fallback.used", "ask_openai", "ask: connection (APIConnectionError)")] == [
        (e.name, e.fields["target"], e.fields["passed_over"]) for e in events
    ]


@pytest.mark.parametrize("shape", SHAPES)
def test_the_primary_answering_is_not_a_fallback(shape: str, fake_provider: FakeProvider) -> None:
    """The primary answers: one request, no fallback on the record, no event."""
    probe = Probe()
    pair = Pair(shape, fake_provider, lambda alt: lambda f: probe(lg.fallback(alt)(f)))
    fake_provider.script(Step(reply="from anthropic"))

    with capture_events("llmguard.fallback") as events:
        assert "from anthropic" == pair.run()
    assert ["messages"] == paths(fake_provider)
    assert probe.record.fallback_target is None
    assert [] == events


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_budget_below_charges_every_attempt_at_its_own_model(is_async: bool, fake_provider: FakeProvider, fake_clock: FakeClock) -> None:
    """An anthropic answer reject= refuses, then openai's: the budget below is charged both, each at its model's price."""
    probe = Probe()
    usage_a = {"input_tokens": 1000, "output_tokens": 64}
    usage_o = {"input_tokens": 900, "output_tokens": 40}

    def decorate(alt: Any) -> Any:
        return lambda f: probe(lg.fallback(alt, reject=lambda r, att: "max_tokens" in att.finish_reasons)(f))

    pair = Pair("async def" if is_async else "def", fake_provider, decorate, lg.budget(usd=5.0, max_output=64))
    fake_provider.script(Step(raw_body=json.dumps(_anthropic_body("cut sh", "max_tokens", usage_a))), Step(reply="whole", usage=usage_o))

    assert "whole" == pair.run()

    record = probe.record
    assert [SONNET, MINI] == [a.model for a in record.attempts]
    want_a = cost_of(lg.Usage(1000, 64), SONNET, "anthropic")
    want_o = cost_of(lg.Usage(900, 40), MINI, "openai")
    assert want_a is not None and want_o is not None and want_a != want_o
    assert [pytest.approx(want_a), pytest.approx(want_o)] == [a.cost_usd for a in record.attempts]
    spend = lg.budget_spend(pair.fn)
    assert pytest.approx(want_a + want_o) == spend.usd
    assert 2 == spend.calls
    assert "ask_openai" == record.fallback_target
    assert [{"target": "ask", "reason": "answer rejected"}] == record.extra["fallback_passed_over"]


def _anthropic_body(text: str, stop: str, usage: dict[str, int]) -> dict[str, Any]:
    return {
        "id": "msg_fake_cut",
        "type": "message",
        "role": "assistant",
        "model": SONNET,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage,
    }
