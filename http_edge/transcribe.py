"""``POST /api/transcribe``, ``GET /api/transcribe/{jobId}`` and ``POST /api/detect-language``.

Upload → DurationProbe → Dispatcher → a leased WhisperActor slot → reply, or → a queued job
(202) for long uploads and when every slot is busy. The upload file is released (deleted)
whatever happens, and every request is counted in Redis by the ResultActor.

A node takes at most ``SAYIT_MAX_UPLOADS_IN_FLIGHT`` uploads at once (``upload_route``), each
counted first against its client's rate limits (``http_edge.limits``), and an upload whose
client goes quiet for ``SAYIT_UPLOAD_IDLE_TIMEOUT_S`` gets 408. A request whose
client hangs up is cancelled (``http_edge.server``); its ``Caller`` leaves, so the actors drop
work for it not yet begun and make no job for it, and everything it holds is given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pykka
import redis.asyncio as aioredis
from aiohttp import BodyPartReader, web

from config import Settings
from http_edge import limits, repeats
from http_edge.cluster import live_nodes
from http_edge.keys import ACTORS, ADMISSION, BRIDGE, METRICS, REDIS, REQUEST_ID, SETTINGS, TENANT
from http_edge.middlewares import error_response
from sayit_actors import errors, formats, keys, system
from sayit_actors.audio import AudioInfo
from sayit_actors.callbacks import check_url
from sayit_actors.caller import Caller
from sayit_actors.dispatcher import Choices, Dispatch, Enqueue, JobTicket, Mode, Plan
from sayit_actors.engine import DETECT_S, LanguageGuess, Segment
from sayit_actors.jobstore import Owner
from sayit_actors.probe import Probe
from sayit_actors.result import GetJob, JobView, RecordRequest, today
from sayit_actors.upload import Accept, IncomingFile, Release, Upload, display_name
from sayit_actors.whisper import DetectLanguage, Transcribe, Transcribed

log = logging.getLogger(__name__)
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.Response]]
CHUNK_BYTES = 256 * 1024
FIELD_CHUNK_BYTES = 4096  # what a text field is read by: never more than MAX_FIELD_BYTES + this is held
MULTIPART_OVERHEAD_BYTES = 64 * 1024
MAX_FIELD_BYTES = 4096  # a prompt of a few hundred words
MAX_FIELDS = 32
LANGUAGES = ("ko", "en", "auto")
NATIVE_FIELDS = frozenset({"language", "format", "wordTimestamps", "prompt", "callbackUrl"})
REAL_TIME_FACTOR = 0.1  # engine seconds per audio second before any is measured (base, int8, one CPU slot)
MIN_MEASURED_AUDIO_MS = 30_000
JOB_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Form:
    """A multipart upload: the streamed file part and the text fields beside it.

    A handler reads only the fields it declares (and documents in /openapi.json); others are ignored.
    """

    file: IncomingFile
    filename: str
    mime: str
    values: dict[str, list[str]]
    declared: frozenset[str]

    def field(self, name: str, default: str = "") -> str:
        assert name in self.declared, f"{name!r} is not a declared field of this route"
        values = self.values.get(name)
        return values[-1].strip() if values else default

    def all(self, name: str) -> list[str]:
        assert name in self.declared, f"{name!r} is not a declared field of this route"
        return [v.strip() for v in self.values.get(name, [])]

    def flag(self, name: str) -> bool:
        value = self.field(name, "false").lower()
        if value not in ("true", "false", "1", "0", ""):
            raise errors.InvalidRequest(f"{name} must be true or false", param=name)
        return value in ("true", "1")


def upload_route(handler: Handler) -> Handler:
    """A route that takes an upload: counted against its client's rate limits, then one of at
    most SAYIT_MAX_UPLOADS_IN_FLIGHT on the node, from its first byte read to its answer; past
    either, refused (429, 503) before its body is read. Its answer carries the RateLimit headers."""

    @functools.wraps(handler)
    async def admitted(request: web.Request) -> web.Response:
        try:
            quota = await limits.take_upload(request)
            with request.app[ADMISSION].uploads.entered():
                response = await handler(request)
        except limits.Refused as refused:  # rendered here: the error middleware knows no RateLimit headers
            response = error_response(request, refused)
            quota = refused.quota
        if quota is not None:
            response.headers.update(quota.headers())
        return response

    return admitted


def owner(request: web.Request) -> Owner | None:
    """The tenant a job made now belongs to (None without API keys). With two tenants or more,
    its jobs may hold only SAYIT_TENANT_QUEUE_SHARE of the queued-audio budget: a lone tenant is
    everyone, and keeps all of it."""
    if TENANT not in request:
        return None
    settings = request.app[SETTINGS]
    several = len({name for name, _ in settings.tenants}) > 1
    return Owner(request[TENANT], settings.queue.tenant_queue_share if several else 1.0)


def may_see(request: web.Request, job_owner: str | None) -> bool:
    """With API keys a job is its tenant's alone: to any other it does not exist (404, as unknown)."""
    return not request.app[SETTINGS].api_keys or (TENANT in request and job_owner == request[TENANT])


