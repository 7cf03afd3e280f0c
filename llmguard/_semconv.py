"""Every OpenTelemetry name `trace` emits, in one table.

The GenAI semantic conventions are still moving. The last release inside
``open-telemetry/semantic-conventions`` is **v1.41**, and that is what
llmguard emits by default. The spec's own transition rule decides the rest:
an application that sets ``OTEL_SEMCONV_STABILITY_OPT_IN`` to a list
containing ``gen_ai_latest_experimental`` gets the newer names from
``semantic-conventions-genai`` (cache *write* tokens, ``inference``
metrics, token usage as counters) instead.

`NAMES` is the one table: a stable key, then the name under v1.41 and the
name under the latest experimental conventions (``""`` where a profile has
no such name). `Semconv` is one profile of it, read by attribute, so code
says ``names.usage_input`` and never spells a name inline. llmguard's own
facts live under ``llmguard.*`` and are the same in both profiles.
"""

from __future__ import annotations

import os

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final


OPT_IN_ENV: Final = "OTEL_SEMCONV_STABILITY_OPT_IN"
LATEST_EXPERIMENTAL: Final = "gen_ai_latest_experimental"
CAPTURE_CONTENT_ENV: Final = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
# Values of CAPTURE_CONTENT_ENV that put content on spans (python-genai's
# knob; "event_only" asks for log events, which llmguard does not emit).
CAPTURE_CONTENT_ON: Final = frozenset({"true", "1", "span_only", "span_and_event"})

SCHEMA_V1_41: Final = "https://opentelemetry.io/schemas/1.41.0"
SCHEMA_LATEST: Final = "https://opentelemetry.io/schemas/gen-ai/1.42.0"

