"""What the server knows about its generation runs: how many started, finished, were stopped or failed, and the
step each recent run reached (served by `/status`, so tests can assert that Stop stopped a run before its last
step, from the server's own count).

`StepHold` is a test hook (`launch.py --test-hold-file PATH`): a run waits after a known sampling step while a
file exists, so a test can fill the queue or press Stop while a run is certainly in progress, instead of racing
against the clock. Without the option nothing waits.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

RECENT = 64  # runs kept in the status report


@dataclass(frozen=True)
class StepHold:
    """After sampling step `step`, a run waits while `path` exists (checked every `poll` seconds). The wait stands
    for a long sampling step: Stop does not end it, the run stops at the step after it."""

    path: Path
    step: int = 1
    poll: float = 0.02

    def wait(self, done: int) -> bool:
        """Wait if this is the held step and the file exists; whether the run waited."""
        if done != self.step or not self.path.exists():
            return False
        while self.path.exists():
            time.sleep(self.poll)
        return True


@dataclass
class RunRecord:
    """One run: its number, the endpoint that started it, the last sampling step it finished (of `total`) and
    how it ended: running, finished, stopped, refused (the user's input, with its message) or failed (a bug)."""

    number: int
    endpoint: str
    steps: int = 0
    total: int = 0
    outcome: str = "running"


class RunLog:
    """The runs of this process; thread safe (runs report from their worker threads)."""

    def __init__(self, hold: StepHold | None = None):
        self.hold = hold
        self._lock = threading.Lock()
        self._recent: deque[RunRecord] = deque(maxlen=RECENT)
        self._count = 0
        self._held = 0
        self._outcomes = {"finished": 0, "stopped": 0, "refused": 0, "failed": 0}

    def start(self, endpoint: str) -> RunRecord:
        with self._lock:
            self._count += 1
            record = RunRecord(self._count, endpoint)
            self._recent.append(record)
            return record

    def step(self, record: RunRecord, done: int, total: int) -> None:
        """Record the step `done` of `total`; the test hold, if any, waits here."""
        record.steps, record.total = done, total
        if self.hold is None or done != self.hold.step or not self.hold.path.exists():
            return
        with self._lock:
            self._held += 1
        try:
            self.hold.wait(done)
        finally:
            with self._lock:
                self._held -= 1

    def end(self, record: RunRecord, outcome: str) -> None:
        with self._lock:
            record.outcome = outcome
            self._outcomes[outcome] += 1

    def status(self) -> dict:
        with self._lock:
            running = sum(r.outcome == "running" for r in self._recent)
            return {"runs_started": self._count, **{f"runs_{k}": n for k, n in self._outcomes.items()},
                    "runs_running": running, "runs_held": self._held,
                    "recent_runs": [asdict(r) for r in self._recent]}
