"""``POST /api/transcribe``, ``GET /api/transcribe/{jobId}`` and ``POST /api/detect-language``.

The handlers only translate HTTP: they read the form (``http_edge.form``), check the native
API's fields, walk the upload through the node (``http_edge.pipeline``: the Dispatcher decides
between a slot now, a queued job and 503) and render the answer (``http_edge.views``).
Repeated uploads are answered from their first response or the result cache (``http_edge.repeats``).

A node takes at most ``SAYIT_MAX_UPLOADS_IN_FLIGHT`` uploads at once (``form.upload_route``),
each counted first against its client's rate limits (``http_edge.limits``), and an upload whose
client goes quiet for ``SAYIT_UPLOAD_IDLE_TIMEOUT_S`` gets 408.
"""

from __future__ import annotations

import functools
import logging

from aiohttp import web

from config import LANGUAGES
from http_edge import limits, pipeline, repeats, views
from http_edge.form import Form, read_form, upload_route
from http_edge.keys import REQUEST_ID, SETTINGS
from sayit_actors import errors
from sayit_actors.callbacks import check_url
from sayit_actors.caller import Caller
from sayit_actors.dispatcher import Choices, JobTicket, Mode
from sayit_actors.upload import display_name

log = logging.getLogger(__name__)
NATIVE_FIELDS = frozenset({"language", "format", "wordTimestamps", "prompt", "callbackUrl"})


def native_choices(form: Form) -> tuple[str, str, Choices]:
    """language, format and the request's decoding choices from the native API's fields."""
    language = form.field("language", "auto").lower() or "auto"
    if language not in LANGUAGES:
        raise errors.InvalidLanguage(f"got {language[:20]!r}", param="language")
    fmt = views.output_format(form.field("format", "json"))
    prompt = form.field("prompt") or None
    return language, fmt, Choices(word_timestamps=form.flag("wordTimestamps"), prompt=prompt)


@upload_route
async def transcribe(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    form = await read_form(request, settings, NATIVE_FIELDS)
    with pipeline.refused_uncounted(request, form):
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
        pipeline.counted(request)
        return answer
    if hit is not None:
        await replay.forget()
    outcome = await pipeline.process(request, form, language, choices, caller, callback_url)
    if outcome.plan.job is not None:
        log.info("request %s: job %s queued for %s", request.get(REQUEST_ID), outcome.plan.job.job_id,
                 limits.who(request))  # fmt: skip
        await replay.remember_job(outcome.plan.job.job_id)
        body = await views.accepted_body(request, outcome.plan.job, outcome.info.duration_s)
        return web.json_response(body, status=202)
    data = views.sync_data(outcome, choices)
    await replay.remember_result(data)
    return views.format_response(fmt, data)


async def _from_cache(request: web.Request, hit: repeats.CacheHit, fmt: str, filename: str) -> web.Response | None:
    """The stored answer for the same audio and options, or None when it is gone or failed."""
    if hit.data is not None:
        return views.format_response(fmt, {**hit.data, "filename": filename, "processingTime": 0.0, "cached": True})
    if hit.job_id is None or (data := await views.job_data(request, hit.job_id)) is None or data["status"] == "failed":
        return None
    if data["status"] == "completed":
        return views.format_response(fmt, {"mode": Mode.ASYNC.value, **data, "cached": True})
    progress = data["progress"]
    ticket = JobTicket(hit.job_id, progress["total"])
    body = await views.accepted_body(request, ticket, data["duration"], data["status"], progress["done"])
    body["data"]["cached"] = True
    return web.json_response(body, status=202)


async def job_status(request: web.Request) -> web.Response:
    job_id = pipeline.job_id_of(request)
    fmt = views.output_format(request.query.get("format", "json"))
    data = await views.job_data(request, job_id)
    if data is None:
        raise errors.JobNotFound()
    if data["status"] == "completed":
        return views.format_response(fmt, data)
    if fmt != "json":  # subtitles exist only once the job is done
        return web.json_response({"success": True, "data": data}, status=409 if data["status"] == "failed" else 202)
    return web.json_response({"success": True, "data": data})


@upload_route
async def detect_language(request: web.Request) -> web.Response:
    """The language of an upload's first 30 s, on a slot (it runs the encoder like a transcription)."""
    form = await read_form(request, request.app[SETTINGS], frozenset())
    detected = await pipeline.detect(request, form)
    return web.json_response({"success": True, "data": views.detected_data(detected)})
