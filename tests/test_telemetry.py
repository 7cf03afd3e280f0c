"""`lg.configure_telemetry()`: traces, metrics and logs over OTLP/HTTP from one call and the OTEL_* variables.

Global OpenTelemetry providers can be set once per process, so each case runs
a fresh interpreter against a tiny OTLP receiver on 127.0.0.1 and checks what
a collector would have received.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

import llmguard as lg


_KINDS: dict[str, tuple[Any, Any]] = {
    "/v1/traces": (ExportTraceServiceRequest, ExportTraceServiceResponse),
    "/v1/metrics": (ExportMetricsServiceRequest, ExportMetricsServiceResponse),
    "/v1/logs": (ExportLogsServiceRequest, ExportLogsServiceResponse),
}


class Collector:
    """Decodes each OTLP/HTTP request it receives, by path."""

    def __init__(self) -> None:
        self.received: dict[str, list[Any]] = {path: [] for path in _KINDS}
        self.headers: list[dict[str, str]] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                collector.headers.append({k.lower(): v for k, v in self.headers.items()})
                kind = _KINDS.get(self.path)
                if kind is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                collector.received[self.path].append(kind[0].FromString(body))
                reply = kind[1]().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def resources(self, path: str) -> list[dict[str, Any]]:
        field = {"/v1/traces": "resource_spans", "/v1/metrics": "resource_metrics", "/v1/logs": "resource_logs"}[path]
        return [
            {kv.key: kv.value.string_value for kv in r.resource.attributes}
            for req in self.received[path]
            for r in getattr(req, field)
        ]

    def spans(self) -> list[Any]:
        """The spans llmguard made (an SDK that traces itself, as anthropic does, adds its own)."""
        return [
            s
            for req in self.received["/v1/traces"]
            for rs in req.resource_spans
            for ss in rs.scope_spans
            if ss.scope.name == "llmguard"
            for s in ss.spans
        ]

    def metric_names(self) -> set[str]:
        return {
            m.name
            for req in self.received["/v1/metrics"]
            for rm in req.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
        }

    def log_bodies(self) -> list[str]:
        return [
            lr.body.string_value
            for req in self.received["/v1/logs"]
            for rl in req.resource_logs
            for sl in rl.scope_logs
            for lr in sl.log_records
        ]


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.server.shutdown()
    c.server.server_close()


APP = """
import anthropic
import llmguard as lg
from llmguard.testing import FakeProvider, Step

telemetry = lg.configure_telemetry({args})
fake = FakeProvider().start()
client = anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key="k", max_retries=0)

@lg.trace
@lg.retry(initial=0.01, max_delay=0.01)
def ask(q):
    return client.messages.create(
        model="claude-sonnet-4-6", max_tokens=64, messages=[{{"role": "user", "content": q}}]
    )

fake.script(Step(status=529), Step(reply="hello"))
print(ask("hi").content[0].text)
telemetry.shutdown()
fake.stop()
"""


def _run(args: str, env: dict[str, str]) -> str:
    full = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | env
    done = subprocess.run(  # noqa: S603 - our interpreter, our script
        [sys.executable, "-c", textwrap.dedent(APP.format(args=args))],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == done.returncode, done.stderr
    return done.stdout


def test_one_call_exports_spans_metrics_and_logs_to_the_env_endpoint(collector: Collector) -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME and OTEL_EXPORTER_OTLP_HEADERS are honoured."""
    out = _run(
        "",
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
            "OTEL_SERVICE_NAME": "checkout",
            "OTEL_EXPORTER_OTLP_HEADERS": "x-team=llm",
        },
    )

    assert "hello" in out
    spans = collector.spans()
    assert ["chat claude-sonnet-4-6"] == [s.name for s in spans]
    assert "llmguard.retry.scheduled" in {e.name for e in spans[0].events}
    assert {"gen_ai.client.token.usage", "gen_ai.client.operation.duration"} <= collector.metric_names()
    assert any("llmguard.retry" in body for body in collector.log_bodies())
    for path in _KINDS:
        assert collector.resources(path), path
        assert all("checkout" == r["service.name"] for r in collector.resources(path))
    assert all("llm" == h.get("x-team") for h in collector.headers)


def test_arguments_win_over_the_environment_and_signals_can_be_off(collector: Collector) -> None:
    _run(
        f"'billing', endpoint={collector.url!r}, metrics=False, logs='none'",
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SERVICE_NAME": "ignored"},
    )

    assert 1 == len(collector.spans())
    assert ["billing"] == [r["service.name"] for r in collector.resources("/v1/traces")]
    assert [] == collector.received["/v1/metrics"]
    assert [] == collector.received["/v1/logs"]


def test_otel_sdk_disabled_sets_nothing_up(collector: Collector) -> None:
    _run("", {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_SDK_DISABLED": "true"})
    assert all([] == got for got in collector.received.values())


@pytest.mark.parametrize(
    ("kwargs", "error", "names"),
    [
        ({"traces": "jaeger"}, ValueError, "traces"),
        ({"metrics": 3}, TypeError, "metrics"),
        ({"logs": None}, TypeError, "logs"),
    ],
)
def test_bad_arguments_fail_naming_the_parameter(kwargs: dict[str, Any], error: type[Exception], names: str) -> None:
    with pytest.raises(error, match=rf"configure_telemetry\({names}=...\)"):
        lg.configure_telemetry(**kwargs)


def test_shutdown_leaves_the_llmguard_logger_as_it_found_it() -> None:
    """The handler and the INFO level it needed go with shutdown: nothing leaks into what runs next."""
    import logging

    logger = logging.getLogger("llmguard")
    before = (logger.level, list(logger.handlers))
    telemetry = lg.configure_telemetry(set_global=False, traces=False, metrics=False, logs="console")
    assert logging.INFO == logger.level
    assert telemetry.handler in logger.handlers
    telemetry.shutdown()
    assert before == (logger.level, list(logger.handlers))
