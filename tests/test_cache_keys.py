"""Canonical cache keys, by property: order never matters, content always does.

`same` below is the equality the key must implement: structural, with
types kept apart where they differ on the wire or in Python (``1`` vs
``1.0`` vs ``True`` vs ``"1"``, ``0.0`` vs ``-0.0``, ``b"x"`` vs ``"x"``), dict
and set order ignored, and tuples the same as lists (both are a JSON array).
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys

from pathlib import Path
from typing import Any

import anthropic
import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmguard._cache import CacheLayer, _layer_of, cache
from llmguard._cache_key import canonical


REPO = Path(__file__).resolve().parent.parent

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=4),
)
keys = st.one_of(st.text(max_size=6), st.integers(-3, 3), st.booleans(), st.sampled_from(["\x00dict", "\x00bytes", ""]))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(keys, inner, max_size=4),
        st.frozensets(st.one_of(st.integers(-3, 3), st.text(max_size=3)), max_size=3),
    ),
    max_leaves=12,
)
requests = st.dictionaries(st.sampled_from(["model", "messages", "temperature", "tools", "system", "extra"]), values, max_size=5)


def _kind(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return "seq"
    if isinstance(v, (set, frozenset)):
        return "set"
    return type(v)


def _atom(v: Any) -> Any:
    """A hashable, type-keeping identity for a dict key or set member."""
    return (type(v), repr(v) if isinstance(v, float) else v)


def same(a: Any, b: Any) -> bool:
    """The equality canonical keys implement (see the module docstring)."""
    if _kind(a) != _kind(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        ma = {_atom(k): v for k, v in a.items()}
        mb = {_atom(k): v for k, v in b.items()}
        return ma.keys() == mb.keys() and all(same(ma[k], mb[k]) for k in ma)
    if isinstance(a, (set, frozenset)):
        return {_atom(x) for x in a} == {_atom(x) for x in b}
    if isinstance(a, float):
        return repr(a) == repr(b)
    return bool(a == b)


def reordered(v: Any, rng: random.Random) -> Any:
    """*v* with every dict (and set) rebuilt in a shuffled insertion order."""
    if isinstance(v, dict):
        items = list(v.items())
        rng.shuffle(items)
        return {k: reordered(x, rng) for k, x in items}
    if isinstance(v, list):
        return [reordered(x, rng) for x in v]
    if isinstance(v, tuple):
        return tuple(reordered(x, rng) for x in v)
    if isinstance(v, frozenset):
        items = list(v)
        rng.shuffle(items)
        return frozenset(items)
    return v


def chat(**kw: Any) -> str:
    return "answer"


LAYER: CacheLayer = _layer_of(cache(chat))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(requests, st.randoms(use_true_random=False))
def test_keys_are_stable_across_dict_and_argument_order(request: dict[str, Any], rng: random.Random) -> None:
    """Shuffling dict insertion order and keyword order never changes the key."""
    shuffled = reordered(request, rng)

    assert LAYER.key_for(**request) == LAYER.key_for(**shuffled)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(requests, requests)
def test_keys_are_equal_exactly_for_equal_requests(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two requests share a key if and only if they are the same request."""
    assert same(a, b) == (LAYER.key_for(**a) == LAYER.key_for(**b))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(requests, st.data())
def test_a_one_value_change_changes_the_key(request: dict[str, Any], data: st.DataObject) -> None:
    """Replacing any one argument with a different value gives a different key."""
    name = data.draw(st.sampled_from(["model", "messages", "temperature", "tools", "system", "extra"]))
    new = data.draw(values)
    changed = {**request, name: new}

    assert same(request, changed) == (LAYER.key_for(**request) == LAYER.key_for(**changed))