async def job_exists(request: web.Request, job_id: str) -> bool:
    """Whether the job exists for the caller (read straight from Redis)."""
    status, job_owner = await request.app[REDIS].hmget(keys.job(job_id), ["status", "owner"])  # type: Any, Any
    return status is not None and may_see(request, job_owner.decode() if job_owner else "")


async def _within(idle_s: float, read: Awaitable[T]) -> T:
    """One read of a request body: the client's next bytes, or 408 after ``idle_s`` without any."""
    try:
        async with asyncio.timeout(idle_s):
            return await read
    except TimeoutError:
        raise errors.RequestTimeout(f"nothing came for {idle_s:g} s") from None


async def read_form(request: web.Request, settings: Settings, declared: frozenset[str]) -> Form:
    """Stream the one ``file`` part to disk (stopped at the size limit) and read the text fields.

    Each read waits at most SAYIT_UPLOAD_IDLE_TIMEOUT_S; a text field is refused as soon as it
    passes MAX_FIELD_BYTES. On any failure, a client's hang-up included, the file is deleted.
    """
    limit, idle_s = settings.limits.max_upload_bytes, settings.limits.upload_idle_timeout_s
    if request.content_length is not None and request.content_length > limit + MULTIPART_OVERHEAD_BYTES:
        raise errors.FileTooLarge(f"limit {limit // (1024 * 1024)} MB")
    if not request.content_type.startswith("multipart/"):
        raise errors.FileRequired()
    reader = await request.multipart()
    incoming: IncomingFile | None = None
    filename, mime = "", ""
    values: dict[str, list[str]] = {}
    try:
        while (part := await _within(idle_s, reader.next())) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "file":
                if incoming is not None:
                    raise errors.InvalidRequest("one file per request", param="file")
                filename, mime = part.filename or "", part.headers.get("Content-Type", "")
                incoming = IncomingFile(settings.upload_dir, limit)
                while chunk := await _within(idle_s, part.read_chunk(CHUNK_BYTES)):
                    incoming.write(chunk)
                incoming.close()
            elif part.name:
                if sum(map(len, values.values())) >= MAX_FIELDS:
                    raise errors.InvalidRequest(f"more than {MAX_FIELDS} form fields")
                values.setdefault(part.name, []).append(await _field(part, part.name, idle_s))
    except BaseException:
        if incoming is not None:
            incoming.discard()
        raise
    if incoming is None:
        raise errors.FileRequired()
    return Form(incoming, filename, mime, values, declared)


async def _field(part: BodyPartReader, name: str, idle_s: float) -> str:
    """A text field's value, read in small chunks and refused once it passes MAX_FIELD_BYTES."""
    too_long = errors.InvalidRequest(f"the field {name[:40]!r} is longer than {MAX_FIELD_BYTES} bytes", param=name[:40])
    raw = bytearray()
    while chunk := await _within(idle_s, part.read_chunk(FIELD_CHUNK_BYTES)):
        raw += chunk
        if len(raw) > MAX_FIELD_BYTES:
            raise too_long
    value = bytes(part.decode(raw))  # Content-Transfer-Encoding or Content-Encoding, if the client used one
    if len(value) > MAX_FIELD_BYTES:
        raise too_long
    return value.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Outcome:
    """What became of an upload: transcribed at once (``done``) or queued (``plan.job``)."""

    plan: Plan
    info: AudioInfo
    filename: str
    elapsed_s: float
    done: Transcribed | None


