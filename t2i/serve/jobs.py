"""The job queue: one worker thread per system runs that system's jobs one at a time (on a CPU two runs
of one network would only halve each other's speed), a bounded wait list per system (`QueueFull` -> 429),
per-step progress pushed to the job's asyncio listeners, and cancellation at the next sampler step.

Workers are threads, not processes: torch releases the GIL inside its kernels, the weights are loaded
once, and the event loop stays free to answer other requests while a job samples."""

from __future__ import annotations

import asyncio
import collections
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable


class QueueFull(Exception):
    """A system's wait list is full: the service answers 429."""


class JobCancelled(Exception):
    """Raised inside a running job's progress callback when its client went away."""


@dataclass
class Job:
    """One unit of work for one system: `work(progress)` runs on the system's worker thread and returns the
    result; progress(step) is called once per sampler step and raises JobCancelled once `cancel()` ran."""

    system: str
    work: Callable[[Callable[[int], None]], Any]
    total_steps: int
    loop: asyncio.AbstractEventLoop
    id: str = ""
    step: int = 0
    state: str = "queued"  # queued | running | done | failed | cancelled
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    result: asyncio.Future = None  # type: ignore[assignment]
    events: asyncio.Queue = None  # type: ignore[assignment]  # progress dicts for a streaming client
    cancelled: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.result = self.loop.create_future()
        self.events = asyncio.Queue()

    def cancel(self) -> None:
        self.cancelled.set()

    def progress(self, step: int | None = None) -> None:
        """The sampler's per-step callback (worker thread)."""
        if self.cancelled.is_set():
            raise JobCancelled(self.id)
        self.step += 1
        self._emit({"type": "t2i.progress", "job": self.id, "step": self.step, "total": self.total_steps})

    def _emit(self, event: dict) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def _finish(self, state: str, value: Any = None, error: BaseException | None = None) -> None:
        self.state, self.finished = state, time.monotonic()

        def settle() -> None:
            if self.result.done():
                return
            if error is not None:
                self.result.set_exception(error)
            else:
                self.result.set_result(value)

        self.loop.call_soon_threadsafe(settle)


class JobQueue:
    """Per system: a FIFO of at most `max_waiting` jobs and one worker thread. `submit` raises QueueFull;
    a job cancelled while it waits is dropped without running."""

    def __init__(self, systems: list[str], max_waiting: int = 8):
        self.max_waiting = max_waiting
        self._waiting: dict[str, collections.deque[Job]] = {s: collections.deque() for s in systems}
        self._running: dict[str, Job | None] = {s: None for s in systems}
        self._lock = threading.Condition()
        self._ids = itertools.count(1)
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, args=(s,), name=f"t2i-serve-{s}", daemon=True)
                         for s in systems]
        self.completed = 0
        for t in self._threads:
            t.start()

    def submit(self, job: Job) -> Job:
        with self._lock:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            waiting = self._waiting[job.system]
            if len(waiting) >= self.max_waiting:
                raise QueueFull(f"the queue of {job.system!r} is full ({self.max_waiting} jobs waiting, one "
                                "running): retry later")
            job.id = f"job-{next(self._ids)}"
            waiting.append(job)
            self._lock.notify_all()
        job._emit({"type": "t2i.queued", "job": job.id, "position": self.position(job)})
        return job

    def position(self, job: Job) -> int:
        """How many jobs run before this one (0: it is running)."""
        with self._lock:
            waiting = self._waiting[job.system]
            if job not in waiting:
                return 0
            return list(waiting).index(job) + (self._running[job.system] is not None)

    def stats(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {s: {"waiting": len(w), "running": int(self._running[s] is not None)}
                    for s, w in self._waiting.items()}

    def stop(self) -> None:
        """Cancel everything and let the workers end (the running jobs stop at their next step)."""
        with self._lock:
            self._stopping = True
            for s, waiting in self._waiting.items():
                for job in waiting:
                    job.cancel()
                    job._finish("cancelled", error=JobCancelled(job.id))
                waiting.clear()
                if self._running[s] is not None:
                    self._running[s].cancel()
            self._lock.notify_all()

    def _work(self, system: str) -> None:
        while True:
            with self._lock:
                while not self._waiting[system] and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
                job = self._waiting[system].popleft()
                if job.cancelled.is_set():
                    job._finish("cancelled", error=JobCancelled(job.id))
                    continue
                self._running[system] = job
            job.state, job.started = "running", time.monotonic()
            job._emit({"type": "t2i.started", "job": job.id, "total": job.total_steps})
            state, value, error = "done", None, None
            try:
                value = job.work(job.progress)
            except JobCancelled as e:
                state, error = "cancelled", e
            except BaseException as e:  # noqa: BLE001  (the job's client gets it; the worker lives on)
                state, error = "failed", e
            with self._lock:  # free before the answer: a client that got its images sees an idle queue
                self._running[system] = None
                self.completed += 1
            job._finish(state, value, error)
