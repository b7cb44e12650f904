"""Decoding bounded by length, not bytes: the streaming reader, the streaming splitter, and the routes.

A few MB of FLAC can hold many hours of silence. These tests make such files (written in blocks,
so the test itself stays small in memory) and check that no route decodes more than it needs:
a header over the limit is refused before decoding, a decode stops at its bound, detection
hears only its window, and a long upload is cut and stored chunk by chunk.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from pathlib import Path

import aiohttp
import numpy as np
import psutil
import pytest
import redis
import soundfile
from aiohttp.test_utils import TestClient

from config import Settings
from sayit_actors import audio
from sayit_actors.audio import chunking
from sayit_actors.engines import DETECT_S
from sayit_actors.errors import AudioTooLong, QueueFull, UndecodableAudio
from sayit_actors.store import keys
from sayit_actors.store.jobs import JobStore
from tests.clips import normalized
from tests.forms import upload
from tests.known_speech import JFK
from tests.processes import serve

HOUR = 3600
MEMORY_BOUND_MB = 300  # growth of a node's RSS over idle while it accepts a long upload


def silent_flac(path: Path, seconds: float, rate: int = 8000, channels: int = 1) -> Path:
    """``seconds`` of digital silence as FLAC (12 h: about 1 MB), written ten minutes at a time."""
    block = np.zeros((rate * 600, channels), np.int16)
    with soundfile.SoundFile(str(path), "w", rate, channels, subtype="PCM_16", format="FLAC") as out:
        left = round(seconds * rate)
        while left:
            out.write(block[: min(left, len(block))])
            left -= min(left, len(block))
    return path


def claim(path: Path, seconds: float) -> Path:
    """Make a FLAC's header (STREAMINFO's sample count) claim ``seconds``; its frames stay as they are."""
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0, "STREAMINFO must be the first block"
    fields = int.from_bytes(data[18:26], "big")  # 20 bits rate, 3 channels, 5 bits per sample, 36 samples
    rate = fields >> 44
    data[18:26] = ((fields & ~((1 << 36) - 1)) | round(seconds * rate)).to_bytes(8, "big")
    path.write_bytes(data)
    return path


def cut_short(path: Path, share: float) -> Path:
    """The first ``share`` of a file's bytes: the header still claims the whole length."""
    out = path.with_name(f"{path.stem}-cut{path.suffix}")
    data = path.read_bytes()
    out.write_bytes(data[: int(len(data) * share)])
    return out


async def expect_error(response: aiohttp.ClientResponse, status: int, code: str) -> dict:
    body = await response.json()
    assert response.status == status and body["error"]["code"] == code, body
    return body


def job_keys(settings: Settings) -> list[bytes]:
    r = redis.Redis.from_url(settings.redis_url or "")
    try:
        return list(r.keys("sayit:job:*"))
    finally:
        r.close()


@pytest.fixture(scope="module")
def twelve_hours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = silent_flac(tmp_path_factory.mktemp("long") / "twelve_hours.flac", 12 * HOUR)
    assert path.stat().st_size < 5 * 1024 * 1024  # an upload well under every byte limit
    return path


