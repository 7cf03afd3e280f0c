"""`fallback`: real anthropic and openai SDKs against the fake provider, every call shape.

The primary is an anthropic function; the alternate an openai function of the same shape
(it returns openai's own types), or keyword overrides of the primary. Each target has
its circuit (`llmguard._breaker.circuit`) unless breaker=False.
"""

from __future__ import annotations

import asyncio
import gc
import json
import warnings

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anthropic
import openai
import pytest

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from probe import Probe

import llmguard as lg

from llmguard._fake_provider import FakeProvider, Step
from llmguard._runner import layers_of
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


@pytest.fixture(autouse=True)
def _collect_what_the_test_left_open() -> Iterator[None]:
    """Collect, quietly, what a test left for the collector (async clients of event loops already closed).

    Else an unclosed transport's ResourceWarning surfaces later, during whichever test the
    collector happens to run in, as that test's unraisable-exception failure.
    """
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def _no_keepalive() -> Any:
    """An async HTTP client that opens a connection per request (calls here run in event loops of their own)."""
    from sdk_http import httpx  # noqa: PLC0415

    return httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0), timeout=60)


class Pair:
    """An anthropic primary and an openai alternate of one call shape, guarded; `run()` gives the text."""

    def __init__(self, shape: str, fake: FakeProvider, decorate: Callable[[Any], Any], stack: Callable[[Any], Any] = lambda f: f) -> None:
        ac = anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key="k", max_retries=0)
        oc = openai.OpenAI(base_url=fake.openai_base_url, api_key="k", max_retries=0)
        # Async clients per event loop: each `asyncio.run` has its own, and a connection kept
        # alive from a closed loop cannot be reused.
        loops: dict[int, tuple[anthropic.AsyncAnthropic, openai.AsyncOpenAI]] = {}

        def aclients() -> tuple[anthropic.AsyncAnthropic, openai.AsyncOpenAI]:
            key = id(asyncio.get_running_loop())
            if key not in loops:
                # No kept-alive connections: nothing is left open when the loop closes (an
                # unclosed transport's ResourceWarning would fail whichever test collects it).
                loops[key] = (
                    anthropic.AsyncAnthropic(base_url=fake.anthropic_base_url, api_key="k", max_retries=0, http_client=_no_keepalive()),
                    openai.AsyncOpenAI(base_url=fake.openai_base_url, api_key="k", max_retries=0, http_client=_no_keepalive()),
                )
            return loops[key]

        def a_create(model: str, **kw: Any) -> Any:
            return ac.messages.create(model=model, max_tokens=64, messages=MESSAGES, **kw)

        def o_create(model: str, **kw: Any) -> Any:
            return oc.chat.completions.create(model=model, max_tokens=64, messages=MESSAGES, **kw)

        async def aa_create(model: str, **kw: Any) -> Any:
            return await aclients()[0].messages.create(model=model, max_tokens=64, messages=MESSAGES, **kw)

        async def ao_create(model: str, **kw: Any) -> Any:
            return await aclients()[1].chat.completions.create(model=model, max_tokens=64, messages=MESSAGES, **kw)

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