def tweaked(v: Any, rng: random.Random) -> Any:
    """*v* with one leaf somewhere inside changed (or a container grown)."""
    if isinstance(v, dict):
        if not v:
            return {"new": 1}
        k = rng.choice(list(v))
        return {**v, k: tweaked(v[k], rng)}
    if isinstance(v, (list, tuple)):
        if not v:
            return type(v)([0])
        i = rng.randrange(len(v))
        out = list(v)
        out[i] = tweaked(v[i], rng)
        return type(v)(out)
    if isinstance(v, frozenset):
        return v | {"new!"}
    if isinstance(v, bool):
        return not v
    if isinstance(v, float) and not math.isfinite(v):
        return 0.0
    if isinstance(v, (int, float)):
        return v + 1 if abs(v) < 2**52 else v / 2
    if isinstance(v, str):
        return v + "x"
    if isinstance(v, bytes):
        return v + b"x"
    return 0  # None


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(requests.filter(bool), st.randoms(use_true_random=False))
def test_changing_any_value_deep_inside_changes_the_key(request: dict[str, Any], rng: random.Random) -> None:
    """One leaf changed anywhere in the nesting gives a different key."""
    name = rng.choice(sorted(request))
    changed = {**request, name: tweaked(request[name], rng)}

    assert not same(request, changed)
    assert LAYER.key_for(**request) != LAYER.key_for(**changed)


@settings(max_examples=200)
@given(st.lists(scalars, min_size=2, max_size=6, unique_by=repr), st.randoms(use_true_random=False))
def test_list_order_is_part_of_the_key(items: list[Any], rng: random.Random) -> None:
    """Messages in another order are another conversation: a permuted list is another key."""
    permuted = list(items)
    rng.shuffle(permuted)

    assert same(items, permuted) == (LAYER.key_for(messages=items) == LAYER.key_for(messages=permuted))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({1: "x"}, {"1": "x"}),
        ({True: "x"}, {"true": "x"}),
        ({None: "x"}, {"null": "x"}),
        ({"\x00bytes": "eA=="}, b"x"),
        ({"\x00dict": []}, {}),
        ("eA==", b"x"),
        (1, 1.0),
        (1, True),
        (0.0, -0.0),
        ([1, 2], {1, 2}),
        ("a", ["a"]),
    ],
)
def test_values_that_json_would_blur_get_different_keys(a: Any, b: Any) -> None:
    """Non-str dict keys, tag look-alikes and bytes never collide with plain JSON."""
    assert LAYER.key_for(extra=a) != LAYER.key_for(extra=b)


def test_equal_requests_through_a_decorated_function_make_one_call() -> None:
    """The same property end to end: one call per distinct request, counted."""
    rng = random.Random(7)  # noqa: S311 - a reproducible shuffle, not a secret
    calls: list[Any] = []

    @cache
    def f(**kw: Any) -> None:
        calls.append(kw)

    base = {"model": "m", "messages": [{"role": "user", "content": "hi", "meta": {"a": 1, "b": (1, 2)}}]}
    for _ in range(5):
        f(**reordered(base, rng))
    f(**{**base, "model": "n"})

    assert 2 == len(calls)


def test_canonical_text_is_sorted_and_compact() -> None:
    """canonical() is sorted-key, separator-free JSON with tags for what JSON lacks."""
    assert '{"a":[1,2],"b":{"\\u0000bytes":"eA=="}}' == canonical({"b": b"x", "a": (1, 2)})
    with pytest.raises(TypeError, match=r"builtins.object cannot be part of a cache key"):
        canonical(object())


_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from llmguard._cache import cache, _layer_of

def chat(**kw):
    return kw

layer = _layer_of(cache(chat))
print(layer.key_for(model="m", tags=frozenset({"alpha", "beta", "gamma", "delta"}), x={"b": 1, "a": 2}))
"""


def test_keys_do_not_depend_on_the_hash_seed(tmp_path: Path) -> None:
    """Two processes with different PYTHONHASHSEEDs compute the same key (sets included)."""
    script = tmp_path / "key.py"
    script.write_text(_SCRIPT)
    out = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run(  # noqa: S603 - our own script
            [sys.executable, str(script), str(REPO)], env=env, capture_output=True, text=True, check=True
        )
        out.add(proc.stdout.strip())

    assert 1 == len(out)


def test_sdk_sentinels_and_models_normalise() -> None:
    """NOT_GIVEN inside a dict is dropped like an absent key; SDK models key by content."""
    msg = anthropic.types.TextBlock(type="text", text="hi")

    assert LAYER.key_for(extra={"a": 1, "b": anthropic.NOT_GIVEN}) == LAYER.key_for(extra={"a": 1})
    assert LAYER.key_for(extra=msg) == LAYER.key_for(extra=anthropic.types.TextBlock(type="text", text="hi"))
    assert LAYER.key_for(extra=msg) != LAYER.key_for(extra={"type": "text", "text": "hi"})