# key: (v1.41 name, gen_ai_latest_experimental name)
NAMES: Final[dict[str, tuple[str, str]]] = {
    # -- span attributes: request (set when the span starts: sampling-relevant)
    "operation": ("gen_ai.operation.name", "gen_ai.operation.name"),
    "provider": ("gen_ai.provider.name", "gen_ai.provider.name"),
    "request_model": ("gen_ai.request.model", "gen_ai.request.model"),
    "request_max_tokens": ("gen_ai.request.max_tokens", "gen_ai.request.max_tokens"),
    "request_temperature": ("gen_ai.request.temperature", "gen_ai.request.temperature"),
    "request_top_p": ("gen_ai.request.top_p", "gen_ai.request.top_p"),
    "request_stream": ("gen_ai.request.stream", "gen_ai.request.stream"),
    "server_address": ("server.address", "server.address"),
    "server_port": ("server.port", "server.port"),
    # -- span attributes: response
    "response_model": ("gen_ai.response.model", "gen_ai.response.model"),
    "response_id": ("gen_ai.response.id", "gen_ai.response.id"),
    "response_finish_reasons": ("gen_ai.response.finish_reasons", "gen_ai.response.finish_reasons"),
    "response_ttfc": ("gen_ai.response.time_to_first_chunk", "gen_ai.response.time_to_first_chunk"),
    "usage_input": ("gen_ai.usage.input_tokens", "gen_ai.usage.input_tokens"),
    "usage_output": ("gen_ai.usage.output_tokens", "gen_ai.usage.output_tokens"),
    "usage_cache_read": ("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read.input_tokens"),
    "usage_cache_write": (
        "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.cache_write.input_tokens",  # semantic-conventions-genai PR #440
    ),
    "usage_reasoning": ("gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning.output_tokens"),
    "error_type": ("error.type", "error.type"),
    # -- span attributes: content (opt-in only)
    "input_messages": ("gen_ai.input.messages", "gen_ai.input.messages"),
    "output_messages": ("gen_ai.output.messages", "gen_ai.output.messages"),
    "system_instructions": ("gen_ai.system_instructions", "gen_ai.system_instructions"),
    # -- metric attributes
    "token_type": ("gen_ai.token.type", "gen_ai.token.type"),
    "token_modality": ("", "gen_ai.token.modality"),
    # -- metrics (histograms unless the name says counter)
    "metric_token_usage": ("gen_ai.client.token.usage", ""),  # removed upstream (PR #374)
    "metric_duration": ("gen_ai.client.operation.duration", "gen_ai.client.inference.duration"),
    "metric_ttfc": (
        "gen_ai.client.operation.time_to_first_chunk",
        "gen_ai.client.inference.time_to_first_chunk",
    ),
    "metric_tpoc": (
        "gen_ai.client.operation.time_per_output_chunk",
        "gen_ai.client.inference.time_per_output_chunk",
    ),
    "metric_op_input_tokens": ("", "gen_ai.client.inference.operation.input_tokens"),
    "metric_op_output_tokens": ("", "gen_ai.client.inference.operation.output_tokens"),
    # counters
    "metric_usage_input": ("", "gen_ai.client.inference.usage.input_tokens"),
    "metric_usage_output": ("", "gen_ai.client.inference.usage.output_tokens"),
    "metric_usage_cache_read": ("", "gen_ai.client.inference.usage.cache_read.input_tokens"),
    "metric_usage_cache_write": ("", "gen_ai.client.inference.usage.cache_write.input_tokens"),
    "metric_usage_reasoning": ("", "gen_ai.client.inference.usage.reasoning.output_tokens"),
    # -- llmguard's own facts (span attributes)
    "lg_function": ("llmguard.function", "llmguard.function"),
    "lg_cost": ("llmguard.cost_usd", "llmguard.cost_usd"),
    "lg_attempts": ("llmguard.attempts", "llmguard.attempts"),
    "lg_cache": ("llmguard.cache", "llmguard.cache"),
    "lg_cache_similarity": ("llmguard.cache.similarity", "llmguard.cache.similarity"),
    "lg_saved": ("llmguard.saved_usd", "llmguard.saved_usd"),
    "lg_fallback_target": ("llmguard.fallback.target", "llmguard.fallback.target"),
    "lg_budget_decision": ("llmguard.budget.decision", "llmguard.budget.decision"),
    "lg_route": ("llmguard.route", "llmguard.route"),
    "lg_usage_estimated": ("llmguard.usage.estimated", "llmguard.usage.estimated"),
    "lg_outcome": ("llmguard.outcome", "llmguard.outcome"),
    "lg_error_kind": ("llmguard.error.kind", "llmguard.error.kind"),
    "lg_refusal": ("llmguard.refusal", "llmguard.refusal"),
    # -- llmguard's own facts on a `with lg.trace(...)` span: totals of the calls inside
    "lg_calls": ("llmguard.calls", "llmguard.calls"),
    "lg_total_input": ("llmguard.usage.input_tokens", "llmguard.usage.input_tokens"),
    "lg_total_output": ("llmguard.usage.output_tokens", "llmguard.usage.output_tokens"),
    # -- llmguard's own metrics (counters)
    "metric_cost": ("llmguard.cost", "llmguard.cost"),
    "metric_saved": ("llmguard.cost.saved", "llmguard.cost.saved"),
    "metric_retries": ("llmguard.retries", "llmguard.retries"),
    "metric_cache_hits": ("llmguard.cache.hits", "llmguard.cache.hits"),
    "metric_cache_misses": ("llmguard.cache.misses", "llmguard.cache.misses"),
    "metric_fallbacks": ("llmguard.fallbacks", "llmguard.fallbacks"),
    "metric_refusals": ("llmguard.refusals", "llmguard.refusals"),
}

# Explicit bucket boundaries the spec gives for its histograms.
TIME_BUCKETS: Final = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TOKEN_BUCKETS: Final = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip

# llmguard's provider names (`llmguard.providers`) -> gen_ai.provider.name values.
PROVIDERS: Final[dict[str, str]] = {
    "anthropic": "anthropic",
    "openai": "openai",
    # google-genai talks to either backend; the server address decides (see
    # `provider_name`), and "any Google generative AI endpoint" otherwise.
    "google": "gcp.gen_ai",
}
_GOOGLE_HOSTS: Final = {
    "generativelanguage.googleapis.com": "gcp.gemini",
    "aiplatform.googleapis.com": "gcp.vertex_ai",
}
# Model-name prefixes that say who serves a model, to name the provider when
# the span starts (the spec wants it then, for sampling); the response's own
# provider replaces the guess when the call ends.
_MODEL_PREFIXES: Final = (
    ("claude", "anthropic"),
    ("gpt-", "openai"),
    ("o1", "openai"),
    ("o3", "openai"),
    ("o4", "openai"),
    ("chatgpt", "openai"),
    ("text-embedding", "openai"),
    ("gemini", "gcp.gen_ai"),
)


