"""Demo section: a breaker opening on a provider that is down, skipping it, and half-opening with one probe."""

from __future__ import annotations

import threading
import time

from typing import Any

import anthropic

import llmguard as lg

from ..testing import FakeProvider, Step, capture_events


ORDER = 25
TITLE = "breaker: a provider that is down opens the circuit; calls skip it; one probe of 20 callers closes it"


def run(fake: FakeProvider) -> None:
    """Three faults open the circuit, five calls are refused unsent, 20 threads meet the half-open circuit."""
    claude = anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key="demo", max_retries=0)

    @lg.breaker(failures=3, cooldown=1.0)
    def ask(q: str) -> Any:
        return claude.messages.create(
            model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": q}]
        )

    def events_of(events: list[Any]) -> None:
        for event in events:
            extra = f": {event['reason']} -> open for {event['seconds']:g}s" if event.name.endswith("opened") and "reason" in event.fields else ""
            print(f"  event {event.name}{extra}")

    before = len(fake.requests)
    fake.script(Step(status=529), Step(status=503), Step(drop=True))
    with capture_events("llmguard.breaker.") as events:
        for _ in range(3):
            try:
                ask("Are you there?")
            except anthropic.APIError as exc:
                print(f"  {type(exc).__name__}: {getattr(exc, 'status_code', '-')}")
    events_of(events)
    start = time.perf_counter()
    refused = 0
    for _ in range(5):
        try:
            ask("Still there?")
        except lg.CircuitOpen as exc:
            refused += 1
            wait = exc.retry_after
    took = (time.perf_counter() - start) * 1e6 / 5
    print(f"  -> {refused} calls refused with CircuitOpen in {took:.0f} µs each (retry_after={wait:.2f}s); "
          f"requests sent while open: {len(fake.requests) - before - 3}")

    time.sleep(1.0)  # the cooldown: the next caller is the probe
    fake.script(Step(reply="Back again.", delay=1.0))  # a slow recovery: the probe is out while the others ask
    results: list[str] = []
    barrier = threading.Barrier(20)
    lock = threading.Lock()

    def caller() -> None:
        barrier.wait()
        try:
            text = ask("Better now?").content[0].text
        except lg.CircuitOpen:
            text = "CircuitOpen"
        with lock:
            results.append(text)

    sent = len(fake.requests)
    with capture_events("llmguard.breaker.") as events:
        threads = [threading.Thread(target=caller) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    events_of(events)
    print(f"  -> 20 threads at the half-open circuit: {results.count('CircuitOpen')} refused at once, "
          f"{len(fake.requests) - sent} probe sent, answered {next(r for r in results if r != 'CircuitOpen')!r}")
    print(f"  -> the circuit is {_state(ask)}; the next call: {ask('And now?').content[0].text!r}")
    claude.close()


def _state(fn: Any) -> str:
    from .._runner import layers_of  # noqa: PLC0415

    for layer in layers_of(fn):
        circuit = getattr(layer, "circuit", None)
        if circuit is not None:
            return str(circuit.state)
    return "?"
