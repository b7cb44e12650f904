"""What clients see: the OpenAI SDK unchanged, subtitles, live job events, repeats, silence, callbacks."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import openai
import pysrt
import pytest
import redis
import soundfile
import webvtt
from aiohttp import web
from aiohttp.test_utils import TestClient

from config import ApiSettings, Settings
from sayit_actors import audio
from sayit_actors.callbacks import SIGNATURE_HEADER
from sayit_actors.store import keys
from tests.clips import normalized
from tests.conftest import DATA, wait_for_job
from tests.forms import upload
from tests.known_speech import JFK

pytestmark = pytest.mark.slow
ENGLISH = "permission is hereby granted free of charge"
GERMAN = "der diese software und die dazu"
SECRET = "callback-test-secret"


@pytest.fixture
def cache_settings(settings: Settings) -> Settings:
    return replace(settings, api=ApiSettings(result_cache=True))


@pytest.fixture
async def sdk(client: TestClient) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official OpenAI client pointed at a running SayIt."""
    async with openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0) as sdk:
        yield sdk


def job_count(settings: Settings) -> int:
    r = redis.Redis.from_url(settings.redis_url or "")
    return sum(1 for key in r.scan_iter(keys.job("*")) if key.count(b":") == 2)


# --- the OpenAI SDK -------------------------------------------------------------------------------


async def test_openai_sdk_transcribes_jfk(sdk: openai.AsyncOpenAI, corpus: Path) -> None:
    with (corpus / "jfk.flac").open("rb") as f:
        result = await sdk.audio.transcriptions.create(model="whisper-1", file=f)
    assert normalized(result.text) == normalized(JFK)


async def test_openai_sdk_waits_for_a_queued_job(sdk: openai.AsyncOpenAI, corpus: Path) -> None:
    with (corpus / "multilingual.mp3").open("rb") as f:
        result = await sdk.audio.transcriptions.create(model="whisper-1", file=f, response_format="json")
    text = normalized(result.text)
    assert ENGLISH in text and GERMAN in text


async def test_openai_verbose_json_has_timed_words(sdk: openai.AsyncOpenAI, corpus: Path) -> None:
    with (corpus / "jfk.flac").open("rb") as f:
        result = await sdk.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="verbose_json", timestamp_granularities=["word", "segment"]
        )
    assert result.language == "english" and result.duration == pytest.approx(11.0, abs=0.1)
    words = result.words or []
    assert [normalized(w.word) for w in words][:4] == ["and", "so", "my", "fellow"]
    assert all(0 <= w.start <= w.end <= result.duration + 0.5 for w in words)
    assert all(a.start <= b.start for a, b in itertools.pairwise(words))
    assert result.segments and result.segments[0].start >= 0


async def test_an_sdk_retry_with_an_idempotency_key_makes_one_job(
    sdk: openai.AsyncOpenAI, corpus: Path, settings: Settings
) -> None:
    texts = []
    for _ in range(2):
        with (corpus / "multilingual.mp3").open("rb") as f:
            result = await sdk.audio.transcriptions.create(
                model="whisper-1", file=f, extra_headers={"Idempotency-Key": "sdk-call-42"}
            )
        texts.append(result.text)
    assert texts[0] == texts[1] and GERMAN in normalized(texts[0])
    assert job_count(settings) == 1


async def test_openai_errors_are_the_sdks_typed_exceptions(sdk: openai.AsyncOpenAI, corpus: Path) -> None:
    with (corpus / "jfk.flac").open("rb") as f, pytest.raises(openai.BadRequestError) as bad_model:
        await sdk.audio.transcriptions.create(model="gpt-imaginary", file=f)
    assert bad_model.value.status_code == 400 and bad_model.value.param == "model"
    assert bad_model.value.code == "invalid_request"
    with (corpus / "jfk.flac").open("rb") as f, pytest.raises(openai.BadRequestError) as words_in_text:
        await sdk.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="text", timestamp_granularities=["word"]
        )
    assert words_in_text.value.param == "timestamp_granularities"
    with pytest.raises(openai.BadRequestError) as not_audio:
        await sdk.audio.transcriptions.create(model="whisper-1", file=("notes.wav", b"meeting notes, not audio" * 40))
    assert not_audio.value.code == "invalid_format"


