"""``POST /api/transcribe``: stream the upload to disk, then walk it through the actors.

Upload → DurationProbe → Dispatcher → a leased WhisperActor slot → reply. The upload file is
released (deleted) whatever happens, and every request is counted in Redis by the ResultActor.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pykka
from aiohttp import BodyPartReader, web

from config import Settings
from http_edge.keys import ACTORS, BRIDGE, METRICS, SETTINGS
from sayit_actors import errors, system
from sayit_actors.audio import AudioInfo
from sayit_actors.dispatcher import Dispatch, Plan
from sayit_actors.probe import Probe
from sayit_actors.result import RecordRequest
from sayit_actors.upload import Accept, IncomingFile, Release, Upload
from sayit_actors.whisper import Transcribe, Transcribed

log = logging.getLogger(__name__)
CHUNK_BYTES = 256 * 1024
MULTIPART_OVERHEAD_BYTES = 64 * 1024
MAX_FIELD_BYTES = 1024
LANGUAGES = ("ko", "en", "auto")


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
            plan: Plan = await bridge.ask(
                lambda: actors.ref(system.DISPATCHER), Dispatch(upload.size_bytes, info, language)
            )
            slot = await bridge.lease(actors.slots, settings.limits.slot_wait_s)
            if slot is None:
                raise errors.ServerBusy(retry_after_s=settings.limits.retry_after_s)
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


def _tell(actors: system.ActorSystem, name: str, message: object) -> None:
    """Fire-and-forget to a named actor; a restarting actor misses the message, not the request."""
    try:
        actors.ref(name).tell(message)
    except pykka.ActorDeadError:
        log.warning("%s is not running: dropped %s", name, type(message).__name__)


def _observe(request: web.Request, plan: Plan, done: Transcribed, info: AudioInfo) -> None:
    metrics = request.app[METRICS]
    engine = request.app[ACTORS].engine.name
    labels = (plan.mode.value, plan.options.profile, engine)
    metrics.transcriptions.labels(*labels, "success").inc()
    metrics.transcription_seconds.labels(*labels).observe(done.engine_s)
    metrics.audio_seconds.labels(*labels).inc(info.duration_s)
