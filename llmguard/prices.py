"""What a call cost: per-model prices and the USD cost of a `Usage`.

Prices come from `genai-prices <https://github.com/pydantic/genai-prices>`_
(its bundled snapshot works offline), or from `set_price` overrides, which
win. An unknown model prices as None, never as a silent zero: a budget that
cannot price a call must know it.

``genai_prices.calc_price`` costs ~60 µs a call (Decimal arithmetic and a
unit registry walk), far too much for every guarded call, so each model's
price is resolved once and cached as plain per-token float rates;
`cost_of` for a cached model is then a dict lookup and five multiplies. The
exact genai-prices calculation is still used where the fast arithmetic
would be wrong:

* **Tiered prices** (e.g. Claude Sonnet 4.5 or Gemini 2.5 Pro above 200k
  input tokens, where *all* tokens move to the higher rate): when a usage's
  total input crosses the model's lowest tier threshold, the cached
  genai-prices ``ModelPrice`` computes the figure itself.
* **Unusual price structures**: when the model is first resolved, the fast
  arithmetic is checked against genai-prices on a probe usage; a model
  whose figures disagree is always priced by genai-prices.

Conventions (those of `llmguard._record.Usage` and genai-prices):
``input_tokens`` is the total input; cache reads and writes inside it are
charged at their own rates, falling back to the input rate when the model
has none; reasoning tokens are inside ``output_tokens`` and charged as
output, as providers bill them. Date-conditional prices are resolved when a
model is first priced (`clear_price_cache` re-resolves); request-context
variants (service tiers, batch) are not applied.
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ._record import Usage


__all__ = [
    "Price",
    "Rates",
    "clear_price_cache",
    "context_window",
    "cost_at",
    "cost_of",
    "plain_rates",
    "price_of",
    "set_price",
]


@dataclass(frozen=True, slots=True)
class Price:
    """A model's prices in USD per million tokens.

    ``cache_read`` / ``cache_write`` are None when the model has no separate
    rate (such tokens are then charged at ``input``). ``source`` is
    ``"genai-prices"`` or ``"override"`` (`set_price`). For tiered models
    these are the base-tier rates.
    """

    input: float
    output: float
    cache_read: float | None
    cache_write: float | None
    source: str


# USD per token of plain input, cache read, cache write and output, USD per
# call, and the input count above which they no longer apply (a tier starts).
Rates = tuple[float, float, float, float, float, float]


@dataclass(slots=True)
class _Entry:
    """A resolved price plus what `cost_of` needs to compute fast."""

    price: Price
    in_rate: float  # USD per token
    out_rate: float
    read_rate: float
    write_rate: float
    per_call: float  # per-request charges (requests_kcount), USD
    tier_from: int | None  # tiers apply when input_tokens > this
    exact: bool  # price every usage through genai-prices (probe mismatch)
    model_price: Any = None  # genai_prices ModelPrice for tiers / exact
    rates: Rates = (0.0, 0.0, 0.0, 0.0, 0.0, math.inf)  # what `cost_at` takes (set by `_set_rates`)


_PER_MTOK = 1_000_000.0
_MISS: Any = object()
_PROBE = (1000, 700, 300, 200)  # input, output, cache_read, cache_write: below any tier

_overrides: dict[tuple[str, str | None], Price] = {}
_cache: dict[tuple[str | None, str | None], _Entry | None] = {}


def _norm(text: str | None) -> str | None:
    return text.strip().lower() if text else None


def _check(name: str, value: float | None, *, optional: bool) -> float | None:
    """*value* as a float, or ValueError naming the `set_price` parameter."""
    problem: str | None = None
    if value is None:
        if optional:
            return None
        problem = "is required, got None"
    elif isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        problem = f"must be a number, got {value!r}"
    elif not math.isfinite(value):
        problem = f"must be finite, got {value!r}"
    elif value < 0:
        problem = f"must be >= 0, got {value!r}"
    if problem is not None:
        # ValueError even for a wrong type: one exception type for "bad price".
        msg = f"set_price({name}=...) {problem}"
        raise ValueError(msg)
    return float(value)  # type: ignore[arg-type]


def set_price(
    model: str,
    *,
    input: float,  # noqa: A002 - the natural name, and keyword-only
    output: float,
    cache_read: float | None = None,
    cache_write: float | None = None,
    provider: str | None = None,
) -> None:
    """Price *model* yourself (USD per million tokens); overrides genai-prices.

    Use it for models genai-prices does not know (fine-tunes, self-hosted,
    new releases) or negotiated rates. With *provider*, the override applies
    only when that provider is named; without, to the model under any
    provider. Model names match case-insensitively. Raises ValueError naming
    the bad argument.
    """
    if not isinstance(model, str) or not model.strip():
        msg = f"set_price(model=...) must be a non-empty string, got {model!r}"
        raise ValueError(msg)
    if provider is not None and (not isinstance(provider, str) or not provider.strip()):
        msg = f"set_price(provider=...) must be a non-empty string or None, got {provider!r}"
        raise ValueError(msg)
    price = Price(
        input=_check("input", input, optional=False),  # type: ignore[arg-type]
        output=_check("output", output, optional=False),  # type: ignore[arg-type]
        cache_read=_check("cache_read", cache_read, optional=True),
        cache_write=_check("cache_write", cache_write, optional=True),
        source="override",
    )
    _overrides[(model.strip().lower(), _norm(provider))] = price
    clear_price_cache()  # cached lookups may now resolve differently


def clear_price_cache() -> None:
    """Forget resolved prices (overrides stay); the next lookup re-resolves."""
    _cache.clear()
    epoch[0] += 1


# Bumped whenever resolved prices are forgotten (`set_price`, `clear_price_cache`):
# code that keeps rates of its own (`plain_rates`, a budget's worst-case rates) compares it to know they still hold.
epoch: list[int] = [0]


def _override_for(model: str, provider: str | None) -> Price | None:
    m, p = model.strip().lower(), _norm(provider)
    found = _overrides.get((m, p)) or _overrides.get((m, None))
    if found is None and p is None:
        # No provider named: a provider-specific override of this model is
        # still the best knowledge there is.
        found = next((price for (om, _), price in _overrides.items() if om == m), None)
    return found


def _set_rates(entry: _Entry) -> _Entry:
    """Fill *entry*'s `Rates` from its fields (once they are all set)."""
    tier = math.inf if entry.tier_from is None else entry.tier_from
    entry.rates = (entry.in_rate, entry.read_rate, entry.write_rate, entry.out_rate, entry.per_call, tier)
    return entry


