"""`route`: the model is chosen per call before it is made, and the fake provider receives it.

Every test asserts the model the fake provider *received*: routing is right
when the request on the wire names the routed model.
"""

from __future__ import annotations

import asyncio

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anthropic
import openai
import pytest

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import llmguard as lg

from llmguard._fake_provider import FakeProvider, Step
from llmguard._route import RouteLayer
from llmguard.testing import FakeClock, capture_events


SONNET = "claude-sonnet-4-6"
HAIKU = "claude-haiku-4-5"
OPUS = "claude-opus-4-1"
TIERS = {"simple": HAIKU, "complex": SONNET}
SIMPLE = "hi there, thanks"
COMPLEX = "Write a Python function for this algorithm and explain why it is O(n log n), step by step."
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def received(fake: FakeProvider) -> list[str]:
    """The model of every request the fake provider received, in order."""
    return [r.body["model"] for r in fake.requests]


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


# -- every call shape, the model given by default, keyword or position ------------------

SHAPES = ["def", "async def", "def->stream", "async def->stream", "generator", "async generator", "method", "async method"]
GIVEN = ["default", "keyword", "positional"]


Calls = list[tuple[tuple[Any, ...], dict[str, Any]]]


def build(shape: str, guard: Any, sync: anthropic.Anthropic, aclient: anthropic.AsyncAnthropic) -> Callable[[Calls], list[str]]:
    """A routed function of *shape* taking ``(q, model=OPUS)``, and a caller making *calls* of it (async ones on one loop)."""

    def create(q: str, model: str, **kw: Any) -> Any:
        return sync.messages.create(model=model, max_tokens=64, messages=user(q), **kw)

    async def acreate(q: str, model: str, **kw: Any) -> Any:
        return await aclient.messages.create(model=model, max_tokens=64, messages=user(q), **kw)

    def events_text(events: Any) -> str:
        return "".join(e.delta.text for e in events if e.type == "content_block_delta")

    @guard
    def f(q: str, model: str = OPUS) -> Any:
        return create(q, model)

    @guard
    async def af(q: str, model: str = OPUS) -> Any:
        return await acreate(q, model)

    @guard
    def s(q: str, model: str = OPUS) -> Any:
        return create(q, model, stream=True)

    @guard
    async def aas(q: str, model: str = OPUS) -> Any:
        return await acreate(q, model, stream=True)

    @guard
    def gen(q: str, model: str = OPUS) -> Iterator[str]:
        for e in create(q, model, stream=True):
            if e.type == "content_block_delta":
                yield e.delta.text

    @guard
    async def agen(q: str, model: str = OPUS) -> AsyncIterator[str]:
        async for e in await acreate(q, model, stream=True):
            if e.type == "content_block_delta":
                yield e.delta.text

    class Service:
        @guard
        def ask(self, q: str, model: str = OPUS) -> Any:
            return create(q, model)

        @guard
        async def aask(self, q: str, model: str = OPUS) -> Any:
            return await acreate(q, model)

    svc = Service()

    def one(a: tuple[Any, ...], k: dict[str, Any]) -> str:
        if shape == "def":
            return str(f(*a, **k).content[0].text)
        if shape == "def->stream":
            return events_text(list(s(*a, **k)))
        if shape == "generator":
            return "".join(gen(*a, **k))
        return str(svc.ask(*a, **k).content[0].text)

    async def aone(a: tuple[Any, ...], k: dict[str, Any]) -> str:
        if shape == "async def":
            return str((await af(*a, **k)).content[0].text)
        if shape == "async def->stream":
            return events_text([e async for e in await aas(*a, **k)])
        if shape == "async generator":
            return "".join([t async for t in agen(*a, **k)])
        return str((await svc.aask(*a, **k)).content[0].text)

    def call(calls: Calls) -> list[str]:
        if not shape.startswith("async"):
            return [one(a, k) for a, k in calls]

        async def in_one_loop() -> list[str]:  # an async client lives on one loop
            return [await aone(a, k) for a, k in calls]

        return asyncio.run(in_one_loop())

    return call


