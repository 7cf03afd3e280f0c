"""Classification follows the chain: a provider error wrapped by another library or by user code.

The wrapping exception is what the caller sees; its kind, status and retry
advice come from the provider error underneath (its
explicit ``__cause__``; an implicit ``__context__`` does not count), for retry and for the call record.
"""

from __future__ import annotations

import asyncio

from types import ModuleType
from typing import Any

import anthropic
import openai
import pydantic
import pytest

from conftest import json_mode
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from probe import Probe

import llmguard as lg

from llmguard import providers
from llmguard._fake_provider import FakeProvider, Step
from llmguard.testing import FakeClock


MODEL = "claude-sonnet-4-6"
MESSAGES: Any = [{"role": "user", "content": "hello there"}]


class User(pydantic.BaseModel):
    """What the instructor calls extract."""

    name: str


def api_requests(fake: FakeProvider) -> int:
    return sum(1 for r in fake.requests if r.path.startswith("/v1/"))


def provider_error(client: anthropic.Anthropic, fake: FakeProvider, step: Step) -> anthropic.APIStatusError:
    """A real SDK error: what the anthropic client raises for *step*."""
    fake.script(step)
    try:
        client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    except anthropic.APIStatusError as exc:
        return exc
    raise AssertionError("the fake provider did not fail")


@pytest.fixture
def rate_limited(anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider) -> anthropic.APIStatusError:
    return provider_error(anthropic_client, fake_provider, Step(status=429, headers={"retry-after": "7"}))


@pytest.fixture
def bad_request(anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider) -> anthropic.APIStatusError:
    return provider_error(anthropic_client, fake_provider, Step(status=400))


def wrapped(exc: BaseException, outer: BaseException) -> BaseException:
    """*outer* raised ``from`` *exc*, as the interpreter links them."""
    try:
        raise outer from exc  # noqa: TRY301
    except BaseException as caught:  # noqa: BLE001
        return caught


def raised_while_handling(exc: BaseException, outer: BaseException) -> BaseException:
    """*outer* raised inside ``except`` for *exc* (an implicit ``__context__``)."""
    try:
        try:
            raise exc  # noqa: TRY301
        except BaseException:  # noqa: BLE001
            raise outer  # noqa: B904 - the implicit context is the point
    except BaseException as caught:  # noqa: BLE001
        return caught


# ------------------------------------------------------------------ the rule


def test_an_explicit_cause_gives_the_provider_errors_kind_status_and_advice(rate_limited: Any) -> None:
    info = providers.classify(wrapped(rate_limited, RuntimeError("x")))

    assert lg.ErrorKind.RATE_LIMITED == info.kind
    assert 429 == info.status
    assert 7.0 == info.retry_after
    assert "anthropic" == info.provider
    assert "x" == info.message  # the message is the error the caller sees


def test_only_an_explicit_cause_counts_not_an_implicit_context_nor_from_none(rate_limited: Any) -> None:
    implicit = raised_while_handling(rate_limited, ValueError("while handling"))
    suppressed = wrapped(rate_limited, ValueError("unrelated"))
    suppressed.__cause__ = None
    suppressed.__suppress_context__ = True  # what `raise ... from None` leaves

    assert lg.ErrorKind.UNKNOWN == providers.classify(implicit).kind
    assert lg.ErrorKind.UNKNOWN == providers.classify(suppressed).kind


def test_an_error_with_a_kind_of_its_own_is_never_reclassified(rate_limited: Any, bad_request: Any) -> None:
    refusal = wrapped(rate_limited, lg.BudgetExceeded("over"))
    timeout = wrapped(bad_request, TimeoutError("slow"))
    cancelled = raised_while_handling(rate_limited, asyncio.CancelledError())
    wrapped_refusal = wrapped(lg.BudgetExceeded("over"), RuntimeError("wrapper"))

    assert lg.ErrorKind.GUARD == providers.classify(refusal).kind
    assert lg.ErrorKind.TIMEOUT == providers.classify(timeout).kind
    assert lg.ErrorKind.UNKNOWN == providers.classify(cancelled).kind
    assert lg.ErrorKind.GUARD == providers.classify(wrapped_refusal).kind  # a refusal stays one


