"""Events reach the standard library's ``llmguard`` logger when structlog is not configured."""

from __future__ import annotations

import io
import logging

from typing import Any

import anthropic
import pytest
import structlog

from conftest import API_KEY

import llmguard as lg

from llmguard import _events
from llmguard._fake_provider import FakeProvider, Step
from llmguard.testing import FakeClock


MODEL = "claude-sonnet-4-6"
MESSAGES: Any = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def unconfigured(monkeypatch: pytest.MonkeyPatch) -> None:
    """Structlog as an application that never configured it leaves it (another test may have)."""
    monkeypatch.setattr(structlog, "is_configured", lambda: False)


def ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "llmguard"]


def traced_ask(client: anthropic.Anthropic) -> Any:
    @lg.trace
    @lg.retry
    def ask() -> Any:
        return client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)

    return ask


def test_a_retried_call_logs_a_warning_per_retry_and_one_info_line(
    unconfigured: None,
    caplog: pytest.LogCaptureFixture,
    anthropic_client: anthropic.Anthropic,
    fake_provider: FakeProvider,
    fake_clock: FakeClock,
) -> None:
    caplog.set_level(logging.INFO, logger="llmguard")
    fake_provider.script(Step(status=429, headers={"retry-after": "1"}), Step(reply="ok now"))

    traced_ask(anthropic_client)()

    records = ours(caplog)
    assert [(logging.WARNING, "llmguard.retry.scheduled"), (logging.INFO, "llmguard.call")] == [
        (r.levelno, getattr(r, "llmguard.event")) for r in records
    ]
    retry, call = records
    assert "rate_limited" == getattr(retry, "llmguard.error_kind")
    assert "error_kind=rate_limited" in retry.getMessage()
    assert retry.getMessage().startswith("llmguard.retry.scheduled ")
    assert (2, "ok", "traced_ask.<locals>.ask") == (
        getattr(call, "llmguard.attempts"),
        getattr(call, "llmguard.outcome"),
        getattr(call, "llmguard.function"),
    )


def test_a_failed_call_logs_at_error_with_secrets_scrubbed(
    unconfigured: None,
    caplog: pytest.LogCaptureFixture,
    anthropic_client: anthropic.Anthropic,
    fake_provider: FakeProvider,
    fake_clock: FakeClock,
) -> None:
    caplog.set_level(logging.INFO, logger="llmguard")
    fake_provider.script(Step(status=400, error_message=f"the key {API_KEY} is not allowed here"))

    with pytest.raises(anthropic.BadRequestError):
        traced_ask(anthropic_client)()

    [call] = ours(caplog)
    assert (logging.ERROR, "bad_request") == (call.levelno, getattr(call, "llmguard.error_kind"))
    assert "[REDACTED]" in call.getMessage()
    assert "[REDACTED]" in getattr(call, "llmguard.error")
    assert API_KEY not in caplog.text
    assert not any(API_KEY in str(v) for v in vars(call).values())


def test_at_the_default_warning_level_only_warnings_are_built(
    unconfigured: None,
    caplog: pytest.LogCaptureFixture,
    anthropic_client: anthropic.Anthropic,
    fake_provider: FakeProvider,
    fake_clock: FakeClock,
) -> None:
    """The call line is info: with the logger at warning it is not even built (nothing listens)."""
    caplog.set_level(logging.WARNING, logger="llmguard")
    fake_provider.script(Step(status=529), Step(reply="fine"))

    assert not _events.listening()
    traced_ask(anthropic_client)()

    assert [(logging.WARNING, "llmguard.retry.scheduled")] == [
        (r.levelno, getattr(r, "llmguard.event")) for r in ours(caplog)
    ]


def test_configured_structlog_keeps_the_events_and_the_stdlib_logger_gets_none(
    caplog: pytest.LogCaptureFixture,
    anthropic_client: anthropic.Anthropic,
    fake_provider: FakeProvider,
    fake_clock: FakeClock,
) -> None:
    caplog.set_level(logging.DEBUG, logger="llmguard")
    out = io.StringIO()
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(file=out),
    )
    try:
        fake_provider.script(Step(status=429, headers={"retry-after": "1"}), Step(reply="ok now"))
        traced_ask(anthropic_client)()
    finally:
        structlog.reset_defaults()

    assert '"event": "llmguard.retry.scheduled"' in out.getvalue()
    assert '"event": "llmguard.call"' in out.getvalue()
    assert [] == ours(caplog)  # no double logging


def test_the_llmguard_logger_has_only_a_null_handler() -> None:
    """An application that configured no logging sees nothing from us (no last-resort stderr)."""
    handlers = logging.getLogger("llmguard").handlers
    assert [logging.NullHandler] == [type(h) for h in handlers]
