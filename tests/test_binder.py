"""One argument binder per guarded function: every guard reads the same arguments, on every shape and stack.

A method's first parameter is the instance because the function is a method,
whatever the parameter is called; it is never one of the call's arguments
(key=, cache keys, trace attributes, budget's reading).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import pytest

from shapes import METHOD_SHAPES, MODEL, build_method

import llmguard as lg


def _budget(key: Callable[..., Any]) -> Any:
    return lg.budget(usd=10.0, per="day", model=MODEL, max_output=64, key=key)


STACKS: dict[str, Callable[[Callable[..., Any]], Callable[[Any], Any]]] = {
    "budget alone": _budget,
    "retry over budget": lambda key: lambda f: lg.retry(_budget(key)(f)),
    "budget over trace": lambda key: lambda f: _budget(key)(lg.trace(f)),
    "retry, budget, timeout": lambda key: lambda f: lg.retry(_budget(key)(lg.timeout(30)(f))),
}


@pytest.mark.parametrize("stack", list(STACKS))
@pytest.mark.parametrize("shape", METHOD_SHAPES)
def test_budget_key_gets_a_methods_arguments_by_name_without_the_instance(
    shape: str, stack: str, anthropic_client: anthropic.Anthropic, async_anthropic_client: anthropic.AsyncAnthropic
) -> None:
    """budget(key=...) on ``def ask(this, q, user)``: the arguments by name, ``this`` left out, on every shape and stack."""
    seen: list[dict[str, Any]] = []

    def key(**arguments: Any) -> str:
        seen.append(arguments)
        return str(arguments["user"])

    service, call = build_method(shape, STACKS[stack](key), anthropic_client, async_anthropic_client)
    svc = service()
    assert all(call([(svc, "hello there", "alice"), (svc, "again", "bob")]))

    assert [{"q": "hello there", "user": "alice"}, {"q": "again", "user": "bob"}] == seen
    assert 1 == lg.budget_spend(service.ask, key="alice").calls
    assert 1 == lg.budget_spend(service.ask, key="bob").calls


@pytest.mark.parametrize("shape", METHOD_SHAPES)
def test_cache_keys_a_method_by_its_arguments_not_its_instance(
    shape: str, anthropic_client: anthropic.Anthropic, async_anthropic_client: anthropic.AsyncAnthropic
) -> None:
    """@lg.cache on ``def ask(this, q, user)``: two instances asking the same share one entry (as with ``self``)."""
    service, call = build_method(shape, lg.cache, anthropic_client, async_anthropic_client)

    first, second = call([(service(), "hello there", "alice"), (service(), "hello there", "alice")])

    assert first == second
    assert (1, 1) == (lg.cache_info(service.ask).hits, lg.cache_info(service.ask).misses)


def _recording_budget(seen: list[dict[str, Any]]) -> Any:
    def key(**arguments: Any) -> str:
        seen.append(arguments)
        return "k"

    return lg.budget(usd=10.0, per="day", model=MODEL, max_output=64, key=key)


@pytest.mark.parametrize("shape", ["def", "generator"])
def test_a_method_called_through_its_class_has_the_same_instance_and_arguments(
    shape: str, anthropic_client: anthropic.Anthropic, async_anthropic_client: anthropic.AsyncAnthropic
) -> None:
    """``Service.ask(svc, q, user)`` reads as ``svc.ask(q, user)``: the instance is not an argument."""
    seen: list[dict[str, Any]] = []
    service, _ = build_method(shape, _recording_budget(seen), anthropic_client, async_anthropic_client)

    result = service.ask(service(), "hello there", "alice")
    if shape == "generator":
        "".join(result)

    assert [{"q": "hello there", "user": "alice"}] == seen


@pytest.mark.parametrize("order", ["guard over staticmethod", "staticmethod over guard"])
def test_a_static_method_has_no_instance(order: str) -> None:
    """A static method's first argument is an argument, whichever way round the decorators are written."""
    seen: list[dict[str, Any]] = []
    guard = _recording_budget(seen)

    if order == "guard over staticmethod":

        class Service:
            @guard
            @staticmethod
            def ask(q: str, user: str) -> str:
                return q + user

    else:

        class Service:  # type: ignore[no-redef]
            @staticmethod
            @guard
            def ask(q: str, user: str) -> str:
                return q + user

    assert "hialice" == Service.ask("hi", "alice")
    assert "hibob" == Service().ask("hi", "bob")
    assert [{"q": "hi", "user": "alice"}, {"q": "hi", "user": "bob"}] == seen


