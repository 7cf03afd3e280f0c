"""Shared fixtures: the fake provider, real SDK clients pointed at it, a probe layer."""

from __future__ import annotations

from collections.abc import Iterator
import anthropic
import openai
import pytest

from llmguard._fake_provider import FakeProvider
from probe import Probe


pytest_plugins = ["llmguard.testing"]

API_KEY = "sk-test-SECRET-0123456789abcdef"


@pytest.fixture
def anthropic_client(fake_provider: FakeProvider) -> Iterator[anthropic.Anthropic]:
    """A real anthropic client (no SDK retries) pointed at the fake provider."""
    with anthropic.Anthropic(
        base_url=fake_provider.anthropic_base_url, api_key=API_KEY, max_retries=0
    ) as client:
        yield client


@pytest.fixture
def async_anthropic_client(fake_provider: FakeProvider) -> anthropic.AsyncAnthropic:
    """A real async anthropic client (no SDK retries) pointed at the fake provider."""
    return anthropic.AsyncAnthropic(
        base_url=fake_provider.anthropic_base_url, api_key=API_KEY, max_retries=0
    )


@pytest.fixture
def openai_client(fake_provider: FakeProvider) -> Iterator[openai.OpenAI]:
    """A real openai client (no SDK retries) pointed at the fake provider."""
    with openai.OpenAI(
        base_url=fake_provider.openai_base_url, api_key=API_KEY, max_retries=0
    ) as client:
        yield client


@pytest.fixture
def async_openai_client(fake_provider: FakeProvider) -> openai.AsyncOpenAI:
    """A real async openai client (no SDK retries) pointed at the fake provider."""
    return openai.AsyncOpenAI(
        base_url=fake_provider.openai_base_url, api_key=API_KEY, max_retries=0
    )


@pytest.fixture
def probe() -> Probe:
    """A fresh probe layer."""
    return Probe()
