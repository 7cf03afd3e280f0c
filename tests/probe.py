"""`Probe`: a test layer that only watches what the wrapping core does."""

from __future__ import annotations

from typing import Any

from llmguard import AsyncGuardedStream, CallRecord, GuardedStream, Outcome
from llmguard._wrap import SYNC, Call, Lane, Layer, _realize, returned_call


class Probe(Layer):
    """A test layer that only watches: the records it saw and how streams ended."""

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

    def around(self, call: Call) -> Any:
        self.calls += 1
        self.records.append(call.record)
        return self._watch(call.proceed())

    async def around_async(self, call: Call) -> Any:
        self.calls += 1
        self.records.append(call.record)
        return self._watch(await call.proceed_async())

    @property
    def record(self) -> CallRecord:
        assert self.records, "the probe saw no call"
        return self.records[-1]


class LaneProbe(Probe):
    """A `Probe` on the core's fast lane: it reads the record only after the call.

    A call it guards alone runs fused with the core, and the record is built
    after the fact by ``returned_call`` (or when the function reads it), as
    budget and trace do; a stream or an exception goes back to `around`
    through ``resume``. The facts must be the same.
    """

    def lane(self, shape: str) -> Lane | None:
        return Lane(self._enter, self._leave, self.resume if shape == SYNC else self.resume_async, needs_call=False)

    def _enter(self, frame: list[Any]) -> list[Any]:
        return frame

    def _leave(self, call: Call | None, frame: list[Any], result: Any) -> Any:  # noqa: ARG002
        self.calls += 1
        self.records.append(returned_call(frame, result).record)
        return result


class EarlyLaneProbe(LaneProbe):
    """A `LaneProbe` that builds the record before the function runs (in ``enter``)."""

    def _enter(self, frame: list[Any]) -> list[Any]:
        _realize(frame).record  # noqa: B018 - built early on purpose: the attempt must still land on it
        return frame