@pytest.mark.parametrize("given", GIVEN)
@pytest.mark.parametrize("shape", SHAPES)
def test_the_scorer_sends_simple_requests_to_the_cheap_model_on_every_shape(
    shape: str,
    given: str,
    fake_provider: FakeProvider,
    clients: tuple[anthropic.Anthropic, anthropic.AsyncAnthropic],
) -> None:
    """A simple request reaches the provider as the cheap tier's model, a complex one as the strong one's, however the model is given."""
    call = build(shape, lg.route(TIERS), *clients)
    how = {"default": lambda q: ((q,), {}), "keyword": lambda q: ((q,), {"model": OPUS}), "positional": lambda q: ((q, OPUS), {})}

    texts = call([how[given](q) for q in (SIMPLE, COMPLEX)])

    assert ["Hello from the fake provider."] * 2 == texts
    assert [HAIKU, SONNET] == received(fake_provider)


def test_the_caller_sees_its_own_arguments_again_after_the_call(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """Routing changes the arguments of the inside only: the caller's keyword dict is not written into."""
    seen = []

    @lg.route(TIERS)
    def ask(q: str, model: str = OPUS) -> Any:
        seen.append(model)
        return anthropic_client.messages.create(model=model, max_tokens=8, messages=user(q))

    kwargs = {"model": OPUS}
    ask(SIMPLE, **kwargs)

    assert ({"model": OPUS}, [HAIKU], [HAIKU]) == (kwargs, seen, received(fake_provider))


# -- rules, classifier, scorer, default ---------------------------------------------------


def test_rules_pick_the_tier_by_keywords_length_tools_and_images(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """The first rule whose conditions all hold decides, before the classifier and the scorer."""

    @lg.route(
        {"small": HAIKU, "mid": SONNET, "big": OPUS},
        rules=[
            lg.RouteRule("big", keywords=["prove"]),
            lg.RouteRule("mid", tools=True),
            lg.RouteRule("big", min_input_tokens=500),
            lg.RouteRule("small", max_input_tokens=30),
        ],
        classifier=lambda request: "mid",
    )
    def ask(q: str, tools: list[Any] | None = None, model: str = SONNET) -> Any:
        extra = {"tools": tools} if tools else {}
        return anthropic_client.messages.create(model=model, max_tokens=8, messages=user(q), **extra)

    tool = {"name": "lookup", "description": "look up", "input_schema": {"type": "object", "properties": {}}}
    ask("Please PROVE it.")  # keyword, any case: big
    ask("hi", tools=[tool])  # tools: mid (before the short-input rule)
    ask("word " * 600)  # long: big
    ask("hi")  # short: small
    ask("a question of middling length that no rule takes, " * 3)  # the classifier: mid

    assert [OPUS, SONNET, OPUS, HAIKU, SONNET] == received(fake_provider)


def test_a_classifier_returning_a_tier_decides_and_none_lets_the_scorer_decide(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """The classifier sees the RouteRequest; None passes the decision on to the scorer."""
    requests: list[lg.RouteRequest] = []

    def classify(request: lg.RouteRequest) -> str | None:
        requests.append(request)
        return "complex" if request.arguments()["user"] == "vip" else None

    @lg.route(TIERS, classifier=classify)
    def ask(q: str, user: str, model: str = OPUS) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=8, messages=[{"role": "user", "content": q}])

    ask(SIMPLE, "vip")
    ask(SIMPLE, "anon")

    assert [SONNET, HAIKU] == received(fake_provider)
    # No argument named like an SDK input: the text is the call's string arguments (the model's left out).
    assert (SIMPLE + " vip", OPUS, False, False) == (requests[0].text, requests[0].model, requests[0].tools, requests[0].images)


def test_without_a_scorer_the_default_tier_is_used(fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic) -> None:
    """scorer=None and no rule or classifier answer: the default tier (the last when not given)."""

    def make(**options: Any) -> Any:
        @lg.route(TIERS, scorer=None, **options)
        def ask(q: str, model: str = OPUS) -> Any:
            return anthropic_client.messages.create(model=model, max_tokens=8, messages=user(q))

        return ask

    make()(SIMPLE)
    make(default="simple")(COMPLEX)

    assert [SONNET, HAIKU] == received(fake_provider)


def test_a_tier_of_none_keeps_the_callers_model_and_a_dict_sets_other_keywords(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """None keeps the caller's model (only simple requests move); a dict overrides each keyword it names."""

    @lg.route({"simple": {"model": HAIKU, "max_tokens": 7}, "rest": None})
    def ask(q: str, model: str = OPUS, max_tokens: int = 64) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=max_tokens, messages=user(q))

    ask(SIMPLE)
    ask(COMPLEX, model=SONNET)

    assert [(HAIKU, 7), (SONNET, 64)] == [(r.body["model"], r.body["max_tokens"]) for r in fake_provider.requests]


def test_the_default_scorer_is_documented_by_its_signals() -> None:
    """The scorer's value is the weighted sum of its signals; thresholds cut it into tiers."""
    scorer = lg.RouteScorer()
    layer = lg.route(TIERS)

    class Req:
        def __init__(self, text: str, tokens: int = 10, tools: bool = False) -> None:
            self.text, self.input_tokens, self.tools, self.images = text, tokens, tools, False

    simple = scorer(Req("hello, what is the capital of France?"))  # type: ignore[arg-type]
    code = scorer(Req("```python\ndef f(): pass\n``` fix this bug"))  # type: ignore[arg-type]
    long = scorer(Req("summarize", tokens=400))  # type: ignore[arg-type]
    tools = scorer(Req("look it up", tools=True))  # type: ignore[arg-type]

    assert (0.0, {"simple": 1.0}) == (simple.value, dict(simple.signals))
    assert 0.30 == pytest.approx(code.value)
    assert {"code": 1.0} == dict(code.signals)
    assert 0.10 - 0.05 * 0.6 == pytest.approx(long.value)  # length 1 x 0.10, one "simple" word (0.6)
    assert 0.10 == pytest.approx(tools.value)
    assert (0.15,) == layer.thresholds


# -- escalate-only capability checks ----------------------------------------------------------


def test_a_request_with_an_image_escalates_past_a_model_declared_without_images(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic, openai_client: openai.OpenAI
) -> None:
    """The scorer says simple, but the cheap model takes no images: the request goes up a tier (anthropic and openai blocks)."""
    route = lg.route(TIERS, capabilities={HAIKU: {"images": False}})

    @route
    def ask(messages: list[Any], model: str = OPUS) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=8, messages=messages)

    @lg.route({"simple": "gpt-4o-mini-no-vision", "complex": "gpt-4o"}, capabilities={"gpt-4o-mini-no-vision": {"images": False}})
    def chat(messages: list[Any], model: str = "gpt-4o") -> Any:
        return openai_client.chat.completions.create(model=model, messages=messages)

    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    ask([{"role": "user", "content": [image, {"type": "text", "text": "hi"}]}])
    ask(user("hi"))
    chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}, {"type": "text", "text": "hi"}]}])
    chat(user("hi"))

    assert [SONNET, HAIKU, "gpt-4o", "gpt-4o-mini-no-vision"] == received(fake_provider)


