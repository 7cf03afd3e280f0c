"""Every performance target of issue #13, each beside its anchor measured in this process.

    .venv/bin/python benchmarks/run.py targets

Runs the benchmarks that measure them — `bench_stack` (the canonical
untraced stack against tenacity, one more guard on a stack), `bench_retry`
(retry, async timeout), `bench_timeout` where it exists (async timeout),
`bench_cache`, `bench_trace`, `bench_budget` (each guard alone) and `bench_e2e` (a real anthropic SDK call against a
FakeProvider in another process) — printing their own tables as they go,
then one line per target: what, the measured value, the anchor (measured
in the same run), the ratio, the target, PASS or MISS. Every figure is a
median over batches (see `_harness`); nothing here asserts a time. A
benchmark that fails prints ERROR on its lines and the run goes on.

The configuration measured is the README's: its stack ``trace → cache →
retry → budget → timeout`` with ``budget(usd=..., per="day", key=lambda
user, **_: user, max_output=512)`` (`_harness.readme_guards`; ``usd=1000``
rather than the README's 5.0 so that tens of thousands of calls do not
exhaust it: the amount changes when it refuses, not what a call costs), on
a function returning a real anthropic ``Message``.

The load averages at the start and the end are printed: on a shared
machine, compare ratios (both sides of each were timed turn about), not
the absolute figures. As a rough guide to the load, the "~unloaded" column
divides each figure by this run's tenacity (sync) over its unloaded ~10 µs.
"""

from __future__ import annotations

import math
import platform
import time
import traceback
import warnings

from collections.abc import Callable
from dataclasses import dataclass

from _harness import load_average


@dataclass
class Target:
    """One target line. *value* and *anchor_value* are seconds (or None when not measured)."""

    what: str
    value: float | None
    anchor: str
    anchor_value: float | None
    target: str
    ok: bool | None  # None: reported, no target (or not measured)
    ratio: float | None = None
    cpu_bound: bool = True  # in-process work: the ~unloaded column applies (not to e2e round trips)

    def line(self, scale: float | None = None) -> str:
        value = "—" if self.value is None else f"{self.value * 1e6:8.2f} µs"
        quiet = "" if self.value is None or not scale or not self.cpu_bound else f"{self.value / scale * 1e6:7.2f} µs"
        anchor = self.anchor + ("" if self.anchor_value is None else f" {self.anchor_value * 1e6:.2f} µs")
        ratio = self.ratio
        if ratio is None and self.value is not None and self.anchor_value:
            ratio = self.value / self.anchor_value
        shown = "" if ratio is None or math.isnan(ratio) else f"{ratio:6.2f}x"  # nan: no ratio
        verdict = {True: "PASS", False: "MISS", None: "info"}[self.ok]
        if self.value is None and self.ratio is None:
            verdict = "ERROR"
        return f"  {self.what:<64} {value:>11} {quiet:>10}  {anchor:<44} {shown:>7}  {self.target:<26} {verdict}"


TARGETS: list[Target] = []
SCALE: dict[str, float] = {}  # tenacity's figures in this run, to judge the load by

# tenacity.retry(stop=stop_after_attempt(4)) on a `def` on this machine unloaded
# (the README's "What it costs"): what this run's tenacity is compared with to
# say how much the load inflates every absolute figure (ratios are unaffected).
QUIET_TENACITY_SYNC = 10e-6


def at_most_ratio(what: str, value: float, anchor: str, anchor_value: float | None, limit: float, ratio: float | None = None) -> None:
    """*value* / *anchor_value* (or the *ratio* given, when measured as one) <= *limit*."""
    r = ratio if ratio is not None else value / anchor_value if anchor_value else None
    TARGETS.append(Target(what, value, anchor, anchor_value, f"<= {limit:g}x", None if r is None else r <= limit, r))


def at_most(what: str, value: float, anchor: str, anchor_value: float | None, limit_us: float) -> None:
    """*value* <= *limit_us* µs; the anchor is printed beside it for scale."""
    TARGETS.append(Target(what, value, anchor, anchor_value, f"<= {limit_us:g} µs", value <= limit_us * 1e-6))


