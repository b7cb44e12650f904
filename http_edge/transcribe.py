"""``POST /api/transcribe`` and ``GET /api/transcribe/{jobId}``.

Upload → DurationProbe → Dispatcher → a leased WhisperActor slot → reply, or → a queued job
(202) for long uploads and when every slot is busy. The upload file is released (deleted)
whatever happens, and every request is counted in Redis by the ResultActor.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import pykka
import redis.asyncio as aioredis
from aiohttp import BodyPartReader, web

from config import Settings
from http_edge.cluster import live_nodes
from http_edge.keys import ACTORS, BRIDGE, METRICS, REDIS, SETTINGS
from sayit_actors import errors, keys, system
from sayit_actors.audio import AudioInfo
from sayit_actors.dispatcher import Dispatch, Enqueue, JobTicket, Mode, Plan
from sayit_actors.probe import Probe
from sayit_actors.result import GetJob, JobView, RecordRequest, today
from sayit_actors.upload import Accept, IncomingFile, Release, Upload
from sayit_actors.whisper import Transcribe, Transcribed

log = logging.getLogger(__name__)
CHUNK_BYTES = 256 * 1024
MULTIPART_OVERHEAD_BYTES = 64 * 1024
MAX_FIELD_BYTES = 1024
LANGUAGES = ("ko", "en", "auto")
QUEUE_TIMEOUT_S = 120.0  # decoding and splitting a 100 MB upload
REAL_TIME_FACTOR = 0.1  # engine seconds per audio second before any is measured (base, int8, one CPU slot)
MIN_MEASURED_AUDIO_MS = 30_000
JOB_ID = re.compile(r"^[0-9a-f]{32}$")


async def _read_form(request: web.Request, settings: Settings) -> tuple[IncomingFile, str, str, str]:
    """The streamed file part, its display name and MIME hint, and the language field."""
    limit = settings.limits.max_upload_bytes
    if request.content_length is not None and request.content_length > limit + MULTIPART_OVERHEAD_BYTES:
        raise errors.FileTooLarge(f"limit {limit // (1024 * 1024)} MB")
    if not request.content_type.startswith("multipart/"):
        raise errors.FileRequired()
    reader = await request.multipart()
    incoming: IncomingFile | None = None
    filename, mime, language = "", "", "auto"
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "file" and incoming is None:
                filename, mime = part.filename or "", part.headers.get("Content-Type", "")
                incoming = IncomingFile(settings.upload_dir, limit)
                while chunk := await part.read_chunk(CHUNK_BYTES):
                    incoming.write(chunk)
                incoming.close()
            elif part.name == "language":
                raw = await part.read(decode=True)
                if len(raw) > MAX_FIELD_BYTES:
                    raise errors.InvalidLanguage()
                language = raw.decode("utf-8", errors="replace").strip().lower() or "auto"
    except BaseException:
        if incoming is not None:
            incoming.discard()
        raise
    if incoming is None:
        raise errors.FileRequired()
    if language not in LANGUAGES:
        incoming.discard()
        raise errors.InvalidLanguage(f"got {language[:20]!r}")
    return incoming, filename, mime, language


async def transcribe(request: web.Request) -> web.Response:
    settings, actors, bridge = request.app[SETTINGS], request.app[ACTORS], request.app[BRIDGE]
    started = time.perf_counter()
    success, audio_s = False, 0.0
    try:
        incoming, filename, mime, language = await _read_form(request, settings)
        try:
            upload: Upload = await bridge.ask(
                lambda: actors.ref(system.UPLOAD),
                Accept(incoming.path, filename, mime, incoming.size_bytes, incoming.sha256),
            )
        except BaseException:
            incoming.discard()  # the UploadActor deletes it too, unless it never got the message
            raise
        try:
            info: AudioInfo = await bridge.ask(lambda: actors.ref(system.PROBE), Probe(upload.path, upload.format))
            audio_s = info.duration_s
            dispatch = Dispatch(upload.path, upload.size_bytes, info, language, upload.filename)
            plan: Plan = await bridge.ask(lambda: actors.ref(system.DISPATCHER), dispatch, timeout_s=QUEUE_TIMEOUT_S)
            if plan.mode is Mode.SYNC:
                # Every slot busy: a queue that has workers takes the upload at once (202);
                # without one, wait a bounded time for a slot, then 503.
                queued = await _queue_has_workers(request)
                slot = await bridge.lease(actors.slots, 0.0 if queued else settings.limits.slot_wait_s)
                if slot is None and queued:
                    plan = await bridge.ask(
                        lambda: actors.ref(system.DISPATCHER), Enqueue(dispatch), timeout_s=QUEUE_TIMEOUT_S
                    )
                elif slot is None:
                    raise errors.ServerBusy(retry_after_s=settings.limits.retry_after_s)
                else:
                    done: Transcribed = await bridge.ask(
                        lambda: actors.ref(slot),
                        Transcribe(upload.path, info.duration_s, plan.options),
                        timeout_s=settings.limits.transcribe_timeout_s,
                        then=lambda: actors.slots.release(slot),
                    )
        finally:
            _tell(actors, system.UPLOAD, Release(upload.id))
        success = True
    finally:
        elapsed = time.perf_counter() - started
        _tell(actors, system.RESULT, RecordRequest(success, elapsed, audio_s))
    if plan.job is not None:
        return web.json_response(await _accepted(request, plan.job, info), status=202)
    transcript = done.transcript
    _observe(request, plan, done, info)
    data: dict[str, Any] = {
        "mode": plan.mode.value,
        "transcription": transcript.text,
        "language": transcript.language,
        "languageProbability": transcript.language_probability,
        "duration": round(info.duration_s, 3),
        "processingTime": round(elapsed, 3),
        "segments": [{"start": s.start, "end": s.end, "text": s.text} for s in transcript.segments],
        "filename": upload.filename,
        "options": transcript.options.to_dict(),
    }
    return web.json_response({"success": True, "data": data})


async def _accepted(request: web.Request, job: JobTicket, info: AudioInfo) -> dict[str, Any]:
    settings, client = request.app[SETTINGS], request.app[REDIS]
    queue_slots = sum(int(node.get("slots", 0)) for node in await live_nodes(client))
    parallel = max(1, min(job.chunks, queue_slots or 1))
    estimate_s = info.duration_s * await _real_time_factor(client) / parallel + settings.queue.poll_s
    return {
        "success": True,
        "data": {
            "mode": Mode.ASYNC.value,
            "jobId": job.job_id,
            "status": "queued",
            "chunks": job.chunks,
            "duration": round(info.duration_s, 3),
            "estimatedProcessingTime": round(estimate_s, 1),
            "pollInterval": poll_interval_s(0.0),
            "statusUrl": f"/api/transcribe/{job.job_id}",
        },
    }


async def _real_time_factor(client: aioredis.Redis) -> float:
    """Engine seconds per audio second measured on today's chunks; a prior until there are some."""
    audio_ms, engine_ms = await client.hmget(keys.stats(today()), ["chunk_audio_ms", "chunk_engine_ms"])
    if audio_ms and engine_ms and int(audio_ms) >= MIN_MEASURED_AUDIO_MS:
        return int(engine_ms) / int(audio_ms)
    return REAL_TIME_FACTOR


