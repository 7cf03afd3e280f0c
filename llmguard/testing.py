"""Helpers for testing code that uses llmguard (shipped to users).

* `FakeProvider` — a fake Anthropic / OpenAI / Gemini server on 127.0.0.1
  that the **real** SDKs talk to over HTTP (``base_url=``), with scripted
  faults (`Step`) and a record of the requests it got.
* `FakeClock` and `fake_clock()` — every guard's waits become instant and
  every duration exact.
* `capture_events()` — the events guards emit, to assert on.

As a pytest plugin (``pytest_plugins = ["llmguard.testing"]`` in your
``conftest.py``) it provides the fixtures ``fake_provider`` (one server per
session, reset for each test), ``fake_clock`` and ``llmguard_events``.
"""

from __future__ import annotations

import asyncio
import threading

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ._clock import Clock, set_clock
from ._events import add_listener, remove_listener
from ._fake_provider import FakeProvider, RecordedRequest, Step


__all__ = [
    "CapturedEvent",
    "FakeClock",
    "FakeProvider",
    "RecordedRequest",
    "Step",
    "capture_events",
    "fake_clock",
]


class FakeClock(Clock):
    """A clock that only moves when told to, or when something sleeps on it.

    ``sleep`` and ``asleep`` return at once after advancing the clock by the
    requested time, and are recorded in `sleeps`, so a test of a 30-second
    backoff runs in microseconds and can assert the exact waits.
    """

    __slots__ = ("_lock", "_now", "_wall_offset", "sleeps")

    def __init__(self, start: float = 1_000.0, wall: float = 1_767_225_600.0) -> None:
        self._now = start
        self._wall_offset = wall - start  # wall = 2026-01-01T00:00:00Z at start
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        """The fake monotonic time."""
        return self._now

    def time(self) -> float:
        """The fake wall-clock time (moves with `monotonic`)."""
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move time forward by *seconds*."""
        if seconds < 0:
            msg = f"FakeClock.advance(seconds=...) must be >= 0, got {seconds}"
            raise ValueError(msg)
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        """Record the sleep and advance time; returns at once."""
        with self._lock:
            self.sleeps.append(seconds)
            self._now += max(seconds, 0.0)

    async def asleep(self, seconds: float) -> None:
        """Record the sleep and advance time; yields to the loop once."""
        self.sleep(seconds)
        await asyncio.sleep(0)


@contextmanager
def fake_clock(start: float = 1_000.0) -> Iterator[FakeClock]:
    """Make every guard use a new `FakeClock` inside the block."""
    clock = FakeClock(start)
    previous = set_clock(clock)
    try:
        yield clock
    finally:
        set_clock(previous)


@dataclass(frozen=True, slots=True)
class CapturedEvent:
    """One event a guard emitted: its name and fields."""

    name: str
    fields: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]


@contextmanager
def capture_events(prefix: str = "llmguard.") -> Iterator[list[CapturedEvent]]:
    """Collect the events emitted inside the block (whose names start with *prefix*)."""
    captured: list[CapturedEvent] = []
    lock = threading.Lock()

    def listener(name: str, fields: dict[str, Any]) -> None:
        if name.startswith(prefix):
            with lock:
                captured.append(CapturedEvent(name, dict(fields)))

    add_listener(listener)
    try:
        yield captured
    finally:
        remove_listener(listener)


# -- pytest plugin -----------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - pytest is optional for users
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture(scope="session")
    def _llmguard_fake_provider_server() -> Iterator[FakeProvider]:
        with FakeProvider() as server:
            yield server

    @pytest.fixture
    def fake_provider(_llmguard_fake_provider_server: FakeProvider) -> FakeProvider:
        """A running `FakeProvider`, reset (empty script and log) for this test."""
        _llmguard_fake_provider_server.reset()
        return _llmguard_fake_provider_server

    @pytest.fixture(name="fake_clock")
    def _fake_clock_fixture() -> Iterator[FakeClock]:
        """Every guard uses a `FakeClock` during this test."""
        with fake_clock() as clock:
            yield clock

    @pytest.fixture
    def llmguard_events() -> Iterator[list[CapturedEvent]]:
        """The llmguard events emitted during this test."""
        with capture_events() as events:
            yield events