def at_most_plus(what: str, value: float, anchor: str, anchor_value: float, plus_us: float) -> None:
    """*value* <= *anchor_value* + *plus_us* µs (one more guard: its own work plus 1 µs); no ratio."""
    extra = value - anchor_value
    target = f"<= anchor+{plus_us:g} µs ({extra * 1e6:+.2f})"
    TARGETS.append(Target(what, value, anchor, anchor_value, target, extra <= plus_us * 1e-6, float("nan")))


def at_most_percent(what: str, value: float, anchor: str, anchor_value: float, limit: float) -> None:
    """*value* (time added) <= *limit* % of *anchor_value* (the bare call)."""
    pct = value / anchor_value * 100
    TARGETS.append(Target(what, value, anchor, anchor_value, f"<= {limit:g} % ({pct:+.1f} %)", pct <= limit, value / anchor_value))


def report(what: str, value: float, anchor: str = "", anchor_value: float | None = None) -> None:
    TARGETS.append(Target(what, value, anchor, anchor_value, "", None))


def failed(what: str, exc: BaseException) -> None:
    TARGETS.append(Target(what, None, f"{type(exc).__name__}: {exc}"[:44], None, "", None))


def section(title: str, body: Callable[[], None]) -> None:
    print()
    started = time.perf_counter()
    try:
        body()
    except Exception as exc:  # one broken benchmark must not hide the others
        traceback.print_exc()
        failed(title, exc)
    print(f"  ({title}: {time.perf_counter() - started:.0f} s; load average {load_average()})")


# -- the stack --------------------------------------------------------------


def _stack() -> None:
    import bench_stack

    print("stack: the canonical untraced stack and the README stack beside tenacity's retry alone (added over bare)")
    for sync in (True, False):
        kind = "sync " if sync else "async"
        t = bench_stack.stack_table(sync)
        SCALE.setdefault(kind, t["tenacity"])
        anchor = "tenacity.retry added"
        at_most_ratio(f"{kind} retry → budget → timeout, added", t["untraced"], anchor, t["tenacity"], 0.3)
        if sync:
            at_most_ratio(f"{kind} retry → budget (no sync timeout), added", t["untraced_no_timeout"], anchor, t["tenacity"], 0.3)
        report(f"{kind} README stack, cache miss, added", t["readme"], anchor, t["tenacity"])
        if sync:
            report(f"{kind} README stack without timeout, miss, added", t["readme_no_timeout"], anchor, t["tenacity"])
        report(f"{kind} README stack, cache hit, added", t["readme_hit"], anchor, t["tenacity"])


def _one_more() -> None:
    import bench_stack

    print("stack: one more guard (README guards innermost first; sync without timeout)")
    for sync in (True, False):
        kind = "sync " if sync else "async"
        rows = bench_stack.increments(sync)
        bench_stack.print_increments(sync, rows)  # the same table bench_stack prints
        for name, inc, own, _extra in rows:
            at_most_plus(f"{kind} + {name} on the stack below it, added", inc, f"{name}'s own work", own, 1)
    for label, make in bench_stack.CHAINS.items():
        for sync in (True, False):
            kind = "sync " if sync else "async"
            c = bench_stack.chain(sync, make)
            bench_stack.print_chain(sync, label, c)
            at_most_plus(f"{kind} one more {label} (of 2..5), added", c["per_guard"], "its own work", c["own"], 1)


# -- each guard alone ---------------------------------------------------------


def _retry() -> None:
    import bench_retry

    r = bench_retry.run()
    at_most_ratio("sync  @lg.retry alone, added", r["retry_sync"], "tenacity.retry added", r["tenacity_sync"], 0.1)
    at_most_ratio("async @lg.retry alone, added", r["retry_async"], "tenacity.retry added", r["tenacity_async"], 0.1)
    try:  # the timeout guard's own benchmark, where the tree has one
        import bench_timeout
    except ImportError:
        at_most("async @lg.timeout(30) alone, added", r["timeout_async"], "asyncio.timeout added", r["asyncio_timeout"], 2)
        return
    report("async @lg.timeout(30) alone, added (bench_retry)", r["timeout_async"], "asyncio.timeout added", r["asyncio_timeout"])
    print()
    t = bench_timeout.run()
    anchor = t.get("asyncio_timeout_us")  # bench_timeout prints it; returns it if it says so
    at_most(
        "async @lg.timeout(5) alone, added (bench_timeout)",
        t["timeout_async_us"] * 1e-6,
        "asyncio.timeout added" if anchor is not None else "asyncio.timeout: printed above",
        None if anchor is None else anchor * 1e-6,
        2,
    )


