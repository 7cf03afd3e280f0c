"""Stacks of guards as users write them, on a function returning a real anthropic ``Message``.

The README's example stacks ``trace → cache → retry → budget → timeout``.
Its untraced core — ``@lg.retry(attempts=4) @lg.budget(usd=..., per="day",
key=lambda user, **_: user, max_output=512) @lg.timeout(30, first_token=5,
idle=10)`` — is printed beside tenacity's retry alone
(``tenacity.retry(stop=stop_after_attempt(4))`` on the same function), as
what each adds over the bare call and as a ratio of tenacity's (target
<= 0.3x, sync and async). A sync ``timeout`` hands each call to a worker
thread, so the sync stack is printed with and without it.

Then the full README stack (the cache missing every call: each call asks
something new; a hit is its own row), and what one more guard adds:

* the README guards added one at a time, innermost first, each step's
  increment beside that guard alone on the function: what stacking costs
  over the guard's own work (target <= 1 µs);
* 1..5 ``@lg.retry`` stacked (the cheapest guard: the increment is nearly
  all dispatch).

The functions take no time of their own, so every figure is the guards'
and the wrapping core's. All rows of one table are timed in batches taken
turn about (`interleaved`), medians of batches.
"""

from __future__ import annotations

import itertools
import statistics
import warnings

from typing import Any

from _harness import (
    anthropic_message,
    interleaved,
    interleaved_async,
    interleaved_samples,
    interleaved_samples_async,
    overhead,
    paired_difference,
    row,
    stacked,
)

import llmguard as lg


MESSAGE = anthropic_message()
UNTRACED = ("retry", "budget", "timeout")
README = ("trace", "cache", "retry", "budget", "timeout")
NUMBER = 2_000


def ask(q: Any, user: str = "anon", model: str = "claude-sonnet-4-6") -> Any:
    return MESSAGE


async def aask(q: Any, user: str = "anon", model: str = "claude-sonnet-4-6") -> Any:
    return MESSAGE


def _tenacity(fn: Any) -> Any:
    import tenacity

    return tenacity.retry(stop=tenacity.stop_after_attempt(4))(fn)


def _callers(fn: Any, is_async: bool, fresh: Any) -> dict[str, Any]:
    """Zero-argument callers for each configuration of the stack table."""
    hit = stacked(fn, *README)
    configs = {
        "bare": fn,
        "tenacity": _tenacity(fn),
        "untraced": stacked(fn, *UNTRACED),
        "untraced_no_timeout": stacked(fn, "retry", "budget"),
        "readme": stacked(fn, *README),
        "readme_no_timeout": stacked(fn, "trace", "cache", "retry", "budget"),
    }
    callers = {name: (lambda f=f: f(fresh(), user="ada")) for name, f in configs.items()}
    callers["readme_hit"] = lambda: hit("same question", user="ada")
    return callers


def _stack_table(sync: bool) -> dict[str, float]:
    fresh = itertools.count().__next__  # a new question each call: the cache misses
    if sync:
        t = interleaved(_callers(ask, False, fresh), number=NUMBER)
    else:
        t = interleaved_async(_callers(aask, True, fresh), number=NUMBER)
    kind = "sync " if sync else "async"
    bare = t["bare"]
    ten = overhead(t["tenacity"], bare)
    print(row(f"{kind} bare call (returns a pre-built Message)", bare))
    print(row(f"{kind} tenacity.retry(stop_after_attempt(4)), added", ten))
    rows = [
        ("untraced", "retry → budget → timeout, added (target <= 0.3x)"),
        ("untraced_no_timeout", "retry → budget (no timeout), added"),
        ("readme", "README stack, cache miss, added"),
        ("readme_no_timeout", "README stack without timeout, miss, added"),
        ("readme_hit", "README stack, cache hit, added"),
    ]
    out = {"tenacity": ten}
    for key, label in rows:
        added = overhead(t[key], bare)
        print(row(f"{kind} {label}", added, ten, "of tenacity"))
        out[key] = added
    return out


def _increments(sync: bool) -> None:
    """The README guards added one at a time from the innermost, beside each alone."""
    fn = ask if sync else aask
    order = README if not sync else README[:-1]  # sync timeout: a worker thread, timed above
    fresh = itertools.count().__next__
    fns: dict[str, Any] = {"bare": fn}
    for i in range(len(order)):
        fns[f"stack{i}"] = stacked(fn, *order[len(order) - 1 - i :])
        fns[f"alone{i}"] = stacked(fn, order[len(order) - 1 - i])
    callers = {name: (lambda f=f: f(fresh(), user="ada")) for name, f in fns.items()}
    if sync:
        t = interleaved_samples(callers, number=NUMBER)
    else:
        t = interleaved_samples_async(callers, number=NUMBER)
    kind = "sync " if sync else "async"
    print(f"  {kind}: guard added (outermost so far) | stack | increment | that guard alone | increment - alone")
    print("         (each a median over rounds of the difference within a round)")
    for i in range(len(order)):
        name = order[len(order) - 1 - i]
        inc = paired_difference(t, f"stack{i}", f"stack{i - 1}" if i else "bare")
        alone = paired_difference(t, f"alone{i}", "bare")
        rounds = zip(t[f"stack{i}"], t[f"stack{i - 1}"] if i else t["bare"], t[f"alone{i}"], t["bare"], strict=True)
        extra = statistics.median((s - p) - (a - b) for s, p, a, b in rounds)
        print(
            f"  {kind} + {name:<8} {paired_difference(t, f'stack{i}', 'bare') * 1e6:9.3f} µs "
            f"{inc * 1e6:9.3f} µs {alone * 1e6:9.3f} µs {extra * 1e6:9.3f} µs"
        )


def _retries(sync: bool) -> None:
    """1..5 @lg.retry stacked: the increment is the dispatch of one more guard."""
    fn = ask if sync else aask
    fns: dict[str, Any] = {"0": fn}
    g = fn
    for n in range(1, 6):
        g = lg.retry(attempts=4)(g)
        fns[str(n)] = g
    callers = {name: (lambda f=f: f("q", user="ada")) for name, f in fns.items()}
    if sync:
        t = interleaved_samples(callers, number=NUMBER * 2)
    else:
        t = interleaved_samples_async(callers, number=NUMBER * 2)
    kind = "sync " if sync else "async"
    steps = [paired_difference(t, str(n), str(n - 1)) for n in range(1, 6)]
    print(
        f"  {kind} n x @lg.retry, added per n=1..5: "
        + ", ".join(f"{paired_difference(t, str(n), '0') * 1e6:.2f}" for n in range(1, 6))
        + " µs; increments: "
        + ", ".join(f"{s * 1e6:.2f}" for s in steps)
        + " µs"
    )


def run() -> dict[str, float]:
    warnings.simplefilter("ignore")
    print("stack: README guards stacked on a function returning a real anthropic Message (added over the bare call)")
    results: dict[str, float] = {}
    for sync in (True, False):
        for key, value in _stack_table(sync).items():
            results[("sync_" if sync else "async_") + key] = value
    s, a = results["sync_untraced"] / results["sync_tenacity"], results["async_untraced"] / results["async_tenacity"]
    print(f"  untraced stack / tenacity: sync {s:.2f}x, async {a:.2f}x (target <= 0.3x)")
    print()
    print("stack: one more guard (README guards innermost first; sync without timeout)")
    _increments(True)
    _increments(False)
    _retries(True)
    _retries(False)
    return results


if __name__ == "__main__":
    run()