def test_a_long_request_escalates_past_a_context_window_from_genai_prices(
    fake_provider: FakeProvider, openai_client: openai.OpenAI
) -> None:
    """gpt-4o-mini's 128k window (genai-prices) cannot take ~200k worst-case tokens: the 1M-token model gets them."""
    layer = lg.route({"cheap": "gpt-4o-mini", "wide": "gpt-4.1-nano"}, rules=[lg.RouteRule("cheap")])

    @layer
    def chat(q: str, model: str = "gpt-4o") -> Any:
        return openai_client.chat.completions.create(model=model, messages=user(q))

    with lg.testing.capture_events("llmguard.route") as events:
        chat("word " * 120_000)  # 600 kB: ~200k tokens at the worst case
        chat("short")

    assert ["gpt-4.1-nano", "gpt-4o-mini"] == received(fake_provider)
    first = events[0].fields
    assert ("wide", "cheap") == (first["tier"], first["escalated_from"])
    assert "context window of 128000" in first["reason"]


def test_a_declared_context_window_wins_and_max_tokens_counts(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """A declared window is used instead of genai-prices'; the request's max_tokens is part of what it needs."""

    @lg.route(TIERS, capabilities={HAIKU: {"context": 1000}})
    def ask(q: str, max_tokens: int, model: str = OPUS) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=max_tokens, messages=user(q))

    ask("hi", 100)
    ask("hi", 999)  # the input's worst case (2 tokens: "hi" and "999") + 999 > 1000

    assert [HAIKU, SONNET] == received(fake_provider)


