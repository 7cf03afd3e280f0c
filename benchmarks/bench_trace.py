"""Overhead of @lg.trace: with no OTel SDK, and beside a bare SDK span with the same attributes.

Four figures:

* no SDK configured (the API's proxy provider, nobody listening): what
  ``@lg.trace`` adds on top of the wrapping core it runs on, a pass-through
  guard alone on the same function (target <= 1 µs);
* an SDK ``TracerProvider`` (no exporter, so the span machinery is what is
  measured): ``@lg.trace`` against a hand-written
  ``tracer.start_as_current_span`` around the same function setting the
  same attributes (target <= 1.3x);
* the same with an SDK ``MeterProvider`` too (spans + the GenAI metrics);
* the README's configuration: bare ``@lg.trace`` (the *global* tracer
  provider, an SDK one) on the example's ``ask(q, user=..., model=...)``
  returning an anthropic ``Message`` (parsed once: its usage, id and finish
  reason come from the response, not from `report_usage`), against a bare
  span carrying the same attributes.

"The same attributes" is checked, not assumed: `compare_attributes` exports
one span of each through an in-memory exporter and the run prints whether
their attribute keys and values (and name and kind) match, naming any that
differ. The two sides are timed in alternating batches (`paired`), so a
noisy neighbour slows both alike and the ratio holds.
"""

from __future__ import annotations

import contextlib
import statistics
import time

from collections.abc import Iterator
from typing import Any

from _harness import (
    REPEATS,
    PassThrough,
    anthropic_message,
    overhead,
    per_call,
    per_call_async,
    row,
)

from llmguard import report_usage
from llmguard._record import Usage
from llmguard._trace import trace


MODEL = "claude-sonnet-4-6"


def target(q: str, model: str = MODEL, max_tokens: int = 256) -> str:
    # A stand-in for an SDK call that reports its usage like a real response.
    report_usage(input_tokens=12, output_tokens=34, model=model, provider="anthropic")
    return q


async def atarget(q: str, model: str = MODEL, max_tokens: int = 256) -> str:
    report_usage(input_tokens=12, output_tokens=34, model=model, provider="anthropic")
    return q


_MESSAGE = anthropic_message(MODEL)


def ask(q: str, user: str = "anon", model: str = MODEL) -> Any:
    """The README example's function, its SDK call replaced by the ``Message`` that call returns."""
    return _MESSAGE


def bare_readme_span(tracer: Any, fn: Any) -> Any:
    """A hand-written span with the attributes ``@lg.trace`` puts on `ask`'s span."""
    from opentelemetry.trace import SpanKind

    from llmguard import prices

    def inner(q: str, user: str = "anon", model: str = MODEL) -> Any:
        start = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.stream": False,
            "llmguard.function": "ask",
            "gen_ai.provider.name": "anthropic",
            "gen_ai.request.model": model,
        }
        with tracer.start_as_current_span(f"chat {model}", kind=SpanKind.CLIENT, attributes=start) as span:
            result = fn(q, user=user, model=model)
            usage = result.usage
            span.set_attributes({
                "llmguard.attempts": 1,
                "gen_ai.response.model": result.model,
                "gen_ai.response.id": result.id,
                "gen_ai.response.finish_reasons": (result.stop_reason,),
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
                "gen_ai.usage.cache_read.input_tokens": usage.cache_read_input_tokens,
                "gen_ai.usage.cache_creation.input_tokens": usage.cache_creation_input_tokens,
                "llmguard.cost_usd": prices.cost_of(Usage(usage.input_tokens, usage.output_tokens), model, "anthropic"),
            })
            return result

    return inner


@contextlib.contextmanager
def global_tracer_provider(tp: Any) -> Iterator[None]:
    """*tp* as OpenTelemetry's global tracer provider for the block (the API sets it only once)."""
    from opentelemetry import trace as otel_trace

    saved = otel_trace._TRACER_PROVIDER
    otel_trace._TRACER_PROVIDER = tp
    try:
        yield
    finally:
        otel_trace._TRACER_PROVIDER = saved