async def test_openai_sdk_with_api_keys(make_client, settings: Settings, corpus: Path) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(replace(settings, api_keys=("sk-sayit-test",)))
    base_url = str(client.make_url("/v1"))
    async with openai.AsyncOpenAI(base_url=base_url, api_key="wrong", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError) as refused:
            await wrong.models.list()
    assert refused.value.status_code == 401 and refused.value.code == "unauthorized"
    async with openai.AsyncOpenAI(base_url=base_url, api_key="sk-sayit-test", max_retries=0) as right:
        with (corpus / "jfk.flac").open("rb") as f:
            text = await right.audio.transcriptions.create(model="base", file=f, response_format="text")
    assert normalized(str(text)) == normalized(JFK)


async def test_openai_models_and_translation(sdk: openai.AsyncOpenAI) -> None:
    models = [m.id async for m in sdk.models.list()]
    assert models[0] == "whisper-1" and "base" in models
    with (DATA / "ko_greeting.ogg").open("rb") as f:
        translated = await sdk.audio.translations.create(model="whisper-1", file=f, response_format="text")
    text = str(translated).strip()
    assert text and text.isascii(), text  # Korean speech, English text


# --- subtitles ------------------------------------------------------------------------------------


def check_cues(starts_ends: list[tuple[float, float]], duration_s: float) -> None:
    assert starts_ends, "no cues"
    assert all(0 <= start < end <= duration_s + 0.5 for start, end in starts_ends)
    assert all(a[1] <= b[0] + 1e-6 for a, b in itertools.pairwise(starts_ends)), starts_ends


async def test_srt_and_vtt_parse_with_subtitle_libraries(client: TestClient, corpus: Path) -> None:
    response = await client.post("/api/transcribe", data=upload(corpus / "jfk.flac", language="en", format="srt"))
    assert response.status == 200 and response.content_type == "application/x-subrip"
    subs = pysrt.from_string(await response.text())
    check_cues([(s.start.ordinal / 1000, s.end.ordinal / 1000) for s in subs], 11.0)
    assert normalized(" ".join(s.text for s in subs)) == normalized(JFK)

    job = (await (await client.post("/api/transcribe", data=upload(corpus / "multilingual.mp3"))).json())["data"]
    early = await client.get(f"/api/transcribe/{job['jobId']}?format=vtt")
    assert early.status in (200, 202)
    await wait_for_job(client, job["jobId"])
    response = await client.get(f"/api/transcribe/{job['jobId']}?format=vtt")
    assert response.status == 200 and response.content_type == "text/vtt"
    captions = webvtt.from_buffer(io.StringIO(await response.text()))
    check_cues([(c.start_in_seconds, c.end_in_seconds) for c in captions], 59.9)
    text = normalized(" ".join(c.text for c in captions))
    assert ENGLISH in text and GERMAN in text
    assert max(c.start_in_seconds for c in captions) > 30  # the German half keeps its place on the clock


# --- live job events ------------------------------------------------------------------------------


