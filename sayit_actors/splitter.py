"""The Splitters: a small pool that turns long uploads into queued jobs, off the Dispatcher's thread.

A Splitter decodes an upload as a stream and cuts it into chunks of at most 30 s at quiet points
(``sayit_actors.audio.chunking``); each chunk's audio goes to Redis as soon as it is cut, so memory
does not grow with the recording, and the job and its tasks are created last, in one step, with
the decoding options the Dispatcher computed for it. A recording longer than ``max_duration_s``
(by its header, or as it decodes) is refused, and so is one the queued-audio budget (or its
tenant's share of it) has no room for, before any audio is written; a job that fails midway
leaves no chunk audio behind. The job is made only through ``Caller.commit``: never for a request
that is gone.

The Dispatcher sends each ``Split`` to the least loaded Splitter (``slots.WorkPool``); one busy
with a 50-minute recording delays neither short uploads nor the Dispatcher. A Splitter's thread
runs at the lowest CPU priority (``SPLIT_NICE``, where the system allows it): a job's 202 may
come a little later, but the cores go to transcriptions first, whose callers wait for them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
from dataclasses import asdict
from typing import Any

import pykka
import redis

from config import Limits, QueueSettings
from sayit_actors import audio
from sayit_actors.audio import chunking
from sayit_actors.audio.chunking import Span
from sayit_actors.dispatcher import JobTicket, Mode, Plan, Split
from sayit_actors.errors import AudioTooLong
from sayit_actors.slots import WorkPool
from sayit_actors.store.jobs import JobStore
from sayit_actors.store.redis_server import client_options
from sayit_actors.supervisor import SupervisedActor, Supervisor

log = logging.getLogger(__name__)
SPLIT_NICE = 19


class Splitter(SupervisedActor):
    def __init__(
        self,
        supervisor: pykka.ActorRef[Supervisor],
        name: str,
        *,
        limits: Limits,
        queue: QueueSettings,
        redis_url: str,
        pool: WorkPool,
    ) -> None:
        super().__init__(supervisor, name)
        self._limits = limits
        self._queue = queue
        self._redis_url = redis_url
        self._pool = pool
        self._redis: redis.Redis | None = None
        self._jobs: JobStore | None = None

    def on_start(self) -> None:
        self._pool.reset(self.name)
        with contextlib.suppress(AttributeError, OSError):  # this thread only (Linux); elsewhere, as is
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SPLIT_NICE)
        # Its own client: chunk audio is written here, not through the ResultActor's inbox.
        self._redis = redis.Redis.from_url(self._redis_url, **client_options())
        self._jobs = JobStore(self._redis, self._queue)

    def on_stop(self) -> None:
        if self._redis is not None:
            self._redis.close()

    def handle(self, message: Any) -> Any:
        match message:
            case Split():
                try:
                    return self._split(message)
                finally:
                    self._pool.done(self.name)
        raise TypeError(f"unexpected message {message!r}")

    def _split(self, order: Split) -> Plan:
        msg = order.dispatch
        msg.caller.check()  # the request left while this waited in the inbox: no work for nobody
        header_s, max_s = msg.info.duration_s, self._limits.max_duration_s
        if header_s > max_s:
            raise AudioTooLong(f"the header says {header_s:.0f} s, the limit is {max_s:.0f} s")
        assert self._jobs is not None, "Splitter used before on_start"
        jobs, job_id = self._jobs, uuid.uuid4().hex
        with self.doing(f"splitting a {header_s:.0f} s upload into job {job_id}"):
            jobs.check_room(header_s, msg.owner)
            spans: list[Span] = []
            try:
                blocks = audio.stream(msg.path, header_s, max_s)
                for chunk in chunking.stream_split(blocks, self._queue.chunk_s):
                    spans.append(chunk.span)
                    jobs.put_chunk_audio(job_id, chunk)
                duration_s = spans[-1].start_s + spans[-1].duration_s
                choices = asdict(msg.choices)
                msg.caller.commit(job_id)  # raises if the request is gone: no job behind its back
                jobs.create(
                    job_id, msg.language, duration_s, spans, msg.filename, choices, msg.callback_url, msg.owner,
                    options=order.options.to_dict(),
                )  # fmt: skip
            except BaseException:
                if not self._drop_audio(job_id, len(spans)):
                    msg.caller.abandon(job_id)  # e.g. QueueFull from the create script's own check
                raise
        return Plan(Mode.ASYNC, order.options, JobTicket(job_id, len(spans)))

    def _drop_audio(self, job_id: str, chunks: int) -> bool:
        """Delete what a failed job wrote; True if the job exists all the same (its create went through
        before the failure). If Redis is out of reach, the audio expires on its own."""
        assert self._jobs is not None
        try:
            self._jobs.drop_chunk_audio(job_id, chunks)
            return self._jobs.get(job_id) is not None
        except redis.RedisError as exc:
            log.warning("chunk audio of job %s not deleted (%s): it expires in its pending TTL", job_id, exc)
            return True  # unknown: the request keeps the job id it may have
