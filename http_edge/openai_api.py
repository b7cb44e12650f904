"""OpenAI's audio API on SayIt: ``/v1/audio/transcriptions``, ``/v1/audio/translations``, ``/v1/models``.

So that the official SDKs and the tools built on them work unchanged. OpenAI's API answers in
the same response, so a long upload goes through the chunk queue like any other and the route
waits for its job (``SAYIT_OPENAI_WAIT_S``); past that it answers 504 with the job's id, and the
job carries on. Errors take OpenAI's shape (``middlewares.error_response``).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

from aiohttp import web

from config import LANGUAGES
from http_edge import formats, repeats
from http_edge.events import wait_for_job
from http_edge.form import Form, read_form, upload_route
from http_edge.keys import ACTORS, SETTINGS, STARTED_AT
from http_edge.pipeline import process, refused_uncounted
from http_edge.views import sync_data
from sayit_actors import errors
from sayit_actors.caller import Caller
from sayit_actors.dispatcher import Choices
from sayit_actors.engines import Segment

OPENAI_MODEL = "whisper-1"
RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GRANULARITIES = ("segment", "word")
TRANSCRIPTION_FIELDS = frozenset(
    {"model", "language", "prompt", "response_format", "temperature", "timestamp_granularities[]", "stream"}
)
TRANSLATION_FIELDS = frozenset({"model", "prompt", "response_format", "temperature"})
LANGUAGE_NAMES = {"en": "english", "ko": "korean"}


def _model_ids(request: web.Request) -> list[str]:
    engine = request.app[ACTORS].engine
    return [OPENAI_MODEL] + ([engine.model] if engine.model != OPENAI_MODEL else [])


async def models(request: web.Request) -> web.Response:
    created = int(request.app[STARTED_AT])
    data = [{"id": name, "object": "model", "created": created, "owned_by": "sayit"} for name in _model_ids(request)]
    return web.json_response({"object": "list", "data": data})


def _choices(request: web.Request, form: Form, task: str) -> tuple[str, str, bool, Choices]:
    """language, response format, whether words were asked for, and the decoding choices."""
    model = form.field("model")
    if not model:
        raise errors.InvalidRequest("model is required", param="model")
    if model not in _model_ids(request):
        raise errors.InvalidRequest(f"model {model[:40]!r} is not served here ({OPENAI_MODEL} is)", param="model")
    fmt = form.field("response_format", "json") or "json"
    if fmt not in RESPONSE_FORMATS:
        raise errors.InvalidRequest(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}",
                                    param="response_format")  # fmt: skip
    temperature: float | None = None
    if raw := form.field("temperature"):
        try:
            temperature = float(raw)
        except ValueError:
            temperature = -1.0
        if not 0.0 <= temperature <= 1.0:
            raise errors.InvalidRequest("temperature must be a number from 0 to 1", param="temperature")
    language = "auto"
    words = False
    if task == "transcribe":
        language = form.field("language", "auto").lower() or "auto"
        if language not in LANGUAGES:
            raise errors.InvalidLanguage(f"got {language[:20]!r}", param="language")
        granularities = form.all("timestamp_granularities[]")
        if unknown := [g for g in granularities if g not in GRANULARITIES]:
            raise errors.InvalidRequest(f"unknown timestamp granularity {unknown[0][:20]!r}",
                                        param="timestamp_granularities")  # fmt: skip
        words = "word" in granularities
        if granularities and fmt != "verbose_json":
            raise errors.InvalidRequest("timestamp_granularities needs response_format verbose_json",
                                        param="timestamp_granularities")  # fmt: skip
        if form.field("stream").lower() == "true":
            raise errors.InvalidRequest("streaming is not offered: follow /api/transcribe/{jobId}/events instead",
                                        param="stream")  # fmt: skip
    prompt = form.field("prompt") or None
    return language, fmt, words, Choices(word_timestamps=words, prompt=prompt, task=task, temperature=temperature)


@upload_route
async def transcriptions(request: web.Request) -> web.Response:
    return await _audio(request, "transcribe", TRANSCRIPTION_FIELDS)


@upload_route
async def translations(request: web.Request) -> web.Response:
    return await _audio(request, "translate", TRANSLATION_FIELDS)


async def _audio(request: web.Request, task: str, declared: frozenset[str]) -> web.Response:
    form = await read_form(request, request.app[SETTINGS], declared)
    with refused_uncounted(request, form):
        language, fmt, words, choices = _choices(request, form, task)
        # The SDKs retry a request that timed out: with an Idempotency-Key that never makes a second job.
        replay = await repeats.begin(request, form.file, language, choices, route=request.path, format=fmt)

    caller = Caller()

    async def respond() -> web.Response:
        data, details = await _transcript(request, form, language, choices, replay, caller)
        return _render(fmt, task, words, data, details)

    return await repeats.once(replay, form.file, caller, respond)


async def _transcript(
    request: web.Request, form: Form, language: str, choices: Choices, replay: repeats.Replay, caller: Caller
) -> tuple[dict[str, Any], tuple[Segment, ...] | None]:
    """The result in the native API's shape, from the cache, a queued job or a slot; and the
    engine's own segments when a slot made it now (their decoding figures go into verbose_json)."""
    wait_s = request.app[SETTINGS].api.openai_wait_s
    hit = await replay.cached()
    if hit is not None and hit.data is not None:
        form.file.discard()
        return hit.data, None
    if hit is not None and hit.job_id is not None:
        with contextlib.suppress(errors.JobNotFound):  # gone: made again below
            data = await wait_for_job(request, hit.job_id, wait_s)
            if data["status"] == "completed":
                form.file.discard()
                return data, None
        await replay.forget()
    outcome = await process(request, form, language, choices, caller)
    if outcome.plan.job is not None:
        await replay.remember_job(outcome.plan.job.job_id)
        data = await wait_for_job(request, outcome.plan.job.job_id, wait_s)
        if data["status"] != "completed":
            raise errors.JobFailed(data.get("error", {}).get("message") or None)
        return data, None
    data = sync_data(outcome, choices)
    await replay.remember_result(data)
    assert outcome.done is not None
    return data, outcome.done.transcript.segments


