"""`Probe`: a test guard that only watches what the runner does."""

from __future__ import annotations

from typing import Any

from llmguard import AsyncGuardedStream, CallRecord, GuardedStream, Outcome
from llmguard._call import Call
from llmguard._runner import Guard


class Probe(Guard):
    """A test guard that only watches: the records it saw and how streams ended.

    It reads the call's record before the call runs (so the record exists
    while the function runs).
    """

    name = "probe"

    def __init__(self, label: str = "probe") -> None:
        self.label = label
        self.records: list[CallRecord] = []
        self.finishes: list[Outcome] = []
        self.calls = 0

    def settings(self) -> dict[str, Any]:
        return {"label": self.label}

    def _watch(self, result: Any) -> Any:
        if isinstance(result, (GuardedStream, AsyncGuardedStream)):
            result.on_finish(lambda outcome, exc: self.finishes.append(outcome))
        return result

    def enter(self, call: Call) -> None:
        self.calls += 1
        self.records.append(call.record)

    def leave(self, call: Call, state: None, result: Any) -> Any:
        return self._watch(result)

    @property
    def record(self) -> CallRecord:
        assert self.records, "the probe saw no call"
        return self.records[-1]


class ReadsLateProbe(Probe):
    """A `Probe` that reads the record only after the call returned.

    The record is then built after the fact from what the runner kept (as
    budget and trace read it); the facts must be the same as when it is
    read before.
    """

    enter = None

    def _seen(self, call: Call) -> None:
        self.calls += 1
        self.records.append(call.record)

    def leave(self, call: Call, state: None, result: Any) -> Any:
        self._seen(call)
        return self._watch(result)

    def fail(self, call: Call, state: None, exc: BaseException) -> None:
        self._seen(call)


class ReadsBothProbe(ReadsLateProbe):
    """A `ReadsLateProbe` that also builds the record before the function runs."""

    def enter(self, call: Call) -> None:
        call.record  # noqa: B018 - built early on purpose: the attempt must still land on it
