"""llmguard.prices: cached per-model prices agree with genai-prices to the cent and beyond."""

from __future__ import annotations

from collections.abc import Iterator

import genai_prices
import pytest

from llmguard import prices
from llmguard._record import Usage
from llmguard.prices import Price, clear_price_cache, cost_of, price_of, set_price


@pytest.fixture(autouse=True)
def _isolated_prices(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with no overrides and an empty cache."""
    monkeypatch.setattr(prices, "_overrides", {})
    clear_price_cache()
    yield
    clear_price_cache()


def genai_cost(usage: Usage, model: str, provider: str | None = None) -> float:
    """The reference figure: genai_prices.calc_price on the same usage."""
    ref = genai_prices.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
    )
    return float(genai_prices.calc_price(ref, model, provider_id=provider).total_price)


MODELS = [
    ("claude-sonnet-4-5-20250929", "anthropic"),
    ("claude-opus-4-1", "anthropic"),
    ("claude-3-5-haiku-latest", "anthropic"),
    ("gpt-4o", "openai"),
    ("gpt-4o-mini", "openai"),
    ("gpt-5", "openai"),
    ("o3", "openai"),
    ("gemini-2.5-pro", "google"),
    ("gemini-2.5-flash", "google"),
]
USAGES = [
    Usage(1000, 500),
    Usage(12_000, 800, cache_read_tokens=3000, cache_write_tokens=1000),
    Usage(5000, 0, cache_read_tokens=5000),
    Usage(100, 2000, reasoning_tokens=1500),
    Usage(0, 0),
]


@pytest.mark.parametrize(("model", "provider"), MODELS)
@pytest.mark.parametrize(
    "usage", USAGES, ids=["plain", "cache-rw", "all-cached", "reasoning", "zero"]
)
def test_cost_matches_genai_prices(model: str, provider: str, usage: Usage) -> None:
    """cost_of equals genai_prices.calc_price(...).total_price, with and without the provider."""
    expected = genai_cost(usage, model, provider)
    assert expected == pytest.approx(cost_of(usage, model, provider), rel=1e-12, abs=1e-15)
    assert expected == pytest.approx(cost_of(usage, model), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "gemini-2.5-pro"])
@pytest.mark.parametrize("input_tokens", [200_000, 200_001, 350_000])
def test_tiered_prices_match_genai_prices(model: str, input_tokens: int) -> None:
    """Across a >200k-input tier boundary the whole usage is priced at the tier, as genai-prices does."""
    usage = Usage(input_tokens, 4000, cache_read_tokens=50_000, cache_write_tokens=10_000)
    assert genai_cost(usage, model) == pytest.approx(cost_of(usage, model), rel=1e-12)


def test_tier_boundary_changes_the_rate() -> None:
    """One token over the threshold moves every token to the higher rate (cliff pricing)."""
    below = cost_of(Usage(200_000, 0), "claude-sonnet-4-5")
    above = cost_of(Usage(200_001, 0), "claude-sonnet-4-5")
    assert below is not None
    assert above is not None
    assert 0.6 == pytest.approx(below)
    assert pytest.approx(200_001 * 6 / 1e6) == above


def test_price_of_known_model() -> None:
    """price_of gives base-tier USD per million tokens from genai-prices."""
    assert Price(3.0, 15.0, 0.3, 3.75, "genai-prices") == price_of("claude-sonnet-4-5", "anthropic")
    assert Price(2.5, 10.0, 1.25, None, "genai-prices") == price_of("gpt-4o")


@pytest.mark.parametrize("model", ["no-such-model-xyz", "", None])
def test_unknown_model_is_none(model: str | None) -> None:
    """An unknown (or missing) model is priced None, never a silent zero."""
    assert price_of(model) is None
    assert cost_of(Usage(1000, 1000), model) is None


def test_unknown_provider_name_falls_back_to_model_lookup() -> None:
    """A provider name genai-prices does not know still prices the model by name."""
    usage = Usage(1000, 100)
    assert cost_of(usage, "gpt-4o") == cost_of(usage, "gpt-4o", "my-proxy")


def test_cache_tokens_without_own_rate_use_input_rate() -> None:
    """gpt-4o has no cache-write rate: those tokens are charged as input."""
    with_writes = cost_of(Usage(1000, 0, cache_write_tokens=400), "gpt-4o")
    plain = cost_of(Usage(1000, 0), "gpt-4o")
    assert plain == with_writes


def test_reasoning_tokens_are_priced_inside_output() -> None:
    """Reasoning tokens are part of output_tokens; reporting them changes nothing."""
    assert cost_of(Usage(100, 2000), "o3") == cost_of(Usage(100, 2000, reasoning_tokens=1500), "o3")


def test_override_wins_over_genai_prices() -> None:
    """set_price replaces the genai-prices price for that model."""
    set_price("gpt-4o", input=1.0, output=2.0, cache_read=0.5)
    assert Price(1.0, 2.0, 0.5, None, "override") == price_of("gpt-4o")
    usage = Usage(1_000_000, 1_000_000, cache_read_tokens=200_000)
    assert pytest.approx(0.8 + 0.1 + 2.0) == cost_of(usage, "gpt-4o")


def test_override_prices_an_unknown_model() -> None:
    """An override makes an unknown model priceable; cache rates fall back to input."""
    set_price("my-finetune", input=4.0, output=8.0)
    assert pytest.approx(4.0 + 8.0) == cost_of(
        Usage(1_000_000, 1_000_000, cache_read_tokens=10), "my-finetune"
    )


def test_override_is_case_insensitive_and_provider_scoped() -> None:
    """Model names match case-insensitively; a provider-scoped override applies to that provider."""
    set_price("Local-Llama", input=1.0, output=1.0, provider="ollama")
    assert "override" == getattr(price_of("local-llama", "ollama"), "source", None)
    assert "override" == getattr(price_of("LOCAL-LLAMA"), "source", None)  # no provider named
    assert price_of("local-llama", "other") is None


@pytest.mark.parametrize(
    ("cache_write", "expected"),
    [
        # 600 plain input tokens at $3/Mtok + 400 cache writes at $3.75/Mtok.
        (3.75, (600 * 3.0 + 400 * 3.75) / 1e6),
        # No cache-write rate: the writes are input, each billed once at $3/Mtok.
        (None, 1000 * 3.0 / 1e6),
    ],
    ids=["own rate", "input rate"],
)
def test_an_override_bills_cache_writes_once(cache_write: float | None, expected: float) -> None:
    """Cache writes are inside input_tokens: billed at their rate and not again as plain input.

    A set_price model gets no cross-check against genai-prices, so the
    arithmetic itself must be right.
    """
    set_price("my-cached-model", input=3.0, output=15.0, cache_read=0.3, cache_write=cache_write)
    usage = Usage(1000, 0, cache_write_tokens=400)

    assert pytest.approx(expected, rel=1e-12) == cost_of(usage, "my-cached-model")
    # With output and cache reads too: 200 plain, 400 read, 400 written, 50 out.
    mixed = Usage(1000, 50, cache_read_tokens=400, cache_write_tokens=400)
    write_rate = 3.0 if cache_write is None else cache_write
    mixed_expected = (200 * 3.0 + 400 * 0.3 + 400 * write_rate + 50 * 15.0) / 1e6
    assert pytest.approx(mixed_expected, rel=1e-12) == cost_of(mixed, "my-cached-model")


def test_override_invalidates_cached_price() -> None:
    """A price cached before set_price is not served afterwards."""
    before = cost_of(Usage(1000, 1000), "gpt-4o")
    set_price("gpt-4o", input=0.0, output=0.0)
    assert before != cost_of(Usage(1000, 1000), "gpt-4o")
    assert 0.0 == cost_of(Usage(1000, 1000), "gpt-4o")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input": -1, "output": 1}, "set_price(input=...) must be >= 0, got -1"),
        ({"input": 1, "output": -0.5}, "set_price(output=...) must be >= 0, got -0.5"),
        (
            {"input": 1, "output": 1, "cache_read": -2},
            "set_price(cache_read=...) must be >= 0, got -2",
        ),
        (
            {"input": 1, "output": 1, "cache_write": float("nan")},
            "set_price(cache_write=...) must be finite, got nan",
        ),
        ({"input": "3", "output": 1}, "set_price(input=...) must be a number, got '3'"),
        ({"input": True, "output": 1}, "set_price(input=...) must be a number, got True"),
        ({"input": 1, "output": 1, "provider": ""}, "set_price(provider=...)"),
    ],
)
def test_bad_override_arguments_raise_value_error(kwargs: dict[str, object], message: str) -> None:
    """Invalid override arguments raise ValueError naming the parameter."""
    with pytest.raises(
        ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")
    ):
        set_price("m", **kwargs)  # type: ignore[arg-type]
    assert price_of("m") is None


def test_bad_model_name_raises_value_error() -> None:
    """An empty model name is rejected, naming the parameter."""
    with pytest.raises(ValueError, match=r"set_price\(model=\.\.\.\)"):
        set_price("  ", input=1, output=1)


def test_prices_are_cached_per_model() -> None:
    """The first lookup caches the model (unknown ones too); clear_price_cache forgets them."""
    cost_of(Usage(1, 1), "gpt-4o")
    cost_of(Usage(1, 1), "no-such-model-xyz")
    assert ("gpt-4o", None) in prices._cache
    assert prices._cache[("no-such-model-xyz", None)] is None
    clear_price_cache()
    assert {} == prices._cache


def test_more_cache_than_input_does_not_raise() -> None:
    """Inconsistent usage (cache > input) is priced as all-cache input instead of raising."""
    odd = cost_of(Usage(10, 0, cache_read_tokens=100), "claude-sonnet-4-5")
    assert pytest.approx(100 * 0.3 / 1e6) == odd
