"""`route`: choose the model per call, before it is made — a cheap model for simple requests.

``@lg.route(tiers)`` sits below `cache` and above `fallback` (the canonical
order). On every call its ``enter`` looks at the request, picks a *tier*, and
runs the inside with that tier's model in the function's ``model`` argument
(or the keywords the tier names): a `Run` with the caller's arguments
changed, a positional ``model`` replaced where it stands. Everything below
(fallback, retry, budget, rate limit, the function) sees the routed model; so
does the call's record (``record.attempts[i].model``).

**How a tier is chosen**, first answer wins:

1. ``rules=``: the first `RouteRule` whose conditions all hold (keywords in
   the text, estimated input tokens within bounds, tools or images present);
2. ``classifier=``: a callable of the `RouteRequest` returning a tier name,
   or None to pass;
3. ``scorer=``: the default `RouteScorer` (a weighted rule score in [0, 1]
   cut into tiers by its thresholds), or your own callable returning a
   `RouteScore`; ``scorer=None`` turns it off;
4. ``default=``: a tier name (the last tier, the strongest, when left out).

**Escalate-only capability checks** then move the choice *up* the tiers,
never down, until a tier's model can take the request: a request with images
never goes to a model declared ``images=False``, and a request whose worst-case
input estimate (`llmguard._estimate.reserve_tokens`) plus its ``max_tokens``
exceeds a model's context window never goes to that model. Context windows
come from genai-prices' model data (`llmguard.prices.context_window`), or
from ``capabilities=`` when declared there (which wins); whether a model
takes images is known only from ``capabilities=`` (genai-prices has no such
fact), and a model not declared is taken to accept them. If no tier at or
above the choice can take the request, the caller's own model is kept.

**The decision** goes on the record (``record.route`` is the tier's name,
``record.extra["route"]`` the `RouteDecision` with the model and the reason),
hence on `trace`'s span (``llmguard.route``) and call event, and is emitted
as the ``llmguard.route.chosen`` event (a span event too, with the reason).

**Under a cache.** `cache` is above `route`, so its key is the caller's
request, before routing. A hit cannot hand back a cheap model's answer to a
request that would route to the strong one, because the routing is a
function of the request that the key covers: the same request routes the
same way. Two cases break that, both the user's to avoid: a ``classifier``
that is not a function of the request (it reads the time or the load), and
a cache ``key=`` / ``exclude=`` that leaves out an argument the routing
reads.
"""

from __future__ import annotations

import inspect
import math

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

from . import _check, _estimate, _events, prices
from ._route_rules import (
    _DEFAULT_THRESHOLDS,
    RouteRequest,
    RouteRule,
    RouteScore,
    RouteScorer,
    _thresholds,
)
from ._runner import Guard


if TYPE_CHECKING:
    from ._binder import Binder
    from ._call import Call
    from ._runner import Run


__all__ = ["RouteDecision", "RouteLayer", "RouteRequest", "RouteRule", "RouteScore", "RouteScorer", "route"]

_MAX_REMEMBERED: Final = 256  # models whose capabilities one route remembers