def circuits_of(fn: Any) -> dict[str, Any]:
    """The circuit of each target of *fn*'s fallback, by target name."""
    (layer,) = [g for g in layers_of(fn) if g.name == "fallback"]
    return {t.name: t.circuit for t in layer.targets}  # type: ignore[attr-defined]


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


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_in_the_canonical_stack_the_span_says_which_target_answered_and_why(is_async: bool, fake_provider: FakeProvider, fake_clock: FakeClock) -> None:
    """Trace -> cache -> fallback -> retry -> breaker -> budget -> timeout: one span, the target on it, the event with the reason."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    def stack(f: Any) -> Any:
        return lg.retry(attempts=2)(lg.breaker(failures=5)(lg.budget(usd=5.0, max_output=64)(lg.timeout(30)(f))))

    pair = Pair(
        "async def" if is_async else "def",
        fake_provider,
        lambda alt: lambda f: lg.trace(tracer_provider=provider)(lg.cache(lg.fallback(alt)(f))),
        stack,
    )
    fake_provider.script(Step(status=529), Step(status=503), Step(reply="from openai"))

    assert "from openai" == pair.run()

    (span,) = exporter.get_finished_spans()
    assert "ask_openai" == span.attributes["llmguard.fallback.target"]  # type: ignore[index]
    (used,) = [e for e in span.events if e.name == "llmguard.fallback.used"]
    assert "ask_openai" == used.attributes["llmguard.target"]  # type: ignore[index]
    passed_over = used.attributes["llmguard.passed_over"]  # type: ignore[index]
    assert passed_over.startswith("ask: server (")  # the 503's class: ServiceUnavailableError, or older SDKs' InternalServerError
    assert ["messages", "messages", "completions"] == paths(fake_provider)


# -- keyword overrides, what does not fall back, reject= ------------------------------------


@pytest.mark.parametrize("positional", [False, True], ids=["keyword", "positional"])
def test_keyword_overrides_run_the_same_function_with_another_model(positional: bool, anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider) -> None:
    """{"model": ...} runs the primary again with that model (in place when the caller passed it by position)."""
    probe = Probe()

    @probe
    @lg.fallback({"model": HAIKU})
    def ask(q: str, model: str = SONNET) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=64, messages=[{"role": "user", "content": q}])

    fake_provider.script(Step(status=529), Step(reply="haiku here"))
    result = ask("hi", SONNET) if positional else ask("hi", model=SONNET)

    assert "haiku here" == text_of(result)
    assert [SONNET, HAIKU] == models(fake_provider)
    assert f"model={HAIKU}" == probe.record.fallback_target
    assert [SONNET, HAIKU] == [a.model for a in probe.record.attempts]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_no_fallback_on_a_bad_request_one_request_and_the_error_as_it_is(is_async: bool, fake_provider: FakeProvider) -> None:
    """A 400 is the caller's to fix: exactly one request, the SDK's own error, no alternate tried."""
    pair = Pair("async def" if is_async else "def", fake_provider, lg.fallback)
    fake_provider.script(Step(status=400))

    with pytest.raises(anthropic.BadRequestError):
        pair.run()
    assert ["messages"] == paths(fake_provider)


@pytest.mark.parametrize("exc", [lg.BudgetExceeded("no money"), lg.InputRejected("bad input"), lg.ValidationFailed("never valid"), anthropic.AuthenticationError.__name__])
def test_llmguards_refusals_and_auth_never_fall_back_by_default(exc: Any, anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider) -> None:
    """BudgetExceeded, InputRejected, ValidationFailed and a 401 are raised as they are; on= can say otherwise."""
    tried: list[str] = []

    def alternate(q: str) -> str:
        tried.append(q)
        return "alternate"

    def primary(q: str) -> Any:
        if isinstance(exc, Exception):
            raise exc
        return anthropic_client.messages.create(model=SONNET, max_tokens=8, messages=[{"role": "user", "content": q}])

    fake_provider.script(Step(status=401))
    with pytest.raises(type(exc) if isinstance(exc, Exception) else anthropic.AuthenticationError):
        lg.fallback(alternate)(primary)("hi")
    assert [] == tried

    fake_provider.script(Step(status=401))
    kind = (type(exc),) if isinstance(exc, Exception) else lg.ErrorKind.AUTH
    assert "alternate" == lg.fallback(alternate, on=kind)(primary)("hi")


def test_a_context_too_long_and_a_timeout_fall_back_by_default(openai_client: openai.OpenAI, fake_provider: FakeProvider) -> None:
    """A 400 saying the context is too long moves on (a larger-context alternate); so does a GuardTimeout."""

    @lg.fallback({"model": "gpt-4.1"})
    def ask(model: str = MINI) -> Any:
        return openai_client.chat.completions.create(model=model, messages=MESSAGES)

    fake_provider.script(Step(status=400, error_code="context_length_exceeded", error_type="invalid_request_error"), Step(reply="long context"))
    assert "long context" == text_of(ask())
    assert [MINI, "gpt-4.1"] == models(fake_provider)

    @lg.fallback({"model": "fast"})
    def slow(model: str = "slow") -> str:
        if model == "slow":
            raise lg.GuardTimeout("too slow", seconds=1.0)
        return model

    assert "fast" == slow()


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_reject_on_finish_reason_length_moves_on(is_async: bool, fake_provider: FakeProvider) -> None:
    """An openai answer cut at max_tokens (finish reason "length", HTTP 200) is refused: the next target answers."""
    probe = Probe()
    oc = openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0)
    aoc = openai.AsyncOpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0, http_client=_no_keepalive())

    def cut(result: Any, attempt: lg.Attempt) -> bool:
        return "length" in attempt.finish_reasons

    if is_async:

        @probe
        @lg.fallback({"model": "gpt-4o"}, reject=cut)
        async def aask(model: str = MINI) -> Any:
            return await aoc.chat.completions.create(model=model, max_tokens=8, messages=MESSAGES)

        run: Callable[[], Any] = lambda: asyncio.run(aask())  # noqa: E731
    else:

        @probe
        @lg.fallback({"model": "gpt-4o"}, reject=cut)
        def ask(model: str = MINI) -> Any:
            return oc.chat.completions.create(model=model, max_tokens=8, messages=MESSAGES)

        run = ask
    fake_provider.script(Step(raw_body=json.dumps(_chat_body("cut sh", "length"))), Step(reply="whole answer"))

    assert "whole answer" == text_of(run())
    assert [MINI, "gpt-4o"] == models(fake_provider)
    assert "model=gpt-4o" == probe.record.fallback_target


def test_reject_of_one_argument_sees_the_answer_and_empty_text_moves_on(anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider) -> None:
    """reject=lambda answer: ... (no attempt): an empty answer moves on."""

    @lg.fallback({"model": HAIKU}, reject=lambda r: not text_of(r).strip())
    def ask(model: str = SONNET) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=8, messages=MESSAGES)

    fake_provider.script(Step(reply="   "), Step(reply="something"))
    assert "something" == text_of(ask())
    fake_provider.script(Step(reply="first"))
    assert "first" == text_of(ask())
    assert [SONNET, HAIKU, SONNET] == models(fake_provider)


# -- when everything fails ---------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_all_failed_holds_each_targets_error_in_order(is_async: bool, fake_provider: FakeProvider, fake_clock: FakeClock) -> None:
    """529 (after retry), openai's 500, a refused answer: AllFailed holds the three in that order, the answer kept."""
    reject = lambda r: text_of(r) == "refuse me"  # noqa: E731
    pair = Pair(
        "async def" if is_async else "def",
        fake_provider,
        lambda alt: lg.fallback(alt, {"model": HAIKU}, reject=reject),
        lg.retry(attempts=2),
    )
    fake_provider.script(Step(status=529), Step(status=529), Step(status=500), Step(status=500), Step(reply="refuse me"))

    with pytest.raises(lg.AllFailed) as info:
        pair.run()

    errors = info.value.exceptions
    # The SDKs' class for a 529 differs across their versions: the class family and the status say it.
    assert [anthropic.APIStatusError, openai.APIStatusError, lg.AnswerRejected] == [
        next(c for c in (anthropic.APIStatusError, openai.APIStatusError, lg.AnswerRejected) if isinstance(e, c)) for e in errors
    ]
    assert 529 == errors[0].status_code  # type: ignore[attr-defined]
    assert 500 == errors[1].status_code  # type: ignore[attr-defined]
    rejected = errors[2]
    assert isinstance(rejected, lg.AnswerRejected)
    assert "refuse me" == text_of(rejected.answer)
    assert f"model={HAIKU}" == rejected.target
    assert "ask: overloaded" in str(info.value)
    assert "ask_openai: server" in str(info.value)
    assert [SONNET, SONNET, MINI, MINI, HAIKU] == models(fake_provider)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_default_answers_when_everything_failed(is_async: bool, fake_provider: FakeProvider) -> None:
    """default= a value, or a callable of the call's arguments (awaited for an async function)."""
    probe = Probe()
    for default in ("sorry", lambda model=None: f"sorry from {model}"):
        pair = Pair("async def" if is_async else "def", fake_provider, lambda alt, d=default: lambda f: probe(lg.fallback(alt, default=d)(f)))
        fake_provider.script(Step(status=503), Step(status=503))
        want = "sorry" if default == "sorry" else "sorry from None"
        assert want == pair.run()
        assert "default" == probe.record.fallback_target

    async def adefault() -> str:
        return "awaited"

    if is_async:
        for breaker in (True, False):  # the hooks differ: with circuits, and without
            pair = Pair("async def", fake_provider, lambda alt, b=breaker: lg.fallback(alt, default=adefault, breaker=b))
            fake_provider.script(Step(status=503), Step(status=503))
            assert "awaited" == pair.run()
            # Every answer refused: the default, awaited too.
            pair = Pair("async def", fake_provider, lambda alt, b=breaker: lg.fallback(alt, default=adefault, reject=lambda r: True, breaker=b))
            assert "awaited" == pair.run()


