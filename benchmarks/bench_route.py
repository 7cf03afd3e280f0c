"""@lg.route: the default scorer's cost per request, and route's own overhead per call.

The scorer's anchor is LiteLLM's complexity router's claim, "< 1 ms" a
decision (its README; litellm is not installed here to measure): each figure
is printed as a share of 1 ms. Route's own overhead (guarded minus bare) is
printed beside llmguard's one input estimate of the same request
(`Call.estimated_input_tokens`, which route reads) and beside a guard that
does nothing (the runner's dispatch), all measured in this process.
"""

from __future__ import annotations

import asyncio

from typing import Any

from _harness import PassThrough, interleaved, overhead, per_call, per_call_async, row

import llmguard as lg

from llmguard._route import RouteRequest


HAIKU = "claude-haiku-4-5"
SONNET = "claude-sonnet-4-6"
TIERS = {"simple": HAIKU, "complex": SONNET}
MS = 1e-3

SHORT = [{"role": "user", "content": "What is the capital of France?"}]
MEDIUM = [
    {"role": "user", "content": "Here is my service's design. " + "The API writes to the database and a queue. " * 40},
    {"role": "assistant", "content": "Understood."},
    {"role": "user", "content": "Explain why the latency doubles under load, step by step, and compare two fixes."},
]
LONG = [{"role": "user", "content": "Summarize this log:\n" + "2026-12-07 12:00:00 INFO request served in 12 ms\n" * 2000}]


def target(messages: list[Any], model: str = SONNET) -> str:
    return model


async def atarget(messages: list[Any], model: str = SONNET) -> str:
    return model


def _request(messages: list[Any]) -> RouteRequest:
    """The RouteRequest route builds for a call with *messages* (read through a guard's `Call`)."""
    seen: list[RouteRequest] = []

    class Grab(PassThrough):  # type: ignore[misc, valid-type]
        def enter(self, call: Any) -> None:  # type: ignore[override]
            seen.append(RouteRequest.of(call))

    Grab()(target)(messages)
    return seen[0]


def run() -> dict[str, float]:
    print("route: the default scorer per request (anchor: LiteLLM's complexity router, '< 1 ms')")
    scorer = lg.RouteScorer()
    out: dict[str, float] = {}
    for name, messages in (("short (1 msg, 30 B)", SHORT), ("medium (3 msgs, 1.9 kB)", MEDIUM), ("long (1 msg, 98 kB)", LONG)):
        request = _request(messages)
        took = per_call(lambda r=request: scorer(r), number=2_000)
        out[f"scorer {name}"] = took
        print(row(f"RouteScorer()(request), {name}", took, MS, "of 1 ms"))

    print("route: its own overhead per call (guarded minus bare), a decision and a Run each call")
    routed = lg.route(TIERS)(target)
    passthrough = PassThrough()(target)
    times = interleaved(
        {
            "bare": lambda: target(MEDIUM),
            "route": lambda: routed(MEDIUM),
            "passthrough": lambda: passthrough(MEDIUM),
            "estimate": lambda: _estimate_only(MEDIUM),
        },
        number=2_000,
    )
    own = overhead(times["route"], times["bare"])
    dispatch = overhead(times["passthrough"], times["bare"])
    estimate = overhead(times["estimate"], times["bare"])
    print(row("a guard that does nothing (the runner's dispatch)", dispatch))
    print(row("llmguard's input estimate of the request alone", estimate))
    print(row("sync  @lg.route, medium request", own, dispatch, "of a guard that does nothing"))
    print(row("sync  @lg.route, medium request", own, MS, "of 1 ms"))
    abare = per_call_async(lambda: atarget(MEDIUM), number=2_000)
    arouted = lg.route(TIERS)(atarget)
    aown = overhead(per_call_async(lambda: arouted(MEDIUM), number=2_000), abare)
    print(row("async @lg.route, medium request", aown, MS, "of 1 ms"))
    out.update({"route sync": own, "route async": aown, "dispatch": dispatch, "estimate": estimate})
    assert asyncio.run(arouted(SHORT)) == HAIKU  # noqa: S101 - the benchmark measured a routing call
    assert routed(MEDIUM) == SONNET  # noqa: S101
    return out


def _estimate_only(messages: list[Any]) -> Any:
    return _estimating(messages)


class _Estimate(PassThrough):  # type: ignore[misc, valid-type]
    def enter(self, call: Any) -> None:  # type: ignore[override]
        call.estimated_input_tokens()


_estimating = _Estimate()(target)


if __name__ == "__main__":
    run()
