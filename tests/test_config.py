"""Every number of every guard is checked when the guard is built.

The contract (bad configuration fails at decoration): a configuration
is either accepted, and then works on a call, or refused when the guard is
built (decorator or context manager) with a `ValueError` or `TypeError` whose
message names the parameter; never later, never another exception. The spec
below is the contract for each number, written independently of the code.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

import anthropic
import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llmguard as lg

from llmguard import _clock
from llmguard._fake_provider import FakeProvider, Step
from llmguard.testing import fake_clock


MODEL = "claude-haiku-4-5"
MESSAGES: Any = [{"role": "user", "content": "hello there"}]


@dataclass(frozen=True)
class Spec:
    """What one numeric parameter accepts: a finite number (an int if *integer*) above *minimum*."""

    integer: bool = False
    minimum: float = 0.0
    exclusive: bool = True  # minimum itself refused
    maximum: float | None = None
    optional: bool = False  # None accepted
    duration: bool = False  # a timedelta accepted too
    words: tuple[str, ...] = ()  # strings accepted besides numbers (any other string is a bad value)

    def judge(self, value: object) -> type[Exception] | None:
        """None if *value* is valid, else the error type it must be refused with."""
        if value is None:
            return None if self.optional else TypeError
        if self.words and isinstance(value, str):
            return None if value in self.words else ValueError
        if self.duration and isinstance(value, dt.timedelta):
            value = value.total_seconds()
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
            return TypeError
        try:
            number = float(value)
        except OverflowError:  # a huge int: not a finite float
            number = math.inf
        if self.integer and isinstance(value, int) and number == math.inf:
            number = 1e308  # a huge int count is still a valid count
        if not math.isfinite(number):
            return ValueError
        if number < self.minimum or (self.exclusive and number == self.minimum):
            return ValueError
        if self.maximum is not None and number > self.maximum:
            return ValueError
        return None


SECONDS = Spec(duration=True)
OPTIONAL_SECONDS = Spec(duration=True, optional=True)
USD = Spec(maximum=9_000_000, optional=True)
COUNT = Spec(integer=True, maximum=10**15, optional=True)

# guard -> parameter -> spec: every numeric parameter of every guard.
SPECS: dict[str, dict[str, Spec]] = {
    "timeout": {"total": OPTIONAL_SECONDS, "first_token": OPTIONAL_SECONDS, "idle": OPTIONAL_SECONDS},
    "retry": {
        "attempts": Spec(integer=True, minimum=1, exclusive=False),
        "initial": SECONDS,
        "max_delay": SECONDS,
        "multiplier": Spec(minimum=1, exclusive=False),
        "max_elapsed": OPTIONAL_SECONDS,
        "max_retry_after": SECONDS,
        "budget_ratio": Spec(maximum=1, optional=True),
    },
    "budget": {
        "usd": USD,
        "tokens": COUNT,
        "max_call_usd": USD,
        "max_output": COUNT,
        "reservation_ttl": Spec(),
        "unknown_cost": Spec(maximum=9_000_000, words=("reject", "allow")),
        "alert_at": Spec(),  # each fraction (the parameter takes a list of them)
    },
    "cache": {"ttl": Spec(optional=True), "maxsize": Spec(integer=True, minimum=1, exclusive=False)},
    "Semantic": {"threshold": Spec(maximum=1)},
    "trace": {"max_content_chars": Spec(integer=True, exclusive=False)},
}

# Values worth trying for any number: edges, non-finite, huge, wrong types.
ANY_VALUE = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 0, 0.0, -0.0, 1, 1.0, 0.5, -1, 1e-300, 1e10, 1e300, 10**400]),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.booleans(),
    st.none(),
    st.sampled_from(["1", "", "allow", b"1", [1], dt.timedelta(seconds=1), dt.timedelta(0), dt.timedelta(seconds=-1)]),
)


def _valid_value(spec: Spec, low: float | None = None, high: float | None = None) -> st.SearchStrategy[Any]:
    """Values *spec* accepts (from *low*, to *high*, if given), over its whole range, huge ones included."""
    low = spec.minimum if low is None else low
    high = min(high or 1e300, spec.maximum or 1e300)
    if spec.integer:
        values: st.SearchStrategy[Any] = st.integers(
            min_value=int(low) + (1 if spec.exclusive else 0), max_value=10**12 if spec.maximum is None else int(high)
        )
    else:
        values = st.floats(
            min_value=low, max_value=high, exclude_min=spec.exclusive, allow_nan=False, allow_infinity=False
        )
    if spec.optional:
        values = st.one_of(st.none(), values)
    return values


def _keyed_fn() -> Callable[..., str]:
    def ask(messages: Any, max_tokens: int = 16, model: str = MODEL) -> str:
        return f"answer to {len(messages)} messages"

    return ask


def _build(guard: str, config: dict[str, Any]) -> Callable[[], Any] | None:
    """Build the guard (decorator and, where it is one, context manager); a thunk calling the decorated function."""
    fn = _keyed_fn()
    if guard == "Semantic":
        lg.Semantic(embed=lambda text: [1.0, float(len(text))], **config)
        return None
    if guard == "budget":
        kwargs = dict(config)
        if "alert_at" in kwargs:
            kwargs["alert_at"] = [kwargs["alert_at"]]
        layer: Any = lg.budget(**kwargs)
        if layer.has_limits:
            with lg.budget(**kwargs):
                pass
    elif guard == "trace":
        layer = lg.trace(**config)
    else:
        layer = getattr(lg, guard)(**config)
        if guard == "timeout":
            with layer:
                pass
    guarded = layer(fn)
    return lambda: guarded(MESSAGES)


@st.composite
def _any_configuration(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    guard = draw(st.sampled_from(sorted(SPECS)))
    names = draw(st.lists(st.sampled_from(sorted(SPECS[guard])), min_size=1, unique=True))
    # Mostly valid values, so that one bad value among good ones is common.
    config = {n: draw(st.one_of(_valid_value(SPECS[guard][n]), ANY_VALUE)) for n in names}
    return guard, config


@settings(max_examples=400, deadline=None)
@given(_any_configuration())
def test_every_configuration_is_accepted_or_refused_when_built_naming_the_parameter(
    guard_config: tuple[str, dict[str, Any]],
) -> None:
    """Accepted (and then a call works), or a ValueError/TypeError naming a parameter; nothing else, never later."""
    guard, config = guard_config
    bad = {n: err for n, v in config.items() if (err := SPECS[guard][n].judge(v)) is not None}
    refused: ValueError | TypeError | None = None
    try:
        call = _build(guard, config)
    except (ValueError, TypeError) as exc:
        refused = exc
    if refused is not None:
        message = str(refused)
        assert any(f"{n}=" in message for n in config), message
        if len(bad) == 1:
            ((name, error),) = bad.items()
            assert f"{guard}({name}=...)" in message, message
            assert isinstance(refused, error), (type(refused), message)
        return
    assert not bad, f"{guard}({config}) was accepted although {sorted(bad)} are invalid"
    if call is not None:
        # A refusal, or a limit (a tiny timeout) running out, is the configuration doing its job.
        with fake_clock(), contextlib.suppress(lg.BudgetExceeded, lg.GuardTimeout):
            assert call().startswith("answer")


# -- an accepted configuration works on a real call ------------------------------------


@pytest.fixture
def client(fake_provider: FakeProvider) -> Iterator[anthropic.Anthropic]:
    sync = anthropic.Anthropic(base_url=fake_provider.anthropic_base_url, api_key="k", max_retries=0)
    yield sync
    sync.close()


def _valid_configuration(
    guard: str, *, skip: tuple[str, ...] = (), low: float | None = None, high: float | None = None
) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {}, optional={n: _valid_value(s, low, high) for n, s in SPECS[guard].items() if n not in skip}
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    timeout=_valid_configuration("timeout", low=5.0).filter(lambda c: any(v is not None for v in c.values())),
    # Waits the fake clock can add to (past ~1e15 s, adding a 5 s deadline to "now" rounds it away).
    retry=_valid_configuration("retry", high=1e9).filter(lambda c: c.get("max_delay", 30.0) >= c.get("initial", 0.5)),
    budget=_valid_configuration("budget", skip=("usd", "tokens", "max_call_usd", "max_output", "unknown_cost")),
    usd=st.floats(min_value=0.01, max_value=9_000_000),
    tokens=st.integers(min_value=1_000, max_value=10**15),
    cache=_valid_configuration("cache"),
    trace=_valid_configuration("trace"),
)
def test_an_accepted_configuration_works_on_a_call(
    fake_provider: FakeProvider,
    client: anthropic.Anthropic,
    timeout: dict[str, Any],
    retry: dict[str, Any],
    budget: dict[str, Any],
    usd: float,
    tokens: int,
    cache: dict[str, Any],
    trace: dict[str, Any],
) -> None:
    """The whole stack, each guard configured anywhere in its valid range, answers a real SDK call.

    The first attempt is rate limited (retry-after: 0): retry either tries
    again or, when its limits (max_elapsed, the deadline) say the wait would
    not fit, gives up with the original error and a note saying why.
    """
    if "alert_at" in budget:
        budget["alert_at"] = [budget["alert_at"]]

    @lg.trace(**trace)
    @lg.cache(**cache)
    @lg.retry(**retry)
    @lg.budget(usd=usd, tokens=tokens, **budget)
    @lg.timeout(**timeout)
    def ask(messages: Any, max_tokens: int = 16, model: str = MODEL) -> Any:
        return client.messages.create(model=model, max_tokens=max_tokens, messages=messages)

    fake_provider.reset()
    fake_provider.script(
        Step(status=429, headers={"retry-after": "0"}), Step(reply="configured"), Step(reply="configured")
    )
    with fake_clock():
        gave_up: anthropic.RateLimitError | None = None
        try:
            answer = ask(MESSAGES)
        except anthropic.RateLimitError as exc:
            gave_up = exc
        if gave_up is not None:
            assert any("llmguard.retry: gave up" in note for note in getattr(gave_up, "__notes__", ())), gave_up
            return
        assert "configured" == answer.content[0].text
        assert "configured" == ask(MESSAGES).content[0].text  # and again (from the cache, or a new request)


def _fail_every_attempt(layer: Any) -> None:
    for attempt in layer.attempts():
        with attempt:
            raise ConnectionError("down")


def test_backoff_past_the_largest_float_waits_max_delay() -> None:
    """Many attempts (multiplier ** n past a float's range) or a huge multiplier: each wait is max_delay at most.

    Before: ``initial * multiplier ** (n - 1)`` raised OverflowError from inside
    the retry loop once n passed ~1024 (multiplier 2), or at once for a huge multiplier.
    """
    for attempts, multiplier in ((1100, 2.0), (4, 1e300)):
        layer = lg.retry(attempts=attempts, multiplier=multiplier, initial=1e-3, max_delay=5.0, jitter=None, max_elapsed=None)
        with fake_clock() as clock, pytest.raises(ConnectionError, match="down"):
            _fail_every_attempt(layer)
        assert attempts - 1 == len(clock.sleeps)
        assert 5.0 == max(clock.sleeps)


def test_a_huge_wait_sleeps_as_long_as_the_runtime_can(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sleep longer than `time.sleep` accepts (retry(initial=1e300)) is cut to the longest wait, not an OverflowError."""
    slept: list[float] = []
    monkeypatch.setattr(_clock.time, "sleep", slept.append)
    _clock.Clock().sleep(1e300)
    _clock.Clock().sleep(2.5)
    assert [_clock.MAX_WAIT, 2.5] == slept


# -- budget(key=...) and estimate= against the function's signature ---------------------


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (lambda user: user, r"it has no parameter for \['max_tokens', 'messages', 'model'\]"),
        (lambda user, **_: user, r"it needs \['user'\], which the function has no parameter for"),
        (lambda messages, /, **_: messages, r"positional-only parameters \['messages'\]"),
    ],
)
def test_a_key_that_cannot_take_the_arguments_is_refused_at_decoration(key: Any, reason: str) -> None:
    """``key`` is called with the call's arguments by name: one that could never bind fails when decorated.

    Before: accepted, and every call failed with a bare TypeError from inside the lambda.
    """
    with pytest.raises(TypeError, match=r"budget\(key=\.\.\.\) cannot take the arguments of .*ask: .*" + reason):

        @lg.budget(usd=1, per="day", key=key)
        def ask(messages: Any, max_tokens: int = 16, model: str = MODEL) -> Any:
            return messages