@dataclass(frozen=True)
class Accepted:
    upload: Upload
    info: AudioInfo


@contextlib.asynccontextmanager
async def accepted(request: web.Request, form: Form) -> AsyncIterator[Accepted]:
    """The upload handed to the UploadActor and probed; released (deleted) on leaving, whatever happens."""
    actors, bridge = request.app[ACTORS], request.app[BRIDGE]
    accept = Accept(form.file.path, form.filename, form.mime, form.file.size_bytes, form.file.sha256)
    asking = asyncio.ensure_future(bridge.ask(lambda: actors.ref(system.UPLOAD), accept))
    try:
        upload: Upload = await asyncio.shield(asking)
    except BaseException:
        form.file.discard()  # the UploadActor deletes it too, unless it never got the message
        # A request cancelled meanwhile: the upload the actor accepts after all is released then.
        asking.add_done_callback(lambda done: _release_accepted(actors, done))
        raise
    try:
        info: AudioInfo = await bridge.ask(lambda: actors.ref(system.PROBE), Probe(upload.path, upload.format))
        yield Accepted(upload, info)
    finally:
        tell(actors, system.UPLOAD, Release(upload.id))


def _release_accepted(actors: system.ActorSystem, asking: asyncio.Future[Upload]) -> None:
    if not asking.cancelled() and asking.exception() is None:
        tell(actors, system.UPLOAD, Release(asking.result().id))


async def process(
    request: web.Request,
    form: Form,
    language: str,
    choices: Choices,
    caller: Caller,
    callback_url: str | None = None,
) -> Outcome:
    """Walk an upload through the actors; the upload file is released whatever happens.

    ``caller`` is the request: a job is made only while it waits, and then it holds the job's id.
    """
    settings, actors, bridge = request.app[SETTINGS], request.app[ACTORS], request.app[BRIDGE]
    dispatch_s = settings.limits.dispatch_timeout_s
    started = time.perf_counter()
    success, audio_s = False, 0.0
    done: Transcribed | None = None
    try:
        async with accepted(request, form) as got:
            upload, info = got.upload, got.info
            audio_s = info.duration_s
            await limits.take_audio(request, audio_s)
            dispatch = Dispatch(
                upload.path, upload.size_bytes, info, language, upload.filename, choices, callback_url, caller,
                owner(request),
            )  # fmt: skip
            dispatcher = functools.partial(actors.ref, system.DISPATCHER)
            plan: Plan = await bridge.ask(dispatcher, dispatch, timeout_s=dispatch_s, caller=caller)
            if plan.mode is Mode.SYNC:
                # Every slot busy: a queue that has workers takes the upload at once (202);
                # without one, wait a bounded time for a slot, then 503.
                queued = await _queue_has_workers(request)
                slot = await bridge.lease(actors.slots, 0.0 if queued else settings.limits.slot_wait_s)
                if slot is None and queued:
                    plan = await bridge.ask(dispatcher, Enqueue(dispatch), timeout_s=dispatch_s, caller=caller)
                elif slot is None:
                    raise errors.ServerBusy(retry_after_s=settings.limits.retry_after_s)
                else:
                    done = await bridge.ask(
                        lambda: actors.ref(slot),
                        Transcribe(upload.path, info.duration_s, plan.options, caller),
                        timeout_s=settings.limits.transcribe_timeout_s,
                        then=lambda: actors.slots.release(slot),  # once the engine call is over, not at the timeout
                        caller=caller,
                    )
                    _observe(request, plan, done, info)
        success = True
    finally:
        elapsed = time.perf_counter() - started
        tell(actors, system.RESULT, RecordRequest(success, elapsed, audio_s))
    return Outcome(plan, info, upload.filename, elapsed, done)


def segment_view(segment: Segment, words: bool) -> dict[str, Any]:
    view: dict[str, Any] = {"start": segment.start, "end": segment.end, "text": segment.text}
    if words:
        view["words"] = [{"start": w.start, "end": w.end, "word": w.word, "probability": w.probability}
                         for w in segment.words]  # fmt: skip
    return view


