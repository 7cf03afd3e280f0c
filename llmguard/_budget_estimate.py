"""What `budget` reserves for a call: its worst case, estimated from its arguments.

The worst case is estimated from the function's arguments, in this order:

1. ``estimate=`` (a callable taking the call's arguments by name and
   returning ``(input_tokens, max_output_tokens)`` or a `Usage`) overrides
   everything below.
2. **SDK-shaped arguments**, when the function has them: the string content
   of ``messages``, ``system``, ``prompt``, ``input``, ``instructions``,
   ``contents`` and ``tools`` for the input; ``max_tokens``,
   ``max_output_tokens`` or ``max_completion_tokens`` (times ``n``) as the
   output cap.
3. Otherwise the input is **all** the arguments (counted as below), and
   the output cap is ``max_output=`` or else the largest output this
   function produced in its last 100 calls (at least its 99th percentile;
   remembered only for functions whose arguments can lack a cap or model).

The estimate sees only the arguments: a function that adds a long system
prompt or tool schemas of its own should say so with ``estimate=``.

Input tokens are reserved as a UTF-8 byte count divided by 3 (the worst
case of llmguard's one estimate, ``llmguard._estimate``; docs/estimates.md
gives the formula and its error measured against real tokenizers): about
1.4-1.6x the real count for English text and code, 1.0-1.3x for CJK text
on current tokenizers, low for hash-dense JSON and, on older tokenizers,
for Arabic, Hindi or Korean. What is counted: of a
chat message ``{"role": ..., "content": "<text>"}`` (those two keys
exactly; a message with more keys counts its ``str()``), its text plus 40
bytes for the role and framing (~13 tokens; OpenAI documents 3 a
message); of a list, each item by these rules (a list inside it: its
``str()``); of a string, itself; of anything else
(content blocks, tool schemas, objects), its ``str()``. Images or other base64
payloads are counted as text and so hugely overestimated; pass
``estimate=`` for those. A charge that has to be estimated (see Settling)
reads the same count as a best guess, bytes / 4. The model whose prices apply is the call's
``model`` argument, else ``model=``, else the model this function last
used. Input is priced at the higher of the input and cache-write rates
(worst case), output at the output rate, via `llmguard.prices`.


`Estimator` holds what the estimates of one guarded function read (where
its arguments are; the outputs and model it was last seen to use),
`estimated` prices a worst case, and `call_with_arguments` calls the
``key=`` and ``estimate=`` callables with the call's arguments by name.
"""

from __future__ import annotations

import dis
import inspect
import math
import types

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from . import _estimate, prices
from ._record import Usage
from .stores.budget import PICO


if TYPE_CHECKING:
    from ._binder import Binder
    from ._budget_ledger import Ticket
    from ._budget_scope import Budget
    from ._call import Call


INPUT_NAMES: Final = _estimate.INPUT_NAMES
CAP_NAMES: Final = ("max_tokens", "max_output_tokens", "max_completion_tokens")
_OBSERVED: Final = 100  # outputs remembered per function
_MISS: Any = object()


def estimated_count(count: Any, what: str, value: Any) -> int:
    """A token count from ``estimate=``: a whole number >= 0, else a clear error naming it.

    A negative count would be a negative reservation, which lets other
    calls spend past the limit.
    """
    msg = f"budget(estimate=...) must return token counts >= 0; its {what} is {count!r} (it returned {value!r})"
    if isinstance(count, bool) or not isinstance(count, (int, float)):
        raise TypeError(msg)
    if not math.isfinite(count) or count < 0:
        raise ValueError(msg)
    return math.ceil(count)