def test_an_estimate_that_cannot_take_the_arguments_is_refused_at_decoration() -> None:
    """``estimate`` is called as ``key`` is, and checked the same way."""
    with pytest.raises(TypeError, match=r"budget\(estimate=\.\.\.\) cannot take the arguments of .*ask"):

        @lg.budget(usd=1, estimate=lambda prompt: (10, 10))
        def ask(messages: Any, max_tokens: int = 16, model: str = MODEL) -> Any:
            return messages


def test_keys_that_can_take_the_arguments_are_accepted_and_used(client: anthropic.Anthropic) -> None:
    """Keys naming what they need and taking the rest with ``**_``, a method's (self is not passed), and extra keywords."""
    by_name = lg.budget(usd=1, per="day", key=lambda user, **_: user)
    by_kwargs = lg.budget(usd=1, per="day", key=lambda **kw: kw["user"])
    method_budget = lg.budget(usd=1, per="day", key=lambda user, messages, model="m", max_tokens=0: user)

    @by_name
    def ask(user: str, messages: Any, max_tokens: int = 16, model: str = MODEL) -> Any:
        return client.messages.create(model=model, max_tokens=max_tokens, messages=messages)

    @by_kwargs
    def ask_extra(messages: Any, max_tokens: int = 16, model: str = MODEL, **extra: Any) -> Any:
        return client.messages.create(model=model, max_tokens=max_tokens, messages=messages)

    class Service:
        @method_budget
        def ask(self, user: str, messages: Any, max_tokens: int = 16, model: str = MODEL) -> Any:
            return client.messages.create(model=model, max_tokens=max_tokens, messages=messages)

    ask("ann", MESSAGES)
    ask_extra(MESSAGES, user="bob")
    Service().ask("cat", MESSAGES)
    for budget, key in ((by_name, "ann"), (by_kwargs, "bob"), (method_budget, "cat")):
        assert 1 == budget.spend(key).calls
        assert 0 == budget.spend("someone else").calls


