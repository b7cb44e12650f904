"""The node's transcription slots: one WhisperActor each, leased one request at a time.

A lease is taken before a transcription is sent to a slot and given back when the slot has
answered (or died), so a slot never holds more than one job and a caller that cannot get a
slot within its bounded wait is told so instead of queueing without end.
"""

from __future__ import annotations

import threading

from sayit_actors.metrics import Metrics


class SlotPool:
    def __init__(self, names: list[str], metrics: Metrics) -> None:
        self.names = tuple(names)
        self._free = list(names)
        self._cond = threading.Condition()
        self._metrics = metrics
        self._publish()

    @property
    def capacity(self) -> int:
        return len(self.names)

    @property
    def busy(self) -> int:
        with self._cond:
            return len(self.names) - len(self._free)

    def acquire(self, timeout_s: float) -> str | None:
        """A free slot's name, waiting up to ``timeout_s``; None when all stayed busy."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._free), timeout=timeout_s):
                return None
            name = self._free.pop(0)
            self._publish()
            return name

    def release(self, name: str) -> None:
        with self._cond:
            if name in self.names and name not in self._free:
                self._free.append(name)
                self._publish()
                self._cond.notify()

    def _publish(self) -> None:
        self._metrics.set_slots(len(self.names), len(self.names) - len(self._free))
