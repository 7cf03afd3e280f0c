"""Demo section: `trace` turns calls into a tree of OpenTelemetry GenAI spans."""

from __future__ import annotations

import contextlib

from typing import Any

import anthropic
import openai

from .. import _retry, _trace
from ..testing import FakeProvider, Step


ORDER = 60
TITLE = "trace: OpenTelemetry GenAI spans (retries, streams, errors), printed as a tree"

# The attributes worth a glance, with short labels.
_SHOWN = (
    ("gen_ai.provider.name", ""),
    ("gen_ai.usage.input_tokens", "in="),
    ("gen_ai.usage.output_tokens", "out="),
    ("gen_ai.usage.cache_read.input_tokens", "cache_read="),
    ("llmguard.attempts", "attempts="),
    ("llmguard.calls", "calls="),
    ("llmguard.outcome", "outcome="),
    ("error.type", "error.type="),
)


def _line(span: Any) -> str:
    attrs = dict(span.attributes or {})
    ms = (span.end_time - span.start_time) / 1e6
    parts = [f"{span.name} [{span.kind.name.lower()}] {ms:.0f}ms"]
    for key, label in _SHOWN:
        if key in attrs and not (key == "llmguard.attempts" and attrs[key] == 1):
            parts.append(f"{label}{attrs[key]}")
    if attrs.get("llmguard.usage.estimated"):
        parts.append("(estimated)")
    if "llmguard.cost_usd" in attrs:
        parts.append(f"${attrs['llmguard.cost_usd']:.6f}")
    if "gen_ai.response.time_to_first_chunk" in attrs:
        parts.append(f"ttft={attrs['gen_ai.response.time_to_first_chunk'] * 1000:.0f}ms")
    return " ".join(parts)


def print_tree(spans: Any) -> None:
    """Print finished spans as an indented tree, children under parents, events under spans."""
    ids = {s.context.span_id for s in spans}
    children: dict[int | None, list[Any]] = {}
    for span in spans:
        parent = span.parent.span_id if span.parent is not None and span.parent.span_id in ids else None
        children.setdefault(parent, []).append(span)

    def walk(parent: int | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s.start_time):
            print(f"  {'   ' * depth}{'└─ ' if depth else ''}{_line(span)}")
            for event in span.events:
                fields = {k.removeprefix("llmguard."): v for k, v in (event.attributes or {}).items()}
                shown = ", ".join(f"{k}={v}" for k, v in fields.items() if k in ("attempt", "delay", "cause", "exception.type"))
                print(f"  {'   ' * (depth + 1)}· event {event.name} {shown}")
            walk(span.context.span_id, depth + 1)

    walk(None, 0)


def run(fake: FakeProvider) -> None:
    """A pipeline span around a retried call, a stream read halfway, and a failure."""
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415 - the demo's optional dependency
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: PLC0415

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace = _trace.trace
    claude = anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key="demo", max_retries=0)
    gpt = openai.OpenAI(base_url=fake.openai_base_url, api_key="demo", max_retries=0)

    @trace(tracer_provider=provider)
    @_retry.retry(attempts=3, initial=0.01, max_delay=0.05)
    def ask(q: str, model: str = "claude-sonnet-4-6", max_tokens: int = 256) -> Any:
        return claude.messages.create(model=model, max_tokens=max_tokens, messages=[{"role": "user", "content": q}])

    @trace(tracer_provider=provider)
    def stream_gpt(q: str, model: str = "gpt-4o-mini") -> Any:
        return gpt.chat.completions.create(
            model=model, messages=[{"role": "user", "content": q}], stream=True, stream_options={"include_usage": True}
        )

    fake.script(
        Step(status=429, headers={"retry-after": "0.02"}),
        Step(usage={"input_tokens": 1200, "output_tokens": 80, "cache_read_tokens": 1000}),
        Step(reply="one two three four five six"),
        Step(status=400),
    )
    with trace("answer-question", tracer_provider=provider):
        ask("Summarise the incident report.")
        with stream_gpt("Draft a reply.") as stream:
            for chunk in stream:
                if chunk.choices and "three" in (chunk.choices[0].delta.content or ""):
                    break  # the caller stops reading: the span still ends, as closed
        with contextlib.suppress(anthropic.BadRequestError):  # recorded on its span as error.type
            ask("Translate it.", model="claude-haiku-4-5")
    print_tree(exporter.get_finished_spans())
    claude.close()
    gpt.close()