def test_a_scope_key_that_cannot_take_the_arguments_names_budget_key(client: anthropic.Anthropic) -> None:
    """A ``with lg.budget(key=...)`` meets its functions only when called: the error then names ``budget(key=...)``."""

    @lg.budget
    def ask(messages: Any, max_tokens: int = 16, model: str = MODEL) -> Any:
        return client.messages.create(model=model, max_tokens=max_tokens, messages=messages)

    with lg.budget(usd=1, per="day", key=lambda user: user, name="scope-key"), pytest.raises(
        TypeError, match=r"budget\(key=\.\.\.\) cannot take the arguments of .*ask: .*does not bind"
    ) as info:
        ask(MESSAGES)
    assert isinstance(info.value.__cause__, TypeError)


def test_a_type_error_inside_a_valid_key_is_the_key_s_own(client: anthropic.Anthropic) -> None:
    """A key that binds but fails inside raises its own TypeError, not one about its signature."""

    def broken(user: str, **_: Any) -> str:
        return user + 1  # type: ignore[operator]

    @lg.budget(usd=1, per="day", key=broken)
    def ask(user: str, messages: Any, max_tokens: int = 16, model: str = MODEL) -> Any:
        return client.messages.create(model=model, max_tokens=max_tokens, messages=messages)

    with pytest.raises(TypeError, match=r"can only concatenate|unsupported operand") as info:
        ask("ann", MESSAGES)
    assert "budget(key=" not in str(info.value)
    with lg.budget(usd=1, per="day", key=broken, name="scope-broken"), pytest.raises(
        TypeError, match=r"can only concatenate|unsupported operand"
    ):
        ask("ann", MESSAGES)


