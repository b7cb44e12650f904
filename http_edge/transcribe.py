"""``POST /api/transcribe`` and ``GET /api/transcribe/{jobId}``.

Upload → DurationProbe → Dispatcher → a leased WhisperActor slot → reply, or → a queued job
(202) for long uploads and when every slot is busy. The upload file is released (deleted)
whatever happens, and every request is counted in Redis by the ResultActor.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import pykka
import redis.asyncio as aioredis
from aiohttp import BodyPartReader, web

from config import Settings
from http_edge.cluster import live_nodes
from http_edge.keys import ACTORS, BRIDGE, METRICS, REDIS, SETTINGS
from sayit_actors import errors, formats, keys, system
from sayit_actors.audio import AudioInfo
from sayit_actors.dispatcher import Choices, Dispatch, Enqueue, JobTicket, Mode, Plan
from sayit_actors.engine import Segment
from sayit_actors.probe import Probe
from sayit_actors.result import GetJob, JobView, RecordRequest, today
from sayit_actors.upload import Accept, IncomingFile, Release, Upload
from sayit_actors.whisper import Transcribe, Transcribed

log = logging.getLogger(__name__)
CHUNK_BYTES = 256 * 1024
MULTIPART_OVERHEAD_BYTES = 64 * 1024
MAX_FIELD_BYTES = 4096  # a prompt of a few hundred words
LANGUAGES = ("ko", "en", "auto")
QUEUE_TIMEOUT_S = 120.0  # decoding and splitting a 100 MB upload
REAL_TIME_FACTOR = 0.1  # engine seconds per audio second before any is measured (base, int8, one CPU slot)
MIN_MEASURED_AUDIO_MS = 30_000
JOB_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Form:
    """A multipart upload: the streamed file part and the text fields beside it."""

    file: IncomingFile
    filename: str
    mime: str
    fields: dict[str, str]

    def field(self, name: str, default: str = "") -> str:
        return self.fields.get(name, default).strip()

    def flag(self, name: str) -> bool:
        value = self.field(name, "false").lower()
        if value not in ("true", "false", "1", "0", ""):
            raise errors.InvalidRequest(f"{name} must be true or false")
        return value in ("true", "1")


async def read_form(request: web.Request, settings: Settings) -> Form:
    """Stream the ``file`` part to disk (stopped at the size limit) and read the text fields."""
    limit = settings.limits.max_upload_bytes
    if request.content_length is not None and request.content_length > limit + MULTIPART_OVERHEAD_BYTES:
        raise errors.FileTooLarge(f"limit {limit // (1024 * 1024)} MB")
    if not request.content_type.startswith("multipart/"):
        raise errors.FileRequired()
    reader = await request.multipart()
    incoming: IncomingFile | None = None
    filename, mime, fields = "", "", {}
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
            elif part.name:
                raw = await part.read(decode=True)
                if len(raw) > MAX_FIELD_BYTES:
                    raise errors.InvalidRequest(f"the field {part.name[:40]!r} is longer than {MAX_FIELD_BYTES} bytes")
                fields[part.name] = raw.decode("utf-8", errors="replace")
    except BaseException:
        if incoming is not None:
            incoming.discard()
        raise
    if incoming is None:
        raise errors.FileRequired()
    return Form(incoming, filename, mime, fields)


@dataclass(frozen=True)
class Outcome:
    """What became of an upload: transcribed at once (``done``) or queued (``plan.job``)."""

    plan: Plan
    info: AudioInfo
    filename: str
    elapsed_s: float
    done: Transcribed | None


async def process(request: web.Request, form: Form, language: str, choices: Choices) -> Outcome:
    """Walk an upload through the actors; the upload file is released whatever happens."""
    settings, actors, bridge = request.app[SETTINGS], request.app[ACTORS], request.app[BRIDGE]
    started = time.perf_counter()
    success, audio_s = False, 0.0
    done: Transcribed | None = None
    try:
        try:
            upload: Upload = await bridge.ask(
                lambda: actors.ref(system.UPLOAD),
                Accept(form.file.path, form.filename, form.mime, form.file.size_bytes, form.file.sha256),
            )
        except BaseException:
            form.file.discard()  # the UploadActor deletes it too, unless it never got the message
            raise
        try:
            info: AudioInfo = await bridge.ask(lambda: actors.ref(system.PROBE), Probe(upload.path, upload.format))
            audio_s = info.duration_s
            dispatch = Dispatch(upload.path, upload.size_bytes, info, language, upload.filename, choices)
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
                    done = await bridge.ask(
                        lambda: actors.ref(slot),
                        Transcribe(upload.path, info.duration_s, plan.options),
                        timeout_s=settings.limits.transcribe_timeout_s,
                        then=lambda: actors.slots.release(slot),
                    )
                    _observe(request, plan, done, info)
        finally:
            _tell(actors, system.UPLOAD, Release(upload.id))
        success = True
    finally:
        elapsed = time.perf_counter() - started
        _tell(actors, system.RESULT, RecordRequest(success, elapsed, audio_s))
    return Outcome(plan, info, upload.filename, elapsed, done)


def segment_view(segment: Segment, words: bool) -> dict[str, Any]:
    view: dict[str, Any] = {"start": segment.start, "end": segment.end, "text": segment.text}
    if words:
        view["words"] = [{"start": w.start, "end": w.end, "word": w.word, "probability": w.probability}
                         for w in segment.words]  # fmt: skip
    return view


def _format_response(fmt: str, segments: list[dict[str, Any]], data: dict[str, Any], status: int = 200) -> web.Response:
    if fmt == "json":
        return web.json_response({"success": True, "data": data}, status=status)
    return web.Response(text=formats.render(fmt, segments), content_type=formats.CONTENT_TYPES[fmt], status=status)


def native_choices(form: Form) -> tuple[str, str, Choices]:
    """language, format and the request's decoding choices from the native API's fields."""
    language = form.field("language", "auto").lower() or "auto"
    if language not in LANGUAGES:
        raise errors.InvalidLanguage(f"got {language[:20]!r}")
    fmt = form.field("format", "json").lower() or "json"
    if fmt not in formats.FORMATS:
        raise errors.InvalidRequest(f"format must be one of {', '.join(formats.FORMATS)}")
    prompt = form.field("prompt") or None
    return language, fmt, Choices(word_timestamps=form.flag("wordTimestamps"), prompt=prompt)


async def transcribe(request: web.Request) -> web.Response:
    form = await read_form(request, request.app[SETTINGS])
    try:
        language, fmt, choices = native_choices(form)
    except errors.SayitError:
        form.file.discard()
        _tell(request.app[ACTORS], system.RESULT, RecordRequest(False, 0.0))
        raise
    outcome = await process(request, form, language, choices)
    if outcome.plan.job is not None:
        return web.json_response(await _accepted(request, outcome.plan.job, outcome.info), status=202)
    assert outcome.done is not None
    transcript = outcome.done.transcript
    segments = [segment_view(s, choices.word_timestamps) for s in transcript.segments]
    data: dict[str, Any] = {
        "mode": outcome.plan.mode.value,
        "transcription": transcript.text,
        "language": transcript.language,
        "languageProbability": transcript.language_probability,
        "duration": round(outcome.info.duration_s, 3),
        "processingTime": round(outcome.elapsed_s, 3),
        "segments": segments,
        "droppedSegments": outcome.done.dropped,
        "filename": outcome.filename,
        "options": transcript.options.to_dict(),
    }
    return _format_response(fmt, segments, data)


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
    fmt = request.query.get("format", "json")
    if fmt not in formats.FORMATS:
        raise errors.InvalidRequest(f"format must be one of {', '.join(formats.FORMATS)}")
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
        return _format_response(fmt, data["segments"], data)
    if fmt != "json":  # subtitles exist only once the job is done
        return web.json_response({"success": True, "data": data}, status=409 if job.get("status") == "failed" else 202)
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