@pytest.mark.parametrize("shape", ["generator", "async generator"])
def test_a_generator_functions_default_is_its_chunks(shape: str, fake_provider: FakeProvider) -> None:
    """A stream's default: an iterable of chunks, read by the caller as the stream (async too)."""
    pair = Pair(shape, fake_provider, lambda alt: lg.fallback(alt, default=lambda model=None: ["sorry", ", later"]))
    fake_provider.script(Step(status=503), Step(status=503))
    assert "sorry, later" == pair.run()


def test_deadline_passed_no_alternate_starts(anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider, fake_clock: FakeClock) -> None:
    """The primary failed after the active deadline: no alternate starts; AllFailed says why."""
    tried: list[str] = []

    def alternate(q: str) -> str:
        tried.append(q)
        return "late"

    @lg.fallback(alternate)
    def ask(q: str) -> Any:
        try:
            return anthropic_client.messages.create(model=SONNET, max_tokens=8, messages=[{"role": "user", "content": q}])
        finally:
            fake_clock.advance(6.0)  # the request took longer than the block allows

    fake_provider.script(Step(status=529))
    with lg.timeout(5), pytest.raises(lg.AllFailed) as info:
        ask("hi")
    assert [] == tried
    first, second = info.value.exceptions
    assert isinstance(first, anthropic.APIStatusError)
    assert 529 == first.status_code
    assert isinstance(second, lg.GuardTimeout)
    assert "the deadline passed before alternate could start" in str(info.value.exceptions[1])

    # Within the deadline the alternate runs.
    fake_provider.script(Step(status=529))
    with lg.timeout(10):
        assert "late" == ask("again")


