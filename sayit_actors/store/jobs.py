"""Jobs, chunk tasks and results in Redis: every multi-key change is one atomic script.

Used by the ResultActor (job state and results) and the QueueConsumer (claiming tasks); the
actors own when and why, this module owns how. Guarantees:
- a job and its tasks appear together or not at all (``create``);
- recording a chunk result twice changes nothing (``record_chunk``: HSETNX);
- a task leaves the stream's pending list only together with its result, its retry entry or
  its dead letter;
- an ended job with a callback URL gets exactly one outbox entry (``queue_callback``): in the
  same step as its merge, right after its failure.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from config import QueueSettings
from sayit_actors.audio.chunking import Chunk, Span, to_flac
from sayit_actors.errors import QueueFull
from sayit_actors.store import keys

DEAD_LETTER_MAXLEN = 10_000
PENDING_AUDIO_TTL_S = 3600  # audio written before its job exists expires if the job never does


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Task:
    job_id: str
    index: int
    start_ms: int
    duration_ms: int
    language: str
    attempt: int = 1

    def fields(self) -> dict[str, str]:
        return {
            "job": self.job_id, "index": str(self.index), "start_ms": str(self.start_ms),
            "duration_ms": str(self.duration_ms), "language": self.language, "attempt": str(self.attempt),
        }  # fmt: skip

    @classmethod
    def from_fields(cls, raw: dict[bytes, bytes]) -> Task:
        f = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(f["job"], int(f["index"]), int(f["start_ms"]), int(f["duration_ms"]), f["language"],
                   int(f.get("attempt", "1")))  # fmt: skip


@dataclass(frozen=True)
class Owner:
    """The tenant a job belongs to, and the most of the queued-audio budget its jobs may hold."""

    name: str
    queue_share: float = 1.0


@dataclass(frozen=True)
class Delivery:
    entry_id: str
    task: Task


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
-- ARGV: group, entry, index, result, duration_ms, now, the chunk as its progress event shows it (json),
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

_MOVE_DUE = """
-- KEYS: retries, stream   ARGV: now
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, member in ipairs(due) do
  local task = cjson.decode(member)
  local args = {}
  for k, v in pairs(task) do table.insert(args, k); table.insert(args, v) end
  redis.call('XADD', KEYS[2], '*', unpack(args))
  redis.call('ZREM', KEYS[1], member)