def passed_names(params: list[inspect.Parameter], first: str | None) -> tuple[frozenset[str], frozenset[str], bool]:
    """What ``key(**arguments)`` receives from a call of a function with *params* (`Call.arguments`).

    (names always passed, names perhaps passed, whether other names may be
    passed too). A method's instance (*first*, the `Binder`'s rule) is left out; a
    ``**kwargs`` passes the call's extra keywords on their own names, unless
    there are also ``*args`` or positional-only parameters (then, as every
    ``*args``/``**kwargs``, under its own name).
    """
    named = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    always = {p.name for p in params if p.kind in named}
    perhaps: set[str] = set()
    if first is not None:
        always.discard(first)
        perhaps.add(first)
    simple = not any(p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY) for p in params)
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    if not simple:
        always |= {p.name for p in params if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return frozenset(always), frozenset(perhaps), simple and var_kw


def signature_mismatch(f: Callable[..., Any], params: list[inspect.Parameter], first: str | None) -> str | None:
    """Why *f* (a ``key=`` or ``estimate=``), called with the keyword arguments of a function with *params*, cannot bind, or None.

    None too when it cannot be told (no signature).
    """
    try:
        taken = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):
        return None
    always, perhaps, open_ended = passed_names(params, first)
    if positional := [p.name for p in taken if p.kind is p.POSITIONAL_ONLY and p.default is p.empty]:
        return f"it has positional-only parameters {positional}, but is called with keyword arguments only"
    by_keyword = {p.name for p in taken if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if not any(p.kind is p.VAR_KEYWORD for p in taken) and (unexpected := sorted(always - by_keyword)):
        return f"it has no parameter for {unexpected} (add **_ to take the arguments it does not need)"
    required = {
        p.name for p in taken if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty
    }
    if not open_ended and (missing := sorted(required - always - perhaps)):
        return f"it needs {missing}, which the function has no parameter for"
    return None


def mismatch_error(option: str, f: Callable[..., Any], where: str, reason: str) -> TypeError:
    """The error of a ``key=`` or ``estimate=`` that cannot take the arguments of *where*."""
    shown = getattr(f, "__qualname__", None) or repr(f)
    return TypeError(
        f"budget({option}=...) cannot take the arguments of {where}: {shown} is called with the call's "
        f"arguments by name, and {reason}"
    )


def call_with_arguments(option: str, f: Callable[..., Any], arguments: dict[str, Any], call: Call) -> Any:
    """``f(**arguments)`` (a ``key=`` or ``estimate=`` of *call*); a call that cannot bind is an error naming the option.

    A `TypeError` raised inside *f*, once it has bound, is its own and stays as it is.
    """
    try:
        return f(**arguments)
    except TypeError as exc:
        error = not_bound(option, f, arguments, call)
        if error is None:
            raise
        raise error from exc


def not_bound(option: str, f: Callable[..., Any], arguments: dict[str, Any], call: Call) -> TypeError | None:
    """The error to raise when ``f(**arguments)`` raised a `TypeError` because it does not bind; None if it did bind."""
    reason = _unbound(f, arguments)
    return None if reason is None else mismatch_error(option, f, call.function_name, reason)


# Names through which a function can read its own locals without naming them.
_INTROSPECTING: Final = frozenset({"locals", "vars", "dir", "eval", "exec", "_getframe", "currentframe", "f_locals"})
_LOCAL_OPS: Final = ("FAST", "DEREF", "CELL", "CLOSURE")


def names_read(f: Callable[..., Any], binder: Binder) -> tuple[str, ...] | None:
    """The parameters a ``key=`` *f* may be given alone, for a function with *binder*; None: give it every argument.

    ``f(**arguments)`` builds a dict of every argument, and *f*'s ``**_``
    another of those it does not name: about a microsecond on every call.
    A plain function (``lambda user, **_: user``) whose code never reads its
    ``**`` parameter (no name of it, no closure over it, no ``locals()``
    or frame introspection) cannot tell whether that dict held the rest, so
    it is called with its named parameters alone, each read from the call
    as `Call.arguments` would give it (absent when the call has none, so
    *f*'s default applies). Anything else (no ``**``, ``*args``, a
    ``partial``, a callable object, a function with ``*args`` or
    positional-only parameters, one naming a method's instance) gets every
    argument, as documented.
    """
    code = getattr(f, "__code__", None)
    if type(f) is not types.FunctionType or code is None or not binder.simple or binder.signature is None:
        return None
    flags = code.co_flags
    if flags & inspect.CO_VARARGS or not flags & inspect.CO_VARKEYWORDS:
        return None
    named = code.co_argcount + code.co_kwonlyargcount
    rest = code.co_varnames[named]
    if rest in code.co_cellvars or _INTROSPECTING.intersection(code.co_names):
        return None
    for instr in dis.get_instructions(code):
        arg = instr.argval
        if any(op in instr.opname for op in _LOCAL_OPS) and (arg == rest or (isinstance(arg, tuple) and rest in arg)):
            return None
    names = code.co_varnames[code.co_posonlyargcount : named]  # positional-only ones are never given by name
    if binder.first is not None and binder.first in names:
        return None
    return tuple(names)


def _unbound(f: Callable[..., Any], arguments: dict[str, Any]) -> str | None:
    """Why ``f(**arguments)`` does not bind, or None if it does (or there is no signature to tell by)."""
    try:
        inspect.signature(f).bind(**arguments)
    except TypeError as exc:
        return f"it does not bind ({exc})"
    except ValueError:
        return None
    return None


# The worst case of one call, before any budget's policy (money in
# pico-dollars): (input tokens, output cap or None, model or None, the worst
# case or None when it cannot be priced or bounded, its input part (0 when
# unpriced)). A plain tuple: one is made on every call.
Estimate = tuple[int, "int | None", "str | None", "int | None", int]


def estimated(input_tokens: int, output_tokens: int | None, model: str | None) -> Estimate:
    """Price the worst case of *input_tokens* in and *output_tokens* out on *model*."""
    rates = _worst_rates.get(model, _MISS) if prices.epoch[0] == _rates_epoch[0] else _MISS
    if rates is _MISS:
        rates = _rates_of(model)
    if rates is None:
        return (input_tokens, output_tokens, model, None, 0)
    in_rate, out_rate, per_call, tier_from = rates
    if input_tokens > tier_from:
        # Tiered or unusual prices (an exact one has no tier_from): let genai-prices do the arithmetic.
        usd_in = _worst_cost(input_tokens, 0, model)
        total = None if output_tokens is None else _worst_cost(input_tokens, output_tokens, model)
    else:
        usd_in = input_tokens * in_rate + per_call
        total = None if output_tokens is None else usd_in + output_tokens * out_rate
    # Rounded, not ceiled: float error is ~1e-16 of the amount, far below a
    # pico-dollar, and ceil would turn 0.0025000000000000005 into one more.
    return (
        input_tokens,
        output_tokens,
        model,
        None if total is None else round(total * PICO),
        0 if usd_in is None else round(usd_in * PICO),
    )


# Per model: USD per input token at the worst case (the dearer of plain input
# and cache write), per output token, per call, and the input count above
# which they do not apply (a tier; -1 when the price must be worked out by
# genai-prices every time); None when the model has no price. Valid while
# `prices.epoch` is `_rates_epoch` (a price set or the cache cleared since
# empties it).
_worst_rates: dict[str | None, tuple[float, float, float, float] | None] = {}
_rates_epoch: list[int] = [0]
_RATES_KEPT: Final = 256


def _rates_of(model: str | None) -> tuple[float, float, float, float] | None:
    epoch = prices.epoch[0]  # before the price: one set in between makes this look old, never current
    entry = prices._entry(model, None) if model else None
    rates = None
    if entry is not None:
        tier_from: float = -1 if entry.exact else math.inf if entry.tier_from is None else entry.tier_from
        in_rate, write_rate = entry.in_rate, entry.write_rate
        rates = (max(in_rate, write_rate), entry.out_rate, entry.per_call, tier_from)
    if _rates_epoch[0] != epoch:
        _worst_rates.clear()
        _rates_epoch[0] = epoch
    if len(_worst_rates) < _RATES_KEPT:
        _worst_rates[model] = rates
    return rates


def why(est: Estimate) -> str:
    """Why *est* has no worst case, for the refusal message."""
    _, output_tokens, model, _, _ = est
    if output_tokens is None:
        return (
            "no output cap: no max_tokens/max_output_tokens/max_completion_tokens argument, "
            "no max_output=, and no output observed yet"
        )
    if model is None:
        return "no model to price it: no model argument, no model=, and no call observed yet"
    return f"no price known for model {model!r} (see llmguard.set_price)"


def _worst_cost(input_tokens: int, output_tokens: int, model: str | None) -> float | None:
    """The higher of *input_tokens* priced as plain input and as cache writes."""
    plain = prices.cost_of(Usage(input_tokens, output_tokens), model)
    written = prices.cost_of(Usage(input_tokens, output_tokens, cache_write_tokens=input_tokens), model)
    if plain is None or written is None:
        return None
    return max(plain, written)


class Estimator:
    """The worst-case estimate of one guarded function's calls.

    Where the function's input, cap, ``n`` and model arguments are (read
    once, at decoration, from its `Binder`), and what it was last seen to
    use: its largest recent output and its model, remembered only when an
    argument may be missing (``history``).
    """

    def __init__(self, budget: Budget, binder: Binder) -> None:
        self.budget = budget
        params = list(binder.signature.parameters.values()) if binder.signature else []
        self.var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
        positional = list(binder.positional)
        bound = positional[1:] if binder.first else positional
        defaults = binder.defaults
        names = {p.name for p in params}

        def getter(name: str) -> tuple[str, int | None, int | None, Any]:
            return (
                name,
                positional.index(name) if name in positional else None,
                bound.index(name) if name in bound else None,
                defaults.get(name),
            )

        self._inputs = tuple(getter(n) for n in INPUT_NAMES if n in names)
        self.caps = tuple(getter(n) for n in CAP_NAMES if n in names)
        self.model_getter = getter("model") if "model" in names else None
        self._n_getter = getter("n") if "n" in names else None

        # History (outputs, model) is read only when an argument may be
        # missing: no such parameter, or one that defaults to None.
        def always(names_: tuple[str, ...]) -> bool:
            return any(
                p.name in names_ and p.default is not None and p.kind is not p.VAR_KEYWORD for p in params
            )

        self.history = not (always(CAP_NAMES) and always(("model",)))
        self._outs: deque[int] = deque(maxlen=_OBSERVED)
        self._out_max: int | None = None
        self._last_model: str | None = None

    def check_boundable(self, fn: Callable[..., Any]) -> None:
        """Refuse, at decoration, a budget that would refuse every call forever.

        With ``unknown_cost="reject"``, a call whose worst case cannot be
        bounded is refused; if the function offers no output cap (and no
        model to price it, for a USD limit), no call ever runs, so nothing is
        ever observed to learn from.
        """
        b = self.budget
        # A bare @lg.budget has no limit of its own: its scopes may bring estimate= and model=.
        if not b.has_limits or b.unknown_cost != "reject" or b.estimate is not None or self.var_kw:
            return
        where = getattr(fn, "__qualname__", repr(fn))
        if not self.caps and b.max_output is None:
            msg = (
                f"budget(max_output=...) is needed for {where}: it has no max_tokens-like argument, "
                "so with unknown_cost='reject' every call would be refused; pass max_output= "
                "(the output cap the function uses), estimate=, or unknown_cost="
            )
            raise ValueError(msg)
        needs_price = b.usd is not None or b.max_call_usd is not None
        if needs_price and self.model_getter is None and b.model is None:
            msg = (
                f"budget(model=...) is needed for {where}: it has no model argument to price the "
                "call by, so with unknown_cost='reject' every call would be refused; pass model=, "
                "estimate=, or unknown_cost="
            )
            raise ValueError(msg)

    def estimate(self, call: Call, scopes: tuple[Budget, ...]) -> Estimate:
        """The worst case of *call*, under the function's own budget and the active *scopes*."""
        args, kwargs, bound = call.args, call.kwargs, call.instance is not None
        estimate = self.budget.estimate
        if estimate is None and scopes:
            estimate = next((s.estimate for s in reversed(scopes) if s.estimate), None)
        if estimate is not None:
            model = self._model_arg(args, kwargs, bound)
            return self._estimated_by(estimate, call, model if isinstance(model, str) and model else self._model(scopes))
        size, cap, model = self._read(args, kwargs, bound)
        if not (isinstance(model, str) and model):
            model = self._model(scopes)
        if cap is None:
            declared = self.budget.max_output
            if declared is None and scopes:
                declared = next((s.max_output for s in reversed(scopes) if s.max_output), None)
            cap = declared if declared is not None else self._out_max
        return estimated(-(-size // _estimate.RESERVE_BYTES_PER_TOKEN), cap, model)  # `_estimate.reserve_tokens`

    def _read(self, args: tuple[Any, ...], kwargs: dict[str, Any], bound: bool) -> tuple[int, int | None, Any]:  # noqa: PLR0912 - one pass over the arguments, on every call
        """What the call's arguments say: (input size in bytes, output cap times ``n`` or None, model argument).

        Each argument by keyword, else by position (after a method's
        instance when *bound*), else its default: in one pass, as this runs
        on every call.
        """
        n_args = len(args)
        size = 0
        found = False
        for name, pos, pos_bound, default in self._inputs:
            value = kwargs.get(name, _MISS)
            if value is _MISS:
                at = pos_bound if bound else pos
                value = args[at] if at is not None and at < n_args else default
            if value is not None:
                size += _estimate.size(value)
                found = True
        cap: int | None = None
        for name, pos, pos_bound, default in self.caps:
            value = kwargs.get(name, _MISS)
            if value is _MISS:
                at = pos_bound if bound else pos
                value = args[at] if at is not None and at < n_args else default
            if isinstance(value, int) and value > 0:
                cap = value
                break
        getter = self.model_getter  # `_model_arg`, inlined
        if getter is None or "model" in kwargs:
            model = kwargs.get("model")
        else:
            at = getter[2] if bound else getter[1]
            model = args[at] if at is not None and at < n_args else getter[3]
        if self.var_kw:  # keywords its **kwargs took
            own = {g[0] for g in self._inputs}
            for name in INPUT_NAMES:
                if name not in own and (value := kwargs.get(name)) is not None:
                    size += _estimate.size(value)
                    found = True
            if cap is None:
                cap = next((v for name in CAP_NAMES if isinstance(v := kwargs.get(name), int) and v > 0), None)
        if not found:
            size = _estimate.arguments_size(args, kwargs)
        if cap is not None:
            if self._n_getter is not None:
                name, pos, pos_bound, n = self._n_getter
                n = kwargs.get(name, n if (at := pos_bound if bound else pos) is None or at >= n_args else args[at])
            else:
                n = kwargs.get("n")
            if isinstance(n, int) and n > 1:
                cap *= n
        return size, cap, model

    def _model_arg(self, args: tuple[Any, ...], kwargs: dict[str, Any], bound: bool) -> Any:
        """The call's ``model`` argument (by keyword, position or default), or None."""
        if self.model_getter is None or "model" in kwargs:
            return kwargs.get("model")
        _, pos, pos_bound, default = self.model_getter
        at = pos_bound if bound else pos
        return args[at] if at is not None and at < len(args) else default

    def _estimated_by(self, estimate: Callable[..., Any], call: Call, model: str | None) -> Estimate:
        """The worst case ``estimate=`` gives for *call*."""
        value = call_with_arguments("estimate", estimate, call.arguments(), call)
        output: int | None
        if isinstance(value, Usage):
            input_tokens, output = value.input_tokens, value.output_tokens
        else:
            try:
                input_tokens, output = value
            except (TypeError, ValueError):
                msg = f"budget(estimate=...) must return (input_tokens, max_output_tokens) or a Usage, got {value!r}"
                raise TypeError(msg) from None
        return estimated(
            estimated_count(input_tokens, "input_tokens", value),
            None if output is None else estimated_count(output, "max_output_tokens", value),
            model,
        )

    def _model(self, scopes: tuple[Budget, ...]) -> str | None:
        """The model to price by when the call names none: ``model=``, a scope's, else the last one seen."""
        model = self.budget.model
        if model is None and scopes:
            model = next((s.model for s in reversed(scopes) if s.model), None)
        return model or self._last_model

    def observe(self, ticket: Ticket) -> None:
        """Remember the outputs and model of the call's attempts (from the ticket's on), for later estimates.

        From the facts it was charged by when it read them without the
        record (the model asked for, else the one that answered, as the
        record names an attempt's model); else from the record.
        """
        if ticket.plain is not None:
            asked = ticket.call.request_model()
            for usage, named, _ in ticket.plain:
                self._observe_usage(usage, asked or named)
            return
        for att in ticket.record.attempts[ticket.n0 :]:
            self._observe_usage(att.usage, att.model or att.response_model)

    def _observe_usage(self, usage: Usage | None, model: str | None) -> None:
        if usage is not None and not usage.estimated:
            out = usage.output_tokens
            outs = self._outs
            evicted = outs[0] if len(outs) == _OBSERVED else None
            outs.append(out)
            top = self._out_max
            if top is None or out >= top:
                self._out_max = out
            elif evicted == top:
                self._out_max = max(outs)
        if model:
            self._last_model = model