def test_the_walk_is_bounded_and_cycle_safe(rate_limited: Any) -> None:
    near: BaseException = rate_limited
    for i in range(3):
        near = wrapped(near, RuntimeError(f"layer {i}"))
    far: BaseException = rate_limited
    for i in range(20):
        far = wrapped(far, RuntimeError(f"layer {i}"))
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__cause__, b.__cause__ = b, a

    assert lg.ErrorKind.RATE_LIMITED == providers.classify(near).kind
    assert lg.ErrorKind.UNKNOWN == providers.classify(far).kind
    assert lg.ErrorKind.UNKNOWN == providers.classify(a).kind


def test_an_exception_group_is_its_members_kind_when_they_agree(rate_limited: Any, bad_request: Any) -> None:
    single = ExceptionGroup("task group", [rate_limited])
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [wrapped(rate_limited, RuntimeError("w"))])])
    mixed = ExceptionGroup("task group", [rate_limited, bad_request])

    assert lg.ErrorKind.RATE_LIMITED == providers.classify(single).kind
    assert lg.ErrorKind.RATE_LIMITED == providers.classify(nested).kind
    assert lg.ErrorKind.UNKNOWN == providers.classify(mixed).kind


# -------------------------------------------------------- retry and the record


def test_a_runtime_error_raised_from_a_429_is_retried(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    probe = Probe()

    @probe
    @lg.retry
    def ask() -> str:
        try:
            message = anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
        except anthropic.APIStatusError as exc:
            raise RuntimeError("x") from exc
        return message.content[0].text  # type: ignore[union-attr]

    fake_provider.script(Step(status=429, headers={"retry-after": "2"}), Step(reply="ok now"))

    assert "ok now" == ask()
    assert 2 == api_requests(fake_provider)
    assert 1 == len(fake_clock.sleeps)
    assert fake_clock.sleeps[0] >= 2.0  # the server's retry-after, read underneath
    assert [lg.ErrorKind.RATE_LIMITED, None] == [a.error_kind for a in probe.record.attempts]


def test_a_runtime_error_raised_from_a_400_is_not_retried_and_stays_what_the_caller_sees(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    probe = Probe()

    @probe
    @lg.retry
    def ask() -> Any:
        try:
            return anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
        except anthropic.APIStatusError as exc:
            raise RuntimeError("x") from exc

    fake_provider.script(Step(status=400), Step(reply="never"))

    with pytest.raises(RuntimeError, match="^x$"):
        ask()
    assert 1 == api_requests(fake_provider)
    assert lg.ErrorKind.BAD_REQUEST == probe.record.error_kind


class LLMCallFailed(Exception):
    """A user's own error, raised ``from`` the SDK's."""


# (SDK, async?): a call through the real SDK that turns its APIStatusError into LLMCallFailed.
WRAPPED_SDKS = [("anthropic", False), ("anthropic", True), ("openai", False), ("openai", True)]


def wrapping_call(sdk: str, is_async: bool, fake: FakeProvider) -> Any:
    """The guarded function's body: one request through the real *sdk*, its errors wrapped ``from``."""
    if sdk == "anthropic":
        if is_async:
            aclient = anthropic.AsyncAnthropic(base_url=fake.anthropic_base_url, api_key="k", max_retries=0)

            async def acall() -> Any:
                try:
                    return await aclient.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
                except anthropic.APIStatusError as exc:
                    raise LLMCallFailed("the model call failed") from exc

            return acall
        client = anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key="k", max_retries=0)

        def call() -> Any:
            try:
                return client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
            except anthropic.APIStatusError as exc:
                raise LLMCallFailed("the model call failed") from exc

        return call
    if is_async:
        aoclient = openai.AsyncOpenAI(base_url=fake.openai_base_url, api_key="k", max_retries=0)

        async def aocall() -> Any:
            try:
                return await aoclient.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            except openai.APIStatusError as exc:
                raise LLMCallFailed("the model call failed") from exc

        return aocall
    oclient = openai.OpenAI(base_url=fake.openai_base_url, api_key="k", max_retries=0)

    def ocall() -> Any:
        try:
            return oclient.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        except openai.APIStatusError as exc:
            raise LLMCallFailed("the model call failed") from exc

    return ocall


async def outcome(fn: Any) -> Any:
    """What calling the guarded *fn* gives (awaited when it is async); its error, raised."""
    result = fn()
    return await result if asyncio.iscoroutine(result) else result


@pytest.mark.parametrize(("sdk", "is_async"), WRAPPED_SDKS, ids=[f"{s}-{'async' if a else 'sync'}" for s, a in WRAPPED_SDKS])
async def test_every_sdks_429_under_a_users_error_is_retried_after_its_retry_after(
    sdk: str, is_async: bool, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    probe = Probe()
    ask = probe(lg.retry(attempts=3)(wrapping_call(sdk, is_async, fake_provider)))
    fake_provider.script(Step(status=429, headers={"retry-after": "5"}), Step(reply="ok now"))

    await outcome(ask)

    assert 2 == api_requests(fake_provider)
    assert 1 == len(fake_clock.sleeps)
    assert fake_clock.sleeps[0] >= 5.0  # the server's retry-after, read under the user's error
    assert [lg.ErrorKind.RATE_LIMITED, None] == [a.error_kind for a in probe.record.attempts]


@pytest.mark.parametrize(("sdk", "is_async"), WRAPPED_SDKS, ids=[f"{s}-{'async' if a else 'sync'}" for s, a in WRAPPED_SDKS])
async def test_every_sdks_400_under_a_users_error_is_not_retried(
    sdk: str, is_async: bool, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    probe = Probe()
    ask = probe(lg.retry(attempts=3)(wrapping_call(sdk, is_async, fake_provider)))
    fake_provider.script(Step(status=400), Step(reply="never"))

    with pytest.raises(LLMCallFailed):
        await outcome(ask)

    assert 1 == api_requests(fake_provider)
    assert [] == fake_clock.sleeps
    assert lg.ErrorKind.BAD_REQUEST == probe.record.error_kind


def test_a_generators_429_under_a_users_error_is_retried_before_its_first_chunk(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    @lg.retry
    def ask() -> Any:
        try:
            stream = anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, stream=True)
        except anthropic.APIStatusError as exc:
            raise LLMCallFailed("the model call failed") from exc
        for event in stream:
            if event.type == "content_block_delta":
                yield event.delta.text  # type: ignore[union-attr]

    fake_provider.script(Step(status=429, headers={"retry-after": "3"}), Step(reply="ok now"))

    assert "ok now" == "".join(ask())
    assert 2 == api_requests(fake_provider)
    assert [3.0] == fake_clock.sleeps


async def test_an_async_generators_429_under_a_users_error_is_retried_before_its_first_chunk(
    async_anthropic_client: anthropic.AsyncAnthropic, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    @lg.retry
    async def ask() -> Any:
        try:
            stream = await async_anthropic_client.messages.create(
                model=MODEL, max_tokens=64, messages=MESSAGES, stream=True
            )
        except anthropic.APIStatusError as exc:
            raise LLMCallFailed("the model call failed") from exc
        async for event in stream:
            if event.type == "content_block_delta":
                yield event.delta.text  # type: ignore[union-attr]

    fake_provider.script(Step(status=429, headers={"retry-after": "3"}), Step(reply="ok now"))

    assert "ok now" == "".join([text async for text in ask()])
    assert 2 == api_requests(fake_provider)
    assert [3.0] == fake_clock.sleeps


def test_the_span_keeps_the_outer_error_type_and_gives_the_kind_underneath(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    @lg.trace(tracer_provider=provider)
    def ask() -> Any:
        try:
            return anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
        except anthropic.APIStatusError as exc:
            raise RuntimeError("x") from exc

    fake_provider.script(Step(status=429))
    with pytest.raises(RuntimeError):
        ask()

    [span] = exporter.get_finished_spans()
    attrs = dict(span.attributes or {})
    assert ("RuntimeError", "rate_limited") == (attrs["error.type"], attrs["llmguard.error.kind"])


# ------------------------------------------------------------- real instructor


# Instructor's own retries: older releases (1.7, say) retried any error, a 429 too, at once; newer
# ones only replies that fail validation. One attempt leaves the request's failures to llmguard.
ONE_TRY = 1


@pytest.fixture
def structured(instructor: ModuleType, anthropic_client: anthropic.Anthropic) -> Any:
    return json_mode(instructor, anthropic_client)


@pytest.fixture
def async_structured(instructor: ModuleType, fake_provider: FakeProvider) -> Any:
    client = anthropic.AsyncAnthropic(base_url=fake_provider.anthropic_base_url, api_key="k", max_retries=0)
    return json_mode(instructor, client)


def test_instructor_wraps_the_429_it_does_not_retry(
    instructor: ModuleType, structured: Any, fake_provider: FakeProvider
) -> None:
    """The premise: instructor raises its own exception, the 429 underneath; we classify through it."""
    fake_provider.script(Step(status=429, headers={"retry-after": "0"}))

    with pytest.raises(Exception) as caught:  # noqa: PT011
        structured.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, response_model=User, max_retries=ONE_TRY)

    assert "InstructorRetryException" == type(caught.value).__name__
    info = providers.classify(caught.value)
    assert (lg.ErrorKind.RATE_LIMITED, 429, 0.0) == (info.kind, info.status, info.retry_after)


def test_an_instructor_call_whose_first_request_gets_429_is_retried(
    structured: Any, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    probe = Probe()

    @probe
    @lg.retry
    def extract() -> User:
        return structured.messages.create(  # type: ignore[no-any-return]
            model=MODEL, max_tokens=64, messages=MESSAGES, response_model=User, max_retries=ONE_TRY
        )

    fake_provider.script(Step(status=429, headers={"retry-after": "0"}), Step(reply='{"name": "Ada"}'))

    assert "Ada" == extract().name
    assert 2 == api_requests(fake_provider)
    assert [lg.ErrorKind.RATE_LIMITED, None] == [a.error_kind for a in probe.record.attempts]


async def test_an_async_instructor_call_whose_first_request_gets_429_is_retried(
    async_structured: Any, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    @lg.retry
    async def extract() -> User:
        return await async_structured.messages.create(  # type: ignore[no-any-return]
            model=MODEL, max_tokens=64, messages=MESSAGES, response_model=User, max_retries=ONE_TRY
        )

    fake_provider.script(Step(status=429, headers={"retry-after": "0"}), Step(reply='{"name": "Ada"}'))

    assert "Ada" == (await extract()).name
    assert 2 == api_requests(fake_provider)


def test_an_instructor_call_with_a_400_underneath_is_not_retried(
    instructor: ModuleType, structured: Any, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    probe = Probe()

    @probe
    @lg.retry
    def extract() -> User:
        return structured.messages.create(  # type: ignore[no-any-return]
            model=MODEL, max_tokens=64, messages=MESSAGES, response_model=User, max_retries=ONE_TRY
        )

    fake_provider.script(Step(status=400), Step(reply='{"name": "never"}'))

    with pytest.raises(Exception) as caught:  # noqa: PT011
        extract()
    assert "InstructorRetryException" == type(caught.value).__name__  # what the caller sees
    assert 1 == api_requests(fake_provider)
    assert [] == fake_clock.sleeps
    assert lg.ErrorKind.BAD_REQUEST == probe.record.error_kind


def test_a_users_own_error_raised_while_handling_a_429_is_not_retried(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    # The user turns a 429 into their own error, on purpose, inside the except
    # block (no ``from``): Python records the 429 only as the context the new
    # error happened *during*, not its cause. tenacity's and stamina's ``on=``
    # read the raised error's own type; retrying here re-sends a request the
    # user's code decided to give up on (and hides a bug in an except block
    # behind the server's retry-after).
    probe = Probe()

    @probe
    @lg.retry
    def ask() -> Any:
        try:
            return anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
        except anthropic.RateLimitError:
            raise ValueError("this user's quota is used up")  # noqa: B904

    fake_provider.script(Step(status=429, headers={"retry-after": "2"}), Step(reply="never"))

    with pytest.raises(ValueError, match="quota is used up"):
        ask()
    assert 1 == api_requests(fake_provider)
    assert [] == fake_clock.sleeps


def test_an_error_of_a_call_made_while_the_caller_handles_a_429_is_not_that_429(
    anthropic_client: anthropic.Anthropic, fake_provider: FakeProvider, fake_clock: FakeClock
) -> None:
    # A fallback made in the caller's ``except`` block: Python chains the
    # caller's 429 as the implicit context of *any* error raised inside the
    # guarded call, related or not. The function's own ValueError is not a
    # rate limit, and is not retried with the other call's retry-after.
    attempts = []

    @lg.retry
    def parse(text: str) -> int:
        attempts.append(text)
        return int(text)

    fake_provider.script(Step(status=429, headers={"retry-after": "30"}))
    with pytest.raises(ValueError, match="invalid literal"):  # noqa: PT012 - the fallback runs in the handler
        try:
            anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
        except anthropic.RateLimitError:
            parse("not a number")

    assert ["not a number"] == attempts
    assert [] == fake_clock.sleeps