def test_escalation_never_goes_down_and_keeps_the_callers_model_when_no_tier_fits(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """A request chosen for the top tier stays there even if a cheaper one could take it; none fits: the caller's model."""

    @lg.route(TIERS, capabilities={HAIKU: {"images": False}, SONNET: {"images": False}})
    def ask(messages: list[Any], model: str = OPUS) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=8, messages=messages)

    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    with capture_events("llmguard.route") as events:
        ask([{"role": "user", "content": [image]}])
        ask(user(COMPLEX))

    assert [OPUS, SONNET] == received(fake_provider)
    assert "the caller's model kept" in events[0].fields["reason"]
    assert (None, "simple") == (events[0].fields["model"], events[0].fields["tier"])
    assert events[1].fields["escalated_from"] is None


# -- the decision on the record, the span and the event ---------------------------------------


def test_the_decision_is_on_the_record_the_span_and_the_event(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """record.route is the tier, record.extra["route"] the decision; the span has llmguard.route and the route event."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    records: list[lg.CallRecord] = []

    @lg.trace(tracer_provider=provider)
    @lg.route(TIERS)
    def ask(q: str, model: str = OPUS) -> Any:
        records.append(lg.current_call())  # type: ignore[arg-type]
        return anthropic_client.messages.create(model=model, max_tokens=8, messages=user(q))

    with capture_events("llmguard.route") as events:
        ask(COMPLEX)

    record = records[0]
    decision = record.extra["route"]
    assert ("complex", "complex", SONNET) == (record.route, decision.tier, decision.model)
    assert decision.reason.startswith("score 0.") and ">= 0.15" in decision.reason
    assert (OPUS, SONNET) == (record.request_model, record.attempts[0].model)
    (span,) = exporter.get_finished_spans()
    assert "complex" == dict(span.attributes or {})["llmguard.route"]
    (event,) = [e for e in span.events if e.name == "llmguard.route.chosen"]
    assert SONNET == dict(event.attributes or {})["llmguard.model"]
    assert "score" in dict(event.attributes or {})["llmguard.reason"]
    assert [("llmguard.route.chosen", "complex")] == [(e.name, e.fields["tier"]) for e in events]


async def test_the_decision_is_on_the_record_when_nobody_listens(
    fake_provider: FakeProvider, async_anthropic_client: anthropic.AsyncAnthropic
) -> None:
    """With no trace and no listener the decision is noted, and on the record when it is read later."""
    records: list[lg.CallRecord] = []

    @lg.route(TIERS)
    async def ask(q: str, model: str = OPUS) -> Any:
        records.append(lg.current_call())  # type: ignore[arg-type]
        return await async_anthropic_client.messages.create(model=model, max_tokens=8, messages=user(q))

    await ask(SIMPLE)

    assert ("simple", HAIKU, [HAIKU]) == (records[0].route, records[0].extra["route"].model, received(fake_provider))


# -- in a stack -------------------------------------------------------------------------------


def test_retry_below_route_retries_the_routed_model(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic, fake_clock: FakeClock
) -> None:
    """Each retry of a routed call asks for the routed model again."""
    fake_provider.script(Step(status=529), Step(status=429, headers={"retry-after": "1"}), Step())

    @lg.route(TIERS)
    @lg.retry(attempts=3)
    def ask(q: str, model: str = OPUS) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=8, messages=user(q))

    ask(SIMPLE)

    assert [HAIKU, HAIKU, HAIKU] == received(fake_provider)


def test_budget_below_route_reserves_and_charges_the_routed_model(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """Budget below route sees the routed model: it charges the cheap model's price."""

    @lg.route(TIERS)
    @lg.budget(usd=10.0, per=None)
    def ask(q: str, model: str = OPUS, max_tokens: int = 8) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=max_tokens, messages=user(q))

    ask(SIMPLE)

    spend = lg.budget_spend(ask)
    expected = lg.cost_of(lg.Usage(input_tokens=3, output_tokens=5), HAIKU)
    assert [HAIKU] == received(fake_provider)
    assert expected is not None
    assert expected == pytest.approx(spend.usd)