def provider_name(provider: str | None, server_address: str | None = None) -> str | None:
    """The ``gen_ai.provider.name`` value for llmguard's *provider* name."""
    if provider is None:
        return None
    name = PROVIDERS.get(provider, provider)
    if name == "gcp.gen_ai" and server_address is not None:
        for host, specific in _GOOGLE_HOSTS.items():
            if server_address.endswith(host):
                return specific
    return name


# model -> guess. `trace` reads it inline on every call (cleared, never rebound).
_GUESSES: dict[str, str | None] = {}


def provider_from_model(model: str | None) -> str | None:
    """A ``gen_ai.provider.name`` guessed from a model name, or None."""
    if not model:
        return None
    try:
        return _GUESSES[model]
    except KeyError:
        pass
    lowered = model.lower()
    guess = next((name for prefix, name in _MODEL_PREFIXES if lowered.startswith(prefix)), None)
    if len(_GUESSES) > 4096:  # models are few; anything else is not worth keeping
        _GUESSES.clear()
    _GUESSES[model] = guess
    return guess


@dataclass(frozen=True, slots=True)
class Semconv:
    """One profile of `NAMES`: each key as an attribute (``""``: not emitted)."""

    latest: bool
    schema_url: str
    operation: str
    provider: str
    request_model: str
    request_max_tokens: str
    request_temperature: str
    request_top_p: str
    request_stream: str
    server_address: str
    server_port: str
    response_model: str
    response_id: str
    response_finish_reasons: str
    response_ttfc: str
    usage_input: str
    usage_output: str
    usage_cache_read: str
    usage_cache_write: str
    usage_reasoning: str
    error_type: str
    input_messages: str
    output_messages: str
    system_instructions: str
    token_type: str
    token_modality: str
    metric_token_usage: str
    metric_duration: str
    metric_ttfc: str
    metric_tpoc: str
    metric_op_input_tokens: str
    metric_op_output_tokens: str
    metric_usage_input: str
    metric_usage_output: str
    metric_usage_cache_read: str
    metric_usage_cache_write: str
    metric_usage_reasoning: str
    lg_function: str
    lg_cost: str
    lg_attempts: str
    lg_cache: str
    lg_cache_similarity: str
    lg_saved: str
    lg_fallback_target: str
    lg_budget_decision: str
    lg_route: str
    lg_usage_estimated: str
    lg_outcome: str
    lg_error_kind: str
    lg_refusal: str
    lg_calls: str
    lg_total_input: str
    lg_total_output: str
    metric_cost: str
    metric_saved: str
    metric_retries: str
    metric_cache_hits: str
    metric_cache_misses: str
    metric_fallbacks: str
    metric_refusals: str


def _profile(latest: bool) -> Semconv:
    index = 1 if latest else 0
    names = {key: pair[index] for key, pair in NAMES.items()}
    schema = SCHEMA_LATEST if latest else SCHEMA_V1_41
    return Semconv(latest=latest, schema_url=schema, **names)


V1_41: Final = _profile(latest=False)
LATEST: Final = _profile(latest=True)


def opted_in_latest(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``OTEL_SEMCONV_STABILITY_OPT_IN`` asks for the latest GenAI names."""
    value = (os.environ if environ is None else environ).get(OPT_IN_ENV, "")
    return LATEST_EXPERIMENTAL in {part.strip() for part in value.split(",")}


def active() -> Semconv:
    """The profile the environment asks for (read when a guard is configured)."""
    return LATEST if opted_in_latest() else V1_41


def capture_content_from_env() -> bool:
    """Whether ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` turns content capture on."""
    return os.environ.get(CAPTURE_CONTENT_ENV, "").strip().lower() in CAPTURE_CONTENT_ON
