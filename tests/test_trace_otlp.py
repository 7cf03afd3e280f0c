"""`trace` over the wire: the OTLP/HTTP exporter to a tiny OTLP receiver on 127.0.0.1.

The receiver decodes what arrives with ``opentelemetry-proto``, so these tests
check what a collector would see, not what the SDK keeps in memory.
"""

from __future__ import annotations

import gzip
import threading

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anthropic
import pytest

from conftest import API_KEY
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import llmguard as lg

from llmguard._fake_provider import FakeProvider, Step


MODEL = "claude-sonnet-4-6"


class Receiver:
    """An OTLP/HTTP receiver: decodes /v1/traces and /v1/metrics protobuf bodies."""

    def __init__(self) -> None:
        self.traces: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.headers: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                if self.path == "/v1/traces":
                    receiver.traces.append(ExportTraceServiceRequest.FromString(body))
                    reply = ExportTraceServiceResponse().SerializeToString()
                elif self.path == "/v1/metrics":
                    receiver.metrics.append(ExportMetricsServiceRequest.FromString(body))
                    reply = ExportMetricsServiceResponse().SerializeToString()
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def spans(self) -> list[ProtoSpan]:
        return [s for req in self.traces for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]

    def scopes(self) -> list[tuple[str, str]]:
        return [
            (ss.scope.name, ss.schema_url) for req in self.traces for rs in req.resource_spans for ss in rs.scope_spans
        ]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


def value_of(v: AnyValue) -> Any:
    """A protobuf AnyValue as the Python value the SDK was given."""
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return tuple(value_of(x) for x in v.array_value.values)
    return getattr(v, kind)


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: value_of(kv.value) for kv in kvs}


def test_spans_over_otlp_http_carry_the_same_attributes(
    receiver: Receiver, fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """A call's span, exported with OTLP/HTTP and decoded with opentelemetry-proto, equals the in-memory one."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{receiver.url}/v1/traces")))
    fake_provider.script(Step(usage={"input_tokens": 90, "output_tokens": 6, "cache_read_tokens": 40, "cache_write_tokens": 10}))

    @lg.trace(tracer_provider=provider)
    def ask(model: str = MODEL, max_tokens: int = 32, stream: bool = False) -> Any:
        return anthropic_client.messages.create(
            model=model, max_tokens=max_tokens, messages=[{"role": "user", "content": "hi"}], stream=stream
        )

    with lg.trace("pipeline", tracer_provider=provider):
        ask()
        list(ask(stream=True))
    provider.shutdown()

    wire = {s.span_id: s for s in receiver.spans()}
    local = memory.get_finished_spans()
    assert 3 == len(wire) == len(local)
    for span in local:
        sent = wire[span.context.span_id.to_bytes(8, "big")]
        assert span.name == sent.name
        assert dict(span.attributes or {}) == attributes(sent.attributes)
        assert [e.name for e in span.events] == [e.name for e in sent.events]
    by_name = [s for s in receiver.spans() if s.name == "chat claude-sonnet-4-6"]
    assert [ProtoSpan.SPAN_KIND_CLIENT] * 2 == [s.kind for s in by_name]
    first = attributes(by_name[0].attributes)
    assert (90, 40, 10, ("end_turn",)) == (
        first["gen_ai.usage.input_tokens"],
        first["gen_ai.usage.cache_read.input_tokens"],
        first["gen_ai.usage.cache_creation.input_tokens"],
        first["gen_ai.response.finish_reasons"],
    )
    assert attributes(by_name[1].attributes)["gen_ai.response.time_to_first_chunk"] > 0
    pipeline = next(s for s in receiver.spans() if s.name == "pipeline")
    assert {pipeline.span_id} == {s.parent_span_id for s in by_name}
    assert ("llmguard", "https://opentelemetry.io/schemas/1.41.0") in receiver.scopes()
    assert not any(API_KEY in repr(h) for h in receiver.headers)


def test_metrics_over_otlp_http_carry_the_spec_buckets(
    receiver: Receiver, fake_provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    """The GenAI histograms arrive at an OTLP receiver with the spec's units and explicit bucket bounds."""
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=f"{receiver.url}/v1/metrics"), export_interval_millis=60_000
    )
    meters = MeterProvider(metric_readers=[reader])
    fake_provider.script(Step(usage={"input_tokens": 20, "output_tokens": 5}))

    @lg.trace(meter_provider=meters)
    def ask(model: str = MODEL) -> Any:
        return anthropic_client.messages.create(model=model, max_tokens=8, messages=[{"role": "user", "content": "hi"}])

    ask()
    meters.shutdown()  # flushes once more

    sent = {
        m.name: m
        for req in receiver.metrics
        for rm in req.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    usage = sent["gen_ai.client.token.usage"]
    duration = sent["gen_ai.client.operation.duration"]
    assert ("{token}", "s") == (usage.unit, duration.unit)
    by_type = {attributes(p.attributes)["gen_ai.token.type"]: p for p in usage.histogram.data_points}
    assert (20.0, 5.0) == (by_type["input"].sum, by_type["output"].sum)
    assert [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864] == list(
        by_type["input"].explicit_bounds
    )
    assert 0.01 == duration.histogram.data_points[0].explicit_bounds[0]
    assert "llmguard.cost" in sent
