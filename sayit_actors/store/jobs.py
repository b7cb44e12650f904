"""Jobs in Redis: their state, chunk results and ends; every multi-key change is one atomic script.

The ResultActor and the Splitters decide when; this module owns how. Recording a chunk or
failing a job also acknowledges its task in the chunk stream, in the same script: a task leaves
the stream's pending list only together with its result, its retry entry or its dead letter
(moving tasks without an outcome is ``stream.py``'s). Guarantees:
- a job and its tasks appear together or not at all (``create``);
- recording a chunk result twice changes nothing (``record_chunk``: HSETNX);
- an ended job with a callback URL gets exactly one outbox entry (``queue_callback``): in the
  same step as its merge, right after its failure.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import redis

from config import QueueSettings
from sayit_actors.audio.chunking import Chunk, Span, to_flac
from sayit_actors.errors import QueueFull
from sayit_actors.store import keys
from sayit_actors.store.merge import Transcript, chunk_progress, merge
from sayit_actors.store.records import Delivery, Owner, Task, now_ms

DEAD_LETTER_MAXLEN = 10_000
PENDING_AUDIO_TTL_S = 3600  # audio written before its job exists expires if the job never does


_CREATE = """
-- KEYS: queued_ms, job, stream, events, audio keys...   ARGV: budget_ms, job_ms, job fields (json), tasks (json),
--       chunks in all, the owner's queued_ms key prefix, the owner's budget_ms
-- Returns 1 (created), 0 (over the budget) or 2 (over the owner's share of it).
if redis.call('EXISTS', KEYS[2]) == 1 then return 1 end  -- a retried call: the job is there already
local fields = cjson.decode(ARGV[3])
local owner_key = (fields.owner or '') ~= '' and ARGV[6] .. fields.owner or nil
local queued = tonumber(redis.call('GET', KEYS[1]) or '0')
local full = queued + tonumber(ARGV[2]) > tonumber(ARGV[1]) and 0 or nil
if not full and owner_key then
  local owned = tonumber(redis.call('GET', owner_key) or '0')
  if owned + tonumber(ARGV[2]) > tonumber(ARGV[7]) then full = 2 end
end
if full then
  for i = 5, #KEYS do redis.call('DEL', KEYS[i]) end
  return full
end
for k, v in pairs(fields) do redis.call('HSET', KEYS[2], k, v) end
for i = 5, #KEYS do redis.call('PERSIST', KEYS[i]) end
redis.call('XADD', KEYS[4], '*', 'type', 'queued', 'done', 0, 'total', ARGV[5])
for _, task in ipairs(cjson.decode(ARGV[4])) do
  local args = {}
  for k, v in pairs(task) do table.insert(args, k); table.insert(args, v) end
  redis.call('XADD', KEYS[3], '*', unpack(args))
end
redis.call('INCRBY', KEYS[1], ARGV[2])
if owner_key then redis.call('INCRBY', owner_key, ARGV[2]) end
return 1
"""

_DROP_AUDIO = """
-- KEYS: job, audio keys...: the chunk audio of a job that was never created (a created job keeps its own)
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end
return #KEYS - 1
"""

_RECORD = """
-- KEYS: job, results, audio, stream, queued_ms, events
-- ARGV: group, entry, index, result, duration_ms, now, the chunk's progress record (json),
--       the owner's queued_ms key prefix
redis.call('XACK', KEYS[4], ARGV[1], ARGV[2])
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'failed' or status == 'completed' then return {0, 0, 0} end
local added = redis.call('HSETNX', KEYS[2], ARGV[3], ARGV[4])
local done = tonumber(redis.call('HGET', KEYS[1], 'done'))
local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
if added == 1 then
  redis.call('DEL', KEYS[3])
  done = redis.call('HINCRBY', KEYS[1], 'done', 1)
  redis.call('HINCRBY', KEYS[1], 'queued_ms', -tonumber(ARGV[5]))
  redis.call('DECRBY', KEYS[5], ARGV[5])
  local owner = redis.call('HGET', KEYS[1], 'owner')
  if owner and owner ~= '' and redis.call('DECRBY', ARGV[8] .. owner, ARGV[5]) <= 0 then
    redis.call('DEL', ARGV[8] .. owner)
  end
  if status == 'queued' then
    redis.call('HSET', KEYS[1], 'status', 'processing', 'started_at', ARGV[6])
  end
  redis.call('XADD', KEYS[6], '*', 'type', 'progress', 'done', done, 'total', total, 'chunk', ARGV[7])
end
return {added, done, total}
"""

_FAIL = """
-- KEYS: job, stream, dead, queued_ms, results, attempts, result, events   ARGV: group, entry, reason,
--       task (json), now, ttl, audio key prefix, the owner's queued_ms key prefix
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', '10000', '*', 'task', ARGV[4], 'reason', ARGV[3], 'at', ARGV[5])
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'failed' or status == 'completed' then return 0 end
local remaining = tonumber(redis.call('HGET', KEYS[1], 'queued_ms') or '0')
redis.call('DECRBY', KEYS[4], remaining)
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= '' and redis.call('DECRBY', ARGV[8] .. owner, remaining) <= 0 then
  redis.call('DEL', ARGV[8] .. owner)
end
redis.call('HSET', KEYS[1], 'status', 'failed', 'reason', ARGV[3], 'finished_at', ARGV[5], 'queued_ms', 0)
redis.call('XADD', KEYS[8], '*', 'type', 'failed', 'reason', ARGV[3])
local total = tonumber(redis.call('HGET', KEYS[1], 'total') or '0')
for i = 0, total - 1 do redis.call('DEL', ARGV[7] .. i) end
for i = 1, #KEYS do
  if i == 1 or i >= 5 then redis.call('EXPIRE', KEYS[i], ARGV[6]) end
end
return 1
"""

_QUEUE_CALLBACK = """
-- KEYS: job, callbacks   ARGV: job id
-- One delivery per job: an ended job with a callback URL gets its outbox entry once, whoever calls.
local status, url = unpack(redis.call('HMGET', KEYS[1], 'status', 'callback_url'))
if (status ~= 'completed' and status ~= 'failed') or not url or url == '' then return 0 end
if redis.call('HSETNX', KEYS[1], 'callback_queued', status) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'job', ARGV[1], 'event', 'job.' .. status, 'url', url)
return 1
"""


class JobStore:
    def __init__(self, client: redis.Redis, queue: QueueSettings) -> None:
        # redis-py types each reply as a union of its sync and async forms: read them as Any.
        self.r: Any = client
        self.q = queue
        self._create = client.register_script(_CREATE)
        self._drop_audio = client.register_script(_DROP_AUDIO)
        self._record = client.register_script(_RECORD)
        self._fail = client.register_script(_FAIL)
        self._queue_callback = client.register_script(_QUEUE_CALLBACK)

    # --- jobs --------------------------------------------------------------------------------
    def create(
        self,
        job_id: str,
        language: str,
        duration_s: float,
        chunks: Sequence[Span],
        filename: str,
        choices: dict[str, Any] | None = None,
        callback_url: str | None = None,
        owner: Owner | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        """Create the job and its tasks over chunk audio already stored (``put_chunk_audio``).

        ``options`` are the decoding options its chunks get (``TranscriptionOptions.to_dict``),
        computed once by the Dispatcher; a job without them has its options rebuilt from its choices.

        Raises QueueFull over the audio budget, or over the owner's share of it (its queued audio
        is counted beside the global count, in the same steps), and then deletes that audio.
        Running it twice (a retry after a lost reply) creates the job once.
        """
        audio_keys = [keys.chunk_audio(job_id, c.index) for c in chunks]
        tasks = [
            Task(job_id, c.index, round(c.start_s * 1000), round(c.duration_s * 1000), language).fields()
            for c in chunks
        ]
        job_ms = sum(int(t["duration_ms"]) for t in tasks)
        fields = {
            "status": "queued", "language": language, "duration_ms": round(duration_s * 1000),
            "total": len(chunks), "done": 0, "queued_ms": job_ms, "created_at": now_ms(), "filename": filename,
            "choices": json.dumps(choices or {}), "callback_url": callback_url or "",
            "owner": owner.name if owner else "", "options": json.dumps(options) if options else "",
        }  # fmt: skip
        created = self._create(
            keys=[keys.QUEUED_AUDIO_MS, keys.job(job_id), keys.CHUNKS, keys.job_events(job_id), *audio_keys],
            args=[self._budget_ms(), job_ms, json.dumps(fields), json.dumps(tasks), len(chunks),
                  keys.tenant_queued_audio_ms(""), self._budget_ms(owner)],
        )  # fmt: skip
        if created != 1:
            raise self._queue_full(owner if created == 2 else None)

    def check_room(self, audio_s: float, owner: Owner | None = None) -> None:
        """Raise QueueFull if ``audio_s`` more would pass the queued-audio budget, or the owner's share.

        A cheap look before any chunk audio is written; ``create`` checks again, atomically,
        with the decoded length.
        """
        audio_ms = round(audio_s * 1000)
        if int(self.r.get(keys.QUEUED_AUDIO_MS) or 0) + audio_ms > self._budget_ms():
            raise self._queue_full()
        if owner and int(self.r.get(keys.tenant_queued_audio_ms(owner.name)) or 0) + audio_ms > self._budget_ms(owner):
            raise self._queue_full(owner)

    def _budget_ms(self, owner: Owner | None = None) -> int:
        return round(self.q.max_queued_audio_s * 1000 * (owner.queue_share if owner else 1.0))

    def put_chunk_audio(self, job_id: str, chunk: Chunk) -> None:
        """Store one chunk's audio (FLAC) ahead of its job; it expires unless ``create`` adopts it."""
        self.r.set(keys.chunk_audio(job_id, chunk.index), to_flac(chunk.samples), ex=PENDING_AUDIO_TTL_S)

    def drop_chunk_audio(self, job_id: str, chunks: int) -> int:
        """Delete the audio of chunks ``0..chunks-1`` unless the job exists; returns how many keys were dropped."""
        if not chunks:
            return 0
        audio_keys = [keys.chunk_audio(job_id, i) for i in range(chunks)]
        return int(self._drop_audio(keys=[keys.job(job_id), *audio_keys]))

    def _queue_full(self, owner: Owner | None = None) -> QueueFull:
        detail = f"{owner.name}'s share of the queue is used" if owner else None
        return QueueFull(detail, retry_after_s=max(5, round(self.q.stall_interval_s)))

    def get(self, job_id: str) -> dict[str, str] | None:
        raw: dict[bytes, bytes] = self.r.hgetall(keys.job(job_id))
        return {k.decode(): v.decode() for k, v in raw.items()} or None

    def result(self, job_id: str) -> Transcript | None:
        raw = self.r.get(keys.job_result(job_id))
        return Transcript.from_json(raw) if raw else None

    def job_status(self, job_id: str) -> tuple[str | None, dict[str, Any], dict[str, Any] | None]:
        """The job's status (None when it does not exist), the choices it was submitted with, and
        its stored decoding options (None for a job made before they were stored)."""
        status, choices, options = self.r.hmget(keys.job(job_id), ["status", "choices", "options"])
        return (
            status.decode() if status else None,
            json.loads(choices) if choices else {},
            json.loads(options) if options else None,
        )

    def queued_audio_s(self) -> float:
        return int(self.r.get(keys.QUEUED_AUDIO_MS) or 0) / 1000

    # --- chunk outcomes ----------------------------------------------------------------------
    def record_chunk(self, delivery: Delivery, result: dict[str, Any]) -> tuple[bool, int, int]:
        """(newly recorded, chunks done, chunks in all); acks the task in the same step."""
        task = delivery.task
        added, done, total = self._record(
            keys=[keys.job(task.job_id), keys.chunk_results(task.job_id), keys.chunk_audio(task.job_id, task.index),
                  keys.CHUNKS, keys.QUEUED_AUDIO_MS, keys.job_events(task.job_id)],
            args=[keys.CHUNKS_GROUP, delivery.entry_id, task.index, json.dumps(result), task.duration_ms, now_ms(),
                  chunk_progress(task.index, result).to_json(), keys.tenant_queued_audio_ms("")],
        )  # fmt: skip
        return bool(added), int(done), int(total)

    def retry_or_fail(self, delivery: Delivery, reason: str) -> str:
        """Schedule another attempt after a backoff; past the limit, fail the job.

        Returns ``retried``, ``failed`` (this failed the job) or ``settled`` (it had ended already).
        """
        task = delivery.task
        attempts = int(self.r.hincrby(keys.chunk_attempts(task.job_id), str(task.index), 1))
        if attempts >= self.q.max_attempts:
            failed = self.fail(delivery, f"chunk {task.index} failed {attempts} times: {reason}")
            return "failed" if failed else "settled"
        backoff_s = self.q.retry_backoff_s * 2 ** (attempts - 1)
        retry = Task(task.job_id, task.index, task.start_ms, task.duration_ms, task.language, task.attempt + 1)
        with self.r.pipeline(transaction=True) as pipe:
            pipe.zadd(keys.RETRIES, {json.dumps(retry.fields()): now_ms() + backoff_s * 1000})
            pipe.xack(keys.CHUNKS, keys.CHUNKS_GROUP, delivery.entry_id)
            pipe.execute()
        return "retried"

    def fail(self, delivery: Delivery, reason: str) -> bool:
        """Dead-letter the task and fail its job with ``reason``; True if this failed the job."""
        job_id = delivery.task.job_id
        failed = self._fail(
            keys=[keys.job(job_id), keys.CHUNKS, keys.DEAD_LETTERS, keys.QUEUED_AUDIO_MS,
                  keys.chunk_results(job_id), keys.chunk_attempts(job_id), keys.job_result(job_id),
                  keys.job_events(job_id)],
            args=[keys.CHUNKS_GROUP, delivery.entry_id, reason, json.dumps(delivery.task.fields()), now_ms(),
                  self.q.result_ttl_s, keys.chunk_audio(job_id, 0)[:-1], keys.tenant_queued_audio_ms("")],
        )  # fmt: skip
        self.queue_callback(job_id)  # also when an earlier call failed it: that call's entry may be missing
        return bool(failed)

    def finish(self, job_id: str) -> Transcript | None:
        """Merge the chunk results into the job's result (idempotent); None if chunks are missing."""
        job = self.get(job_id)
        if job is None or job.get("status") == "failed":
            return None
        raw: dict[bytes, bytes] = self.r.hgetall(keys.chunk_results(job_id))
        if len(raw) < int(job["total"]):
            return None
        chunks = [json.loads(raw[k]) for k in sorted(raw, key=lambda k: int(k))]
        result = merge(chunks)
        with self.r.pipeline(transaction=True) as pipe:
            # Several nodes may merge one job at once (its last writer, and a status read that found it
            # unmerged): the job's status is watched, so exactly one of them writes the completed event.
            while True:
                try:
                    pipe.watch(keys.job(job_id))
                    status = pipe.hget(keys.job(job_id), "status")
                    if status in (None, b"failed"):
                        return None
                    self._write_merge(pipe, job_id, job["total"], result, first=status != b"completed")
                    break
                except redis.WatchError:
                    continue
        return result

    def _write_merge(
        self, pipe: redis.client.Pipeline, job_id: str, total: str, result: Transcript, first: bool
    ) -> None:
        ttl = self.q.result_ttl_s
        pipe.multi()
        pipe.set(keys.job_result(job_id), result.to_json(), ex=ttl)
        pipe.hset(keys.job(job_id), mapping={"status": "completed", "finished_at": now_ms()})
        self._queue_callback(keys=[keys.job(job_id), keys.CALLBACKS], args=[job_id], client=pipe)
        if first:
            pipe.xadd(keys.job_events(job_id), {"type": "completed", "done": total, "total": total})
        for key in (keys.job(job_id), keys.chunk_results(job_id), keys.chunk_attempts(job_id),
                    keys.job_events(job_id)):  # fmt: skip
            pipe.expire(key, ttl)
        pipe.execute()

    def queue_callback(self, job_id: str) -> bool:
        """Put the ended job's callback in the outbox (``finish`` does it in its own step); True if
        this call did. Idempotent: one delivery per job however often it is called."""
        return bool(self._queue_callback(keys=[keys.job(job_id), keys.CALLBACKS], args=[job_id]))

    def record_speed(self, day: dt.date, audio_s: float, engine_s: float) -> None:
        """Chunk audio and engine time per day: the measured real-time factor of the queue."""
        key = keys.stats(day)
        with self.r.pipeline(transaction=False) as pipe:
            pipe.hincrby(key, "chunk_audio_ms", round(audio_s * 1000))
            pipe.hincrby(key, "chunk_engine_ms", round(engine_s * 1000))
            pipe.expire(key, keys.STATS_TTL_S)
            pipe.execute()