def format_response(fmt: str, data: dict[str, Any]) -> web.Response:
    if fmt == "json":
        return web.json_response({"success": True, "data": data})
    return web.Response(text=formats.render(fmt, data["segments"]), content_type=formats.CONTENT_TYPES[fmt])


def output_format(raw: str) -> str:
    fmt = raw.strip().lower() or "json"
    if fmt not in formats.FORMATS:
        raise errors.InvalidRequest(f"format must be one of {', '.join(formats.FORMATS)}", param="format")
    return fmt


@contextlib.contextmanager
def refused_uncounted(request: web.Request, form: Form) -> Iterator[None]:
    """Checks before any work: a refusal drops the upload and counts a failed request."""
    try:
        yield
    except BaseException:
        form.file.discard()
        tell(request.app[ACTORS], system.RESULT, RecordRequest(False, 0.0))
        raise


def native_choices(form: Form) -> tuple[str, str, Choices]:
    """language, format and the request's decoding choices from the native API's fields."""
    language = form.field("language", "auto").lower() or "auto"
    if language not in LANGUAGES:
        raise errors.InvalidLanguage(f"got {language[:20]!r}", param="language")
    fmt = output_format(form.field("format", "json"))
    prompt = form.field("prompt") or None
    return language, fmt, Choices(word_timestamps=form.flag("wordTimestamps"), prompt=prompt)


def sync_data(outcome: Outcome, choices: Choices) -> dict[str, Any]:
    """A short upload's result as the native API answers it."""
    assert outcome.done is not None
    transcript = outcome.done.transcript
    return {
        "mode": outcome.plan.mode.value,
        "transcription": transcript.text,
        "language": transcript.language,
        "languageProbability": transcript.language_probability,
        "duration": round(outcome.info.duration_s, 3),
        "processingTime": round(outcome.elapsed_s, 3),
        "segments": [segment_view(s, choices.word_timestamps) for s in transcript.segments],
        "droppedSegments": outcome.done.dropped,
        "filename": outcome.filename,
        "options": transcript.options.to_dict(),
    }


