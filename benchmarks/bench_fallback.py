"""What @lg.fallback adds when the primary answers (the success path), over the same stack without it.

A ``def`` (and an ``async def``) returning a constant under ``@lg.retry``,
with and without ``@lg.fallback(alternate, {"model": ...})`` above it: with
no circuits (``breaker=False``), and with a circuit per target (the
default: the primary's is admitted and told of its success on every call).
Batches are taken turn about (`interleaved_samples`); each figure is the
median over rounds of the paired difference against the stack without
fallback, beside a guard that only proceeds (the runner's share of any
guard) and a hand-written ``try``/``except`` around the call (the anchor:
what falling back by hand costs when nothing fails). Target: <= 1 µs added.
"""

from __future__ import annotations

import statistics

from typing import Any

from _harness import (
    interleaved_samples,
    interleaved_samples_async,
    paired_difference,
    per_call,
    row,
)

import llmguard as lg

from llmguard._breaker import circuit as new_circuit
from llmguard._runner import Guard


def primary(q: str, model: str = "claude-sonnet-4-6") -> str:
    return q


def alternate(q: str, model: str = "gpt-4o-mini") -> str:
    return q


async def aprimary(q: str, model: str = "claude-sonnet-4-6") -> str:
    return q


async def aalternate(q: str, model: str = "gpt-4o-mini") -> str:
    return q


def _measure(label: str, fn: Any, alt: Any) -> tuple[float, float]:
    """Print one shape's figures; (added without circuits, added with them) in seconds."""
    stack: Any = lg.retry(fn)
    proceeds: Any = Guard()(lg.retry(fn))
    plain: Any = lg.fallback(alt, {"model": "claude-haiku-4-5"}, breaker=False)(lg.retry(fn))
    circuits: Any = lg.fallback(alt, {"model": "claude-haiku-4-5"})(lg.retry(fn))
    if label == "sync ":

        def by_hand() -> Any:
            try:
                return stack("q")
            except ConnectionError:
                return alternate("q")

        s = interleaved_samples(
            {"stack": lambda: stack("q"), "hand": by_hand, "guard": lambda: proceeds("q"), "plain": lambda: plain("q"), "circuits": lambda: circuits("q")},
            number=5_000,
        )
    else:

        async def aby_hand() -> Any:
            try:
                return await stack("q")
            except ConnectionError:
                return await aalternate("q")

        s = interleaved_samples_async(
            {"stack": lambda: stack("q"), "hand": aby_hand, "guard": lambda: proceeds("q"), "plain": lambda: plain("q"), "circuits": lambda: circuits("q")},
            number=5_000,
        )
    base = statistics.median(s["stack"])
    guard = paired_difference(s, "guard", "stack")
    added_plain = paired_difference(s, "plain", "stack")
    added_circuits = paired_difference(s, "circuits", "stack")
    print(row(f"{label} @lg.retry alone (the stack), whole call", base))
    print(row(f"{label} try/except fallback by hand, added (anchor)", paired_difference(s, "hand", "stack")))
    print(row(f"{label} a guard that only proceeds, added (the runner)", guard))
    print(row(f"{label} @lg.fallback(breaker=False), added (target <= 1 µs)", added_plain, guard, "of the runner's guard"))
    print(row(f"{label} @lg.fallback (a circuit per target), added (target <= 1 µs)", added_circuits, guard, "of the runner's guard"))
    print(row(f"{label} @lg.fallback (circuits), whole call", base + added_circuits, base, "of the stack"))
    return added_plain, added_circuits


def _circuit_share() -> float:
    """Seconds a memory circuit's admit and record of a success take (the breaker's share of the figure)."""
    circuit = new_circuit("bench_fallback.share")

    def once() -> None:
        circuit.record(circuit.admit(), None)

    return per_call(once, number=20_000)


def run() -> dict[str, float]:
    print("fallback: what @lg.fallback adds when the primary answers, over @lg.retry alone (median of paired batch differences)")
    out: dict[str, float] = {}
    share = _circuit_share()
    print(row("a memory circuit's admit + record (the breaker's share, per target tried)", share))
    for label, fn, alt in (("sync ", primary, alternate), ("async", aprimary, aalternate)):
        added_plain, added_circuits = _measure(label, fn, alt)
        out[f"fallback_{label.strip()}_no_breaker_us"] = added_plain * 1e6
        out[f"fallback_{label.strip()}_us"] = added_circuits * 1e6
    out["fallback_circuit_share_us"] = share * 1e6
    return out


if __name__ == "__main__":
    run()
