"""The node's transcription slots (one WhisperActor each, leased one request at a time), and
the pools of actors that share other work.

A lease is taken before a transcription is sent to a slot and given back when the slot has
answered (or died), so a slot never holds more than one job and a caller that cannot get a
slot within its bounded wait is told so instead of queueing without end.
"""

from __future__ import annotations

import threading
import time

from sayit_actors.metrics import Metrics


class SlotPool:
    """The node's slots. Short uploads (``urgent``) come first: while one waits, a queued chunk
    gets no slot, so the next one given back is the upload's."""

    def __init__(self, names: list[str], metrics: Metrics) -> None:
        self.names = tuple(names)
        self._free = list(names)
        self._cond = threading.Condition()
        self._metrics = metrics
        self._urgent_waiting = 0
        self._taken_at: dict[str, float] = {}
        self._hold_s: float | None = None  # how long a slot is held, a moving average
        self._publish()

    @property
    def capacity(self) -> int:
        return len(self.names)

    @property
    def busy(self) -> int:
        with self._cond:
            return len(self.names) - len(self._free)

    def acquire(self, timeout_s: float, urgent: bool = False) -> str | None:
        """A free slot's name, waiting up to ``timeout_s``; None when all stayed busy (or, for a
        chunk, when a short upload is waiting for the next one)."""
        with self._cond:
            self._urgent_waiting += urgent
            try:
                ready = self._cond.wait_for(
                    lambda: bool(self._free) and (urgent or not self._urgent_waiting), timeout=timeout_s
                )
            finally:
                self._urgent_waiting -= urgent
            if not ready:
                return None
            name = self._free.pop(0)
            self._taken_at[name] = time.monotonic()
            self._publish()
            return name

    def release(self, name: str) -> None:
        with self._cond:
            if name in self.names and name not in self._free:
                held_s = time.monotonic() - self._taken_at.pop(name, time.monotonic())
                self._hold_s = held_s if self._hold_s is None else 0.8 * self._hold_s + 0.2 * held_s
                self._free.append(name)
                self._publish()
                self._cond.notify_all()

    @property
    def urgent_waiting(self) -> int:
        with self._cond:
            return self._urgent_waiting

    def expected_wait_s(self) -> float | None:
        """How long a short upload arriving now would wait for a slot: 0 when one is free, None
        before any slot was given back (nothing to judge by)."""
        with self._cond:
            if self._free:
                return 0.0
            if self._hold_s is None:
                return None
            return self._hold_s * (self._urgent_waiting + 1) / len(self.names)

    def _publish(self) -> None:
        self._metrics.set_slots(len(self.names), len(self.names) - len(self._free))


class WorkPool:
    """Actors that share one kind of work (the Splitters): an order goes to the one with the
    fewest orders in hand and waits in its inbox, so a busy pool queues work instead of refusing
    it and nobody waits for a lease. Each actor says when it is done with an order."""

    def __init__(self, names: list[str]) -> None:
        self.names = tuple(names)
        self._lock = threading.Lock()
        self._in_hand = dict.fromkeys(names, 0)

    def pick(self) -> str:
        """The least loaded actor's name, now counted with one more order."""
        with self._lock:
            name = min(self.names, key=self._in_hand.__getitem__)
            self._in_hand[name] += 1
            return name

    def done(self, name: str) -> None:
        with self._lock:
            self._in_hand[name] = max(0, self._in_hand[name] - 1)

    def reset(self, name: str) -> None:
        """A fresh actor under ``name``: its inbox is empty (orders sent to the one before failed)."""
        with self._lock:
            self._in_hand[name] = 0
