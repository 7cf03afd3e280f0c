"""Shared fixtures: the fake provider, real SDK clients pointed at it, a probe layer."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import warnings

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import anthropic
import openai
import pytest

from probe import Probe, ReadsBothProbe, ReadsLateProbe

from llmguard._fake_provider import FakeProvider


pytest_plugins = ["llmguard.testing"]

API_KEY = "sk-test-SECRET-0123456789abcdef"


@pytest.fixture
def anthropic_client(fake_provider: FakeProvider) -> Iterator[anthropic.Anthropic]:
    """A real anthropic client (no SDK retries) pointed at the fake provider."""
    with anthropic.Anthropic(
        base_url=fake_provider.anthropic_base_url, api_key=API_KEY, max_retries=0
    ) as client:
        yield client


def no_keepalive() -> Any:
    """An async HTTP client for the SDKs that keeps no connection open between requests.

    Tests run async calls in event loops of their own (`shapes.build` starts one per call): a
    kept-alive connection would outlive its loop, and its unclosed transport's ResourceWarning
    would fail whichever later test the collector happened to run in. The SDKs' own timeouts.
    """
    from sdk_http import httpx  # noqa: PLC0415

    return httpx.AsyncClient(
        limits=httpx.Limits(max_keepalive_connections=0), timeout=httpx.Timeout(600.0, connect=5.0)
    )


@pytest.fixture
def async_anthropic_client(fake_provider: FakeProvider) -> anthropic.AsyncAnthropic:
    """A real async anthropic client (no SDK retries, no kept-alive connections) pointed at the fake provider."""
    return anthropic.AsyncAnthropic(
        base_url=fake_provider.anthropic_base_url, api_key=API_KEY, max_retries=0, http_client=no_keepalive()
    )


@pytest.fixture
def clients(
    anthropic_client: anthropic.Anthropic, async_anthropic_client: anthropic.AsyncAnthropic
) -> tuple[anthropic.Anthropic, anthropic.AsyncAnthropic]:
    """A sync and an async anthropic client on the fake provider, for `shapes.build`."""
    return anthropic_client, async_anthropic_client


@pytest.fixture
def openai_client(fake_provider: FakeProvider) -> Iterator[openai.OpenAI]:
    """A real openai client (no SDK retries) pointed at the fake provider."""
    with openai.OpenAI(
        base_url=fake_provider.openai_base_url, api_key=API_KEY, max_retries=0
    ) as client:
        yield client


@pytest.fixture
def async_openai_client(fake_provider: FakeProvider) -> openai.AsyncOpenAI:
    """A real async openai client (no SDK retries, no kept-alive connections) pointed at the fake provider."""
    return openai.AsyncOpenAI(
        base_url=fake_provider.openai_base_url, api_key=API_KEY, max_retries=0, http_client=no_keepalive()
    )


@pytest.fixture
def instructor() -> ModuleType:
    """The real instructor package (tests/test_chain.py, tests/test_trace_sdk_spans.py).

    instructor pins jiter below what openai >= 3.4 needs, so the locked environment cannot
    hold it (the test skips there); .ci/run installs it in an environment of its own and sets
    LLMGUARD_TEST_INSTRUCTOR so that a missing instructor fails there instead of skipping.
    """
    if os.environ.get("LLMGUARD_TEST_INSTRUCTOR"):
        import instructor  # noqa: PLC0415

        return instructor
    return pytest.importorskip("instructor")


def json_mode(instructor: ModuleType, client: Any) -> Any:
    """*client* patched by instructor to parse the reply's text as JSON, on every supported version."""
    with warnings.catch_warnings():
        # Newer releases deprecate ANTHROPIC_JSON for JSON, which older ones refuse here.
        warnings.simplefilter("ignore", DeprecationWarning)
        return instructor.from_anthropic(client, mode=instructor.Mode.ANTHROPIC_JSON)


@pytest.fixture(params=["reads-before", "reads-after", "reads-both"])
def probe(request: pytest.FixtureRequest) -> Probe:
    """A fresh probe guard reading the call's record before the call, after it, or both (built early or late)."""
    return {"reads-before": Probe, "reads-after": ReadsLateProbe, "reads-both": ReadsBothProbe}[request.param]()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL of a real, empty redis-server database (skips when none can be had).

    ``LLMGUARD_REDIS_URL`` wins (CI sets it); otherwise a private
    ``redis-server`` is started on a free port if the binary is installed.
    """
    url = os.environ.get("LLMGUARD_REDIS_URL")
    proc = None
    if not url:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("no redis-server: install it (apt-get install redis-server) or set LLMGUARD_REDIS_URL")
        port = _free_port()
        workdir = tmp_path_factory.mktemp("redis")
        proc = subprocess.Popen(  # noqa: S603 - our own fixed arguments
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
    import redis

    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        pytest.skip(f"redis-server at {url} did not answer")
    client.flushdb()
    client.close()
    yield url
    if proc is not None:
        proc.terminate()
        proc.wait(timeout=5)
