"""What the native API answers: a short upload's result, a job's 202, a job's status, the formats.

Views build response bodies from what the pipeline (``http_edge.pipeline``) returns; the only
reads they make are for the figures a body shows (live queue slots, the measured speed).
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from http_edge import formats, pipeline
from http_edge.keys import REDIS, SETTINGS
from sayit_actors import errors
from sayit_actors.dispatcher import Choices, JobTicket, Mode
from sayit_actors.engines import DETECT_S, Segment
from sayit_actors.result import today
from sayit_actors.store import keys
from sayit_actors.store.nodes import live_nodes
from sayit_actors.wire import transcript_view

REAL_TIME_FACTOR = 0.1  # engine seconds per audio second before any is measured (base, int8, one CPU slot)
MIN_MEASURED_AUDIO_MS = 30_000


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


def sync_data(outcome: pipeline.Outcome, choices: Choices) -> dict[str, Any]:
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


def detected_data(detected: pipeline.Detected) -> dict[str, Any]:
    guess, duration_s = detected.guess, detected.info.duration_s
    return {
        "language": guess.language,
        "probability": guess.probability,
        "candidates": [{"language": lang, "probability": p} for lang, p in guess.candidates],
        "duration": round(duration_s, 3),
        "detectedOn": round(min(duration_s, DETECT_S), 3),
        "filename": detected.filename,
    }


async def accepted_body(
    request: web.Request, job: JobTicket, duration_s: float, status: str = "queued", done: int = 0
) -> dict[str, Any]:
    """The 202 answer for a job: where to follow it and how long its remaining chunks should take."""
    settings, client = request.app[SETTINGS], request.app[REDIS]
    queue_slots = sum(node.slots for node in await live_nodes(client))
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


def poll_interval_s(age_s: float) -> int:
    """As the seed's app expects: every 3 s for a job's first 30 s, then every 5 s."""
    return 3 if age_s < 30 else 5


async def job_data(request: web.Request, job_id: str) -> dict[str, Any] | None:
    """A job as ``GET /api/transcribe/{jobId}`` shows it, with its result once completed; None if unknown."""
    view = await pipeline.job(request, job_id)
    if view is None:
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
        data.update(transcript_view(view.result))
        data["processingTime"] = round((finished_ms - created_ms) / 1000, 3)
    return data
