"""Overhead of @lg.trace: with no OTel SDK, and beside a bare SDK span with the same attributes.

Three figures:

* no SDK configured (the API's proxy provider, nobody listening): what
  ``@lg.trace`` adds on top of the wrapping core with a pass-through layer
  (target <= 1 µs);
* an SDK ``TracerProvider`` (no exporter, so the span machinery is what is
  measured): ``@lg.trace`` against a hand-written
  ``tracer.start_as_current_span`` around the same function setting the
  same attributes (target <= 1.3x);
* the same with an SDK ``MeterProvider`` too (spans + the GenAI metrics).
"""

from __future__ import annotations

import statistics
import time

from typing import Any

from _harness import REPEATS, overhead, per_call, per_call_async, row

from llmguard._record import Usage
from llmguard._trace import trace
from llmguard._wrap import Layer, report_usage, wrap


MODEL = "claude-sonnet-4-6"


def target(q: str, model: str = MODEL, max_tokens: int = 256) -> str:
    # A stand-in for an SDK call that reports its usage like a real response.
    report_usage(input_tokens=12, output_tokens=34, model=model, provider="anthropic")
    return q


async def atarget(q: str, model: str = MODEL, max_tokens: int = 256) -> str:
    report_usage(input_tokens=12, output_tokens=34, model=model, provider="anthropic")
    return q


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


class RecordReader(Layer):
    """A pass-through layer that reads the call record, as trace must (the core builds it on demand)."""

    def around(self, call: Any) -> Any:
        call.record  # noqa: B018 - building the record is the point
        return call.proceed()


def run() -> dict[str, float]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    print("trace: @lg.trace per call (no exporter: the span machinery itself)")
    core, traced_off = paired(
        lambda f=wrap(Layer(), target): f("q", max_tokens=256),
        lambda f=trace(target): f("q", max_tokens=256),
        number=20_000,
    )
    print(row("no SDK: core with a pass-through layer", core))
    print(row("no SDK: @lg.trace", traced_off, core, "of the core"))
    print(row("no SDK: what @lg.trace adds (target <= 1 µs)", overhead(traced_off, core)))

    acore = per_call_async(lambda f=wrap(Layer(), atarget): f("q", max_tokens=256))
    atraced_off = per_call_async(lambda f=trace(atarget): f("q", max_tokens=256))
    print(row("no SDK, async: what @lg.trace adds", overhead(atraced_off, acore)))

    tp = TracerProvider()
    tracer = tp.get_tracer("bench")
    hand, ours = paired(
        lambda f=bare_span(tracer, target): f("q", max_tokens=256),
        lambda f=trace(tracer_provider=tp)(target): f("q", max_tokens=256),
    )
    print(row("SDK spans: bare start_as_current_span, same attributes", hand))
    print(row("SDK spans: @lg.trace (target <= 1.3x)", ours, hand, "of the bare span"))
    core_rec = per_call(lambda f=wrap(RecordReader(), target): f("q", max_tokens=256))
    print(row("core with the call record built (what trace reads)", core_rec))
    print(row("SDK spans: @lg.trace minus that core cost", ours - core_rec, hand, "of the bare span"))

    mp = MeterProvider(metric_readers=[InMemoryMetricReader()])
    ours_m = per_call(
        lambda f=trace(tracer_provider=tp, meter_provider=mp)(target): f("q", max_tokens=256), number=5_000
    )
    print(row("SDK spans + metrics: @lg.trace", ours_m, hand, "of the bare span (no metrics)"))
    return {
        "trace_no_sdk_overhead": overhead(traced_off, core),
        "trace_no_sdk_async_overhead": overhead(atraced_off, acore),
        "trace_sdk_span": ours,
        "bare_sdk_span": hand,
        "trace_sdk_ratio": ours / hand,
        "trace_sdk_metrics": ours_m,
    }


if __name__ == "__main__":
    run()