def test_cache_above_route_keys_the_request_and_never_crosses_tiers(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """Cache above route: a hit is the answer of the same request, hence of the same tier; a hit saves the routed model's price."""

    @lg.cache
    @lg.route(TIERS)
    def ask(q: str, model: str = OPUS) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=8, messages=user(q))

    answers = [ask(SIMPLE), ask(COMPLEX), ask(SIMPLE), ask(COMPLEX)]

    assert [HAIKU, SONNET, HAIKU, SONNET] == [a.model for a in answers]
    assert [HAIKU, SONNET] == received(fake_provider)
    info = lg.cache_info(ask)
    assert (2, 2) == (info.hits, info.misses)
    haiku = lg.cost_of(lg.usage_from(answers[0]), HAIKU)  # type: ignore[arg-type]
    sonnet = lg.cost_of(lg.usage_from(answers[1]), SONNET)  # type: ignore[arg-type]
    assert haiku is not None and sonnet is not None
    assert haiku + sonnet == pytest.approx(info.saved_usd)


def test_cache_below_route_keys_on_the_routed_model(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """Cache below route (not the canonical order) sees the routed arguments: a classifier flipping tiers misses."""
    tier = iter(["simple", "complex", "simple"])

    @lg.route(TIERS, classifier=lambda request: next(tier))
    @lg.cache
    def ask(q: str, model: str = OPUS) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=8, messages=user(q))

    assert [HAIKU, SONNET, HAIKU] == [ask("same").model for _ in range(3)]
    assert [HAIKU, SONNET] == received(fake_provider)


