"""Ledger soak: does the budget charge what the server served?

Real anthropic and openai SDKs against `llmguard.testing.FakeProvider`, with
injected faults (429, 5xx/529, slow first byte, mid-stream stalls, errors and
cuts, dropped connections), through the README's stack::

    @lg.retry(attempts=4) @lg.budget(usd=100, per="day", key=..., max_output=512)
    @lg.timeout(5, first_token=2, idle=1)

Three phases, each on its own budget key:

* ``threads``: plain ``def`` functions from 16 threads, whole responses and
  streams (read to the end, broken off, or dropped unread);
* ``async``: ``async def`` functions from 50 tasks, some of them cancelled
  by their caller after the request left;
* ``deadline``: plain ``def`` functions under a 0.2 s total deadline, half of
  whose requests the server answers after 0.4 s (the worker is abandoned);
* ``outage`` (with ``--redis``): the threads phase on a `RedisBudgetStore`
  (``on_store_error="fail_open"``) whose redis-server (append-only file) is
  stopped for 1.5 s mid-phase and started again.

Every request carries its fault as an ``x-fake-script`` header, so what the
server served is computed from the recorded requests with the fake's own
rules: a 2xx answer serves its input (the words of the prompt) and its output
(the words of the reply, or the words sent before a mid-stream error, cut or
stall; a stall outlasts the client's idle limit, so it leaves during it).
A stream the caller breaks off or drops was served in full (the fake sends
every chunk at once).
Errors and dropped connections serve nothing.

The figures compare the ledger (`lg.budget_spend`) with what was served, per
phase, in tokens and dollars::

    .venv/bin/python benchmarks/soak_ledger.py [--calls N] [--seed S] [--redis]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import random
import socket
import subprocess
import tempfile
import threading
import time

from collections import defaultdict
from typing import Any

import anthropic
import openai

import llmguard as lg

from llmguard import prices
from llmguard._fake_provider import FakeProvider, Step, _prompt_words
from llmguard._record import Usage


CLAUDE = "claude-sonnet-4-6"
GPT = "gpt-4o-mini"
KEY = "sk-test-soak"
REPLY = " ".join(f"word{i}" for i in range(24))  # 24 output tokens, one stream chunk each
PHASE_HEADER = "x-soak-phase"


def fault(rng: random.Random, stream: bool, phase: str) -> dict[str, Any]:
    """One request's script: the soak's fault mix."""
    if phase == "deadline":
        return {"reply": REPLY, "delay": 0.4} if rng.random() < 0.5 else {"reply": REPLY}
    r = rng.random()
    if r < 0.20:
        return {"status": 429, "headers": {"retry-after": "0"}}
    if r < 0.25:
        return {"status": 500}
    if r < 0.30:
        return {"status": 529}
    if r < 0.35:
        return {"reply": REPLY, "delay": 0.3}  # slow first byte, within first_token
    if r < 0.40:
        return {"drop": True}
    if stream and r < 0.45:
        k = rng.randrange(1, 20)
        return rng.choice(
            [
                {"reply": REPLY, "error_after": k},
                {"reply": REPLY, "drop_after": k},
                {"reply": REPLY, "stall_after": k, "stall": 1.5},  # past idle=1
            ]
        )
    return {"reply": REPLY}


def served(req: Any) -> tuple[int, int, str]:
    """(input, output, model) the fake served for one recorded request."""
    step = Step.from_json(req.headers["x-fake-script"])
    if step.drop or not 200 <= step.status < 300:
        return 0, 0, ""
    body = req.body if isinstance(req.body, dict) else {}
    words = len((step.reply or "").split())
    out = words
    if req.stream:
        # A stall past idle=1 s: the client leaves during it, so the server's later chunks go nowhere.
        for cut in (step.error_after, step.drop_after, step.stall_after):
            if cut is not None:
                out = min(out, cut)
    return _prompt_words(req.api, body), out, str(body.get("model"))


def served_by_phase(fake: FakeProvider) -> dict[str, tuple[int, int, int]]:
    """Per phase: (tokens served, pico-dollars served, requests)."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for req in fake.requests:
        phase = req.headers.get(PHASE_HEADER)
        if phase is None:
            continue
        phase = f"{phase}/{'stream' if req.stream else 'whole'}"
        i, o, model = served(req)
        row = out[phase]
        row[2] += 1
        if i or o:
            row[0] += i + o
            cost = prices.cost_of(Usage(i, o), model) or 0.0
            row[1] += round(cost * 10**12)
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def prompt(rng: random.Random) -> list[dict[str, str]]:
    return [{"role": "user", "content": " ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(rng.randrange(4, 30)))}]


def build(fake: FakeProvider, store: Any = None, name: str = "soak") -> dict[str, Any]:
    sync_a = anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key=KEY, max_retries=0)
    sync_o = openai.OpenAI(base_url=fake.openai_base_url, api_key=KEY, max_retries=0)
    async_a = anthropic.AsyncAnthropic(base_url=fake.anthropic_base_url, api_key=KEY, max_retries=0)
    async_o = openai.AsyncOpenAI(base_url=fake.openai_base_url, api_key=KEY, max_retries=0)
    rngs = threading.local()

    def headers(phase: str, stream: bool, seed: int) -> dict[str, str]:
        rng = getattr(rngs, "rng", None)
        if rng is None:
            rng = rngs.rng = random.Random(seed)
        return {"x-fake-script": json.dumps(fault(rng, stream, phase)), PHASE_HEADER: phase}

    def send(model: str, messages: Any, max_tokens: int, stream: bool, h: dict[str, str]) -> Any:
        if model == CLAUDE:
            return sync_a.messages.create(model=model, messages=messages, max_tokens=max_tokens, stream=stream, extra_headers=h)
        extra = {"stream_options": {"include_usage": True}} if stream else {}
        return sync_o.chat.completions.create(
            model=model, messages=messages, max_tokens=max_tokens, stream=stream, extra_headers=h, **extra
        )

    async def asend(model: str, messages: Any, max_tokens: int, stream: bool, h: dict[str, str]) -> Any:
        if model == CLAUDE:
            return await async_a.messages.create(model=model, messages=messages, max_tokens=max_tokens, stream=stream, extra_headers=h)
        extra = {"stream_options": {"include_usage": True}} if stream else {}
        return await async_o.chat.completions.create(
            model=model, messages=messages, max_tokens=max_tokens, stream=stream, extra_headers=h, **extra
        )

    budget = lg.budget(
        usd=100,
        per="day",
        key=lambda phase, stream, **_: f"{phase}/{'stream' if stream else 'whole'}",
        name=name,
        store=store,
        on_store_error="fail_open" if store is not None else "fail_closed",
    )

    @lg.retry(attempts=4, initial=0.01, max_delay=0.05)
    @budget
    @lg.timeout(5, first_token=2, idle=1)
    def ask(messages: Any, model: str, phase: str, seed: int, stream: bool = False, max_tokens: int = 512) -> Any:
        return send(model, messages, max_tokens, stream, headers(phase, stream, seed))

    @lg.retry(attempts=4, initial=0.01, max_delay=0.05)
    @budget
    @lg.timeout(0.2)
    def ask_by_deadline(messages: Any, model: str, phase: str, seed: int, stream: bool = False, max_tokens: int = 512) -> Any:
        return send(model, messages, max_tokens, stream, headers(phase, stream, seed))

    @lg.retry(attempts=4, initial=0.01, max_delay=0.05)
    @budget
    @lg.timeout(5, first_token=2, idle=1)
    async def aask(messages: Any, model: str, phase: str, seed: int, stream: bool = False, max_tokens: int = 512) -> Any:
        return await asend(model, messages, max_tokens, stream, headers(phase, stream, seed))

    return {"ask": ask, "ask_by_deadline": ask_by_deadline, "aask": aask, "budget": budget,
            "clients": (sync_a, sync_o, async_a, async_o)}


def consume(result: Any, rng: random.Random) -> None:
    """Read a result as callers do: whole, a stream to its end, broken off, or dropped."""
    if not hasattr(result, "__iter__") or isinstance(result, (str, bytes)) or hasattr(result, "choices") or hasattr(result, "content"):
        return
    r = rng.random()
    if r < 0.05:
        return  # dropped unread
    with contextlib.closing(result):
        for n, _ in enumerate(result):
            if r < 0.15 and n >= 3:
                break


def run_threads(fns: dict[str, Any], phase: str, calls: int, threads: int, fn_name: str, seed: int) -> dict[str, int]:
    errors: dict[str, int] = defaultdict(int)
    lock = threading.Lock()

    def worker(t: int) -> None:
        rng = random.Random(seed * 1000 + t)
        for _ in range(calls):
            stream = rng.random() < 0.5
            try:
                consume(fns[fn_name](prompt(rng), rng.choice([CLAUDE, GPT]), phase, seed * 1000 + t, stream=stream), rng)
            except Exception as exc:
                with lock:
                    errors[type(exc).__name__] += 1

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return dict(errors)


async def run_tasks(fns: dict[str, Any], phase: str, calls: int, tasks: int, seed: int) -> dict[str, int]:
    errors: dict[str, int] = defaultdict(int)

    async def one(rng: random.Random, t: int) -> None:
        stream = rng.random() < 0.5
        coro = fns["aask"](prompt(rng), rng.choice([CLAUDE, GPT]), phase, seed * 1000 + 500 + t, stream=stream)
        cancel = rng.random() < 0.1
        try:
            result = await (asyncio.wait_for(coro, rng.uniform(0.01, 0.25)) if cancel else coro)
        except Exception as exc:
            errors[type(exc).__name__] += 1
            return
        if hasattr(result, "__aiter__"):
            r = rng.random()
            if r < 0.05:
                await result.aclose()  # closed unread
                return
            try:
                n = 0
                async for _ in result:
                    n += 1
                    if r < 0.15 and n >= 3:
                        break
            except Exception as exc:
                errors[type(exc).__name__] += 1
            finally:
                await result.aclose()

    async def worker(t: int) -> None:
        rng = random.Random(seed * 1000 + 500 + t)
        for _ in range(calls):
            await one(rng, t)

    await asyncio.gather(*(worker(t) for t in range(tasks)))
    return dict(errors)


def report(fns: dict[str, Any], fake: FakeProvider, phases: list[str]) -> list[dict[str, Any]]:
    served_ = served_by_phase(fake)
    rows = []
    for phase in [*phases, *sorted({p.partition("/")[0] for p in phases})]:
        if "/" not in phase:  # the phase's total
            parts = [r for r in rows if r["phase"].startswith(phase + "/")]
            st, lt = sum(r["served_tokens"] for r in parts), sum(r["ledger_tokens"] for r in parts)
            su, lu = sum(r["served_pico"] for r in parts), sum(r["ledger_pico"] for r in parts)
            rows.append({"phase": phase, "requests": sum(r["requests"] for r in parts), "served_tokens": st,
                         "ledger_tokens": lt, "tokens_diff_%": round(100 * (lt - st) / st, 1) if st else None,
                         "served_usd": round(su / 10**12, 6), "ledger_usd": round(lu / 10**12, 6),
                         "usd_diff_%": round(100 * (lu - su) / su, 1) if su else None,
                         "reserved_left": sum(r["reserved_left"] for r in parts), "served_pico": su, "ledger_pico": lu})
            continue
        spend = lg.budget_spend(fns["budget"], key=phase)
        tokens, pico, requests = served_.get(phase, (0, 0, 0))
        ledger_pico = int(spend.exact_usd * 10**12)
        rows.append(
            {
                "phase": phase,
                "requests": requests,
                "served_tokens": tokens,
                "ledger_tokens": spend.tokens,
                "tokens_diff_%": round(100 * (spend.tokens - tokens) / tokens, 1) if tokens else None,
                "served_usd": round(pico / 10**12, 6),
                "ledger_usd": round(ledger_pico / 10**12, 6),
                "usd_diff_%": round(100 * (ledger_pico - pico) / pico, 1) if pico else None,
                "reserved_left": spend.reserved_tokens,
                "calls": spend.calls,
                "estimated_calls": spend.estimated_calls,
                "served_pico": pico,
                "ledger_pico": ledger_pico,
            }
        )
    return rows


class RedisServer:
    """A redis-server with an append-only file, on a fixed port, that can be stopped and started again."""

    def __init__(self, workdir: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - our own fixed arguments
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.workdir,  # noqa: S607
             "--save", "", "--appendonly", "yes", "--appendfsync", "always"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.1):
                return
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def run_outage(fake: FakeProvider, calls: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The threads phase on a Redis store (fail_open) whose server is stopped for 1.5 s mid-phase, then restarted."""
    from llmguard.stores.budget import RedisBudgetStore

    with tempfile.TemporaryDirectory() as workdir:
        server = RedisServer(workdir)
        server.start()
        store = RedisBudgetStore(
            f"redis://127.0.0.1:{server.port}/0?socket_timeout=0.5&socket_connect_timeout=0.5",
            namespace=f"soak{seed}",
        )
        fns = build(fake, store, "soak-redis")

        def outage() -> None:
            time.sleep(1.0)
            server.stop()
            time.sleep(1.5)
            server.start()

        controller = threading.Thread(target=outage)
        controller.start()
        errors = run_threads(fns, "outage", calls, 16, "ask", seed)
        controller.join()
        time.sleep(1.0)
        gc.collect()
        rows = report(fns, fake, ["outage/whole", "outage/stream"])
        extra = {"errors": errors, "pending_after": getattr(store, "pending_settlements", "n/a")}
        store.close()
        server.stop()
    return rows, extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=40, help="calls per thread / task")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--redis", action="store_true", help="also the outage phase (needs redis-server)")
    args = parser.parse_args()
    with FakeProvider() as fake:
        fns = build(fake)
        started = time.perf_counter()
        errors = {
            "threads": run_threads(fns, "threads", args.calls, 16, "ask", args.seed),
            "async": asyncio.run(run_tasks(fns, "async", max(args.calls // 2, 1), 50, args.seed)),
            "deadline": run_threads(fns, "deadline", max(args.calls // 2, 1), 8, "ask_by_deadline", args.seed),
        }
        time.sleep(1.0)  # abandoned workers finish in the background
        gc.collect()
        time.sleep(0.2)
        rows = report(fns, fake, [f"{p}/{k}" for p in ("threads", "async", "deadline") for k in ("whole", "stream")])
        if args.redis:
            outage_rows, outage = run_outage(fake, args.calls, args.seed)
            rows += outage_rows
            errors["outage"] = outage
    print(f"soak: {time.perf_counter() - started:.1f} s, seed {args.seed}, calls/worker {args.calls}")
    for row in rows:
        row.pop("served_pico")
        row.pop("ledger_pico")
        print(json.dumps(row))
    print("caller errors:", json.dumps(errors))


if __name__ == "__main__":
    main()