@pytest.mark.parametrize("seconds", [1e17, 1e300])
def test_huge_lifetimes_work_on_redis(redis_url: str, seconds: float) -> None:
    """cache(ttl=) and budget(reservation_ttl=) past what Redis counts in milliseconds still store and reserve.

    Before: the cache's entries were never stored (SET PX refused) and every
    budgeted call was refused as "the budget store is unavailable".
    """
    made: list[str] = []
    tag = f"{seconds:g}"

    @lg.cache(ttl=seconds, store=redis_url)
    def cached(q: str) -> str:
        made.append(q)
        return q * 2

    q = f"q{tag}"
    assert [q * 2, q * 2] == [cached(q), cached(q)]
    assert [q] == made  # the second answer came from Redis

    @lg.budget(tokens=1000, per="day", reservation_ttl=seconds, store=redis_url, name=f"huge-{tag}", max_output=10)
    def budgeted(q: str) -> str:
        return q

    assert "y" == budgeted("y")
    assert 1 == lg.budget_spend(budgeted).calls


@pytest.mark.parametrize(
    ("verdict", "error"),
    [
        (math.nan, ValueError), (math.inf, ValueError), (-1.0, ValueError), ("soon", TypeError), ([1], TypeError),
        (Decimal("NaN"), ValueError), (Decimal("sNaN"), ValueError), (Decimal("-Infinity"), ValueError),
        (Fraction(-1, 2), ValueError), (Fraction(10**400), ValueError), (1j, TypeError),
    ],
)
def test_a_predicate_asking_for_an_impossible_wait_is_an_error_naming_on(verdict: object, error: type[Exception]) -> None:
    """``on=`` may return a wait; one that is not finite seconds >= 0 is refused naming ``retry(on=...)``, the failure as its cause.

    Before: NaN retried at once (and turned a fake clock's time into NaN), inf slept for decades.
    """
    layer = lg.retry(attempts=3, on=lambda exc: verdict)
    with fake_clock() as clock, pytest.raises(error, match=r"retry\(on=\.\.\.\) returned .* for ConnectionError") as info:
        _fail_every_attempt(layer)
    assert isinstance(info.value.__cause__, ConnectionError)
    assert [] == clock.sleeps