def _render(
    fmt: str, task: str, words: bool, data: dict[str, Any], details: tuple[Segment, ...] | None
) -> web.Response:
    text = str(data["transcription"]).strip()
    duration = float(data["duration"])
    usage = {"type": "duration", "seconds": math.ceil(duration)}
    if fmt == "json":
        return web.json_response({"text": text, "usage": usage})
    if fmt == "text":
        return web.Response(text=text + "\n", content_type="text/plain")
    if fmt in ("srt", "vtt"):
        return web.Response(text=formats.render(fmt, data["segments"]), content_type=formats.CONTENT_TYPES[fmt])
    segments = []
    for index, segment in enumerate(data["segments"]):
        detail = details[index] if details is not None and index < len(details) else None
        segments.append({
            "id": index,
            "seek": 0,
            "start": segment["start"],
            "end": segment["end"],
            "text": segment["text"],
            "tokens": [],
            "temperature": 0.0,
            "avg_logprob": detail.avg_logprob if detail else 0.0,
            "compression_ratio": detail.compression_ratio if detail else 0.0,
            "no_speech_prob": detail.no_speech_prob if detail else 0.0,
        })  # fmt: skip
    body: dict[str, Any] = {
        "task": task,
        "language": LANGUAGE_NAMES.get(str(data["language"]), str(data["language"])),
        "duration": duration,
        "text": text,
        "segments": segments,
        "usage": usage,
    }
    if words:
        body["words"] = [
            {"word": w["word"].strip(), "start": w["start"], "end": w["end"]}
            for segment in data["segments"]
            for w in segment.get("words", [])
        ]
    return web.json_response(body)
