"""What each actor is doing right now, and since when: for the admin endpoint.

Keyed by actor URN (unique per actor instance), written by the actor's own thread, read by
anyone. Like Pykka's own actor registry, it is one per process.
"""

from __future__ import annotations

import threading
import time

_lock = threading.Lock()
_board: dict[str, tuple[str, float]] = {}


def set_doing(urn: str, doing: str) -> None:
    with _lock:
        _board[urn] = (doing, time.time())


def clear(urn: str) -> None:
    with _lock:
        _board.pop(urn, None)


def get(urn: str) -> tuple[str, float] | None:
    with _lock:
        return _board.get(urn)
