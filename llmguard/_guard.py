"""`guard`: the recommended stack, in the canonical order, from keyword arguments.

``@lg.guard(retry=True, budget={"usd": 5.0, "per": "day"}, timeout=30)`` is
``@lg.retry() @lg.budget(usd=5.0, per="day") @lg.timeout(30)`` written in the
canonical order whatever the order of the keywords: ``trace → validate →
cache → route → fallback → retry → breaker → budget → ratelimit → timeout``
(docs/architecture.md says why each sits where it does). One runner, as with
hand-stacked decorators; `lg.describe` lists what it built.

Each keyword takes:

* ``True``: the guard with its defaults;
* a dict: its keyword arguments (``budget={"usd": 5.0, "per": "day"}``);
* a guard already built by its decorator (``validate=lg.validate(Contact, reask=1)``);
* its first positional argument, for the guards that have one: ``validate=Contact``
  (the model), ``route=["claude-haiku-4-5", "claude-sonnet-4-6"]`` or a dict
  of tiers given as ``route={"tiers": {...}, ...}``, ``fallback=[alt, {"model": ...}]``
  (the alternates), ``timeout=30`` (total seconds), ``retry=4`` (attempts);
* ``None`` or ``False``: not there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from ._order import CANONICAL
from ._runner import Guard


F = TypeVar("F", bound=Callable[..., Any])

# How a guard takes a value that is neither True, a dict nor a built guard: as its positional arguments.
_POSITIONAL: dict[str, Callable[[Any], bool]] = {
    "validate": lambda _: True,
    "route": lambda v: isinstance(v, (list, tuple)),
    "fallback": lambda v: isinstance(v, (list, tuple)),
    "timeout": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "retry": lambda v: isinstance(v, int) and not isinstance(v, bool),
}
_SPREAD = frozenset({"fallback"})  # its positional value is a list of arguments, not one


def _decorator(name: str) -> Callable[..., Any]:
    import llmguard  # noqa: PLC0415 - the decorators live in the package, which imports this module

    return getattr(llmguard, name)  # type: ignore[no-any-return]


def _built(name: str, value: Any) -> Guard:
    """The guard *name* from its keyword's *value*, or a TypeError naming the keyword."""
    make = _decorator(name)
    if isinstance(value, Guard):
        if value.name != name:
            msg = f"guard({name}=...) got a {value.name} guard; pass it as {value.name}=..."
            raise TypeError(msg)
        return value
    if value is True:
        if name in ("validate", "fallback", "route"):
            msg = f"guard({name}=True) needs its settings: {name} has no defaults to build it from"
            raise TypeError(msg)
        built = make()
    elif isinstance(value, Mapping):
        if name == "route" and "tiers" in value:
            rest = dict(value)
            built = make(rest.pop("tiers"), **rest)
        else:
            built = make(**value)
    elif name in _POSITIONAL and _POSITIONAL[name](value):
        built = make(*value) if name in _SPREAD else make(value)
    else:
        msg = f"guard({name}=...) takes True, a dict of {name}'s keyword arguments or an lg.{name}(...) guard, got {value!r}"
        raise TypeError(msg)
    if not isinstance(built, Guard):  # pragma: no cover - every decorator called with settings returns its guard
        msg = f"guard({name}=...) did not build a guard"
        raise TypeError(msg)
    return built


def guard(
    *,
    trace: Any = None,
    validate: Any = None,
    cache: Any = None,
    route: Any = None,
    fallback: Any = None,
    retry: Any = None,
    breaker: Any = None,
    budget: Any = None,
    ratelimit: Any = None,
    timeout: Any = None,
) -> Callable[[F], F]:
    """The guards named, stacked in the canonical order; see the module docs for what each keyword takes.

    Every guard is built (and its settings checked) now, so bad settings
    fail here, naming the guard and the parameter.
    """
    given = {
        "trace": trace,
        "validate": validate,
        "cache": cache,
        "route": route,
        "fallback": fallback,
        "retry": retry,
        "breaker": breaker,
        "budget": budget,
        "ratelimit": ratelimit,
        "timeout": timeout,
    }
    guards = [_built(name, given[name]) for name in CANONICAL if given[name] is not None and given[name] is not False]
    if not guards:
        msg = "guard() needs at least one guard: trace=, validate=, cache=, route=, fallback=, retry=, breaker=, budget=, ratelimit= or timeout="
        raise TypeError(msg)

    def decorate(fn: F) -> F:
        made: Callable[..., Any] = fn
        for g in reversed(guards):  # innermost first, so the first named ends outermost
            made = g(made)
        return cast("F", made)

    return decorate
