"""The one runner: guards compose into one, the hooks mean what they say, the facts the same.

The facts of a call are the same on every call shape whatever the stack around it.

These replace the old lane-vs-general-path parity tests: there is one path now, so the
question is whether it gives the same record alone and in stacks of 1 to 5 guards, in
several orders, on the seven call shapes.
"""

from __future__ import annotations

import asyncio
import functools

from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import pytest

from probe import Probe, ReadsBothProbe, ReadsLateProbe
from shapes import SHAPES, build

import llmguard as lg

from llmguard._call import Call
from llmguard._fake_provider import FakeProvider, Step
from llmguard._runner import Answer, Guard, Run, layers_of, runner_of, wrap


USAGE = {"input_tokens": 21, "output_tokens": 5}


class Log(Guard):
    """Writes each hook it runs to a shared log."""

    name = "log"

    def __init__(self, label: str, log: list[str]) -> None:
        self.label = label
        self.log = log

    def enter(self, call: Call) -> str:
        self.log.append(f"enter {self.label}")
        return self.label

    def leave(self, call: Call, state: str, result: Any) -> Any:
        assert state == self.label
        self.log.append(f"leave {self.label}")
        return result

    def fail(self, call: Call, state: str, exc: BaseException) -> None:
        self.log.append(f"fail {self.label}")


# -- composition -------------------------------------------------------------------


def test_stacked_decorators_compose_into_one_runner_with_the_original_function() -> None:
    """`@a @b @c def f` is one wrapper over f, one runner with guards a, b, c, a outermost."""
    log: list[str] = []
    a, b, c = Log("a", log), Log("b", log), Log("c", log)

    def f(q: str) -> str:
        log.append("f")
        return q

    guarded = a(b(c(f)))
    runner = runner_of(guarded)

    assert runner is not None
    assert (a, b, c) == runner.guards
    assert guarded.__wrapped__ is f  # type: ignore[attr-defined]
    assert "x" == guarded("x")
    assert ["enter a", "enter b", "enter c", "f", "leave c", "leave b", "leave a"] == log