# -- circuits ----------------------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_an_open_circuit_skips_its_target_without_a_call_then_a_probe_closes_it(is_async: bool, fake_provider: FakeProvider, fake_clock: FakeClock) -> None:
    """failures=1: the primary's 529 opens its circuit; the next call goes straight to openai; after the cooldown one probe closes it."""
    probe = Probe()
    pair = Pair("async def" if is_async else "def", fake_provider, lambda alt: lambda f: probe(lg.fallback(alt, breaker={"failures": 1, "cooldown": 30})(f)))
    circuits = circuits_of(pair.fn)
    fake_provider.script(Step(status=529), Step(reply="one"), Step(reply="two"), Step(reply="three"))

    assert "one" == pair.run()
    assert ("open", "closed") == (circuits["ask"].state, circuits["ask_openai"].state)
    with capture_events("llmguard.fallback") as events:
        assert "two" == pair.run()
    assert ["messages", "completions", "completions"] == paths(fake_provider)
    assert [{"target": "ask", "reason": "circuit open"}] == probe.record.extra["fallback_passed_over"]
    assert "ask: circuit open" == events[0].fields["passed_over"]

    fake_clock.advance(31)  # past the cooldown: half-open, one probe
    assert "three" == pair.run()
    assert "closed" == circuits["ask"].state
    assert ["messages", "completions", "completions", "messages"] == paths(fake_provider)

    # Both fail: both open; the next call sends nothing and AllFailed holds two CircuitOpen.
    fake_provider.script(Step(status=529), Step(status=500))
    with pytest.raises(lg.AllFailed):
        pair.run()
    with pytest.raises(lg.AllFailed) as info:
        pair.run()
    assert [lg.CircuitOpen, lg.CircuitOpen] == [type(e) for e in info.value.exceptions]
    assert 6 == len(fake_provider.requests)


