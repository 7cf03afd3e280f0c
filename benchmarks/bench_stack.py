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
  increment beside that guard's own work (it alone on the function minus a
  guard that does nothing alone, `_harness.PassThrough`): what stacking
  costs over the guard's own work (target <= 1 µs);
* 1..5 `PassThrough` guards stacked (no work of their own: each one after
  the first adds dispatch alone) and 1..5 ``@lg.retry(attempts=4)``.

The functions take no time of their own, so every figure is the guards'
and the wrapping core's. All rows of one table are timed in batches taken
turn about (`interleaved`), medians of batches. `bench_targets` prints
these beside the targets of issue #13.
"""

from __future__ import annotations

import itertools
import statistics
import warnings

from typing import Any

from _harness import (
    PassThrough,
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


def stack_table(sync: bool) -> dict[str, float]:
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
    out = {"bare": bare, "tenacity": ten}
    for key, label in rows:
        added = overhead(t[key], bare)
        print(row(f"{kind} {label}", added, ten, "of tenacity"))
        out[key] = added
    return out


def _samples(callers: dict[str, Any], sync: bool, number: int = NUMBER) -> dict[str, list[float]]:
    return interleaved_samples(callers, number=number) if sync else interleaved_samples_async(callers, number=number)


def increments(sync: bool) -> list[tuple[str, float, float, float]]:
    """The README guards added one at a time from the innermost, beside each alone.

    Per guard: (name, what adding it to the stack so far added, its own
    work, the first minus the second). A guard's own work is it alone on
    the function minus a `PassThrough` alone (the wrapping core both pay);
    the target is that adding a guard costs at most 1 µs more than that.
    Each figure is a median over rounds of differences within a round.
    """
    fn = ask if sync else aask
    order = README if not sync else README[:-1]  # sync timeout: a worker thread, timed above
    fresh = itertools.count().__next__
    fns: dict[str, Any] = {"bare": fn, "pass": PassThrough()(fn)}
    for i in range(len(order)):
        fns[f"stack{i}"] = stacked(fn, *order[len(order) - 1 - i :])
        fns[f"alone{i}"] = stacked(fn, order[len(order) - 1 - i])
    t = _samples({name: (lambda f=f: f(fresh(), user="ada")) for name, f in fns.items()}, sync)
    out = []
    for i in range(len(order)):
        before = t[f"stack{i - 1}"] if i else t["bare"]
        rounds = list(zip(t[f"stack{i}"], before, t[f"alone{i}"], t["pass"], strict=True))
        inc = statistics.median(s - p for s, p, _, _ in rounds)
        own = statistics.median(a - q for _, _, a, q in rounds)
        extra = statistics.median((s - p) - (a - q) for s, p, a, q in rounds)
        out.append((order[len(order) - 1 - i], inc, own, extra))
    return out


def print_increments(sync: bool, rows: list[tuple[str, float, float, float]]) -> None:
    kind = "sync " if sync else "async"
    print(f"  {kind}: guard added (outermost so far) | increment | its own work (alone - pass-through alone) | extra")
    for name, inc, own, extra in rows:
        print(f"  {kind} + {name:<8} {inc * 1e6:9.3f} µs {own * 1e6:9.3f} µs {extra * 1e6:9.3f} µs")


def chain(sync: bool, make: Any, depth: int = 5) -> dict[str, float]:
    """1..*depth* guards made by *make()* stacked on one function.

    Returns, over the bare call: ``total{n}`` for n guards; ``own``, one
    such guard alone minus a `PassThrough` alone (its own work); and
    ``per_guard``, (n=depth minus n=1) / (depth - 1): what each guard after
    the first adds, to hold against 1 µs + ``own``. Medians over rounds of
    within-round differences.
    """
    fn = ask if sync else aask
    fns: dict[str, Any] = {"0": fn, "pass": PassThrough()(fn)}
    g = fn
    for n in range(1, depth + 1):
        g = make()(g)
        fns[str(n)] = g
    t = _samples({name: (lambda f=f: f("q", user="ada")) for name, f in fns.items()}, sync, NUMBER * 2)
    out = {f"total{n}": paired_difference(t, str(n), "0") for n in range(1, depth + 1)}
    out["own"] = paired_difference(t, "1", "pass")
    out["per_guard"] = paired_difference(t, str(depth), "1") / (depth - 1)
    return out


def print_chain(sync: bool, label: str, c: dict[str, float], depth: int = 5) -> None:
    kind = "sync " if sync else "async"
    print(
        f"  {kind} n x {label}, added for n=1..{depth}: "
        + ", ".join(f"{c[f'total{n}'] * 1e6:.2f}" for n in range(1, depth + 1))
        + f" µs; each after the first {c['per_guard'] * 1e6:.2f} µs; its own work {c['own'] * 1e6:.2f} µs"
    )


CHAINS: dict[str, Any] = {
    "PassThrough": PassThrough,  # no work of its own: the increment is dispatch alone
    "@lg.retry(attempts=4)": lambda: lg.retry(attempts=4),
}


def run() -> dict[str, float]:
    warnings.simplefilter("ignore")
    print("stack: README guards stacked on a function returning a real anthropic Message (added over the bare call)")
    results: dict[str, float] = {}
    for sync in (True, False):
        for key, value in stack_table(sync).items():
            results[("sync_" if sync else "async_") + key] = value
    s, a = results["sync_untraced"] / results["sync_tenacity"], results["async_untraced"] / results["async_tenacity"]
    print(f"  untraced stack / tenacity: sync {s:.2f}x, async {a:.2f}x (target <= 0.3x)")
    print()
    print("stack: one more guard (README guards innermost first; sync without timeout)")
    for sync in (True, False):
        print_increments(sync, increments(sync))
    for label, make in CHAINS.items():
        for sync in (True, False):
            print_chain(sync, label, chain(sync, make))
    return results


if __name__ == "__main__":
    run()