def _cache() -> None:
    import bench_cache

    r = bench_cache.run()
    hit = r["cache_hit_sync"]
    ratio = r["cache_hit_vs_reference"]
    at_most_ratio(
        "sync  @lg.cache hit, 1.2 KB request (ratio: paired batches)", hit, "JSON+SHA-256+dict", hit / ratio, 1.5, ratio
    )


def _trace() -> None:
    import bench_trace

    r = bench_trace.run()
    at_most("sync  @lg.trace, no OTel SDK, own (minus pass-through)", r["trace_no_sdk_overhead"], "", None, 1)
    report("async @lg.trace, no OTel SDK, own (minus pass-through)", r["trace_no_sdk_async_overhead"])
    at_most_ratio("sync  @lg.trace, SDK TracerProvider", r["trace_sdk_span"], "bare SDK span", r["bare_sdk_span"], 1.3)
    if not r.get("trace_sdk_same_attributes", 1.0):
        report("  (the bare span's attributes differ from @lg.trace's: see above)", r["bare_sdk_span"])


def _budget() -> None:
    import bench_budget

    r = bench_budget.run()
    for model, _provider in bench_budget.README_MODELS:
        calc = r[f"calc_price_{model}"]
        for key, label in (("readme", "README config"), ("alone", "usd=1000 alone")):
            own = r[f"budget_{key}_{model}_own"]
            at_most(f"sync  budget {label}, {model}, own", own, "genai-prices calc_price", calc, 3)
            report(f"sync  budget {label}, {model}, added over bare", r[f"budget_{key}_{model}_total"], "genai-prices calc_price", calc)


# -- end to end ----------------------------------------------------------------


def _e2e() -> None:
    import bench_e2e

    r = bench_e2e.run()
    for kind in ("sync", "async"):
        bare = r[f"{kind}_bare"]
        label = f"{kind:<5} e2e"
        at_most_percent(f"{label} README stack (cache miss), added", r[f"{kind}_README stack (cache miss)"], "bare create", bare, 2)
        for name in bench_e2e.CONFIGS:
            if name != "README stack (cache miss)":
                report(f"{label} {name}, added", r[f"{kind}_{name}"], "bare create", bare)
    for t in TARGETS:
        if " e2e " in t.what:
            t.cpu_bound = False  # a round trip's share of the load is not tenacity's


SECTIONS: dict[str, Callable[[], None]] = {
    "stack": _stack,
    "one more guard": _one_more,
    "retry and timeout alone": _retry,
    "cache alone": _cache,
    "trace alone": _trace,
    "budget alone": _budget,
    "end to end": _e2e,
}


def run() -> list[Target]:
    warnings.simplefilter("ignore")
    TARGETS.clear()
    start_load = load_average()
    started = time.perf_counter()
    print(f"targets of issue #13; load average at the start: {start_load}")
    for title, body in SECTIONS.items():
        section(title, body)
    print()
    print(f"TARGETS (python {platform.python_version()}; medians; ratios are to the anchor measured in this run)")
    print(f"  load average: at the start {start_load}; at the end {load_average()}; took {time.perf_counter() - started:.0f} s")
    scale = SCALE["sync "] / QUIET_TENACITY_SYNC if "sync " in SCALE else None
    print(f"  {'what':<64} {'measured':>11} {'~unloaded':>10}  {'anchor':<44} {'ratio':>7}  {'target':<26} verdict")
    for t in TARGETS:
        print(t.line(scale))
    verdicts = [t.line().rsplit(" ", 1)[-1] for t in TARGETS]
    print("  " + ", ".join(f"{verdicts.count(v)} {v}" for v in ("PASS", "MISS", "ERROR", "info")))
    if "sync " in SCALE:
        print(
            f"  load: tenacity.retry added {SCALE['sync '] * 1e6:.1f} µs (sync) in this run, ~{QUIET_TENACITY_SYNC * 1e6:.0f} µs"
            f" unloaded: absolute µs figures here are ~{SCALE['sync '] / QUIET_TENACITY_SYNC:.1f}x a quiet machine's"
            " (the ~unloaded column divides by that); the ratios hold (both sides timed turn about); verdicts"
            " are on the measured figures"
        )
    return TARGETS


if __name__ == "__main__":
    run()
