"""The request an actor works for, as the actor sees it: still waiting, or gone.

The edge makes one ``Caller`` per request and sends it with the messages that do work for that
request alone. When the request stops waiting (its client hung up, or its wait timed out) the
edge calls ``leave``; an actor checks before work that only that request wants (``check``:
starting the engine) and drops it for a caller that is gone.

A job outlives its request, so it needs more than a check: the Dispatcher makes a job only
through ``commit``, which takes the same lock as ``leave``. Either the caller left first and no
job is made, or the job was committed first and the caller learns its id: a client never gets a
503 for a job made behind its back, and its Idempotency-Key keeps the job.
"""

from __future__ import annotations

import threading

from sayit_actors.errors import ServiceUnavailable


class Caller:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gone = False
        self._job_id: str | None = None

    @property
    def gone(self) -> bool:
        with self._lock:
            return self._gone

    @property
    def job_id(self) -> str | None:
        """The job committed for this caller (made, or being made), if any."""
        with self._lock:
            return self._job_id

    def leave(self) -> str | None:
        """The request stops waiting: work for it not yet begun is dropped. Returns the id of the
        job already committed for it, which goes on (None: no job was made, and none will be)."""
        with self._lock:
            self._gone = True
            return self._job_id

    def check(self) -> None:
        """Raise ServiceUnavailable if the caller is gone: nobody waits for the work about to begin."""
        if self.gone:
            raise ServiceUnavailable("the request ended before its work began")

    def abandon(self, job_id: str) -> None:
        """``job_id`` was committed but never created: the request has no job after all."""
        with self._lock:
            if self._job_id == job_id:
                self._job_id = None

    def commit(self, job_id: str) -> None:
        """Make ``job_id`` this caller's job, about to be created; raise (make no job) if it is gone."""
        with self._lock:
            if self._gone:
                raise ServiceUnavailable("the request ended before its job was made")
            self._job_id = job_id