# -- the decision --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """What `route` chose for one call and why (``record.extra["route"]``).

    ``tier`` the tier's name; ``model`` the model the call was sent to (None:
    the function's own, when the tier keeps it); ``reason`` how it was chosen
    (``"rule 0 (keywords=['prove'])"``, ``"classifier"``, ``"score 0.42 ≥
    0.35 (code=1, reasoning=0.5)"``, ``"default"``), with ``"; escalated from
    'cheap': images"`` when a capability check moved it up; ``score`` the
    scorer's value when it decided; ``escalated_from`` the tier chosen before
    a capability check moved it up.
    """

    tier: str
    model: str | None
    reason: str
    score: float | None = None
    escalated_from: str | None = None


@dataclass(frozen=True, slots=True)
class _Tier:
    name: str
    values: Mapping[str, Any] | None  # the keyword overrides; None keeps the caller's
    model: str | None


class RouteLayer(Guard):
    """The `route` guard. Build it with `route`, not directly."""

    name = "route"

    def __init__(
        self,
        tiers: Mapping[str, str | Mapping[str, Any] | None] | Sequence[str],
        *,
        rules: Sequence[RouteRule] = (),
        classifier: Callable[[RouteRequest], str | None] | None = None,
        scorer: Callable[[RouteRequest], RouteScore] | bool | None = True,
        thresholds: Sequence[float] | None = None,
        default: str | None = None,
        param: str = "model",
        capabilities: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        if not isinstance(param, str) or not param.isidentifier():
            msg = f"route(param=...) must be a parameter name, got {param!r}"
            raise TypeError(msg)
        self.param = param
        self.tiers = _tiers(tiers, param)
        names = [t.name for t in self.tiers]
        self._index = {name: i for i, name in enumerate(names)}
        self.rules = _rules(rules, self._index)
        if classifier is not None and not callable(cast("object", classifier)):
            msg = f"route(classifier=...) must be a callable taking a RouteRequest and returning a tier name or None, got {classifier!r}"
            raise TypeError(msg)
        self.classifier = classifier
        self.scorer = _scorer(scorer, thresholds, len(self.tiers))
        cut = thresholds if thresholds is not None else getattr(self.scorer, "thresholds", None)
        if cut is None:
            cut = _DEFAULT_THRESHOLDS.get(len(self.tiers))
        self.thresholds = _thresholds("route", cut) if cut is not None else None
        if self.scorer is not None and (self.thresholds is None or len(self.thresholds) != len(self.tiers) - 1):
            msg = (
                f"route(thresholds=...) must hold {len(self.tiers) - 1} increasing scores for "
                f"{len(self.tiers)} tiers, got {None if cut is None else list(cut)!r}"
            )
            raise ValueError(msg)
        if default is not None and default not in self._index:
            msg = f"route(default=...) names unknown tier {default!r}; tiers: {names}"
            raise ValueError(msg)
        self.default = default if default is not None else names[-1]
        self.capabilities = _capabilities(capabilities)
        self._known: dict[str | None, tuple[int | None, bool]] = {}

    def settings(self) -> dict[str, Any]:
        """The configuration, for `describe`."""
        return {
            "tiers": {t.name: (dict(t.values) if t.values is not None else None) for t in self.tiers},
            "rules": [f"{r.tier}: {r.describe()}" for r in self.rules],
            "classifier": None if self.classifier is None else getattr(self.classifier, "__qualname__", repr(self.classifier)),
            "scorer": None if self.scorer is None else type(self.scorer).__name__,
            "thresholds": self.thresholds,
            "default": self.default,
            "param": self.param,
        }

    def for_function(self, fn: Callable[..., Any], shape: str, binder: Binder) -> RouteLayer:  # noqa: ARG002
        """Check that *fn* takes every keyword the tiers set (a ``**kwargs`` takes any)."""
        sig = binder.signature
        if sig is None:
            return self
        params = sig.parameters
        open_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        label = getattr(fn, "__qualname__", repr(fn))
        for tier in self.tiers:
            for name in tier.values or {self.param: None}:
                which = "param" if name == self.param else "tiers"
                p = params.get(name)
                if p is None and not open_kwargs:
                    msg = f"route({which}=...): {label}() has no parameter {name!r} to set (and no **kwargs)"
                    raise TypeError(msg)
                if p is not None and p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL, p.VAR_KEYWORD):
                    msg = f"route({which}=...): {label}()'s parameter {name!r} cannot be set by name"
                    raise TypeError(msg)
        return self

    # -- the guard -------------------------------------------------------------

    def enter(self, call: Call) -> Run | None:
        """Choose the tier, escalate it until its model can take the request, run the inside with it."""
        request = RouteRequest.of(call, self.param)
        index, reason, score = self._choose(request)
        chosen = self.tiers[index]
        tier, why = self._escalate(call, request, index)
        escalated = tier is not None and tier is not chosen
        if tier is None:
            reason = f"{reason}; no tier from {chosen.name!r} up can take the request ({why}): the caller's model kept"
        elif escalated:
            reason = f"{reason}; escalated from {chosen.name!r}: {why}"
        decision = RouteDecision(
            tier=(tier or chosen).name,
            model=tier.model if tier is not None else None,
            reason=reason,
            score=score,
            escalated_from=chosen.name if escalated else None,
        )
        self._record(call, decision)
        if tier is None or tier.values is None:
            return None
        return call.run_with(tier.values)

    def _choose(self, request: RouteRequest) -> tuple[int, str, float | None]:
        """(tier index, reason, score) before the capability checks."""
        for i, rule in enumerate(self.rules):
            if rule.matches(request):
                return self._index[rule.tier], f"rule {i} ({rule.describe()})", None
        if self.classifier is not None:
            name = self.classifier(request)
            if name is not None:
                index = self._index.get(name)
                if index is None:
                    msg = (
                        f"route(classifier=...) returned {name!r}, not a tier: "
                        f"{[t.name for t in self.tiers]} (or None to let the scorer decide)"
                    )
                    raise ValueError(msg)
                return index, "classifier", None
        if self.scorer is not None:
            result = self.scorer(request)
            value = float(result.value)
            if not math.isfinite(value):
                msg = f"route(scorer=...) returned a non-finite score {value!r}"
                raise ValueError(msg)
            cuts = self.thresholds or ()
            index = sum(1 for cut in cuts if value >= cut)
            signals = ", ".join(f"{k}={v:g}" for k, v in result.signals.items())
            bound = f">= {cuts[index - 1]:g}" if index else f"< {cuts[0]:g}" if cuts else ""
            return index, f"score {value:g} {bound}{f' ({signals})' if signals else ''}".replace("  ", " "), value
        return self._index[self.default], "default", None

    def _escalate(self, call: Call, request: RouteRequest, index: int) -> tuple[_Tier | None, str]:
        """The first tier from *index* up whose model takes the request (None: none does), and why the first could not."""
        needed: int | None = None
        why = ""
        for j in range(index, len(self.tiers)):
            tier = self.tiers[j]
            model = tier.model if tier.model is not None else request.model
            window, images = self._capability(model)
            if request.images and not images:
                why = why or f"{model} takes no images"
                continue
            if window is not None:
                if needed is None:
                    needed = _needed_tokens(call, request._size)
                if needed > window:
                    why = why or f"~{needed} tokens > {model}'s context window of {window}"
                    continue
            return tier, why
        return None, why

    def _capability(self, model: str | None) -> tuple[int | None, bool]:
        """(context window, takes images) of *model*: declared, else genai-prices' window and images assumed."""
        known = self._known.get(model)
        if known is not None:
            return known
        declared = self.capabilities.get(model or "", {})
        window = declared.get("context", _MISSING)
        if window is _MISSING:
            window = prices.context_window(model)
        known = (window, bool(declared.get("images", True)))
        if len(self._known) < _MAX_REMEMBERED:
            self._known[model] = known
        return known

    def _record(self, call: Call, decision: RouteDecision) -> None:
        if not call.recorded and not _events.listening():
            call.note(route=decision.tier, extra={"route": decision})
            return
        record = call.record
        record.route = decision.tier
        record.extra["route"] = decision
        _events.emit(  # debug: the call's one info line (trace's) already names the tier
            _events.ROUTE_CHOSEN,
            record,
            level="debug",
            tier=decision.tier,
            model=decision.model,
            reason=decision.reason,
            score=decision.score,
            escalated_from=decision.escalated_from,
        )


_MISSING: Any = object()


def _rules(rules: Any, index: Mapping[str, int]) -> tuple[RouteRule, ...]:
    if isinstance(rules, RouteRule) or not isinstance(rules, Sequence):
        msg = f"route(rules=...) must be a list of RouteRule, got {rules!r}"
        raise TypeError(msg)
    for i, rule in enumerate(rules):
        if not isinstance(rule, RouteRule):
            msg = f"route(rules=...) item {i} must be a RouteRule, got {rule!r}"
            raise TypeError(msg)
        if rule.tier not in index:
            msg = f"route(rules=...) item {i} names unknown tier {rule.tier!r}; tiers: {list(index)}"
            raise ValueError(msg)
    return tuple(rules)


def _scorer(scorer: Any, thresholds: Sequence[float] | None, n: int) -> Callable[[RouteRequest], RouteScore] | None:
    if scorer is True:
        if thresholds is None and n not in _DEFAULT_THRESHOLDS:
            msg = f"route(thresholds=...) is needed for {n} tiers (defaults exist for 1 to 4): {n - 1} increasing scores in (0, 1]"
            raise ValueError(msg)
        return RouteScorer()
    if scorer is False or scorer is None:
        return None
    if callable(scorer):
        return cast("Callable[[RouteRequest], RouteScore]", scorer)
    msg = f"route(scorer=...) must be a callable returning a RouteScore, None or True, got {scorer!r}"
    raise TypeError(msg)


def _needed_tokens(call: Call, size: int) -> int:
    """The worst case the request needs of a context window: input reserve plus its ``max_tokens``."""
    out = call.param("max_tokens") or call.param("max_output_tokens") or call.param("max_completion_tokens")
    return _estimate.reserve_tokens(size) + (out if isinstance(out, int) and not isinstance(out, bool) else 0)


def _tiers(tiers: Any, param: str) -> tuple[_Tier, ...]:
    if isinstance(tiers, (str, bytes)) or not isinstance(tiers, (Mapping, Sequence)):
        msg = f"route(tiers=...) must be a dict of tier name -> model (or keyword overrides), or a list of models, got {tiers!r}"
        raise TypeError(msg)
    items = list(tiers.items()) if isinstance(tiers, Mapping) else [(m, m) for m in tiers]
    if not items:
        msg = "route(tiers=...) must name at least one tier"
        raise ValueError(msg)
    out = []
    for name, value in items:
        if not isinstance(name, str) or not name:
            msg = f"route(tiers=...) tier names must be non-empty strings, got {name!r}"
            raise TypeError(msg)
        if value is None:
            out.append(_Tier(name, None, None))
        elif isinstance(value, str):
            out.append(_Tier(name, {param: value}, value))
        elif isinstance(value, Mapping) and value and all(isinstance(k, str) and k.isidentifier() for k in value):
            model = value.get(param)
            out.append(_Tier(name, dict(value), model if isinstance(model, str) else None))
        else:
            msg = f"route(tiers=...) tier {name!r} must be a model name, a dict of keyword overrides, or None (keep the caller's), got {value!r}"
            raise TypeError(msg)
    return tuple(out)


def _capabilities(capabilities: Any) -> dict[str, dict[str, Any]]:
    if capabilities is None:
        return {}
    if not isinstance(capabilities, Mapping):
        msg = f'route(capabilities=...) must be a dict of model -> {{"context": tokens, "images": bool}}, got {capabilities!r}'
        raise TypeError(msg)
    out: dict[str, dict[str, Any]] = {}
    for model, facts in capabilities.items():
        if not isinstance(model, str) or not isinstance(facts, Mapping):
            msg = f'route(capabilities=...) must map model names to {{"context": tokens, "images": bool}}, got {model!r}: {facts!r}'
            raise TypeError(msg)
        unknown = set(facts) - {"context", "images"}
        if unknown:
            msg = f'route(capabilities=...) for {model!r}: unknown keys {sorted(unknown)} (known: "context", "images")'
            raise ValueError(msg)
        entry: dict[str, Any] = {}
        if "context" in facts:
            entry["context"] = _check.number("route", "capabilities", facts["context"], integer=True, optional=True)
        if "images" in facts:
            if not isinstance(facts["images"], bool):
                msg = f"route(capabilities=...) for {model!r}: images must be True or False, got {facts['images']!r}"
                raise TypeError(msg)
            entry["images"] = facts["images"]
        out[model] = entry
    return out


def route(
    tiers: Mapping[str, str | Mapping[str, Any] | None] | Sequence[str],
    /,
    *,
    rules: Sequence[RouteRule] = (),
    classifier: Callable[[RouteRequest], str | None] | None = None,
    scorer: Callable[[RouteRequest], RouteScore] | bool | None = True,
    thresholds: Sequence[float] | None = None,
    default: str | None = None,
    param: str = "model",
    capabilities: Mapping[str, Mapping[str, Any]] | None = None,
) -> RouteLayer:
    """Choose the model per call, before it is made (see the module docs).

    For example::

        @lg.route({"simple": "claude-haiku-4-5", "complex": "claude-sonnet-4-6"})
        def ask(q, model="claude-sonnet-4-6"): ...

    *tiers* in order, cheapest first: tier name -> the model to put in the
    ``model`` argument (*param*), a dict of keyword overrides (``{"model":
    "o3", "reasoning_effort": "high"}``), or None to keep the caller's own
    model; a list of models names each tier after its model. A tier comes
    from the first matching of *rules*, then *classifier* (a callable of the
    `RouteRequest` returning a tier name or None), then *scorer* (the default
    `RouteScorer` cut by *thresholds*; None turns it off), then *default*
    (the last tier). Capability checks then only move it up the tiers:
    *capabilities* ``{model: {"context": tokens, "images": bool}}`` declares
    what genai-prices does not know (it knows context windows). Bad
    configuration raises here, naming the parameter; a *param* or tier
    keyword the decorated function does not take raises when it is decorated.
    """
    return RouteLayer(
        tiers,
        rules=rules,
        classifier=classifier,
        scorer=scorer,
        thresholds=thresholds,
        default=default,
        param=param,
        capabilities=capabilities,
    )
