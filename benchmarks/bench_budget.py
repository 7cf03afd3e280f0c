"""Overhead of @lg.budget per call, and Redis round trips per call.

* memory store: what ``@lg.budget`` adds on top of the runner it runs on
  (target <= 3 µs), including the estimate, the pricing of the worst case
  and of the real usage, the reservation and the settlement. The reference
  is `_harness.PassThrough`, a guard that does nothing, on the same runner;
  the total over the bare call is printed too. Two targets: one that reports its usage with
  ``report_usage`` (any client), one that returns a real anthropic
  ``Message`` whose usage the budget reads. Beside it, the anchor: LiteLLM's
  SDK pattern (``litellm.max_budget``, ``BudgetManager``), a check of the
  running total before the call and an add after it, here under a lock. It
  does less (no estimate, no reservation), which is why it overspends under
  concurrency; the ratio shows what the reservation costs.
* the README's configuration (``usd=``, ``per="day"``, ``key=`` a
  callable, ``max_output=``) and ``@lg.budget(usd=1000)`` alone, memory
  store, on a function returning the SDK's own response (a real anthropic
  ``Message``; a google-genai ``GenerateContentResponse`` for Gemini), for a
  model with one flat price in genai-prices (``claude-sonnet-4-6``) and two
  whose price has tiers (``claude-sonnet-4-5``, ``gemini-2.5-pro``: above
  200k input tokens the rate doubles). Each run checks which kind the
  prices it measures are. The anchor is pricing alone: genai-prices'
  ``calc_price`` on the same usage (what any budget must at least do once
  per call); llmguard's own ``prices.cost_of`` is printed beside it.
* Redis store: the time per guarded call against a local redis-server, and
  the round trips per call counted by the server (target: 1 to reserve, 1
  to settle). Skipped when no redis-server can be started.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time

from typing import Any

from _harness import (
    PassThrough,
    anthropic_message,
    interleaved,
    overhead,
    per_call,
    per_call_async,
    row,
)

from llmguard import prices, report_usage
from llmguard._budget import budget
from llmguard._record import Usage


MODEL = "claude-sonnet-4-6"
MESSAGES = [{"role": "user", "content": "Write a haiku about budgets."}]


def target(messages: Any, model: str = MODEL, max_tokens: int = 256) -> str:
    # A stand-in for an SDK call that reports its usage like a real response.
    report_usage(input_tokens=12, output_tokens=34, model=model, provider="anthropic")
    return "ok"


async def atarget(messages: Any, model: str = MODEL, max_tokens: int = 256) -> str:
    report_usage(input_tokens=12, output_tokens=34, model=model, provider="anthropic")
    return "ok"


MESSAGE = anthropic_message(MODEL, input_tokens=12, output_tokens=34)


def sdk_target(messages: Any, model: str = MODEL, max_tokens: int = 256) -> Any:
    # A stand-in for client.messages.create(...): the SDK's own response object.
    return MESSAGE


def check_then_record(fn: Any, limit: float) -> Any:
    """LiteLLM's SDK budget pattern: compare the total before, add the cost after."""
    lock = threading.Lock()
    spent = [0.0]
    usage = Usage(12, 34)

    def inner(messages: Any, model: str = MODEL, max_tokens: int = 256) -> Any:
        with lock:
            if spent[0] > limit:
                raise RuntimeError("budget exceeded")
        result = fn(messages, model=model, max_tokens=max_tokens)
        cost = prices.cost_of(usage, model, "anthropic") or 0.0
        with lock:
            spent[0] += cost
        return result

    return inner


def _redis_url() -> tuple[str | None, subprocess.Popen[bytes] | None]:
    url = os.environ.get("LLMGUARD_REDIS_URL")
    if url:
        return url, None
    binary = shutil.which("redis-server")
    if binary is None:
        return None, None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(  # noqa: S603 - our own fixed arguments
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    client.close()
    return f"redis://127.0.0.1:{port}/0", proc


def _round_trips(client: Any) -> int:
    # commandstats also counts the commands a script runs inside the server;
    # what the client sent is the scripts themselves.
    stats = client.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))


def run() -> dict[str, float]:
    print("budget: @lg.budget per call (memory store), beside LiteLLM's check-then-record pattern")
    results = _memory_rows()
    _readme_rows(results)
    _redis_rows(results, per_call(lambda f=PassThrough()(target): f(MESSAGES)))
    return results


def _memory_rows() -> dict[str, float]:
    results: dict[str, float] = {}
    for label, fn in (("report_usage", target), ("SDK Message", sdk_target)):
        lane = PassThrough()(fn)
        guarded = budget(usd=1_000_000.0)(fn)
        bare = per_call(lambda fn=fn: fn(MESSAGES))
        core = per_call(lambda f=lane: f(MESSAGES))
        ours = per_call(lambda f=guarded: f(MESSAGES))
        print(row(f"sync  {label}: bare call", bare))
        print(row(f"sync  {label}: pass-through guard", core))
        print(row(f"sync  {label}: @lg.budget", ours))
        print(row(f"sync  {label}: budget's own cost (budget - pass-through) <= 3 µs", overhead(ours, core)))
        print(row(f"sync  {label}: total over the bare call", overhead(ours, bare)))
        key = "budget_sync_overhead" if fn is target else "budget_sdk_overhead"
        results[key] = overhead(ours, core)
        results[key + "_total"] = overhead(ours, bare)

    naive = check_then_record(target, 1_000_000.0)
    anchor = overhead(per_call(lambda: naive(MESSAGES)), per_call(lambda: target(MESSAGES)))
    print(row("sync  check-then-record overhead (anchor - bare)", anchor))
    print(row("sync  budget's own cost vs anchor overhead", results["budget_sync_overhead"], anchor, "of anchor"))
    results["anchor_check_then_record_overhead"] = anchor

    alane = PassThrough()(atarget)
    aguarded = budget(usd=1_000_000.0)(atarget)
    acore = per_call_async(lambda: alane(MESSAGES))
    aours = per_call_async(lambda: aguarded(MESSAGES))
    print(row("async report_usage: pass-through guard", acore))
    print(row("async report_usage: @lg.budget", aours))
    print(row("async report_usage: budget's own cost (budget - pass-through)", overhead(aours, acore)))
    results["budget_async_overhead"] = overhead(aours, acore)
    return results