def test_a_classmethods_class_is_not_an_argument_whatever_it_is_named() -> None:
    """``def make(klass, q)`` under @classmethod: the class is the instance, on the class and a subclass."""
    seen: list[dict[str, Any]] = []

    class Service:
        @classmethod
        @_recording_budget(seen)
        def make(klass, q: str) -> str:  # noqa: N804
            return klass.__name__ + q

    class Sub(Service):
        pass

    assert "Serviceq" == Service.make("q")
    assert "Subq" == Sub().make("q")
    assert [{"q": "q"}, {"q": "q"}] == seen


def test_a_module_level_function_has_no_instance_whatever_its_first_parameter_is_called() -> None:
    """Only a function defined in a class body is a method: a first parameter named ``self`` elsewhere is an argument."""
    seen: list[dict[str, Any]] = []

    @_recording_budget(seen)
    def handle(self: str, q: str) -> str:  # noqa: ANN001
        return self + q

    assert "ab" == handle("a", "b")
    assert [{"self": "a", "q": "b"}] == seen


def test_a_key_taking_only_a_methods_arguments_is_accepted_whatever_the_instance_is_named(
    anthropic_client: anthropic.Anthropic, async_anthropic_client: anthropic.AsyncAnthropic
) -> None:
    """budget(key=lambda q, user: user) fits ``def ask(this, q, user)``: the instance is never passed to key=."""
    guard = lg.budget(usd=10.0, per="day", model=MODEL, max_output=64, key=lambda q, user: user)  # noqa: ARG005
    service, call = build_method("def", guard, anthropic_client, async_anthropic_client)

    assert all(call([(service(), "hello there", "alice")]))
    assert 1 == lg.budget_spend(service.ask, key="alice").calls


def test_cache_key_for_a_method_takes_the_arguments_after_the_instance(
    anthropic_client: anthropic.Anthropic, async_anthropic_client: anthropic.AsyncAnthropic
) -> None:
    """``key_for(q, user)`` on a method is the key its call ``svc.ask(q, user)`` is stored under."""
    from llmguard._cache import _layer_of  # noqa: PLC0415

    service, call = build_method("def", lg.cache, anthropic_client, async_anthropic_client)
    call([(service(), "hello there", "alice")])
    layer = _layer_of(service.ask)

    key = layer.key_for("hello there", "alice")
    assert key is not None
    assert layer.store.get(key) is not None
    assert key == layer.key_for("hello there", user="alice")


@pytest.mark.parametrize("shape", METHOD_SHAPES)
def test_a_method_of_a_class_whose_module_was_rewritten_is_still_a_method(
    shape: str, anthropic_client: anthropic.Anthropic, async_anthropic_client: anthropic.AsyncAnthropic
) -> None:
    """``Service.__module__ = "mypkg"`` (a package showing its public path, as numpy's set_module or trio do): still a method.

    The function keeps the module it was written in; the class says another.
    Before: the instance was an argument, so key= got ``this=`` and every call
    raised TypeError, and a cache raised on every call (an instance cannot be keyed).
    """
    seen: list[dict[str, Any]] = []
    service, call = build_method(shape, lambda f: lg.cache(_recording_budget(seen)(f)), anthropic_client, async_anthropic_client)
    service.__module__ = "mypkg"

    first, second = call([(service(), "hello there", "alice"), (service(), "hello there", "alice")])

    assert first == second
    assert [{"q": "hello there", "user": "alice"}] == seen
    assert (1, 1) == (lg.cache_info(service.ask).hits, lg.cache_info(service.ask).misses)


class _ComparedByName(type):  # noqa: PLW1641 - unhashable on purpose
    """A metaclass with ``__eq__`` and so no ``__hash__``: its classes are unhashable."""

    def __eq__(cls, other: object) -> bool:
        return isinstance(other, type) and cls.__qualname__ == other.__qualname__


def test_a_method_of_a_class_that_cannot_be_hashed_is_called(anthropic_client: anthropic.Anthropic) -> None:
    """The binder remembers classes by hash: an unhashable class is worked out each time, not a TypeError on every call."""
    seen: list[dict[str, Any]] = []

    class Service(metaclass=_ComparedByName):
        @_recording_budget(seen)
        @lg.trace
        def ask(this, q: str, user: str) -> Any:  # noqa: N805
            return anthropic_client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": q}])

        @classmethod
        @lg.trace
        def make(klass, q: str) -> str:  # noqa: N804
            return f"{klass.__name__}: {q}"

    assert Service().ask("hello there", "alice").content
    assert "Service: hi" == Service.make("hi")
    assert [{"q": "hello there", "user": "alice"}] == seen