@upload_route
async def transcribe(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    form = await read_form(request, settings, NATIVE_FIELDS)
    with refused_uncounted(request, form):
        language, fmt, choices = native_choices(form)
        callback_url = form.field("callbackUrl") or None
        if callback_url is not None:
            check_url(callback_url, settings.api)
        replay = await repeats.begin(request, form.file, language, choices, format=fmt, callback=callback_url)
    caller = Caller()
    respond = functools.partial(_transcribe, request, form, language, fmt, choices, callback_url, replay, caller)
    return await repeats.once(replay, form.file, caller, respond)


async def _transcribe(
    request: web.Request,
    form: Form,
    language: str,
    fmt: str,
    choices: Choices,
    callback_url: str | None,
    replay: repeats.Replay,
    caller: Caller,
) -> web.Response:
    # A request with a callbackUrl makes its own job (or its Idempotency-Key's): a shared cached
    # result or job would not call its URL.
    hit = await replay.cached(shared=callback_url is None)
    if hit is not None and (answer := await _from_cache(request, hit, fmt, display_name(form.filename))) is not None:
        form.file.discard()
        tell(request.app[ACTORS], system.RESULT, RecordRequest(True, 0.0))
        return answer
    if hit is not None:
        await replay.forget()
    outcome = await process(request, form, language, choices, caller, callback_url)
    if outcome.plan.job is not None:
        log.info("request %s: job %s queued for %s", request.get(REQUEST_ID), outcome.plan.job.job_id,
                 limits.who(request))  # fmt: skip
        await replay.remember_job(outcome.plan.job.job_id)
        body = await accepted_body(request, outcome.plan.job, outcome.info.duration_s)
        return web.json_response(body, status=202)
    data = sync_data(outcome, choices)
    await replay.remember_result(data)
    return format_response(fmt, data)


async def _from_cache(request: web.Request, hit: repeats.CacheHit, fmt: str, filename: str) -> web.Response | None:
    """The stored answer for the same audio and options, or None when it is gone or failed."""
    if hit.data is not None:
        return format_response(fmt, {**hit.data, "filename": filename, "processingTime": 0.0, "cached": True})
    if hit.job_id is None or (data := await job_data(request, hit.job_id)) is None or data["status"] == "failed":
        return None
    if data["status"] == "completed":
        return format_response(fmt, {"mode": Mode.ASYNC.value, **data, "cached": True})
    progress = data["progress"]
    ticket = JobTicket(hit.job_id, progress["total"])
    body = await accepted_body(request, ticket, data["duration"], data["status"], progress["done"])
    body["data"]["cached"] = True
    return web.json_response(body, status=202)


async def accepted_body(
    request: web.Request, job: JobTicket, duration_s: float, status: str = "queued", done: int = 0
) -> dict[str, Any]:
    """The 202 answer for a job: where to follow it and how long its remaining chunks should take."""
    settings, client = request.app[SETTINGS], request.app[REDIS]
    queue_slots = sum(int(node.get("slots", 0)) for node in await live_nodes(client))
    parallel = max(1, min(job.chunks, queue_slots or 1))
    remaining = 1 - done / job.chunks if job.chunks else 1.0
    estimate_s = duration_s * remaining * await _real_time_factor(client) / parallel + settings.queue.poll_s
    return {
        "success": True,
        "data": {
            "mode": Mode.ASYNC.value,
            "jobId": job.job_id,
            "status": status,
            "chunks": job.chunks,
            "duration": round(duration_s, 3),
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


async def job_data(request: web.Request, job_id: str) -> dict[str, Any] | None:
    """A job as ``GET /api/transcribe/{jobId}`` shows it, with its result once completed; None if unknown."""
    actors, bridge = request.app[ACTORS], request.app[BRIDGE]
    view: JobView | None = await bridge.ask(lambda: actors.ref(system.RESULT), GetJob(job_id))
    if view is None or not may_see(request, view.job.get("owner", "")):
        return None
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
    return data


def job_id_of(request: web.Request) -> str:
    job_id = request.match_info["job_id"]
    if not JOB_ID.match(job_id):
        raise errors.JobNotFound()
    return job_id


async def job_status(request: web.Request) -> web.Response:
    job_id = job_id_of(request)
    fmt = output_format(request.query.get("format", "json"))
    data = await job_data(request, job_id)
    if data is None:
        raise errors.JobNotFound()
    if data["status"] == "completed":
        return format_response(fmt, data)
    if fmt != "json":  # subtitles exist only once the job is done
        return web.json_response({"success": True, "data": data}, status=409 if data["status"] == "failed" else 202)
    return web.json_response({"success": True, "data": data})


@upload_route
async def detect_language(request: web.Request) -> web.Response:
    """The language of an upload's first 30 s, on a slot (it runs the encoder like a transcription)."""
    settings, actors, bridge = request.app[SETTINGS], request.app[ACTORS], request.app[BRIDGE]
    form = await read_form(request, settings, frozenset())
    started = time.perf_counter()
    success, audio_s = False, 0.0
    try:
        async with accepted(request, form) as got:
            audio_s = got.info.duration_s
            await limits.take_audio(request, min(audio_s, DETECT_S))
            slot = await bridge.lease(actors.slots, settings.limits.slot_wait_s)
            if slot is None:
                raise errors.ServerBusy(retry_after_s=settings.limits.retry_after_s)
            caller = Caller()
            guess: LanguageGuess = await bridge.ask(
                lambda: actors.ref(slot),
                DetectLanguage(got.upload.path, got.info.duration_s, caller),
                timeout_s=settings.limits.transcribe_timeout_s,
                then=lambda: actors.slots.release(slot),
                caller=caller,
            )
        success = True
    finally:
        tell(actors, system.RESULT, RecordRequest(success, time.perf_counter() - started, min(audio_s, DETECT_S)))
    data = {
        "language": guess.language,
        "probability": guess.probability,
        "candidates": [{"language": lang, "probability": p} for lang, p in guess.candidates],
        "duration": round(got.info.duration_s, 3),
        "detectedOn": round(min(got.info.duration_s, DETECT_S), 3),
        "filename": got.upload.filename,
    }
    return web.json_response({"success": True, "data": data})


def tell(actors: system.ActorSystem, name: str, message: object) -> None:
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