async def read_sse(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """Each event of a text/event-stream response as {id, event, data}."""
    event: dict[str, Any] = {}
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if "data" in event:
                event["data"] = json.loads(event["data"])
                yield event
            event = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            event[name] = value.removeprefix(" ")


async def test_sse_follows_a_three_minute_job_and_resumes(
    client: TestClient, recordings: dict[str, Path], settings: Settings
) -> None:
    response = await client.post("/api/transcribe", data=upload(recordings["long"], language="en"))
    job = (await response.json())["data"]
    assert response.status == 202 and job["chunks"] >= 6

    events: list[dict[str, Any]] = []
    async with client.get(f"/api/transcribe/{job['jobId']}/events") as stream:
        assert stream.status == 200 and stream.content_type == "text/event-stream"
        async for event in read_sse(stream):
            events.append(event)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "queued" and kinds[-1] == "completed"
    progress = [e for e in events if e["event"] == "progress"]
    assert len(progress) == job["chunks"] >= 2
    assert [e["data"]["progress"]["done"] for e in progress] == list(range(1, job["chunks"] + 1))
    assert all(e["data"]["chunk"]["segments"] for e in progress)
    final = events[-1]["data"]
    assert final["status"] == "completed" and ENGLISH in normalized(final["transcription"])

    # Reconnecting after the second progress event gets exactly what came after it.
    resume_from = progress[1]["id"]
    async with client.get(f"/api/transcribe/{job['jobId']}/events", headers={"Last-Event-ID": resume_from}) as again:
        rest = [event async for event in read_sse(again)]
    assert [e["id"] for e in rest] == [e["id"] for e in events[events.index(progress[1]) + 1 :]]

    # A job whose events are gone (kept from before events existed) still gets its final event.
    redis.Redis.from_url(settings.redis_url or "").delete(keys.job_events(job["jobId"]))
    async with client.get(f"/api/transcribe/{job['jobId']}/events") as bare:
        only = [event async for event in read_sse(bare)]
    assert [e["event"] for e in only] == ["completed"] and only[0]["data"]["transcription"] == final["transcription"]

    missing = await client.get(f"/api/transcribe/{'0' * 32}/events")
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "JOB_NOT_FOUND"


# --- repeats --------------------------------------------------------------------------------------


async def test_one_idempotency_key_makes_one_job(client: TestClient, corpus: Path, settings: Settings) -> None:
    headers = {"Idempotency-Key": "upload-7f3a"}
    first = await client.post("/api/transcribe", data=upload(corpus / "multilingual.mp3"), headers=headers)
    second = await client.post("/api/transcribe", data=upload(corpus / "multilingual.mp3"), headers=headers)
    assert first.status == second.status == 202
    assert (await first.json()) == (await second.json())
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert job_count(settings) == 1  # the result cache is off here: the key alone kept the second job out

    other = await client.post("/api/transcribe", data=upload(corpus / "jfk.flac"), headers=headers)
    assert other.status == 409 and (await other.json())["error"]["code"] == "IDEMPOTENCY_CONFLICT"
    assert job_count(settings) == 1
    await wait_for_job(client, (await first.json())["data"]["jobId"])


async def test_a_failed_request_frees_its_idempotency_key(client: TestClient, clips: dict[str, Path]) -> None:
    headers = {"Idempotency-Key": "retry-me"}
    bad = await client.post("/api/transcribe", data=upload(clips["text"]), headers=headers)
    assert bad.status == 400
    again = await client.post("/api/transcribe", data=upload(clips["text"]), headers=headers)
    assert again.status == 400 and "Idempotent-Replayed" not in again.headers


async def test_same_audio_and_options_answer_the_stored_result(
    make_client, cache_settings: Settings, corpus: Path
) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(cache_settings)
    first = await (await client.post("/api/transcribe", data=upload(corpus / "jfk.flac", language="en"))).json()
    renamed = aiohttp.FormData()
    renamed.add_field("file", (corpus / "jfk.flac").read_bytes(), filename="same-bytes.flac")
    renamed.add_field("language", "en")
    second = await (await client.post("/api/transcribe", data=renamed)).json()
    assert "cached" not in first["data"] and second["data"]["cached"] is True
    assert second["data"]["transcription"] == first["data"]["transcription"]
    assert second["data"]["processingTime"] == 0.0 and second["data"]["filename"] == "same-bytes.flac"
    other_options = await client.post(
        "/api/transcribe", data=upload(corpus / "jfk.flac", language="en", wordTimestamps="true")
    )
    assert "cached" not in (await other_options.json())["data"]

    job = (await (await client.post("/api/transcribe", data=upload(corpus / "multilingual.mp3"))).json())["data"]
    await wait_for_job(client, job["jobId"])
    repeat = await client.post("/api/transcribe", data=upload(corpus / "multilingual.mp3"))
    data = (await repeat.json())["data"]
    assert repeat.status == 200 and data["cached"] is True and data["jobId"] == job["jobId"]
    assert data["status"] == "completed" and GERMAN in normalized(data["transcription"])
    assert job_count(cache_settings) == 1


# --- silence --------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0.0, 0.003])
async def test_thirty_seconds_of_silence_or_low_noise_give_no_text(
    client: TestClient, tmp_path: Path, level: float
) -> None:
    rng = np.random.default_rng(7)
    samples = (rng.standard_normal(30 * audio.SAMPLE_RATE) * level).astype(np.float32)
    path = tmp_path / "quiet.wav"
    soundfile.write(path, samples, audio.SAMPLE_RATE, subtype="PCM_16")
    for language in ("ko", "en"):
        response = await client.post("/api/transcribe", data=upload(path, language=language))
        data = (await response.json())["data"]
        assert response.status == 200 and data["mode"] == "sync"
        assert data["transcription"] == "" and data["segments"] == [], data
        assert isinstance(data["droppedSegments"], int)  # the response says how many it dropped


async def test_a_long_quiet_recording_gives_no_text(client: TestClient, tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    path = tmp_path / "quiet.wav"
    soundfile.write(path, (rng.standard_normal(75 * audio.SAMPLE_RATE) * 0.003).astype(np.float32), audio.SAMPLE_RATE)
    job = (await (await client.post("/api/transcribe", data=upload(path, language="ko"))).json())["data"]
    data = await wait_for_job(client, job["jobId"])
    assert data["status"] == "completed" and data["transcription"] == "" and data["segments"] == []


# --- language detection ---------------------------------------------------------------------------


async def test_detect_language(client: TestClient, corpus: Path, tmp_path: Path) -> None:
    english = await client.post("/api/detect-language", data=upload(corpus / "jfk.flac"))
    data = (await english.json())["data"]
    assert english.status == 200 and data["language"] == "en" and data["probability"] > 0.5
    assert data["candidates"][0] == {"language": "en", "probability": data["probability"]}
    whole = await client.post("/api/detect-language", data=upload(corpus / "multilingual.mp3"))
    data = (await whole.json())["data"]
    assert data["language"] == "en" and data["detectedOn"] == 30.0  # the first 30 s are English
    german_half = tmp_path / "german.wav"
    soundfile.write(german_half, audio.decode(corpus / "multilingual.mp3")[31 * audio.SAMPLE_RATE :], audio.SAMPLE_RATE)
    german = await client.post("/api/detect-language", data=upload(german_half))
    assert (await german.json())["data"]["language"] == "de"


# --- callbacks ------------------------------------------------------------------------------------


async def test_callback_is_signed_and_only_to_allowed_hosts(
    make_client, settings: Settings, corpus: Path, aiohttp_server
) -> None:  # type: ignore[no-untyped-def]
    received: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await received.put((await request.read(), request.headers.copy()))
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    server = await aiohttp_server(receiver)
    api = ApiSettings(
        result_cache=False,
        callback_hosts=("127.0.0.1",),
        callback_secret=SECRET,
        callback_ports=(server.port,),
        callback_allow_private=True,  # the receiver is on loopback
    )
    client = await make_client(replace(settings, api=api))

    metadata_service = "http://169.254.169.254/latest/meta-data"
    refused = await client.post(
        "/api/transcribe", data=upload(corpus / "multilingual.mp3", callbackUrl=metadata_service)
    )
    assert refused.status == 400 and (await refused.json())["error"]["code"] == "CALLBACK_NOT_ALLOWED"
    assert job_count(settings) == 0

    url = f"http://127.0.0.1:{server.port}/hook"
    job = (
        await (await client.post("/api/transcribe", data=upload(corpus / "multilingual.mp3", callbackUrl=url))).json()
    )["data"]
    body, headers = await asyncio.wait_for(received.get(), 90)
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers[SIGNATURE_HEADER], expected)
    payload = json.loads(body)
    assert payload["event"] == "job.completed" and payload["jobId"] == job["jobId"]
    assert GERMAN in normalized(payload["result"]["transcription"])
