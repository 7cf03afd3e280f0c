"""The HTTP client library the installed SDKs are built on.

anthropic >= 1.0, openai >= 3 and google-genai >= 3 use ``httpx2``; earlier releases use ``httpx``.
Tests that build transports, requests or transport errors for an SDK take them from here, so
the suite runs unchanged on the newest releases and on the lowest versions pyproject declares.
The library is taken from anthropic and assumed for all three: an environment mixing them
(anthropic >= 1.0 with openai < 3, as the lowest bounds would give if anthropic's were raised
past 0.x) fails the openai and google tests that pass a transport.
"""

import importlib

from types import ModuleType

import anthropic._base_client
import openai


def _library() -> ModuleType:
    for name in ("httpx2", "httpx"):
        if hasattr(anthropic._base_client, name):
            return importlib.import_module(name)
    msg = "the anthropic SDK imports neither httpx2 nor httpx"
    raise ImportError(msg)


httpx = _library()


# What a stream cut mid-body raises: anthropic < 2.17 lets the transport's RemoteProtocolError
# through, 2.17 wraps it in APIConnectionError; openai wraps it, but releases on httpx (< 3) do
# not for a chat stream. llmguard classifies all of them as a connection error; tests assert
# that, not one SDK version's class.
MID_STREAM_CUT: tuple[type[BaseException], ...] = (
    httpx.RemoteProtocolError,
    anthropic.APIConnectionError,
    openai.APIConnectionError,
)
