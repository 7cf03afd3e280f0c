"""`configure_telemetry`: OpenTelemetry traces, metrics and logs in one call.

llmguard only *uses* the OpenTelemetry API: with no SDK configured, `trace`
costs almost nothing and exports nothing. This sets up the SDK the standard
way, so an app that has no OpenTelemetry setup of its own needs one line::

    import llmguard as lg
    lg.configure_telemetry()            # OTLP/HTTP to $OTEL_EXPORTER_OTLP_ENDPOINT

It honours the standard environment variables: ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES`` (the resource), ``OTEL_EXPORTER_OTLP_ENDPOINT``
(and the per-signal ``..._TRACES_/..._METRICS_/..._LOGS_ENDPOINT``),
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_TRACES_EXPORTER`` /
``OTEL_METRICS_EXPORTER`` / ``OTEL_LOGS_EXPORTER`` (``otlp``, the default;
``console``; ``none``), ``OTEL_METRIC_EXPORT_INTERVAL`` and
``OTEL_SDK_DISABLED``. Arguments, when given, win over the environment.

Logs: llmguard's events go to the stdlib logger ``llmguard``; this attaches
an OpenTelemetry handler to it, so each event is also an OTel log record,
correlated with the span it happened in. Needs ``pip install
'llmguard[otel]'`` (the SDK and the OTLP/HTTP exporter).
"""

from __future__ import annotations

import logging
import os
import warnings

from dataclasses import dataclass
from typing import Any, Final, cast


_SIGNALS: Final = ("traces", "metrics", "logs")
_KINDS: Final = ("otlp", "console", "none")


@dataclass(frozen=True)
class Telemetry:
    """What `configure_telemetry` set up: each provider, or None when that signal is off."""

    tracer_provider: Any = None
    meter_provider: Any = None
    logger_provider: Any = None
    handler: logging.Handler | None = None
    level: int = logging.NOTSET  # the ``llmguard`` logger's level before, restored by `shutdown`

    def force_flush(self) -> None:
        """Export everything still buffered now (each provider's own flush)."""
        for provider in (self.tracer_provider, self.meter_provider, self.logger_provider):
            if provider is not None:
                provider.force_flush()

    def shutdown(self) -> None:
        """Flush and stop every provider, and detach the log handler (also done at exit)."""
        if self.handler is not None:
            logger = logging.getLogger("llmguard")
            logger.removeHandler(self.handler)
            logger.setLevel(self.level)
        for provider in (self.tracer_provider, self.meter_provider, self.logger_provider):
            if provider is not None:
                provider.shutdown()


def _kind(signal: str, wanted: bool | str) -> str:
    """The exporter for *signal*: the argument if it names one, else the environment, else otlp."""
    if not isinstance(cast("object", wanted), (bool, str)):
        msg = f"configure_telemetry({signal}=...) must be True, False, 'otlp', 'console' or 'none', got {wanted!r}"
        raise TypeError(msg)
    if wanted is False:
        return "none"
    if isinstance(wanted, str):
        kind = wanted
    else:
        kind = os.environ.get(f"OTEL_{signal.upper()}_EXPORTER", "otlp").strip().lower() or "otlp"
    if kind not in _KINDS:
        msg = f"configure_telemetry({signal}=...) (or OTEL_{signal.upper()}_EXPORTER) must be one of {_KINDS}, got {kind!r}"
        raise ValueError(msg)
    return kind


def _endpoint(endpoint: str | None, signal: str) -> dict[str, Any]:
    # The exporters read the environment themselves; an explicit base endpoint gets the signal's path.
    return {} if endpoint is None else {"endpoint": f"{endpoint.rstrip('/')}/v1/{signal}"}