@pytest.fixture(scope="module")
def speech(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """Three copies of multilingual.mp3 and jfk.flac back to back (3 min 33 s) as a 16 kHz WAV."""
    samples = np.concatenate([audio.decode(corpus / "multilingual.mp3"), audio.decode(corpus / "jfk.flac")] * 3)
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    soundfile.write(path, samples, audio.SAMPLE_RATE, subtype="FLOAT")
    return path, samples


# --- the streaming reader ---------------------------------------------------------------------
def test_reader_stops_decoding_at_its_bound(twelve_hours: Path) -> None:
    decoded = 0
    with pytest.raises(AudioTooLong, match="runs past 60 s"):
        for block in audio.stream(twelve_hours, 12 * HOUR, max_s=60):
            decoded += block.shape[0]
    # It raised within a block of the bound, not after twelve hours.
    assert 59 * audio.SAMPLE_RATE <= decoded <= 60 * audio.SAMPLE_RATE
    with pytest.raises(AudioTooLong):
        audio.decode(twelve_hours, max_s=10)


def test_reader_yields_one_second_mono_blocks_that_are_the_mean_of_the_channels(corpus: Path) -> None:
    blocks = list(audio.stream(corpus / "stereo_diarization.wav"))
    assert all(b.dtype == np.float32 and b.ndim == 1 for b in blocks)
    assert {b.shape[0] for b in blocks[:-1]} == {audio.BLOCK_SAMPLES}
    stereo, rate = soundfile.read(corpus / "stereo_diarization.wav", dtype="float32")
    assert rate == audio.SAMPLE_RATE and stereo.shape[1] == 2  # so no resampling blurs the comparison
    mixed = np.concatenate(blocks)
    assert mixed.shape[0] == stereo.shape[0]
    # The mean, not FFmpeg's default for float output (the sum / √2, louder than either channel).
    np.testing.assert_allclose(mixed, stereo.mean(axis=1), atol=1e-6)


def test_truncation_is_still_found_at_the_end(clips: dict[str, Path]) -> None:
    info = audio.probe(clips["truncated"])
    decoded = 0
    with pytest.raises(UndecodableAudio, match="truncated"):
        for block in audio.stream(clips["truncated"], info.duration_s):
            decoded += block.shape[0]
    assert 0 < decoded < 0.5 * info.duration_s * audio.SAMPLE_RATE  # the blocks came, then the verdict
    with pytest.raises(UndecodableAudio, match="truncated"):
        audio.window(clips["truncated"], DETECT_S, info.duration_s)  # it ends inside the window


def test_window_decodes_only_its_window(twelve_hours: Path) -> None:
    cut = cut_short(twelve_hours, 0.25)  # claims 12 h, holds 3 h
    samples = audio.window(cut, DETECT_S, 12 * HOUR)
    assert samples.dtype == np.float32 and samples.shape == (round(DETECT_S * audio.SAMPLE_RATE),)
    # Reading on to the end finds what the window never reached: the file is cut short.
    with pytest.raises(UndecodableAudio, match="truncated"):
        for _ in audio.stream(cut, 12 * HOUR):
            pass


# --- the streaming splitter -------------------------------------------------------------------
def test_streaming_split_cuts_where_the_whole_array_split_does(speech: tuple[Path, np.ndarray]) -> None:
    path, samples = speech
    whole = chunking.split(samples)
    assert len(whole) >= 7
    streamed = list(chunking.stream_split(audio.stream(path)))
    assert [c.start_s for c in streamed] == [c.start_s for c in whole]
    assert [c.index for c in streamed] == list(range(len(whole)))
    for a, b in zip(streamed, whole, strict=True):
        np.testing.assert_array_equal(a.samples, b.samples)
        assert a.duration_s <= 30.0 and a.span == b.span
    # Blocks of any size, smaller or larger than a chunk, give the same cuts.
    for size in (777, 45 * audio.SAMPLE_RATE):
        blocks = (samples[i : i + size] for i in range(0, samples.shape[0], size))
        assert [c.start_s for c in chunking.stream_split(blocks)] == [c.start_s for c in whole]


def test_streaming_split_covers_every_sample_exactly_once(speech: tuple[Path, np.ndarray]) -> None:
    path, samples = speech
    chunks = list(chunking.stream_split(audio.stream(path), max_s=12.0, search_s=3.0))
    offsets = [round(c.start_s * audio.SAMPLE_RATE) for c in chunks]
    ends = [o + c.samples.shape[0] for o, c in zip(offsets, chunks, strict=True)]
    assert offsets[0] == 0 and offsets[1:] == ends[:-1] and ends[-1] == samples.shape[0]
    np.testing.assert_array_equal(np.concatenate([c.samples for c in chunks]), samples)
    assert all(c.duration_s <= 12.0 for c in chunks)


# --- chunk audio in Redis ---------------------------------------------------------------------
def test_chunk_audio_written_ahead_of_its_job(corpus: Path, settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url or "")
    jobs = JobStore(client, replace(settings.queue, max_queued_audio_s=60))
    try:
        chunks = chunking.split(audio.decode(corpus / "jfk.flac"), max_s=6.0)
        for chunk in chunks:
            jobs.put_chunk_audio("a" * 32, chunk)
            jobs.put_chunk_audio("b" * 32, chunk)
        assert 0 < client.ttl(keys.chunk_audio("a" * 32, 0)) <= 3600  # pending: it expires unless adopted
        # A job that was never created: its audio goes.
        assert jobs.drop_chunk_audio("a" * 32, len(chunks)) == len(chunks)
        assert client.keys(f"sayit:job:{'a' * 32}*") == []
        # A created job adopts its audio; creating it again (a retry) changes nothing; dropping spares it.
        spans = [c.span for c in chunks]
        jobs.create("b" * 32, "en", 11.0, spans, "jfk.flac")
        jobs.create("b" * 32, "en", 11.0, spans, "jfk.flac")
        assert client.ttl(keys.chunk_audio("b" * 32, 0)) == -1
        assert client.xlen(keys.CHUNKS) == len(chunks) and int(client.get(keys.QUEUED_AUDIO_MS) or 0) == 11_000
        assert jobs.drop_chunk_audio("b" * 32, len(chunks)) == 0
        assert len(client.keys(f"sayit:job:{'b' * 32}:audio:*")) == len(chunks)
        # The budget (60 s) has 49 s of room left.
        jobs.check_room(49.0)
        with pytest.raises(QueueFull):
            jobs.check_room(49.5)
    finally:
        client.close()


# --- the routes -------------------------------------------------------------------------------
@pytest.mark.slow
async def test_twelve_hours_of_silence_is_refused_by_its_header(
    client: TestClient, twelve_hours: Path, settings: Settings
) -> None:
    body = await expect_error(await client.post("/api/transcribe", data=upload(twelve_hours)), 413, "AUDIO_TOO_LONG")
    assert "43200 s" in body["error"]["message"]
    # Nothing was decoded: the same header over three hours of audio (a decode would find it
    # truncated, 422) gets the same answer.
    cut = cut_short(twelve_hours, 0.25)
    await expect_error(await client.post("/api/transcribe", data=upload(cut)), 413, "AUDIO_TOO_LONG")
    response = await client.post("/api/transcribe", data=upload(twelve_hours), headers={"Accept-Language": "ko"})
    assert (await response.json())["error"]["message"] == AudioTooLong.message_ko
    assert job_keys(settings) == []


@pytest.mark.slow
async def test_detect_language_hears_only_its_window(client: TestClient, twelve_hours: Path) -> None:
    # Claims 12 h, holds 3 h: decoded to the end it would be refused as truncated (422).
    response = await client.post("/api/detect-language", data=upload(cut_short(twelve_hours, 0.25)))
    body = await response.json()
    assert response.status == 200, body
    assert body["data"]["language"] and body["data"]["detectedOn"] == DETECT_S
    assert body["data"]["duration"] == 12 * HOUR


@pytest.mark.slow
async def test_a_short_header_over_twenty_minutes_is_refused_and_the_node_serves_on(
    client: TestClient, corpus: Path, tmp_path: Path
) -> None:
    liar = claim(silent_flac(tmp_path / "ten_seconds.flac", 20 * 60), 10.0)
    assert audio.probe(liar).duration_s == 10.0  # a short upload: a slot decodes it
    body = await expect_error(await client.post("/api/transcribe", data=upload(liar)), 413, "AUDIO_TOO_LONG")
    assert "header says 10 s" in body["error"]["message"]
    response = await client.post("/api/transcribe", data=upload(corpus / "jfk.flac", language="en"))
    assert response.status == 200
    assert normalized((await response.json())["data"]["transcription"]) == normalized(JFK)


@pytest.mark.slow
async def test_a_long_upload_that_passes_the_limit_while_decoding_leaves_nothing(
    make_client, settings: Settings, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(replace(settings, limits=replace(settings.limits, max_duration_s=120)))
    liar = claim(silent_flac(tmp_path / "one_minute.flac", 20 * 60), 60.0)  # 60 s: queued, under the limit
    body = await expect_error(await client.post("/api/transcribe", data=upload(liar)), 413, "AUDIO_TOO_LONG")
    assert "runs past 120 s" in body["error"]["message"]
    # Chunks of the first two minutes were stored as they were cut, then deleted with the job.
    assert job_keys(settings) == []
    r = redis.Redis.from_url(settings.redis_url or "")
    assert r.xlen(keys.CHUNKS) == 0 and int(r.get(keys.QUEUED_AUDIO_MS) or 0) == 0
    r.close()


@pytest.mark.slow
async def test_the_queue_budget_is_checked_before_decoding(make_client, settings: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(replace(settings, queue=replace(settings.queue, max_queued_audio_s=600)))
    cut = cut_short(silent_flac(tmp_path / "twenty_minutes.flac", 20 * 60), 0.3)
    # Decoded, it would be refused as truncated (422): the budget answered first.
    response = await client.post("/api/transcribe", data=upload(cut))
    await expect_error(response, 503, "QUEUE_FULL")
    assert int(response.headers["Retry-After"]) > 0
    assert job_keys(settings) == []


@pytest.mark.slow
async def test_accepting_a_long_upload_keeps_the_node_small(redis_url: str, tmp_path: Path) -> None:
    """Three hours decode to 690 MB of float32: a node that held them would pass the bound twice over."""
    recording = silent_flac(tmp_path / "three_hours.flac", 3 * HOUR)
    with serve(tmp_path / "node", WORKER_MODE="api_only", REDIS_URL=redis_url) as (process, url):
        node = psutil.Process(process.pid)
        await asyncio.sleep(1.0)  # settle after start
        idle = node.memory_info().rss
        peak, stop = [idle], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], node.memory_info().rss)
                stop.wait(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            async with aiohttp.ClientSession() as session:
                response = await session.post(f"{url}/api/transcribe", data=upload(recording))
                body = await response.json()
        finally:
            stop.set()
            sampler.join()
    assert response.status == 202, body
    assert body["data"]["chunks"] >= 3 * HOUR / 30 and body["data"]["duration"] == 3 * HOUR
    growth_mb = (peak[0] - idle) / 2**20
    print(f"node RSS: idle {idle / 2**20:.0f} MB, peak {peak[0] / 2**20:.0f} MB, growth {growth_mb:.0f} MB")
    assert growth_mb < MEMORY_BOUND_MB
