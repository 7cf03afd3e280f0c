"""How long the provider asked us to wait, read from response headers.

Retry guards should sleep for what the server said rather than a blind
backoff whenever the server said something. Providers say it in several
dialects, read here in priority order:

1. ``retry-after-ms`` (milliseconds; OpenAI and the Stainless SDKs),
2. ``retry-after`` (seconds, possibly fractional, or an HTTP-date),
3. the rate-limit *reset* headers of an exhausted limit:
   ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-reset``
   (RFC 3339 timestamps) and ``x-ratelimit-reset-{requests,tokens}`` (Go
   durations such as ``6m0s`` or ``20ms``). A reset header only counts when
   the matching ``*-remaining`` header is ``"0"``: a limit that is not
   exhausted is not why we were refused.

Everything is parsed defensively: a negative, non-finite or garbled value is
ignored and the next source is tried. Header names are matched
case-insensitively whatever Mapping is passed in.
"""

from __future__ import annotations

import math
import re
import time

from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any


__all__ = ["headers_of", "lower_headers", "parse_duration", "retry_after", "should_retry_header"]

# Only these headers matter here; filtering while lower-casing keeps the
# per-error cost proportional to the few interesting headers.
_PREFIXES = ("retry-after", "x-should-retry", "anthropic-ratelimit-", "x-ratelimit-")
_BYTE_PREFIXES = tuple(p.encode() for p in _PREFIXES)

_ANTHROPIC_LIMITS = ("requests", "tokens", "input-tokens", "output-tokens")
_OPENAI_LIMITS = ("requests", "tokens")

# Go-style durations as OpenAI sends them: "6ms", "1s", "6m0s", "1h2m3.5s".
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|h|m|s)")
_DURATION_FULL = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|h|m|s))+")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

# Longest wait we believe (a year); anything larger is garbage, not advice.
_MAX_WAIT = 365 * 24 * 3600.0


def headers_of(obj: Any) -> Any:
    """The response headers carried by an exception or response, or None."""
    response = getattr(obj, "response", None)
    if response is not None:
        headers = getattr(response, "headers", None)
        if headers is not None:
            return headers
    return getattr(obj, "headers", None)


def lower_headers(headers: Any) -> dict[str, str]:
    """The interesting headers of *headers* with lower-cased names.

    Accepts any Mapping (``httpx2.Headers``, a plain dict, ...) or an
    iterable of pairs; anything else yields an empty dict.
    """
    if headers is None:  # not `not headers`: httpx's __len__ decodes every name
        return {}
    out: dict[str, str] = {}
    raw_list = getattr(headers, "_list", None)
    if type(raw_list) is list and type(headers).__module__.startswith("httpx"):
        # httpx/httpx2 Headers keep (raw name, lower-cased name, value) bytes;
        # .items() would decode every header (~5 µs), we decode only ours.
        try:
            for _, low_key, value in raw_list:
                if low_key.startswith(_BYTE_PREFIXES):
                    out[low_key.decode("latin-1")] = value.decode("latin-1").strip()
        except Exception:  # noqa: BLE001 - layout changed: fall back to the public API
            out.clear()
        else:
            return out
    try:
        items = headers.items() if hasattr(headers, "items") else headers
        for raw_key, raw_value in items:
            key = raw_key.decode("latin-1") if isinstance(raw_key, bytes) else raw_key
            if not isinstance(key, str):
                continue
            low = key.lower()
            if low.startswith(_PREFIXES):
                value = raw_value.decode("latin-1") if isinstance(raw_value, bytes) else raw_value
                out[low] = str(value).strip()
    except Exception:  # noqa: BLE001 - a broken mapping must not break error handling
        return {}
    return out


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration (``"1h2m3.5s"``), None if malformed."""
    text = text.strip()
    if not text or not _DURATION_FULL.fullmatch(text):
        return None
    total = 0.0
    for number, unit in _DURATION_PART.findall(text):
        total += float(number) * _UNIT_SECONDS[unit]
    return total


def _seconds(value: str | None) -> float | None:
    """A non-negative finite float from a header value, else None."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0 or seconds > _MAX_WAIT:
        return None
    return seconds


def _http_date(value: str, now: float) -> float | None:
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # asctime form carries no zone; HTTP-dates are always GMT
        when = when.replace(tzinfo=UTC)
    # A date already past means "now", not "ignore".
    return min(max(when.timestamp() - now, 0.0), _MAX_WAIT)


def _rfc3339(value: str, now: float) -> float | None:
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if when.tzinfo is None:  # a reset time without a zone is ambiguous
        return None
    return min(max(when.timestamp() - now, 0.0), _MAX_WAIT)


def _reset_wait(h: dict[str, str], now: float) -> float | None:
    """The longest reset among the exhausted limits, or None."""
    best: float | None = None
    for limit in _ANTHROPIC_LIMITS:
        if h.get(f"anthropic-ratelimit-{limit}-remaining") == "0":
            reset = h.get(f"anthropic-ratelimit-{limit}-reset")
            wait = _rfc3339(reset, now) if reset else None
            if wait is not None and (best is None or wait > best):
                best = wait
    for limit in _OPENAI_LIMITS:
        if h.get(f"x-ratelimit-remaining-{limit}") == "0":
            reset = h.get(f"x-ratelimit-reset-{limit}")
            wait = parse_duration(reset) if reset else None
            if wait is not None and wait <= _MAX_WAIT and (best is None or wait > best):
                best = wait
    return best


def retry_after_lower(h: dict[str, str], now: float | None = None) -> float | None:
    """`retry_after` for headers already passed through `lower_headers`."""
    if not h:
        return None
    ms = _seconds(h.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    raw = h.get("retry-after")
    if raw:
        seconds = _seconds(raw)
        if seconds is not None:
            return seconds
        if not raw.lstrip().startswith(("-", "+")) and not raw[:1].isdigit():
            wait = _http_date(raw, time.time() if now is None else now)
            if wait is not None:
                return wait
    if any(k.endswith("-reset") or k.startswith("x-ratelimit-reset") for k in h):
        return _reset_wait(h, time.time() if now is None else now)
    return None


def retry_after(headers: Mapping[str, str] | Any | None, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait before retrying, or None.

    *now* is wall-clock epoch seconds (default `time.time()`), the reference
    for HTTP-dates and RFC 3339 reset times. See the module docstring for
    the headers read and their priority. Never raises.
    """
    try:
        return retry_after_lower(lower_headers(headers), now)
    except Exception:  # noqa: BLE001 - advice we cannot read is no advice
        return None


def should_retry_lower(h: dict[str, str]) -> bool | None:
    """`should_retry_header` for headers already passed through `lower_headers`."""
    value = h.get("x-should-retry")
    if value is None:
        return None
    value = value.lower()
    if value == "true":
        return True
    if value == "false":
        return False
    return None


def should_retry_header(headers: Mapping[str, str] | Any | None) -> bool | None:
    """The server's ``x-should-retry: true|false`` verdict, None if absent or unclear."""
    return should_retry_lower(lower_headers(headers))
