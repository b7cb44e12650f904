"""The edge's typed way into the actors and the stores: what a handler may ask of the node.

Upload → DurationProbe → Dispatcher, which decides: a leased WhisperActor slot (transcribed
now), a queued job (a Splitter made it), or a bounded wait for a slot, then 503. The upload
file is released (deleted) whatever happens, and every request is counted in Redis by the
ResultActor. Each function returns the declared type of its answer, so a handler never holds an
``Any`` from an actor.

Job state and the daily stats are read here straight from Redis with the edge's async client:
a status poll never waits in an actor's inbox. A job that looks unsettled when read (every chunk
recorded but not merged, or ended without its callback queued) is shown as its merge makes it,
and the ResultActor is told to settle it.

A request whose client hangs up is cancelled (``http_edge.server``); its ``Caller`` leaves, so
the actors drop work for it not yet begun and make no job for it, and everything it holds (its
upload, a leased slot) is given back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pykka
from aiohttp import web

from http_edge import limits
from http_edge.form import Form
from http_edge.keys import ACTORS, BRIDGE, METRICS, REDIS, SETTINGS, TENANT
from sayit_actors import errors, system
from sayit_actors.audio import AudioInfo
from sayit_actors.caller import Caller
from sayit_actors.dispatcher import Choices, Dispatch, Mode, Plan
from sayit_actors.engines import DETECT_S, LanguageGuess
from sayit_actors.probe import Probe
from sayit_actors.result import DailyStats, RecordRequest, SettleJob, today
from sayit_actors.slots import SlotPool
from sayit_actors.store import keys
from sayit_actors.store.merge import Transcript, merge
from sayit_actors.store.records import Owner, now_ms
from sayit_actors.upload import Accept, Release, Upload
from sayit_actors.whisper import DetectLanguage, Transcribe, Transcribed

log = logging.getLogger(__name__)
JOB_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Accepted:
    upload: Upload
    info: AudioInfo


@dataclass(frozen=True)
class Outcome:
    """What became of an upload: transcribed at once (``done``) or queued (``plan.job``)."""

    plan: Plan
    info: AudioInfo
    filename: str
    elapsed_s: float
    done: Transcribed | None


@dataclass(frozen=True)
class Detected:
    guess: LanguageGuess
    info: AudioInfo
    filename: str


@dataclass(frozen=True)
class JobView:
    """A job's hash in Redis (decoded) and its result once completed."""

    job: dict[str, str]
    result: Transcript | None


def tell(actors: system.ActorSystem, name: str, message: object) -> None:
    """Fire-and-forget to a named actor; a restarting actor misses the message, not the request."""
    try:
        actors.ref(name).tell(message)
    except pykka.ActorDeadError:
        log.warning("%s is not running: dropped %s", name, type(message).__name__)


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


@contextlib.contextmanager
def refused_uncounted(request: web.Request, form: Form) -> Iterator[None]:
    """Checks before any work: a refusal drops the upload and counts a failed request."""
    try:
        yield
    except BaseException:
        form.file.discard()
        tell(request.app[ACTORS], system.RESULT, RecordRequest(False, 0.0))
        raise


def counted(request: web.Request) -> None:
    """A request answered without any work (from a cache): counted as a success."""
    tell(request.app[ACTORS], system.RESULT, RecordRequest(True, 0.0))


@contextlib.asynccontextmanager
async def accepted(request: web.Request, form: Form) -> AsyncIterator[Accepted]:
    """The upload handed to the UploadActor and probed; released (deleted) on leaving, whatever happens."""
    actors, bridge = request.app[ACTORS], request.app[BRIDGE]
    accept = Accept(form.file.path, form.filename, form.mime, form.file.size_bytes, form.file.sha256)
    try:
        # An upload the actor accepts after nobody waits any more (cancelled, timed out) is released then.
        upload = await bridge.ask(
            lambda: actors.ref(system.UPLOAD),
            accept,
            unclaimed=lambda late: tell(actors, system.UPLOAD, Release(late.id)),
        )
    except BaseException:
        form.file.discard()  # the UploadActor deletes it too, unless it never got the message
        raise
    try:
        info = await bridge.ask(lambda: actors.ref(system.PROBE), Probe(upload.path, upload.format))
        yield Accepted(upload, info)
    finally:
        tell(actors, system.UPLOAD, Release(upload.id))


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
            plan = await bridge.ask(
                lambda: actors.ref(system.DISPATCHER),
                dispatch,
                timeout_s=settings.limits.dispatch_timeout_s,
                caller=caller,
                unclaimed=_giving_back(actors.slots),  # a slot leased to a request gone meanwhile
            )
            if plan.mode is Mode.SYNC:
                done = await _transcribe(request, plan, upload, info, caller)
                _observe(request, plan, done, info)
        success = True
    finally:
        elapsed = time.perf_counter() - started
        tell(actors, system.RESULT, RecordRequest(success, elapsed, audio_s))
    return Outcome(plan, info, upload.filename, elapsed, done)


