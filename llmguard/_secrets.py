"""What a credential looks like, and how llmguard keeps them out of telemetry.

One place for the patterns: `trace` scrubs span attributes, content and
exception text with them, and the events module scrubs every event's string
fields before they reach structlog or a listener. Deliberately broad: a false
positive costs a redacted word in a log, a false negative leaks a key.
"""

from __future__ import annotations

import re

from typing import Any, Final


REDACTED: Final = "[REDACTED]"

# API keys and credentials, across the providers llmguard knows and the
# usual suspects.
_SECRET: Final = re.compile(
    r"sk-[A-Za-z0-9_\-]{8,}"  # anthropic sk-ant-..., openai sk-/sk-proj-..., test keys
    r"|AIza[0-9A-Za-z_\-]{20,}"  # google api keys
    r"|(?i:bearer|basic)\s+[A-Za-z0-9._~+/\-]{8,}=*"  # Authorization values
    r"|\b(?:gh[pousr]|github_pat|xox[abprs]|glpat|hf)_[A-Za-z0-9_\-]{16,}"  # github, slack, gitlab, hf
    r"|\bAKIA[0-9A-Z]{16}\b"  # aws access key ids
    r"|\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"  # JWTs
)
# key=value / "key": "value" pairs whose key names a credential.
_SECRET_PAIR: Final = re.compile(
    r"(?i)((?:x-)?api[-_]?key|x-goog-api-key|authorization|access[-_]?token|secret|password)"
    r"(['\"]?\s*[:=]\s*['\"]?)([^\s'\",}&]+)"
)
# Attribute keys whose values are credentials, whatever they look like.
SECRET_KEY_NAMES: Final = re.compile(
    r"(?i)(^|[._-])(api[-_]?key|authorization|password|passwd|secret|token|credential)s?($|[._-])"
)


def scrub(text: str) -> str:
    """*text* with anything that looks like a credential replaced by ``[REDACTED]``."""
    if len(text) < 8:
        return text
    text = _SECRET.sub(REDACTED, text)
    return _SECRET_PAIR.sub(rf"\1\2{REDACTED}", text)


def scrub_named(key: str, value: Any) -> Any:
    """*value* as it may be recorded under the name *key*.

    Numbers (and flags) pass as they are: a count such as ``lost_tokens`` is
    never a credential, whatever its name says. Anything else under a name
    that says credential is redacted whatever it holds (a sequence item by
    item, numbers kept); elsewhere strings are scrubbed by what they look
    like, in sequences too.
    """
    if value is None or isinstance(value, (int, float)):  # bool is an int
        return value
    named = SECRET_KEY_NAMES.search(key) is not None
    if isinstance(value, (list, tuple)):
        items = [_scrub_item(v, named=named) for v in value]
        return items if isinstance(value, list) else tuple(items)
    return _scrub_item(value, named=named)


def _scrub_item(value: Any, *, named: bool) -> Any:
    if value is None or isinstance(value, (int, float)):
        return value
    if named:
        return REDACTED
    return scrub(value) if isinstance(value, str) else value


def scrub_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Event fields as `scrub_named` leaves them; an exception becomes its scrubbed text."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if isinstance(value, BaseException):
            value = f"{type(value).__name__}: {value}"  # noqa: PLW2901 - the text stands for it
        out[key] = scrub_named(key, value)
    return out