def bare_span(tracer: Any, fn: Any) -> Any:
    """What a user writes by hand: one span with the same attributes, no llmguard."""
    from opentelemetry.trace import SpanKind

    from llmguard import prices

    usage = Usage(12, 34)

    def inner(q: str, model: str = MODEL, max_tokens: int = 256) -> Any:
        start = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.stream": False,
            "llmguard.function": "target",
            "gen_ai.provider.name": "anthropic",
            "gen_ai.request.model": model,
            "gen_ai.request.max_tokens": max_tokens,
        }
        with tracer.start_as_current_span(f"chat {model}", kind=SpanKind.CLIENT, attributes=start) as span:
            result = fn(q, model=model, max_tokens=max_tokens)
            span.set_attributes({
                "llmguard.attempts": 1,
                "gen_ai.response.model": model,
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
                "gen_ai.usage.cache_read.input_tokens": 0,
                "gen_ai.usage.cache_creation.input_tokens": 0,
                "llmguard.cost_usd": prices.cost_of(usage, model, "anthropic"),
            })
            return result

    return inner


def compare_attributes(readme: bool = False) -> tuple[bool, str]:
    """Whether the bare span carries exactly the attributes ``@lg.trace`` puts on its span.

    One span of each goes to an in-memory exporter on a provider of its own;
    the line printed says whether the keys (and values) match, and which do not.
    *readme*: the README's configuration (`ask`, the global provider).
    """
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    if readme:
        with global_tracer_provider(tp):
            trace(ask)("q", user="ada")
        bare_readme_span(tp.get_tracer("bench"), ask)("q", user="ada")
    else:
        trace(tracer_provider=tp)(target)("q", max_tokens=256)
        bare_span(tp.get_tracer("bench"), target)("q", max_tokens=256)
    ours_span, hand_span = exporter.get_finished_spans()
    ours = dict(ours_span.attributes or {})
    hand = dict(hand_span.attributes or {})
    only_ours = sorted(ours.keys() - hand.keys())
    only_hand = sorted(hand.keys() - ours.keys())
    differ = sorted(k for k in ours.keys() & hand.keys() if ours[k] != hand[k])
    same_shape = ours_span.name == hand_span.name and ours_span.kind == hand_span.kind
    if not (only_ours or only_hand or differ) and same_shape:
        return True, f"same {len(ours)} attribute keys and values, same name and kind"
    parts = []
    if only_ours:
        parts.append(f"only @lg.trace: {only_ours}")
    if only_hand:
        parts.append(f"only the bare span: {only_hand}")
    if differ:
        parts.append("values differ: " + ", ".join(f"{k}={ours[k]!r} vs {hand[k]!r}" for k in differ))
    if not same_shape:
        parts.append(f"name/kind differ: {ours_span.name!r}/{ours_span.kind} vs {hand_span.name!r}/{hand_span.kind}")
    return False, "; ".join(parts)


def paired(a: Any, b: Any, number: int = 5_000, repeats: int = REPEATS) -> tuple[float, float]:
    """Median seconds per call of *a* and of *b*, measured in alternating batches.

    On a shared machine a noisy neighbour then slows both sides alike, so
    their ratio holds even when the absolute figures wander.
    """
    for _ in range(1000):
        a()
        b()
    sa: list[float] = []
    sb: list[float] = []
    for _ in range(repeats):
        for fn, samples in ((a, sa), (b, sb)):
            start = time.perf_counter()
            for _ in range(number):
                fn()
            samples.append((time.perf_counter() - start) / number)
    return statistics.median(sa), statistics.median(sb)