def test_circuits_in_redis_are_awaited_by_an_async_call_and_named_alike_in_every_process(fake_provider: FakeProvider, redis_url: str) -> None:
    """store=redis: the async hooks await the store; a second function of the same name shares the circuits."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    settings = {"failures": 1, "cooldown": 60, "store": redis_url}
    first = Pair("async def", fake_provider, lambda alt: lg.fallback(alt, breaker=settings))
    fake_provider.script(Step(status=529), Step(reply="one"), Step(reply="two"))
    assert "one" == first.run()
    assert "open" == circuits_of(first.fn)["ask"].state

    # Another process (here: another decoration of the same function) sees the same circuit open.
    second = Pair("async def", fake_provider, lambda alt: lg.fallback(alt, breaker=settings))
    assert "two" == second.run()
    assert ["messages", "completions", "completions"] == paths(fake_provider)


def test_breaker_settings_false_a_dict_or_an_lg_breaker_and_bad_ones_refused_at_decoration() -> None:
    """breaker=False: no circuits; a dict or an lg.breaker(...): those settings, a circuit per target; bad: named."""

    def ask(model: str = SONNET) -> str:
        return model

    assert {"ask": None, f"model={HAIKU}": None} == circuits_of(lg.fallback({"model": HAIKU}, breaker=False)(ask))
    by_dict = circuits_of(lg.fallback({"model": HAIKU}, breaker={"failures": 3})(ask))
    by_breaker = circuits_of(lg.fallback({"model": HAIKU}, breaker=lg.breaker(failures=3, name="ignored"))(ask))
    assert [3, 3, 3, 3] == [c.rules.failures for c in [*by_dict.values(), *by_breaker.values()]]
    assert len({id(c) for c in [*by_dict.values(), *by_breaker.values()]}) == 4  # each its own circuit
    with pytest.raises(TypeError, match=r"fallback\(breaker=\.\.\.\)"):
        lg.fallback({"model": HAIKU}, breaker="yes")
    with pytest.raises(ValueError, match=r"breaker\(failures=\.\.\.\)"):
        lg.fallback({"model": HAIKU}, breaker={"failures": 0})(ask)


# -- streams -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["def->stream", "async def->stream", "generator", "async generator"])
def test_a_stream_failing_before_its_first_chunk_falls_back_after_it_is_interrupted(shape: str, fake_provider: FakeProvider) -> None:
    """Before the first chunk reached the caller: the alternate; after: StreamInterrupted, no alternate."""
    pair = Pair(shape, fake_provider, lg.fallback)
    # A generator's first chunk is its first text; an SDK stream's is its first event, which
    # comes before any text: there the stream fails before it when the connection drops.
    first = Step(error_after=0) if "generator" in shape else Step(drop=True)
    fake_provider.script(first, Step(reply="from openai"))
    assert "from openai" == pair.run()
    assert ["messages", "completions"] == paths(fake_provider)

    fake_provider.reset()
    fake_provider.script(Step(drop_after=1, reply="a b c d"))
    with pytest.raises(lg.StreamInterrupted):
        pair.run()
    assert ["messages"] == paths(fake_provider)


# -- the cache above ---------------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_an_alternates_answer_is_never_cached_as_the_primarys(is_async: bool, fake_provider: FakeProvider) -> None:
    """Cache above fallback: openai's answer is returned, not stored; the primary's next answer is."""
    pair = Pair("async def" if is_async else "def", fake_provider, lambda alt: lambda f: lg.cache(lg.fallback(alt)(f)))
    fake_provider.script(Step(status=529), Step(reply="from openai"), Step(reply="from anthropic"))

    with capture_events("llmguard.cache") as events:
        assert "from openai" == pair.run()
        assert "from anthropic" == pair.run()  # not a hit: the alternate's answer was not kept
        assert "from anthropic" == pair.run()  # a hit: the primary's was
    assert ["messages", "completions", "messages"] == paths(fake_provider)
    assert ("llmguard.cache.skipped", "a fallback answered") in [(e.name, e.fields.get("reason")) for e in events]


# -- an alternate calling the decorated function ------------------------------------------


def test_an_alternate_calling_the_decorated_function_again_does_not_recurse(anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider) -> None:
    """DESIGN's `lambda q, **kw: ask(q, model=...)`: the inner call does not fall back again; it just runs."""

    @lg.fallback(lambda q, **kw: ask(q, model=HAIKU))
    def ask(q: str, model: str = SONNET) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=8, messages=[{"role": "user", "content": q}])

    fake_provider.script(Step(status=529), Step(reply="haiku"))
    assert "haiku" == text_of(ask("hi"))
    fake_provider.script(Step(status=529), Step(status=529))
    with pytest.raises(lg.AllFailed) as info:
        ask("hi")
    assert 2 == len(info.value.exceptions)
    assert [SONNET, HAIKU, SONNET, HAIKU] == models(fake_provider)