async def _transcribe(request: web.Request, plan: Plan, upload: Upload, info: AudioInfo, caller: Caller) -> Transcribed:
    """A SYNC plan carried out on its slot; without one, on a slot freed within the plan's wait, else 503."""
    settings, actors, bridge = request.app[SETTINGS], request.app[ACTORS], request.app[BRIDGE]
    slot = plan.slot
    if slot is None:
        slot = await bridge.lease(actors.slots, plan.slot_wait_s)
        if slot is None:
            raise errors.ServerBusy(retry_after_s=settings.limits.retry_after_s)
    leased = slot
    done = await bridge.ask(
        lambda: actors.ref(leased),
        Transcribe(upload.path, info.duration_s, plan.options, caller),
        timeout_s=settings.limits.transcribe_timeout_s,
        then=lambda: actors.slots.release(leased),  # once the engine call is over, not at the timeout
        caller=caller,
    )
    return done


def _giving_back(slots: SlotPool) -> Callable[[Plan], None]:
    def give_back(plan: Plan) -> None:
        if plan.slot is not None:
            slots.release(plan.slot)

    return give_back


async def detect(request: web.Request, form: Form) -> Detected:
    """The language of an upload's first 30 s, on a slot (it runs the encoder like a transcription)."""
    settings, actors, bridge = request.app[SETTINGS], request.app[ACTORS], request.app[BRIDGE]
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
            guess = await bridge.ask(
                lambda: actors.ref(slot),
                DetectLanguage(got.upload.path, got.info.duration_s, caller),
                timeout_s=settings.limits.transcribe_timeout_s,
                then=lambda: actors.slots.release(slot),
                caller=caller,
            )
        success = True
    finally:
        tell(actors, system.RESULT, RecordRequest(success, time.perf_counter() - started, min(audio_s, DETECT_S)))
    return Detected(guess, got.info, got.upload.filename)


def _observe(request: web.Request, plan: Plan, done: Transcribed, info: AudioInfo) -> None:
    engine = request.app[ACTORS].engine.name
    request.app[METRICS].observe_transcription(
        plan.mode.value, done.transcript.language, engine, done.engine_s, info.duration_s
    )


# --- reads, straight from Redis ------------------------------------------------------------------


def job_id_of(request: web.Request) -> str:
    job_id = request.match_info["job_id"]
    if not JOB_ID.match(job_id):
        raise errors.JobNotFound()
    return job_id


async def job_exists(request: web.Request, job_id: str) -> bool:
    """Whether the job exists for the caller."""
    status, job_owner = await request.app[REDIS].hmget(keys.job(job_id), ["status", "owner"])  # type: Any, Any
    return status is not None and may_see(request, job_owner.decode() if job_owner else "")


async def job(request: web.Request, job_id: str) -> JobView | None:
    """The job and its result once completed; None if unknown, or another tenant's."""
    client = request.app[REDIS]
    raw: Any = await client.hgetall(keys.job(job_id))  # bytes → bytes: the client decodes nothing
    stored = {k.decode(): v.decode() for k, v in raw.items()}
    if not stored or not may_see(request, stored.get("owner", "")):
        return None
    status, result = stored.get("status"), None
    if status == "completed":
        blob = await client.get(keys.job_result(job_id))
        result = Transcript.from_json(blob) if blob else None
    elif status == "processing" and stored.get("done") == stored.get("total"):
        # The last writer died before merging: the ResultActor merges it (callback included);
        # meanwhile it is shown as that merge makes it.
        tell(request.app[ACTORS], system.RESULT, SettleJob(job_id))
        chunks: Any = await client.hgetall(keys.chunk_results(job_id))
        if len(chunks) >= int(stored["total"]):
            result = merge([json.loads(chunks[k]) for k in sorted(chunks, key=int)])
            stored = {**stored, "status": "completed", "finished_at": str(now_ms())}
    if status in ("completed", "failed") and stored.get("callback_url") and not stored.get("callback_queued"):
        tell(request.app[ACTORS], system.RESULT, SettleJob(job_id))  # a node died before queueing its callback
    return JobView(stored, result)


async def daily_stats(request: web.Request) -> DailyStats:
    """Today's request counts and times."""
    day = today()
    raw: Any = await request.app[REDIS].hgetall(keys.stats(day))
    return DailyStats.from_hash(day, raw)