# -- bad configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "named"),
    [
        ({"tiers": {}}, ValueError, "route(tiers=...)"),
        ({"tiers": "claude-haiku-4-5"}, TypeError, "route(tiers=...)"),
        ({"tiers": {"a": 3}}, TypeError, "route(tiers=...)"),
        ({"rules": [lg.RouteRule("nope")]}, ValueError, "route(rules=...)"),
        ({"rules": ["simple"]}, TypeError, "route(rules=...)"),
        ({"default": "nope"}, ValueError, "route(default=...)"),
        ({"classifier": "simple"}, TypeError, "route(classifier=...)"),
        ({"scorer": 3}, TypeError, "route(scorer=...)"),
        ({"thresholds": [0.5, 0.6]}, ValueError, "route(thresholds=...)"),
        ({"thresholds": [float("nan")]}, ValueError, "route(thresholds=...)"),
        ({"thresholds": [1.5]}, ValueError, "route(thresholds=...)"),
        ({"tiers": {str(i): HAIKU for i in range(5)}}, ValueError, "route(thresholds=...)"),
        ({"param": "not a name"}, TypeError, "route(param=...)"),
        ({"capabilities": {HAIKU: {"vision": True}}}, ValueError, "route(capabilities=...)"),
        ({"capabilities": {HAIKU: {"context": -1}}}, ValueError, "route(capabilities=...)"),
        ({"capabilities": {HAIKU: {"images": "yes"}}}, TypeError, "route(capabilities=...)"),
    ],
)
def test_bad_configuration_fails_when_built_naming_the_parameter(options: dict[str, Any], error: type[Exception], named: str) -> None:
    """Unknown tiers, a non-callable classifier, bad thresholds or capabilities: an error naming the parameter."""
    tiers = options.pop("tiers", TIERS)
    with pytest.raises(error, match=named.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        lg.route(tiers, **options)


@pytest.mark.parametrize(
    ("options", "named"),
    [({"param": "engine"}, "route(param=...)"), ({"tiers": {"a": {"model": HAIKU, "temperature": 0}}}, "route(tiers=...)")],
)
def test_a_keyword_the_function_does_not_take_fails_at_decoration(options: dict[str, Any], named: str) -> None:
    """A model keyword (or tier keyword) the function has no parameter for fails when it is decorated, not on a call."""
    layer = lg.route(options.pop("tiers", TIERS), **options)

    def ask(q: str, model: str = OPUS) -> str:
        return q

    with pytest.raises(TypeError, match=named.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        layer(ask)

    def open_ended(q: str, **kwargs: Any) -> str:
        return q

    assert "hi" == layer(open_ended)("hi")  # **kwargs takes any keyword


def test_bad_rules_fail_when_built() -> None:
    """A RouteRule with a keyword string instead of a list, or negative bounds, fails naming the field."""
    with pytest.raises(TypeError, match=r"RouteRule\(keywords=\.\.\.\)"):
        lg.RouteRule("simple", keywords="prove")
    with pytest.raises(ValueError, match=r"RouteRule\(min_input_tokens=\.\.\.\)"):
        lg.RouteRule("simple", min_input_tokens=-1)
    with pytest.raises(ValueError, match=r"RouteScorer\(keywords=\.\.\.\)"):
        lg.RouteScorer(keywords={"nope": ["x"]})


def test_a_classifier_returning_an_unknown_tier_sends_nothing(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """A classifier's answer that is not a tier is an error naming classifier=, before any request."""

    @lg.route(TIERS, classifier=lambda request: "medium")
    def ask(q: str, model: str = OPUS) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=8, messages=user(q))

    with pytest.raises(ValueError, match=r"route\(classifier=\.\.\.\) returned 'medium'"):
        ask("hi")

    assert [] == fake_provider.requests


def test_describe_lists_the_route_and_its_settings() -> None:
    """lg.describe shows the tiers, rules, thresholds and default."""

    @lg.route(TIERS, rules=[lg.RouteRule("complex", tools=True)])
    def ask(q: str, model: str = OPUS) -> str:
        return q

    (info,) = lg.describe(ask)
    assert "route" == info.name
    assert {"simple": {"model": HAIKU}, "complex": {"model": SONNET}} == info.settings["tiers"]
    assert (["complex: tools=True"], (0.15,), "complex") == (info.settings["rules"], info.settings["thresholds"], info.settings["default"])
    assert isinstance(lg.route(TIERS), RouteLayer)


# -- calibration ------------------------------------------------------------------------------------

WORKLOAD = [
    "Hi! What is the capital of Australia?",
    "Translate 'good morning' into Spanish.",
    "Thanks! Who is the author of Dune?",
    "When did the Berlin Wall fall?",
    "Prove that the square root of 2 is irrational.",
    "Write a Python function that merges intervals and explain why the algorithm is O(n log n).",
    "Design a distributed rate limiter and compare the consistency trade-offs, step by step.",
    "Refactor this SQL query and fix the bug in its JSON schema handling, then explain the latency.",
]


def test_calibrated_thresholds_send_the_asked_share_to_each_tier(
    fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """RouteScorer.calibrate cuts a sample's scores so each tier gets its share; route with those thresholds sends them so."""
    scorer = lg.RouteScorer()
    scores = sorted(scorer(lg.RouteRequest(q)).value for q in WORKLOAD)
    assert len(set(scores[-3:])) == 3  # distinct at the top: the cuts can be exact

    two = scorer.calibrate(WORKLOAD, [0.75, 0.25])
    three = scorer.calibrate(WORKLOAD, [0.5, 0.25, 0.25])

    assert (scores[6],) == two
    assert (scores[4], scores[6]) == three

    @lg.route({"simple": HAIKU, "complex": SONNET}, thresholds=two)
    def ask(q: str, model: str = OPUS) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=8, messages=user(q))

    for q in WORKLOAD:
        ask(q)
    assert {HAIKU: 6, SONNET: 2} == {m: received(fake_provider).count(m) for m in (HAIKU, SONNET)}


@pytest.mark.parametrize(
    ("samples", "shares", "named"),
    [([], [0.5, 0.5], "samples"), (WORKLOAD, [1.0], "shares"), (WORKLOAD, [0.5, 0.4], "shares"), (WORKLOAD, [1.5, -0.5], "shares")],
)
def test_calibrate_refuses_bad_samples_and_shares(samples: list[str], shares: list[float], named: str) -> None:
    """No samples, one tier, shares not summing to 1 or out of [0, 1]: a ValueError naming the parameter."""
    with pytest.raises(ValueError, match=rf"RouteScorer\.calibrate\({named}=\.\.\.\)"):
        lg.RouteScorer().calibrate(samples, shares)


def test_a_google_genai_image_part_escalates(fake_provider: FakeProvider) -> None:
    """google-genai contents with an inline image part (bare or in a Content) skip a model declared without images."""
    import base64
    import re

    from google import genai
    from google.genai import types as genai_types

    client = genai.Client(api_key="x", http_options=genai_types.HttpOptions(base_url=fake_provider.google_base_url))

    @lg.route({"flash": "gemini-2.5-flash-lite", "pro": "gemini-2.5-pro"}, capabilities={"gemini-2.5-flash-lite": {"images": False}})
    def gen(contents: Any, model: str = "gemini-2.5-pro") -> Any:
        return client.models.generate_content(model=model, contents=contents)

    image = genai_types.Part.from_bytes(data=base64.b64decode(PNG), mime_type="image/png")
    gen([image, "what is this?"])
    gen([genai_types.Content(role="user", parts=[image, genai_types.Part(text="hi")])])
    gen("hi")

    models = [re.search(r"models/([^:]+):", r.path).group(1) for r in fake_provider.requests]  # type: ignore[union-attr]
    assert ["gemini-2.5-pro", "gemini-2.5-pro", "gemini-2.5-flash-lite"] == models


@pytest.mark.parametrize("given", ["default", "keyword", "positional"])
def test_fallback_below_route_still_applies_its_alternates(
    given: str, fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic, fake_clock: FakeClock
) -> None:
    """A route picks haiku; its two 529s exhaust retry; fallback's override sends opus — model given any way."""

    @lg.route(TIERS)
    @lg.fallback({"model": OPUS}, breaker=False)
    @lg.retry(attempts=2)
    def ask(q: str, model: str = SONNET) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=8, messages=[{"role": "user", "content": q}])

    fake_provider.script(Step(status=529), Step(status=529), Step())
    if given == "default":
        answer = ask(SIMPLE)
    elif given == "keyword":
        answer = ask(SIMPLE, model=SONNET)
    else:
        answer = ask(SIMPLE, SONNET)

    assert [HAIKU, HAIKU, OPUS] == [r.body["model"] for r in fake_provider.requests]
    assert OPUS == answer.model