async def _queue_has_workers(request: web.Request) -> bool:
    if request.app[ACTORS].consumes_queue:
        return True
    return any(int(node.get("slots", 0)) for node in await live_nodes(request.app[REDIS]))


def poll_interval_s(age_s: float) -> int:
    """As the seed's app expects: every 3 s for a job's first 30 s, then every 5 s."""
    return 3 if age_s < 30 else 5


async def job_status(request: web.Request) -> web.Response:
    actors, bridge = request.app[ACTORS], request.app[BRIDGE]
    job_id = request.match_info["job_id"]
    if not JOB_ID.match(job_id):
        raise errors.JobNotFound()
    view: JobView | None = await bridge.ask(lambda: actors.ref(system.RESULT), GetJob(job_id))
    if view is None:
        raise errors.JobNotFound()
    job = view.job
    done, total = int(job.get("done", 0)), int(job.get("total", 0))
    created_ms = int(job.get("created_at", 0))
    age_s = max(0.0, time.time() - created_ms / 1000)
    data: dict[str, Any] = {
        "jobId": job_id,
        "status": job.get("status"),
        "progress": {"done": done, "total": total, "percent": round(100 * done / total, 1) if total else 0.0},
        "duration": int(job.get("duration_ms", 0)) / 1000,
        "filename": job.get("filename"),
        "pollInterval": poll_interval_s(age_s),
    }
    if job.get("status") == "failed":
        data["error"] = {"code": "JOB_FAILED", "message": job.get("reason", "")}
    if view.result is not None:
        finished_ms = int(job.get("finished_at", created_ms))
        data.update(view.result)
        data["processingTime"] = round((finished_ms - created_ms) / 1000, 3)
    return web.json_response({"success": True, "data": data})


def _tell(actors: system.ActorSystem, name: str, message: object) -> None:
    """Fire-and-forget to a named actor; a restarting actor misses the message, not the request."""
    try:
        actors.ref(name).tell(message)
    except pykka.ActorDeadError:
        log.warning("%s is not running: dropped %s", name, type(message).__name__)


def _observe(request: web.Request, plan: Plan, done: Transcribed, info: AudioInfo) -> None:
    engine = request.app[ACTORS].engine.name
    request.app[METRICS].observe_transcription(
        plan.mode.value, done.transcript.language, engine, done.engine_s, info.duration_s
    )