end
return #due
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
        self._move_due = client.register_script(_MOVE_DUE)
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

    def result(self, job_id: str) -> dict[str, Any] | None:
        raw = self.r.get(keys.job_result(job_id))
        return json.loads(raw) if raw else None

    def queued_audio_s(self) -> float:
        return int(self.r.get(keys.QUEUED_AUDIO_MS) or 0) / 1000

    # --- chunk outcomes ----------------------------------------------------------------------
    def record_chunk(self, delivery: Delivery, result: dict[str, Any]) -> tuple[bool, int, int]:
        """(newly recorded, chunks done, chunks in all); acks the task in the same step."""
        task = delivery.task
        event = {"index": task.index, **chunk_view(result)}
        added, done, total = self._record(
            keys=[keys.job(task.job_id), keys.chunk_results(task.job_id), keys.chunk_audio(task.job_id, task.index),
                  keys.CHUNKS, keys.QUEUED_AUDIO_MS, keys.job_events(task.job_id)],
            args=[keys.CHUNKS_GROUP, delivery.entry_id, task.index, json.dumps(result), task.duration_ms, now_ms(),
                  json.dumps(event, ensure_ascii=False), keys.tenant_queued_audio_ms("")],
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

    def finish(self, job_id: str) -> dict[str, Any] | None:
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
        self, pipe: redis.client.Pipeline, job_id: str, total: str, result: dict[str, Any], first: bool
    ) -> None:
        ttl = self.q.result_ttl_s
        pipe.multi()
        pipe.set(keys.job_result(job_id), json.dumps(result), ex=ttl)
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

    # --- the stream ----------------------------------------------------------------------------
    def ensure_group(self) -> None:
        try:
            self.r.xgroup_create(keys.CHUNKS, keys.CHUNKS_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read_new(self, consumer: str, count: int, block_ms: int) -> list[Delivery]:
        reply = self.r.xreadgroup(keys.CHUNKS_GROUP, consumer, {keys.CHUNKS: ">"}, count=count, block=block_ms)
        return [Delivery(eid.decode(), Task.from_fields(f)) for _, entries in reply or [] for eid, f in entries if f]

    def stalled(self, min_idle_ms: int, count: int) -> list[tuple[str, int]]:
        """(entry id, deliveries so far) of tasks nobody has renewed for ``min_idle_ms``."""
        rows = self.r.xpending_range(keys.CHUNKS, keys.CHUNKS_GROUP, "-", "+", count, idle=min_idle_ms)
        return [(row["message_id"].decode(), int(row["times_delivered"])) for row in rows]

    def claim(self, consumer: str, entry_ids: list[str], min_idle_ms: int) -> list[Delivery]:
        if not entry_ids:
            return []
        claimed = self.r.xclaim(keys.CHUNKS, keys.CHUNKS_GROUP, consumer, min_idle_ms, entry_ids)
        return [Delivery(eid.decode(), Task.from_fields(f)) for eid, f in claimed if f]

    def entry(self, entry_id: str) -> Delivery | None:
        rows = self.r.xrange(keys.CHUNKS, entry_id, entry_id)
        return Delivery(entry_id, Task.from_fields(rows[0][1])) if rows else None

    def renew(self, consumer: str, entry_ids: list[str]) -> None:
        """Reset the idle time of tasks this consumer is working on (JUSTID: no delivery counted)."""
        if entry_ids:
            self.r.xclaim(keys.CHUNKS, keys.CHUNKS_GROUP, consumer, 0, entry_ids, justid=True)

    def hand_back(self, delivery: Delivery) -> None:
        """Put an unfinished task back at the end of the stream without counting a stall."""
        with self.r.pipeline(transaction=True) as pipe:
            pipe.xadd(keys.CHUNKS, delivery.task.fields())
            pipe.xack(keys.CHUNKS, keys.CHUNKS_GROUP, delivery.entry_id)
            pipe.execute()

    def ack(self, delivery: Delivery) -> None:
        """Acknowledge a task that has nothing to record (its job ended or expired)."""
        self.r.xack(keys.CHUNKS, keys.CHUNKS_GROUP, delivery.entry_id)

    def trim(self) -> int:
        """Delete acknowledged tasks from the stream; returns how many went.

        Everything older than the oldest task still pending or not yet delivered (in any group)
        goes. The groups' last-delivered ids are read before their pending lists: a task delivered
        in between is newer than the id read, and one acknowledged in between may go anyway.
        """
        try:
            groups = self.r.xinfo_groups(keys.CHUNKS)
        except redis.ResponseError as exc:
            if "no such key" in str(exc):  # nothing was ever queued
                return 0
            raise
        if not groups:
            return 0  # without a group nobody knows what was delivered
        with self.r.pipeline(transaction=False) as pipe:
            for group in groups:
                pipe.xpending(keys.CHUNKS, group["name"])
            pending = pipe.execute()
        keep = []
        for group, summary in zip(groups, pending, strict=True):
            ms, seq = _stream_id(group["last-delivered-id"])
            keep.append((ms, seq + 1))  # the first entry this group has not been given
            if summary["pending"]:
                keep.append(_stream_id(summary["min"]))
        ms, seq = min(keep)
        return int(self.r.xtrim(keys.CHUNKS, minid=f"{ms}-{seq}", approximate=False))

    def move_due_retries(self) -> int:
        return int(self._move_due(keys=[keys.RETRIES, keys.CHUNKS], args=[now_ms()]))

    def has_result(self, task: Task) -> bool:
        """Whether the task's chunk is already transcribed (its audio is deleted then)."""
        return bool(self.r.hexists(keys.chunk_results(task.job_id), str(task.index)))

    def chunk_audio(self, task: Task) -> bytes | None:
        data = self.r.get(keys.chunk_audio(task.job_id, task.index))
        return data

    def job_status(self, job_id: str) -> tuple[str | None, dict[str, Any], dict[str, Any] | None]:
        """The job's status (None when it does not exist), the choices it was submitted with, and
        its stored decoding options (None for a job made before they were stored)."""
        status, choices, options = self.r.hmget(keys.job(job_id), ["status", "choices", "options"])
        return (
            status.decode() if status else None,
            json.loads(choices) if choices else {},
            json.loads(options) if options else None,
        )

    # --- nodes -------------------------------------------------------------------------------
    def heartbeat(self, node_id: str, info: dict[str, Any]) -> None:
        self.r.set(keys.node(node_id), json.dumps({**info, "at": now_ms()}), px=round(self.q.heartbeat_s * 3000))

    def forget_node(self, node_id: str) -> None:
        self.r.delete(keys.node(node_id))


def _stream_id(raw: bytes | str) -> tuple[int, int]:
    ms, _, seq = (raw.decode() if isinstance(raw, bytes) else raw).partition("-")
    return int(ms), int(seq or 0)


def shifted_segments(chunk: dict[str, Any]) -> list[dict[str, Any]]:
    """A chunk result's segments (and words) on the recording's clock."""
    offset = chunk["start_s"]
    segments: list[dict[str, Any]] = []
    for start, end, text, *words in chunk["segments"]:
        segment = {"start": round(start + offset, 3), "end": round(end + offset, 3), "text": text,
                   "language": chunk["language"]}  # fmt: skip
        if words:
            segment["words"] = [{"start": round(ws + offset, 3), "end": round(we + offset, 3), "word": w,
                                 "probability": p} for ws, we, w, p in words[0]]  # fmt: skip
        segments.append(segment)
    return segments


def chunk_view(chunk: dict[str, Any]) -> dict[str, Any]:
    """A finished chunk as clients see it in a job's live events."""
    return {"start": chunk["start_s"], "duration": chunk["duration_s"], "language": chunk["language"],
            "text": chunk["text"], "segments": shifted_segments(chunk),
            "droppedSegments": int(chunk.get("dropped", 0))}  # fmt: skip


def merge(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """One transcript from chunk results in order: segments (and words) shifted by each chunk's start."""
    segments: list[dict[str, Any]] = []
    texts: list[str] = []
    seconds_by_language: Counter[str] = Counter()
    done_by: list[dict[str, Any]] = []
    for index, chunk in enumerate(chunks):
        offset = chunk["start_s"]
        done_by.append({"index": index, "start": offset, "duration": chunk["duration_s"],
                        "language": chunk["language"], "node": chunk.get("node"),
                        "startedAt": chunk.get("started_at"), "finishedAt": chunk.get("finished_at")})  # fmt: skip
        segments.extend(shifted_segments(chunk))
        if chunk["text"]:
            texts.append(chunk["text"])
        seconds_by_language[chunk["language"]] += chunk["duration_s"]
    languages = [lang for lang, _ in seconds_by_language.most_common()]
    return {
        "transcription": " ".join(texts),
        "language": languages[0] if languages else "",
        "languages": languages,
        "segments": segments,
        "droppedSegments": sum(int(chunk.get("dropped", 0)) for chunk in chunks),
        "chunks": done_by,
    }