def test_a_foreign_decorator_between_guards_keeps_both_runners_and_describe_sees_through_it() -> None:
    """A user's decorator between two guards: two runners, and `describe` lists both guards."""
    log: list[str] = []
    outer, inner = Log("outer", log), Log("inner", log)

    def passthrough(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        return wrapper

    @outer
    @passthrough
    @inner
    def f() -> str:
        return "ok"

    assert "ok" == f()
    assert [outer, inner] == layers_of(f)
    assert ["enter outer", "enter inner", "leave inner", "leave outer"] == log


def test_a_function_copying_a_guarded_functions_attributes_is_not_taken_for_guarded() -> None:
    """functools.wraps copies ``__llmguard_runner__``; only llmguard's own wrappers count."""
    guarded = Log("g", [])(lambda: 1)

    @functools.wraps(guarded)
    def impostor() -> int:
        return 2

    assert runner_of(impostor) is None
    assert runner_of(guarded) is not None


# -- the hooks -----------------------------------------------------------------------


class Answers(Guard):
    """Answers "known" itself."""

    def enter(self, call: Call) -> Answer | None:
        return Answer("answered") if call.args == ("known",) else None


class Reroutes(Guard):
    """Sends the inside another model (as route will)."""

    def enter(self, call: Call) -> Run:
        return Run(kwargs={**call.kwargs, "model": "small"}, state="routed")

    def leave(self, call: Call, state: str, result: Any) -> Any:
        return (state, call.kwargs.get("model"), result)


class FallsBack(Guard):
    """On an error, runs the inside again once with another model (as fallback will)."""

    def fail(self, call: Call, state: int | None, exc: BaseException) -> Run | None:
        if state:
            return None
        return Run(kwargs={**call.kwargs, "model": "alternate"}, state=1)


def test_enter_may_answer_without_running_the_inside() -> None:
    """Answer from enter is the result; nothing below runs and no attempt is made."""
    ran: list[str] = []
    guarded = Answers()(lambda q: ran.append(q) or q)

    assert ("answered", "other") == (guarded("known"), guarded("other"))
    assert ["other"] == ran


def test_enter_may_run_the_inside_with_other_arguments_for_the_inside_only() -> None:
    """Run(kwargs=) from enter: the function and the guards below see them; the guard's own leave sees the caller's."""
    seen: list[str] = []
    probe = Probe()

    @Reroutes()
    @probe
    def ask(model: str = "big") -> str:
        seen.append(model)
        return "ok"

    assert ("routed", "big", "ok") == ask(model="big")
    assert ["small"] == seen
    assert "small" == probe.record.attempts[0].model
    assert "big" == probe.record.request_model


async def test_fail_may_run_again_with_other_arguments_recording_each_attempt() -> None:
    """Run(kwargs=) from fail: a second attempt with the other model; each attempt on the record."""
    probe = Probe()

    @probe
    @FallsBack()
    async def ask(model: str = "primary") -> str:
        if model == "primary":
            raise ConnectionError("down")
        return model

    assert "alternate" == await ask(model="primary")
    assert ["primary", "alternate"] == [a.model for a in probe.record.attempts]
    assert [lg.Outcome.ERROR, lg.Outcome.OK] == [a.outcome for a in probe.record.attempts]


def test_fail_returning_none_re_raises_the_original_error() -> None:
    """A fail hook that lets go: the caller gets the very exception the function raised."""
    log: list[str] = []
    boom = ValueError("boom")

    @Log("a", log)
    def f() -> None:
        raise boom

    with pytest.raises(ValueError) as info:
        f()

    assert info.value is boom
    assert ["enter a", "fail a"] == log


class Substitutes(Guard):
    """On an error, runs the inside once more with another function in place of the decorated one."""

    def __init__(self, other: Callable[..., Any]) -> None:
        self.other = other

    def fail(self, call: Call, state: int | None, exc: BaseException) -> Run | None:
        return None if state else Run(fn=self.other, state=1)


class Defaults(Guard):
    """Answers the call itself when the inside failed."""

    def fail(self, call: Call, state: Any, exc: BaseException) -> Answer | None:
        return Answer("default") if isinstance(exc, ConnectionError) else None


class Refuses(Guard):
    """Refuses a first answer from leave: the inside runs again with another model."""

    def leave(self, call: Call, state: int | None, result: Any) -> Any:
        return Run(kwargs={**call.kwargs, "model": "better"}, state=1) if not state else result


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_run_fn_calls_another_function_inside_every_guard_below(is_async: bool) -> None:
    """Run(fn=) from fail: the guards below run again and the innermost step calls the other function."""
    log: list[str] = []
    probe = Probe()

    def other(q: str, model: str = "m2") -> str:
        return f"other {q} {model}"

    async def aother(q: str, model: str = "m2") -> str:
        return other(q, model)

    def primary(q: str, model: str = "m1") -> str:
        raise ConnectionError("down")

    async def aprimary(q: str, model: str = "m1") -> str:
        raise ConnectionError("down")

    guarded = probe(Substitutes(aother if is_async else other)(Log("below", log)(aprimary if is_async else primary)))
    result = asyncio.run(guarded("hi")) if is_async else guarded("hi")

    assert "other hi m2" == result
    assert ["enter below", "fail below", "enter below", "leave below"] == log
    assert [lg.Outcome.ERROR, lg.Outcome.OK] == [a.outcome for a in probe.record.attempts]
    # The replacement lasts for that run only: the next call starts with the decorated function again.
    log.clear()
    assert "other again m2" == (asyncio.run(guarded("again")) if is_async else guarded("again"))
    assert ["enter below", "fail below", "enter below", "leave below"] == log


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_fail_may_answer_the_call_and_leave_may_run_the_inside_again(is_async: bool) -> None:
    """Answer from fail is the result; Run from leave runs the inside again, like fail's."""
    seen: list[str] = []

    def down() -> str:
        raise ConnectionError("down")

    async def adown() -> str:
        raise ConnectionError("down")

    def answer(model: str = "first") -> str:
        seen.append(model)
        return model

    async def aanswer(model: str = "first") -> str:
        return answer(model)

    defaulted = Defaults()(adown if is_async else down)
    refused = Refuses()(aanswer if is_async else answer)
    if is_async:
        assert "default" == asyncio.run(defaulted())
        assert "better" == asyncio.run(refused())
    else:
        assert "default" == defaulted()
        assert "better" == refused()
    assert ["first", "better"] == seen


async def test_async_hooks_are_awaited_and_sync_ones_used_where_there_is_no_async_variant() -> None:
    """aenter/afail run for an async def; the same guard's sync hooks for a def."""
    log: list[str] = []

    class Io(Guard):
        def enter(self, call: Call) -> None:
            log.append("enter")

        async def aenter(self, call: Call) -> None:
            await asyncio.sleep(0)
            log.append("aenter")

        def leave(self, call: Call, state: None, result: Any) -> Any:
            log.append("leave")
            return result

    io = Io()
    assert 1 == io(lambda: 1)()

    @io
    async def af() -> int:
        return 2

    assert 2 == await af()
    assert ["enter", "leave", "aenter", "leave"] == log


def test_via_runs_the_inside_for_the_runner() -> None:
    """A guard's via(call, state, inside) decides how the inside runs (sync timeout's worker)."""
    import threading

    threads: list[str] = []

    class InThread(Guard):
        def via(self, call: Call, state: Any, inside: Callable[[], Any]) -> Any:
            out: list[Any] = []
            t = threading.Thread(target=lambda: out.append(inside()), name="worker")
            t.start()
            t.join()
            return out[0]

    @InThread()
    def f() -> str:
        threads.append(threading.current_thread().name)
        return "done"

    assert "done" == f()
    assert ["worker"] == threads


def test_fail_sees_cancellation_and_interrupts_so_it_can_release() -> None:
    """KeyboardInterrupt from the inside reaches fail (a guard releases what enter took) and propagates."""
    log: list[str] = []

    @Log("a", log)
    def f() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        f()
    assert ["enter a", "fail a"] == log


def test_an_error_gone_past_keeps_no_frames() -> None:
    """An error a guard ran again past stays on the record without its traceback."""
    probe = Probe()
    calls = iter([ConnectionError("first"), None])

    @probe
    @FallsBack()
    def f(model: str = "primary") -> str:
        err = next(calls)
        if err is not None:
            raise err
        return "ok"

    assert "ok" == f()
    first = probe.record.attempts[0].error
    assert isinstance(first, ConnectionError)
    assert first.__traceback__ is None


def test_decorating_twice_with_the_same_guard_object_runs_it_twice() -> None:
    """The same guard object at two positions is two positions: each runs its hooks."""
    log: list[str] = []
    g = Log("g", log)

    @g
    @g
    def f() -> int:
        return 1

    assert 1 == f()
    assert ["enter g", "enter g", "leave g", "leave g"] == log


def test_wrap_rejects_a_non_callable_naming_the_guard() -> None:
    with pytest.raises(TypeError, match=r"llmguard\.log\(\) can only decorate a callable"):
        wrap(Log("x", []), 42)  # type: ignore[arg-type]


# -- the same facts on every shape, alone and in stacks -------------------------------

# Each stack: guards outermost first; "P" is where the probe reading the record sits.
STACKS: dict[str, Callable[[Guard], list[Guard]]] = {
    "probe alone": lambda p: [p],
    "probe over retry": lambda p: [p, lg.retry(attempts=2)],
    "retry over probe": lambda p: [lg.retry(attempts=2), p],
    "trace, retry, probe, timeout": lambda p: [lg.trace(), lg.retry(attempts=2), p, lg.timeout(30)],
    "probe, trace, retry, budget, timeout": lambda p: [
        p,
        lg.trace(),
        lg.retry(attempts=2),
        lg.budget(usd=1000, max_output=64, model="claude-sonnet-4-6"),
        lg.timeout(30),
    ],
    "timeout, budget, retry, trace, probe": lambda p: [
        lg.timeout(30),
        lg.budget(usd=1000, max_output=64, model="claude-sonnet-4-6"),
        lg.retry(attempts=2),
        lg.trace(),
        p,
    ],
}


def _decorate(guards: list[Guard]) -> Callable[[Any], Any]:
    def decorate(fn: Any) -> Any:
        for g in reversed(guards):
            fn = g(fn)
        return fn

    return decorate


def _facts(record: lg.CallRecord) -> tuple[Any, ...]:
    return (
        record.attempt_count,
        record.usage,
        record.model,
        record.outcome,
        record.stream,
        [a.outcome for a in record.attempts],
        record.ended_at is not None,
    )


@pytest.mark.parametrize("stack", list(STACKS))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("probe_kind", [Probe, ReadsLateProbe, ReadsBothProbe])
def test_one_path_records_the_same_facts_on_every_shape_in_every_stack(
    shape: str,
    stack: str,
    probe_kind: type[Probe],
    fake_provider: FakeProvider,
    anthropic_client: anthropic.Anthropic,
    async_anthropic_client: anthropic.AsyncAnthropic,
) -> None:
    """A 429 then a success: 2 attempts (error, ok), the usage and model served, ended OK.

    Read before, after, or both, by a probe anywhere in a stack of 1 to 5 guards.
    """
    probe = probe_kind()
    guards = STACKS[stack](probe)
    retried = any(isinstance(g, type(lg.retry())) for g in guards)
    if retried:
        fake_provider.script(Step(status=429), Step(reply="hi there", usage=USAGE))
    else:
        fake_provider.script(Step(reply="hi there", usage=USAGE))
    thunk = build(shape, _decorate(guards), anthropic_client, async_anthropic_client)

    with lg.testing.fake_clock():
        assert "hi there" == thunk()

    record = probe.record
    attempts = [lg.Outcome.ERROR, lg.Outcome.OK] if retried else [lg.Outcome.OK]
    streaming = shape not in ("def", "async def", "method")
    facts = _facts(record)
    # A generator function yields text, not the SDK's events, and names no model: its usage
    # and model are what the wire read of the SDK's stream (#14), as for every other shape.
    assert (len(attempts), lg.Usage(21, 5), "claude-sonnet-4-6", lg.Outcome.OK, streaming, attempts, True) == facts


def test_nested_guarded_calls_get_their_own_record_with_the_outer_as_parent() -> None:
    outer, inner = Probe(), Probe()

    @inner
    def child() -> str:
        return "c"

    @outer
    @lg.retry
    def parent() -> Iterator[str]:
        yield child()

    assert ["c"] == list(parent())
    assert inner.record.parent is outer.record


# -- no cyclic garbage on the hot path --------------------------------------------------

CYCLE_STACKS: dict[str, Callable[[Any], Any]] = {
    "retry": lg.retry,
    "timeout": lg.timeout(5),
    "budget": lg.budget(usd=100),
    "trace": lg.trace,
    "cache": lg.cache,
    "trace, retry, budget, timeout": lambda f: lg.trace(lg.retry(lg.budget(usd=100)(lg.timeout(5)(f)))),
}


@pytest.mark.parametrize("stack", list(CYCLE_STACKS))
def test_a_guarded_call_leaves_no_cyclic_garbage(stack: str) -> None:
    """Every object a call makes is freed by reference counting.

    A cycle per call (a slot pointing back at its call, say) costs the cyclic
    collector more than the guard itself.
    """
    import gc

    def ask(q: str, model: str = "claude-sonnet-4-6", max_tokens: int = 10) -> str:
        return q

    async def aask(q: str, model: str = "claude-sonnet-4-6", max_tokens: int = 10) -> str:
        return q

    f, af = CYCLE_STACKS[stack](ask), CYCLE_STACKS[stack](aask)

    async def many() -> None:
        for _ in range(100):
            await af("q")

    loop = asyncio.new_event_loop()
    rounds = []
    try:
        f("q")
        loop.run_until_complete(af("q"))
        # A cycle per call leaves garbage in every round; another thread (a server
        # or worker left by an earlier test) may leave some in one: up to 3 rounds.
        for _ in range(3):
            gc.collect()
            gc.disable()
            try:
                for _ in range(100):
                    f("q")
                sync_garbage = gc.collect()
                loop.run_until_complete(many())
                async_garbage = gc.collect()
            finally:
                gc.enable()
            rounds.append((sync_garbage, async_garbage))
            if rounds[-1] == (0, 0):
                break
    finally:
        loop.close()

    assert (0, 0) == rounds[-1], rounds