def test_a_predicate_wait_may_be_any_real_number(fake_provider: FakeProvider, client: anthropic.Anthropic) -> None:
    """A ``Decimal``, a ``Fraction`` (and a numpy number, where numpy is installed) is a wait, as a float.

    Before: a TypeError naming ``retry(on=...)``, though ``float()`` takes them all.
    """
    given: list[object] = [Decimal("0.25"), Fraction(3, 2)]
    with contextlib.suppress(ImportError):
        import numpy as np  # noqa: PLC0415 - optional: not a dependency

        given += [np.float32(0.5), np.int64(2)]
    waits = iter(given)

    @lg.retry(attempts=len(given) + 1, on=lambda exc: next(waits))
    def ask() -> Any:
        return client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    fake_provider.script(*[Step(status=429)] * len(given), Step(reply="after the waits"))
    with fake_clock() as clock:
        assert "after the waits" == ask().content[0].text
    assert [0.25, 1.5, 0.5, 2.0][: len(given)] == clock.sleeps
    assert all(type(s) is float for s in clock.sleeps)


def test_a_predicate_wait_is_used_as_given(fake_provider: FakeProvider, client: anthropic.Anthropic) -> None:
    """Valid waits from ``on=``: 0, a number and a timedelta, each slept exactly, the call retried."""
    waits = iter([0, 1.5, dt.timedelta(seconds=2)])

    @lg.retry(attempts=4, on=lambda exc: next(waits))
    def ask() -> Any:
        return client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    fake_provider.script(*[Step(status=429)] * 3, Step(reply="after three waits"))
    with fake_clock() as clock:
        assert "after three waits" == ask().content[0].text
    assert [0.0, 1.5, 2.0] == clock.sleeps