def run() -> dict[str, float]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    print("trace: @lg.trace per call (no exporter: the span machinery itself)")
    core, traced_off = paired(
        lambda f=PassThrough()(target): f("q", max_tokens=256),
        lambda f=trace(target): f("q", max_tokens=256),
        number=20_000,
    )
    print(row("no SDK: a pass-through guard alone", core))
    print(row("no SDK: @lg.trace", traced_off, core, "of the core"))
    print(row("no SDK: what @lg.trace adds (target <= 1 µs)", overhead(traced_off, core)))

    acore = per_call_async(lambda f=PassThrough()(atarget): f("q", max_tokens=256))
    atraced_off = per_call_async(lambda f=trace(atarget): f("q", max_tokens=256))
    print(row("no SDK, async: what @lg.trace adds", overhead(atraced_off, acore)))

    same, detail = compare_attributes()
    print(f"  bare span vs @lg.trace span: {'MATCH' if same else 'MISMATCH'}: {detail}")
    tp = TracerProvider()
    tracer = tp.get_tracer("bench")
    hand, ours = paired(
        lambda f=bare_span(tracer, target): f("q", max_tokens=256),
        lambda f=trace(tracer_provider=tp)(target): f("q", max_tokens=256),
    )
    print(row("SDK spans: bare start_as_current_span, same attributes", hand))
    print(row("SDK spans: @lg.trace (target <= 1.3x)", ours, hand, "of the bare span"))
    # What the core under trace costs on its own (the function's own time
    # taken out: the bare span calls it too).
    core_only = per_call(lambda f=PassThrough()(target): f("q", max_tokens=256))
    core_only -= per_call(lambda: target("q", max_tokens=256))
    print(row("the core under trace (a pass-through guard), on its own", core_only))
    print(row("SDK spans: @lg.trace minus that core cost", ours - core_only, hand, "of the bare span"))
    stacked = per_call(lambda f=trace(tracer_provider=tp)(PassThrough()(target)): f("q", max_tokens=256), number=5_000)
    print(row("SDK spans: @lg.trace over another guard", stacked, hand, "of the bare span"))

    mp = MeterProvider(metric_readers=[InMemoryMetricReader()])
    ours_m = per_call(
        lambda f=trace(tracer_provider=tp, meter_provider=mp)(target): f("q", max_tokens=256), number=5_000
    )
    print(row("SDK spans + metrics: @lg.trace", ours_m, hand, "of the bare span (no metrics)"))

    same_r, detail_r = compare_attributes(readme=True)
    print(f"  README configuration, bare span vs @lg.trace span: {'MATCH' if same_r else 'MISMATCH'}: {detail_r}")
    with global_tracer_provider(tp):
        hand_r, ours_r = paired(
            lambda f=bare_readme_span(tracer, ask): f("q", user="ada"),
            lambda f=trace(ask): f("q", user="ada"),
        )
    print(row("README config: bare span, same attributes", hand_r))
    print(row("README config: @lg.trace, global SDK provider (target <= 1.3x)", ours_r, hand_r, "of the bare span"))
    return {
        "trace_no_sdk_overhead": overhead(traced_off, core),
        "trace_no_sdk_async_overhead": overhead(atraced_off, acore),
        "trace_sdk_span": ours,
        "bare_sdk_span": hand,
        "trace_sdk_ratio": ours / hand,
        "trace_sdk_metrics": ours_m,
        "trace_sdk_same_attributes": float(same),
        "trace_readme_span": ours_r,
        "bare_readme_span": hand_r,
        "trace_readme_ratio": ours_r / hand_r,
        "trace_readme_same_attributes": float(same_r),
    }


# (path fragment, area) for `profile`, first match wins.
_AREAS = (
    ("/opentelemetry/sdk/", "opentelemetry SDK"),
    ("/opentelemetry/", "opentelemetry API (attributes, context)"),
    ("llmguard/_trace", "llmguard trace"),
    ("llmguard/_runner", "llmguard core (_runner, _facts, _stream, _record)"),
    ("llmguard/_facts", "llmguard core (_runner, _facts, _stream, _record)"),
    ("llmguard/_stream", "llmguard core (_runner, _facts, _stream, _record)"),
    ("llmguard/_record", "llmguard core (_runner, _facts, _stream, _record)"),
    ("llmguard/", "llmguard, other modules"),
    ("contextlib", "contextlib"),
    ("bench_trace", "the benchmark's function"),
)


def profile(calls: int = 50_000) -> None:
    """Where a call's time goes, by area, under cProfile: ``python bench_trace.py --profile``.

    cProfile inflates every Python call, so the shares matter, not the
    absolute figures.
    """
    import collections
    import cProfile
    import pstats

    from opentelemetry.sdk.trace import TracerProvider

    tp = TracerProvider()
    for name, fn in (
        ("@lg.trace", trace(tracer_provider=tp)(target)),
        ("bare span", bare_span(tp.get_tracer("bench"), target)),
    ):
        for _ in range(2_000):
            fn("q", max_tokens=256)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(calls):
            fn("q", max_tokens=256)
        profiler.disable()
        areas: collections.Counter[str] = collections.Counter()
        for (file, _line, _func), (_cc, _nc, own, _cum, _callers) in pstats.Stats(profiler).stats.items():  # type: ignore[attr-defined]
            path = file.replace("\\", "/")
            areas[next((area for part, area in _AREAS if part in path), "builtins")] += own
        total = sum(areas.values())
        print(f"{name}: {total / calls * 1e6:.1f} µs per call under cProfile")
        for area, own in areas.most_common():
            print(f"  {own / total:6.1%}  {own / calls * 1e6:7.2f} µs  {area}")


if __name__ == "__main__":
    import sys

    if "--profile" in sys.argv[1:]:
        profile()
    else:
        run()
