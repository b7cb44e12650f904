"""How many long-lived requests a node takes at once: uploads in flight, open event streams.

An upload holds a descriptor and a temp file while it streams in, then the actors' time, and on
the OpenAI routes a Redis connection while it waits for its job; an event stream holds a Redis
connection in a blocking read for as long as it is open. Past a gate's capacity a request is
refused at once (SERVER_BUSY, 503, with Retry-After) before any of its body is read, so that the
requests a node has taken keep what they need, and health checks and short uploads still answer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from config import Limits
from sayit_actors import errors


class Gate:
    """A count of requests inside, used from the event loop only (so no lock)."""

    def __init__(self, capacity: int, retry_after_s: int) -> None:
        self.capacity = capacity
        self.inside = 0
        self._retry_after_s = retry_after_s

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Inside for the block (whatever ends it); NodeBusy when the gate is full."""
        if self.inside >= self.capacity:
            raise errors.NodeBusy(retry_after_s=self._retry_after_s)
        self.inside += 1
        try:
            yield
        finally:
            self.inside -= 1


class Admission:
    def __init__(self, limits: Limits) -> None:
        self.uploads = Gate(limits.max_uploads_in_flight, limits.retry_after_s)
        self.streams = Gate(limits.max_event_streams, limits.retry_after_s)