# -- configuration -----------------------------------------------------------------------


def test_bad_configuration_fails_at_decoration_naming_the_parameter() -> None:
    """A non-callable non-dict alternate, an override naming no parameter, bad on=, reject=, shapes."""

    def ask(q: str, model: str = SONNET) -> str:
        return q

    async def aask(q: str, model: str = SONNET) -> str:
        return q

    with pytest.raises(TypeError, match="alternate 1 must be a function"):
        lg.fallback(42)
    with pytest.raises(TypeError, match="needs at least one alternate"):
        lg.fallback()
    with pytest.raises(ValueError, match="alternate 2 overrides 'modle', which ask has no parameter for"):
        lg.fallback({"model": HAIKU}, {"modle": HAIKU})(ask)
    with pytest.raises(ValueError, match="alternate 1 is an empty dict"):
        lg.fallback({})
    with pytest.raises(TypeError, match=r"fallback\(on=\.\.\.\)"):
        lg.fallback({"model": HAIKU}, on="overloaded")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"fallback\(on=\.\.\.\) takes ErrorKinds"):
        lg.fallback({"model": HAIKU}, on=(lg.ErrorKind.OVERLOADED, "server"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"fallback\(reject=\.\.\.\)"):
        lg.fallback({"model": HAIKU}, reject="length")
    with pytest.raises(TypeError, match=r"fallback\(reject=\.\.\.\)"):
        lg.fallback({"model": HAIKU}, reject=lambda a, b, c: True)
    with pytest.raises(TypeError, match="alternate 1 \\(aask\\) is a async function; ask is a sync function"):
        lg.fallback(aask)(ask)
    # A function taking **kwargs takes any override.
    lg.fallback({"anything": 1})(lambda **kw: kw)


def test_describe_shows_the_targets() -> None:
    """lg.describe names the alternates and the settings."""

    def ask_openai(q: str) -> str:
        return q

    @lg.fallback(ask_openai, {"model": HAIKU}, default=None, breaker=False)
    def ask(q: str, model: str = SONNET) -> str:
        return q

    (info,) = lg.describe(ask)
    assert "fallback" == info.name
    assert ["ask_openai", f"model={HAIKU}"] == info.settings["alternates"]
    assert info.settings["breaker"] is False


def _chat_body(text: str, finish: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-cut",
        "object": "chat.completion",
        "created": 0,
        "model": MINI,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18},
    }
