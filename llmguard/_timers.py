"""The timers behind `timeout`: a worker pool for sync calls, one timer per event loop for async ones.

``_WORKERS`` runs a blocking call in a thread the caller may stop waiting
for (Python cannot interrupt a thread). ``_arm_at`` puts the running task's
deadline on its loop's `_Wheel`, which cancels the task when the deadline
passes; ``_release`` / ``_fired_alone`` disarm it or take the cancel back.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import threading
import weakref

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Final, cast

from . import _clock


class _Workers:
    """Threads that run blocking calls the caller may stop waiting for.

    Elastic: an idle worker is reused, otherwise a new daemon thread starts,
    so an abandoned call (still blocked in the background) never makes a
    later call queue behind it. Idle workers exit after a minute.
    """

    IDLE_SECONDS: Final = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            worker = _Worker(self)
        worker.give(fn, future)
        return future

    def park(self, worker: _Worker) -> None:
        with self._lock:
            self._idle.append(worker)

    def retire(self, worker: _Worker) -> bool:
        """Remove an idle worker that timed out waiting; False if it was just handed work."""
        with self._lock:
            if worker in self._idle:
                self._idle.remove(worker)
                return True
            return False


class _Worker:
    __slots__ = ("_job", "_pool", "_ready")

    def __init__(self, pool: _Workers) -> None:
        self._pool = pool
        self._ready = threading.Event()
        self._job: tuple[Callable[[], Any], Future[Any]] | None = None
        threading.Thread(target=self._run, name="llmguard-timeout", daemon=True).start()

    def give(self, fn: Callable[[], Any], future: Future[Any]) -> None:
        self._job = (fn, future)
        self._ready.set()

    def _run(self) -> None:
        while True:
            if not self._ready.wait(self._pool.IDLE_SECONDS):
                if self._pool.retire(self):
                    return
                self._ready.wait()
            self._ready.clear()
            job, self._job = self._job, None
            if job is None:  # pragma: no cover - set() always comes with a job
                continue
            fn, future = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                    future.set_exception(exc)
            self._pool.park(self)


_WORKERS = _Workers()


# -- async deadlines: one timer per event loop --------------------------------
#
# asyncio.timeout() schedules a TimerHandle per call (~1.3 µs, and the loop's
# heap grows with every call in flight). A timeout that almost never fires
# does not need its own: every @lg.timeout call on a loop goes into one heap
# here, and the loop holds a single timer, for the earliest deadline. A call
# that finishes removes its entry (popped at once when it is the earliest,
# else marked and swept when the dead outnumber the live), and the timer
# is rescheduled only when a new deadline is earlier than the one it waits
# for. Firing cancels the task, exactly as asyncio.timeout does, and the
# cancellation is told apart from anyone else's the same way (uncancel).


# An armed deadline: [when (loop time), sequence, task or None once
# disarmed or fired, fired, the task's cancelling() count when armed]. A
# list, so the heap compares in C (never past the unique sequence).
_WHEN, _SEQ_NO, _TASK, _FIRED, _CANCELLING = 0, 1, 2, 3, 4
_Entry = list


class _Wheel:
    """The deadlines of every timed call on one event loop, on one timer."""

    __slots__ = ("_at", "_dead", "_heap", "_loop_ref")

    SWEEP_AFTER: Final = 64  # dead entries tolerated before a sweep

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Held weakly: the registry's entry must not keep a finished loop alive.
        self._loop_ref = weakref.ref(loop)
        self._heap: list[_Entry[Any]] = []
        self._at = math.inf  # when the earliest timer scheduled fires (our clock)
        self._dead = 0

    def arm(self, when: float, task: asyncio.Task[Any]) -> _Entry[Any]:
        """Cancel *task* at *when* (the llmguard clock's seconds) unless `disarm` comes first."""
        entry = [when, next(_SEQ), task, False, task.cancelling()]
        heapq.heappush(self._heap, entry)
        if when < self._at:
            self._schedule(when)
        return entry

    def _schedule(self, when: float) -> None:
        # A timer superseded by an earlier one is left to fire and find
        # nothing to do: holding its handle to cancel it would keep the loop
        # alive through this wheel's registry entry.
        self._at = when
        loop = self._loop_ref()
        if loop is not None:
            # The loop keeps its own time; the wait is what is left on our clock.
            loop.call_at(loop.time() + max(when - _clock.now(), 0.0), self._fire, when)

    def disarm(self, entry: _Entry[Any]) -> None:
        """The call finished: its deadline no longer matters."""
        if entry[_TASK] is None:  # fired, or disarmed already
            return
        entry[_TASK] = None
        heap = self._heap
        if heap[0] is entry:
            heapq.heappop(heap)
            if heap and heap[0][_TASK] is None:
                self._pop_dead()
        else:
            self._dead += 1
            if self._dead > self.SWEEP_AFTER and self._dead * 2 > len(heap):
                live = [e for e in heap if e[_TASK] is not None]
                heapq.heapify(live)
                self._heap = live
                self._dead = 0

    def _pop_dead(self) -> None:
        heap = self._heap
        while heap and heap[0][_TASK] is None:
            heapq.heappop(heap)
            self._dead -= 1

    def _fire(self, at: float) -> None:
        # Due: everything up to the deadline this timer was set for (so a
        # test's fake clock, which the loop's timer does not see, still fires).
        due = max(at, _clock.now())
        heap = self._heap
        while heap and heap[0][_WHEN] <= due:
            entry = heapq.heappop(heap)
            task = entry[_TASK]
            if task is None:
                self._dead -= 1
                continue
            entry[_TASK] = None
            entry[_FIRED] = True
            task.cancel()
        self._pop_dead()
        if at == self._at:  # the current timer (not one superseded): arm the next
            self._at = math.inf
            if heap:
                self._schedule(heap[0][_WHEN])


_SEQ = itertools.count()


_TaskOf = Callable[[asyncio.AbstractEventLoop], "asyncio.Task[Any]"]


def _current_task_getter() -> _TaskOf:
    """The cheapest way this Python has to the running task of a loop.

    ``asyncio.current_task`` is C from 3.12; on 3.11 it is a Python function
    around the module's ``_current_tasks`` mapping, which is read directly.
    Typed as never None: it is only asked inside a task.
    """
    import _asyncio  # noqa: PLC0415 - CPython's accelerator module

    c_impl = getattr(_asyncio, "current_task", None)
    if c_impl is not None:
        return cast("_TaskOf", c_impl)
    tasks = getattr(asyncio.tasks, "_current_tasks", None)
    if isinstance(tasks, dict):
        return cast("_TaskOf", tasks.get)
    return cast("_TaskOf", asyncio.current_task)


_current_task = _current_task_getter()
_get_running_loop = asyncio.get_running_loop
# Keyed by id(loop); each wheel holds its loop weakly and leaves with it.
_WHEELS: dict[int, tuple[weakref.ref[asyncio.AbstractEventLoop], _Wheel]] = {}


_LAST_WHEEL: tuple[weakref.ref[asyncio.AbstractEventLoop], _Wheel] | None = None


def _wheel_of(loop: asyncio.AbstractEventLoop) -> _Wheel:
    """The wheel of *loop* (made on first use); the last one found is kept at hand."""
    global _LAST_WHEEL  # noqa: PLW0603 - a one-entry cache in front of the dict
    found = _WHEELS.get(id(loop))
    if found is None or found[0]() is not loop:
        key = id(loop)
        found = (weakref.ref(loop, lambda _ref: _WHEELS.pop(key, None)), _Wheel(loop))
        _WHEELS[key] = found
    _LAST_WHEEL = found
    return found[1]


def _arm_at(when: float) -> tuple[_Wheel, _Entry[Any]]:
    """Arm the running task's deadline at *when* on its loop's wheel."""
    loop = _get_running_loop()
    last = _LAST_WHEEL
    wheel = last[1] if last is not None and last[0]() is loop else _wheel_of(loop)
    return wheel, wheel.arm(when, _current_task(loop))


def _release(wheel: _Wheel, entry: _Entry[Any]) -> None:
    """The timed await finished: disarm its deadline, or take back the cancel it fired as it finished.

    Taking it back is what ``asyncio.timeout`` does (``uncancel``).
    """
    if entry[_FIRED]:
        entry[_FIRED] = False
        cast("asyncio.Task[Any]", asyncio.current_task()).uncancel()
    else:
        wheel.disarm(entry)


def _fired_alone(entry: _Entry[Any] | None) -> bool:
    """After a `CancelledError`: True when *entry*'s deadline alone cancelled the task (cancel taken back).

    False when it did not fire, or someone else cancelled the task too (the
    `CancelledError` then stands). As ``asyncio.timeout`` does, "alone" is
    measured against the task's ``cancelling()`` count when the deadline
    was armed, so a cancel caught earlier in the task does not count.
    """
    if entry is None or not entry[_FIRED]:
        return False
    entry[_FIRED] = False
    return bool(cast("asyncio.Task[Any]", asyncio.current_task()).uncancel() <= entry[_CANCELLING])