def _entry_from_price(price: Price) -> _Entry:
    in_rate = price.input / _PER_MTOK
    return _set_rates(_Entry(
        price=price,
        in_rate=in_rate,
        out_rate=price.output / _PER_MTOK,
        read_rate=in_rate if price.cache_read is None else price.cache_read / _PER_MTOK,
        write_rate=in_rate if price.cache_write is None else price.cache_write / _PER_MTOK,
        per_call=0.0,
        tier_from=None,
        exact=False,
    ))


def _base(value: Any) -> float | None:
    """The base-tier rate of a genai-prices price value (Decimal or TieredPrices)."""
    if value is None:
        return None
    base = getattr(value, "base", value)
    return float(base)


def _genai_usage(usage: Usage) -> Any:
    from genai_prices import Usage as GenaiUsage  # noqa: PLC0415 - loaded only when pricing

    cache_read = max(usage.cache_read_tokens, 0)
    cache_write = max(usage.cache_write_tokens, 0)
    # genai-prices rejects cache counts above the input total; treat such
    # usage as all-cache input, as the fast path does.
    total_input = max(usage.input_tokens, cache_read + cache_write)
    return GenaiUsage(
        input_tokens=total_input,
        output_tokens=max(usage.output_tokens, 0),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


def _exact_cost(entry: _Entry, usage: Usage) -> float | None:
    try:
        return float(entry.model_price.calc_price(_genai_usage(usage))["total_price"])
    except Exception:  # noqa: BLE001 - an odd usage is unpriced, never a crash
        return None


def cost_at(rates: Rates, usage: Usage) -> float:
    """USD cost of *usage* at *rates* (from `plain_rates`); the arithmetic behind `cost_of`.

    Valid while ``usage.input_tokens <= rates[5]`` (below any tier); above
    it, use `cost_of`.
    """
    cache_read = usage.cache_read_tokens
    cache_write = usage.cache_write_tokens
    plain = usage.input_tokens - cache_read - cache_write
    return (
        (plain if plain > 0 else 0) * rates[0]  # noqa: FURB136 - max() is a call: dearer on every call
        + cache_read * rates[1]
        + cache_write * rates[2]
        + usage.output_tokens * rates[3]
        + rates[4]
    )


def _lookup_genai(model: str, provider: str | None) -> Any:
    """The genai-prices PriceCalculation for a probe usage, or None if unknown."""
    import genai_prices  # noqa: PLC0415 - its data module is big: load on first lookup

    probe = genai_prices.Usage(
        input_tokens=_PROBE[0],
        output_tokens=_PROBE[1],
        cache_read_tokens=_PROBE[2],
        cache_write_tokens=_PROBE[3],
    )
    if provider:
        try:
            return genai_prices.calc_price(probe, model, provider_id=provider)
        except LookupError:
            pass  # e.g. a provider name genai-prices doesn't know: try by model alone
    try:
        return genai_prices.calc_price(probe, model)
    except LookupError:
        return None


def _entry_from_genai(model: str, provider: str | None) -> _Entry | None:
    calc = _lookup_genai(model, provider)
    if calc is None:
        return None
    mp = calc.model_price
    prices = {k: v for k, v in vars(mp).items() if not k.startswith("_") and v is not None}
    input_rate = _base(prices.get("input_mtok"))
    output_rate = _base(prices.get("output_mtok"))
    if input_rate is None and output_rate is None:
        return None  # not priced per token (images, audio hours...): unknown to us
    price = Price(
        input=input_rate or 0.0,
        output=output_rate or 0.0,
        cache_read=_base(prices.get("cache_read_mtok")),
        cache_write=_base(prices.get("cache_write_mtok")),
        source="genai-prices",
    )
    entry = _entry_from_price(price)
    entry.model_price = mp
    requests = prices.get("requests_kcount")
    if requests is not None:
        entry.per_call = _base(requests) / 1000.0  # type: ignore[operator]
    starts = [t.start for v in prices.values() for t in (getattr(v, "tiers", None) or ())]
    entry.tier_from = min(starts) if starts else None
    _set_rates(entry)
    # Check the fast arithmetic against genai-prices itself once.
    probe = Usage(_PROBE[0], _PROBE[1], _PROBE[2], _PROBE[3])
    expected = float(calc.total_price)
    if entry.tier_from is not None and probe.input_tokens > entry.tier_from:
        entry.exact = True  # pragma: no cover - no real tier starts this low
    elif not math.isclose(cost_at(entry.rates, probe), expected, rel_tol=1e-9, abs_tol=1e-12):
        entry.exact = True
    return entry


def _resolve(model: str | None, provider: str | None) -> _Entry | None:
    if not model or not isinstance(model, str):
        return None
    override = _override_for(model, provider)
    if override is not None:
        return _entry_from_price(override)
    try:
        return _entry_from_genai(model, provider)
    except Exception:  # noqa: BLE001 - a malformed price in the data must not break the call
        return None


def _entry(model: str | None, provider: str | None) -> _Entry | None:
    key = (model, provider)
    entry = _cache.get(key, _MISS)
    if entry is _MISS:
        entry = _resolve(model, provider)
        _cache[key] = entry
    return entry  # type: ignore[no-any-return]


def price_of(model: str | None, provider: str | None = None) -> Price | None:
    """The price of *model* (optionally as sold by *provider*); None if unknown."""
    entry = _entry(model, provider)
    return entry.price if entry is not None else None


def cost_of(usage: Usage, model: str | None, provider: str | None = None) -> float | None:
    """USD cost of *usage* on *model*; None when the model's price is unknown."""
    entry = _cache.get((model, provider), _MISS)
    if entry is _MISS:
        entry = _entry(model, provider)
    if entry is None:
        return None
    rates: Rates = entry.rates
    if entry.exact or usage.input_tokens > rates[5]:
        return _exact_cost(entry, usage)
    return cost_at(rates, usage)


def plain_rates(model: str | None, provider: str | None = None) -> Rates | None:
    """The `Rates` `cost_at` prices *model* by; None when unknown or priced only by genai-prices.

    For code that prices every call (a budget's settlement): the cached
    rates, without `cost_of`'s per-call checks. Above ``rates[5]`` input
    tokens (a tier), use `cost_of`.
    """
    entry = _cache.get((model, provider), _MISS)
    if entry is _MISS:
        entry = _entry(model, provider)
    if entry is None or entry.exact:
        return None
    return entry.rates  # type: ignore[no-any-return]


_windows: dict[str, int | None] = {}


def context_window(model: str | None) -> int | None:
    """*model*'s context window in tokens, from genai-prices' model data; None when unknown.

    Resolved once per model (genai-prices' lookup costs tens of
    microseconds), as `route`'s capability check reads it on every call.
    """
    if not model or not isinstance(model, str):
        return None
    window = _windows.get(model, _MISS)
    if window is _MISS:
        try:
            calc = _lookup_genai(model, None)
            found = getattr(getattr(calc, "model", None), "context_window", None)
        except Exception:  # noqa: BLE001 - malformed data must not break a call
            found = None
        window = found if isinstance(found, int) and found > 0 else None
        if len(_windows) < 4096:  # bounded: model names come from callers
            _windows[model] = window
    return window  # type: ignore[no-any-return]
