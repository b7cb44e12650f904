"""``GET /openapi.json``: the HTTP contract of every route, for client generators and people.

Written by hand, next to the handlers, and kept true by ``tests/test_openapi.py``: every route
is documented, every documented route exists, every documented form field is one its handler
reads, and real responses match the schemas here (no undocumented field, no documented field
that never appears).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from config import LANGUAGES
from http_edge import formats
from http_edge.keys import ACTORS

JSON = "application/json"
Schema = dict[str, Any]


def obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None, *, closed: bool = True) -> Schema:
    """An object schema: ``required`` properties always present, ``optional`` ones sometimes."""
    schema: Schema = {"type": "object", "properties": {**required, **(optional or {})}, "required": list(required)}
    if closed:
        schema["additionalProperties"] = False
    return schema


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def envelope(data: Schema) -> Schema:
    return obj({"success": {"const": True}, "data": data})


STR: Schema = {"type": "string"}
NUM: Schema = {"type": "number"}
INT: Schema = {"type": "integer"}
BOOL: Schema = {"type": "boolean"}
ANY_OBJECT: Schema = {"type": "object"}
PROGRESS = obj({"done": INT, "total": INT, "percent": NUM})
WORD = obj({"start": NUM, "end": NUM, "word": STR, "probability": NUM})
SEGMENT = obj({"start": NUM, "end": NUM, "text": STR}, {"language": STR, "words": array(WORD)})
CHUNK_DONE = obj({"index": INT, "start": NUM, "duration": NUM, "language": STR, "node": nullable(STR),
                  "startedAt": nullable(NUM), "finishedAt": nullable(NUM)})  # fmt: skip

SCHEMAS: dict[str, Schema] = {
    "Error": obj({"success": {"const": False}, "error": obj({"code": STR, "message": STR})}),
    "OpenAIError": obj({"error": obj({"message": STR, "type": STR, "param": nullable(STR), "code": STR})}),
    "Segment": SEGMENT,
    "Transcription": envelope(
        obj(
            {
                "mode": {"enum": ["sync"]},
                "transcription": STR,
                "language": STR,
                "languageProbability": NUM,
                "duration": NUM,
                "processingTime": NUM,
                "segments": array(ref("Segment")),
                "droppedSegments": INT,
                "filename": STR,
                "options": ANY_OBJECT,
            },
            {"cached": BOOL},
        )
    ),
    "JobAccepted": envelope(
        obj(
            {
                "mode": {"enum": ["async"]},
                "jobId": STR,
                "status": STR,
                "chunks": INT,
                "duration": NUM,
                "estimatedProcessingTime": NUM,
                "pollInterval": INT,
                "statusUrl": STR,
            },
            {"cached": BOOL},
        )
    ),
    "Job": envelope(
        obj(
            {
                "jobId": STR,
                "status": {"enum": ["queued", "processing", "completed", "failed"]},
                "progress": PROGRESS,
                "duration": NUM,
                "filename": nullable(STR),
                "pollInterval": INT,
            },
            {
                "error": obj({"code": STR, "message": STR}),
                "transcription": STR,
                "language": STR,
                "languages": array(STR),
                "segments": array(ref("Segment")),
                "droppedSegments": INT,
                "chunks": array(CHUNK_DONE),
                "processingTime": NUM,
                "mode": {"enum": ["async"]},
                "cached": BOOL,
            },
        )
    ),
    "LanguageDetection": envelope(
        obj(
            {
                "language": STR,
                "probability": NUM,
                "candidates": array(obj({"language": STR, "probability": NUM})),
                "duration": NUM,
                "detectedOn": NUM,
                "filename": STR,
            },
        )
    ),
    "JobEvent": obj(
        {"jobId": STR, "status": STR, "progress": PROGRESS},
        {
            "chunk": obj(
                {
                    "index": INT,
                    "start": NUM,
                    "duration": NUM,
                    "language": STR,
                    "text": STR,
                    "segments": array(ref("Segment")),
                    "droppedSegments": INT,
                }
            )
        },
        closed=False,  # the final event carries the whole job, as the Job schema's data
    ),
    "OpenAITranscription": obj({"text": STR}, {"usage": obj({"type": STR, "seconds": NUM})}),
    "OpenAIVerboseTranscription": obj(
        {
            "task": STR,
            "language": STR,
            "duration": NUM,
            "text": STR,
            "usage": obj({"type": STR, "seconds": NUM}),
            "segments": array(
                obj(
                    {
                        "id": INT,
                        "seek": INT,
                        "start": NUM,
                        "end": NUM,
                        "text": STR,
                        "tokens": array(INT),
                        "temperature": NUM,
                        "avg_logprob": NUM,
                        "compression_ratio": NUM,
                        "no_speech_prob": NUM,
                    }
                )
            ),
        },
        {"words": array(obj({"word": STR, "start": NUM, "end": NUM}))},
    ),
    "Models": obj(
        {
            "object": {"const": "list"},
            "data": array(obj({"id": STR, "object": {"const": "model"}, "created": INT, "owned_by": STR})),
        },
    ),
    # The app's envelope; a 503 (unhealthy) has the same shape.
    "Health": envelope(
        obj(
            {
                "status": {"enum": ["healthy", "unhealthy"]},
                "timestamp": {"type": "string", "format": "date-time"},
                "uptime": NUM,
                "services": obj(
                    {"whisper": ANY_OBJECT, "redis": ANY_OBJECT, "workers": ANY_OBJECT, "queue": ANY_OBJECT}
                ),
                "stats": nullable(ANY_OBJECT),
            }
        )
    ),
    "Live": obj({"status": STR}),
    "Ready": obj({"status": STR, "redis": STR, "slotsAlive": INT, "givenUp": array(STR)}),
    "ActorStatus": ANY_OBJECT,
    "Actors": envelope(obj({"node": obj({"id": STR, "role": STR}), "actors": array(ref("ActorStatus"))})),
    "Actor": envelope(ref("ActorStatus")),
}

# The multipart fields of each upload route (besides ``file``): checked against the handlers.
FIELDS: dict[str, dict[str, Schema]] = {
    "/api/transcribe": {
        "language": {"enum": list(LANGUAGES), "default": "auto"},
        "format": {"enum": list(formats.FORMATS), "default": "json"},
        "wordTimestamps": {"type": "boolean", "default": False},
        "prompt": {"type": "string", "maxLength": 4096, "description": "hotwords or a context prompt"},
        "callbackUrl": {"type": "string", "format": "uri", "description": "a host on SAYIT_CALLBACK_HOSTS"},
    },
    "/api/detect-language": {},
    "/v1/audio/transcriptions": {
        "model": {"type": "string", "description": "whisper-1 or the served model's name"},
        "language": {"enum": list(LANGUAGES)},
        "prompt": STR,
        "response_format": {"enum": ["json", "text", "srt", "verbose_json", "vtt"], "default": "json"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
        "timestamp_granularities[]": array({"enum": ["segment", "word"]}),
        "stream": {"type": "boolean", "description": "refused: only false"},
    },
    "/v1/audio/translations": {
        "model": STR,
        "prompt": STR,
        "response_format": {"enum": ["json", "text", "srt", "verbose_json", "vtt"], "default": "json"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
    },
}

ERRORS = {"4XX": "Error", "5XX": "Error"}
OPENAI_ERRORS = {"4XX": "OpenAIError", "5XX": "OpenAIError"}
SUBTITLES = {"text/plain": {"schema": STR}, "application/x-subrip": {"schema": STR}, "text/vtt": {"schema": STR}}


def _responses(ok: dict[str, Any], errors: dict[str, str]) -> dict[str, Any]:
    out = dict(ok)
    for status, schema in errors.items():
        out[status] = {"description": "an error", "content": {JSON: {"schema": ref(schema)}}}
    return out


def _json(description: str, schema: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": ref(schema)}, **(extra or {})}}


def _upload(path: str) -> dict[str, Any]:
    properties = {"file": {"type": "string", "format": "binary"}, **FIELDS[path]}
    schema = {"type": "object", "required": ["file"], "properties": properties}
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}


JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}
IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": 255},
    "description": "a retried upload with the same key answers the first response (24 h)",
}
LAST_EVENT_ID = {"name": "Last-Event-ID", "in": "header", "required": False, "schema": STR}


def _paths(admin: bool) -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/health": {"get": {"summary": "The node, its actors, Redis and the queue", "responses": {
            "200": _json("healthy", "Health"), "503": _json("unhealthy", "Health")}}},
        "/health/live": {"get": {"summary": "The process answers", "responses": {"200": _json("alive", "Live")}}},
        "/health/ready": {"get": {"summary": "Redis, a live slot, no actor given up", "responses": {
            "200": _json("ready", "Ready"), "503": _json("not ready", "Ready")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
            "200": {"description": "text exposition format", "content": {"text/plain": {"schema": STR}}}}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {
            "200": {"description": "OpenAPI 3.1", "content": {JSON: {"schema": ANY_OBJECT}}}}}},
        "/api/transcribe": {"post": {
            "summary": "Transcribe an upload: answered at once (≤30 s, ≤10 MB) or queued as a job",
            "parameters": [IDEMPOTENCY], "requestBody": _upload("/api/transcribe"),
            "responses": _responses({"200": {
                "description": "transcribed (json, or the format asked for); a cached long upload answers its job",
                "content": {JSON: {"schema": {"oneOf": [ref("Transcription"), ref("Job")]}}, **SUBTITLES}},
                                     "202": _json("queued as a job (or the same job, cached)", "JobAccepted")},
                                    ERRORS)}},
        "/api/transcribe/{job_id}": {"get": {
            "summary": "A job's status, with its result once completed", "parameters": [
                JOB_ID, {"name": "format", "in": "query", "schema": FIELDS["/api/transcribe"]["format"]}],
            "responses": _responses({"200": _json("the job", "Job", SUBTITLES),
                                     "202": _json("not done yet (a subtitle format was asked for)", "Job")},
                                    ERRORS)}},
        "/api/transcribe/{job_id}/events": {"get": {
            "summary": "A job's progress as Server-Sent Events: queued, progress (per chunk), completed or failed",
            "parameters": [JOB_ID, LAST_EVENT_ID], "responses": _responses({"200": {
                "description": "event stream; each data line is a JobEvent",
                "content": {"text/event-stream": {"schema": ref("JobEvent")}}}}, ERRORS)}},
        "/api/detect-language": {"post": {
            "summary": "The language of an upload's first 30 s", "requestBody": _upload("/api/detect-language"),
            "responses": _responses({"200": _json("detected", "LanguageDetection")}, ERRORS)}},
        "/v1/audio/transcriptions": {"post": {
            "summary": "OpenAI-compatible transcription (long audio waits for its job)",
            "parameters": [IDEMPOTENCY],
            "requestBody": _upload("/v1/audio/transcriptions"),
            "responses": _responses({"200": {"description": "by response_format", "content": {
                JSON: {"schema": {"oneOf": [ref("OpenAITranscription"), ref("OpenAIVerboseTranscription")]}},
                **SUBTITLES}}}, OPENAI_ERRORS)}},
        "/v1/audio/translations": {"post": {
            "summary": "OpenAI-compatible translation into English",
            "parameters": [IDEMPOTENCY],
            "requestBody": _upload("/v1/audio/translations"),
            "responses": _responses({"200": {"description": "by response_format", "content": {
                JSON: {"schema": {"oneOf": [ref("OpenAITranscription"), ref("OpenAIVerboseTranscription")]}},
                **SUBTITLES}}}, OPENAI_ERRORS)}},
        "/v1/models": {"get": {"summary": "The models served", "responses": _responses(
            {"200": _json("models", "Models")}, OPENAI_ERRORS)}},
    }  # fmt: skip
    if admin:
        paths["/admin/actors"] = {"get": {"summary": "The node's actors (admin token)", "responses": _responses(
            {"200": _json("actors", "Actors")}, ERRORS)}}  # fmt: skip
        paths["/admin/actors/{name}/restart"] = {"post": {
            "summary": "Restart one actor gracefully (admin token)",
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": STR}],
            "responses": _responses({"200": _json("restarted", "Actor")}, ERRORS)}}  # fmt: skip
    return paths


def document(admin: bool, version: str = "0.1.0") -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "SayIt speech-to-text API", "version": version},
        "paths": _paths(admin),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "when SAYIT_API_KEYS is set"}
            },
        },
    }


async def openapi_json(request: web.Request) -> web.Response:
    settings = request.app[ACTORS].settings
    return web.json_response(document(admin=bool(settings.admin_token)))