def configure_telemetry(
    service_name: str | None = None,
    *,
    endpoint: str | None = None,
    headers: dict[str, str] | None = None,
    traces: bool | str = True,
    metrics: bool | str = True,
    logs: bool | str = True,
    set_global: bool = True,
) -> Telemetry:
    """Set up OpenTelemetry traces, metrics and logs for llmguard (and the rest of the app).

    *service_name* (else ``OTEL_SERVICE_NAME``), *endpoint* (the OTLP/HTTP
    base URL, else ``OTEL_EXPORTER_OTLP_ENDPOINT``, else
    ``http://localhost:4318``), *headers* (else ``OTEL_EXPORTER_OTLP_HEADERS``).
    *traces* / *metrics* / *logs*: True (the environment's exporter, else
    OTLP), False, or ``"otlp"`` / ``"console"`` / ``"none"``. *set_global*:
    install the providers as OpenTelemetry's global ones (what `trace` and
    most instrumentations use); False only builds them. Returns a `Telemetry`
    whose ``shutdown()`` flushes and stops them (the SDK also does at exit).
    """
    kinds = {signal: _kind(signal, wanted) for signal, wanted in zip(_SIGNALS, (traces, metrics, logs), strict=True)}
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Telemetry()
    try:
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415 - optional dependency
    except ImportError as exc:  # pragma: no cover - the SDK is in the dev environment
        msg = "configure_telemetry needs the OpenTelemetry SDK: pip install 'llmguard[otel]'"
        raise ImportError(msg) from exc
    resource = Resource.create({} if service_name is None else {"service.name": service_name})
    options: dict[str, Any] = {} if headers is None else {"headers": dict(headers)}
    tracer_provider = _traces(kinds["traces"], resource, endpoint, options)
    meter_provider = _metrics(kinds["metrics"], resource, endpoint, options)
    logger_provider, handler = _logs(kinds["logs"], resource, endpoint, options)
    if set_global:
        from opentelemetry import metrics as otel_metrics  # noqa: PLC0415
        from opentelemetry import trace as otel_trace  # noqa: PLC0415

        if tracer_provider is not None:
            otel_trace.set_tracer_provider(tracer_provider)
        if meter_provider is not None:
            otel_metrics.set_meter_provider(meter_provider)
    logger = logging.getLogger("llmguard")
    level = logger.level
    if handler is not None:
        logger.addHandler(handler)
        if level == logging.NOTSET or level > logging.INFO:
            logger.setLevel(logging.INFO)
    return Telemetry(tracer_provider, meter_provider, logger_provider, handler, level)


def _traces(kind: str, resource: Any, endpoint: str | None, options: dict[str, Any]) -> Any:
    if kind == "none":
        return None
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter  # noqa: PLC0415

    provider = TracerProvider(resource=resource)
    if kind == "console":
        exporter: Any = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

        exporter = OTLPSpanExporter(**_endpoint(endpoint, "traces"), **options)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _metrics(kind: str, resource: Any, endpoint: str | None, options: dict[str, Any]) -> Any:
    if kind == "none":
        return None
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import (  # noqa: PLC0415
        ConsoleMetricExporter,
        PeriodicExportingMetricReader,
    )

    if kind == "console":
        exporter: Any = ConsoleMetricExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter  # noqa: PLC0415

        exporter = OTLPMetricExporter(**_endpoint(endpoint, "metrics"), **options)
    return MeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(exporter)])


def _logs(kind: str, resource: Any, endpoint: str | None, options: dict[str, Any]) -> tuple[Any, logging.Handler | None]:
    if kind == "none":
        return None, None
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler, export  # noqa: PLC0415

    provider = LoggerProvider(resource=resource)
    if kind == "console":
        # ConsoleLogRecordExporter since 1.39; ConsoleLogExporter before (deprecated since).
        exporter: Any = getattr(export, "ConsoleLogRecordExporter", None) or export.ConsoleLogExporter
        exporter = exporter()
    else:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter  # noqa: PLC0415

        exporter = OTLPLogExporter(**_endpoint(endpoint, "logs"), **options)
    provider.add_log_record_processor(export.BatchLogRecordProcessor(exporter))
    with warnings.catch_warnings():
        # Deprecated (since 1.39) in favour of opentelemetry-instrumentation-logging's, which
        # instruments the whole logging module; this one handler on one logger is all we need.
        warnings.simplefilter("ignore", DeprecationWarning)
        handler = LoggingHandler(level=logging.INFO, logger_provider=provider)
    return provider, handler