def _gemini_response(model: str) -> Any:
    from google.genai import types as gt

    return gt.GenerateContentResponse.model_validate({
        "candidates": [{
            "content": {"role": "model", "parts": [{"text": "Hello! How can I help you today?"}]},
            "finish_reason": "STOP",
            "index": 0,
        }],
        "usage_metadata": {"prompt_token_count": 25, "candidates_token_count": 12, "total_token_count": 37},
        "model_version": model,
        "response_id": "resp_bench",
    })


README_MODELS = (
    ("claude-sonnet-4-6", "anthropic"),
    ("claude-sonnet-4-5", "anthropic"),
    ("gemini-2.5-pro", "google"),
)


def _price_kind(model: str, provider: str) -> str:
    """"flat" or "tiered": what genai-prices itself says of the model's input price."""
    import genai_prices

    found = genai_prices.calc_price(genai_prices.Usage(input_tokens=25, output_tokens=12), model, provider_id=provider)
    return "tiered" if hasattr(found.model_price.input_mtok, "tiers") else "flat"


def _readme_rows(results: dict[str, float]) -> None:
    """@lg.budget in the README's configuration and usd= alone, per model, beside pricing alone."""
    print("budget: README configuration (usd=, per='day', key=callable, max_output=512) and usd=1000 alone,")
    print("        memory store, on a function returning the SDK's response; anchor: genai-prices calc_price")
    for model, provider in README_MODELS:
        t = _readme_model(model, provider)
        tag = f"{model} ({_price_kind(model, provider)})"
        print(row(f"{tag}: genai-prices calc_price", t["calc_price"]))
        print(row(f"{tag}: llmguard prices.cost_of", t["cost_of"], t["calc_price"], "of calc_price"))
        for key, label in (("readme", "README config"), ("alone", "usd=1000 alone")):
            own = overhead(t[key], t["lane"])
            total = overhead(t[key], t["bare"])
            print(row(f"{tag}: {label}, added over bare", total, t["calc_price"], "of calc_price"))
            print(row(f"{tag}: {label}, own (minus pass-through) <= 3 µs", own, t["calc_price"], "of calc_price"))
            results[f"budget_{key}_{model}_own"] = own
            results[f"budget_{key}_{model}_total"] = total
        results[f"calc_price_{model}"] = t["calc_price"]


def _readme_model(model: str, provider: str) -> dict[str, float]:
    import genai_prices

    from llmguard import budget as lg_budget

    response = anthropic_message(model) if provider == "anthropic" else _gemini_response(model)

    def sdk(messages: Any, user: str = "anon", model: str = model, max_tokens: int = 512) -> Any:
        return response

    readme = lg_budget(usd=1000.0, per="day", key=lambda user, **_: user, max_output=512)(sdk)
    alone = lg_budget(usd=1000.0)(sdk)
    lane = PassThrough()(sdk)
    usage = genai_prices.Usage(input_tokens=25, output_tokens=12)
    ours_usage = Usage(25, 12)
    return interleaved(
        {
            "bare": lambda: sdk(MESSAGES, user="ada"),
            "lane": lambda: lane(MESSAGES, user="ada"),
            "readme": lambda: readme(MESSAGES, user="ada"),
            "alone": lambda: alone(MESSAGES, user="ada"),
            "calc_price": lambda: genai_prices.calc_price(usage, model, provider_id=provider),
            "cost_of": lambda: prices.cost_of(ours_usage, model, provider),
        },
        number=2_000,
    )


def _redis_rows(results: dict[str, float], core: float) -> None:
    url, proc = _redis_url()
    if url is None:
        print("  (no redis-server: Redis rows skipped)")
        return
    try:
        from llmguard.stores.budget import RedisBudgetStore

        store = RedisBudgetStore(url, namespace=f"bench{os.getpid()}")
        rguarded = budget(usd=1_000_000.0, store=store, name="bench")(target)
        rguarded(MESSAGES)  # load the scripts
        calls = 2000
        before = _round_trips(store.client)
        for _ in range(calls):
            rguarded(MESSAGES)
        trips = (_round_trips(store.client) - before) / calls
        rtime = per_call(lambda: rguarded(MESSAGES), number=2000, repeats=7)
        print(row("sync  @lg.budget, Redis store (local server)", rtime, core, "of the pass-through"))
        print(f"  {'Redis round trips per call (reserve + settle)':<52} {trips:9.3f}")
        results["budget_redis_per_call"] = rtime
        results["budget_redis_round_trips"] = trips
        store.close()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=5)


if __name__ == "__main__":
    run()
