"""Every error code of the upload route, produced by a request that causes it; nothing left behind."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from config import Limits, Settings
from tests.clips import normalized
from tests.forms import upload
from tests.known_speech import JFK


def form(
    payload: bytes, filename: str = "clip.wav", content_type: str = "audio/wav", **fields: str
) -> aiohttp.FormData:
    return upload(payload, filename, content_type, **fields)


async def expect_error(response: aiohttp.ClientResponse, status: int, code: str) -> dict:
    body = await response.json()
    assert response.status == status, body
    assert body["success"] is False and body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body


async def test_no_file_part(client: TestClient) -> None:
    data = aiohttp.FormData()
    data.add_field("language", "en")
    await expect_error(await client.post("/api/transcribe", data=data), 400, "FILE_REQUIRED")


async def test_not_multipart(client: TestClient) -> None:
    response = await client.post("/api/transcribe", json={"file": "x"})
    await expect_error(response, 400, "FILE_REQUIRED")


async def test_empty_file(client: TestClient) -> None:
    await expect_error(await client.post("/api/transcribe", data=form(b"")), 400, "EMPTY_FILE")


async def test_text_claiming_to_be_audio_is_invalid_format(client: TestClient, clips: dict[str, Path]) -> None:
    payload = clips["text"].read_bytes()
    response = await client.post("/api/transcribe", data=form(payload, "notes.wav", "audio/wav"))
    await expect_error(response, 400, "INVALID_FORMAT")


async def test_real_audio_with_a_wrong_content_type_is_accepted(client: TestClient, corpus: Path) -> None:
    payload = (corpus / "jfk.flac").read_bytes()
    response = await client.post("/api/transcribe", data=form(payload, "jfk.txt", "text/plain", language="en"))
    assert response.status == 200
    assert normalized((await response.json())["data"]["transcription"]) == normalized(JFK)


@pytest.mark.parametrize("clip", ["truncated", "corrupt"])
async def test_damaged_audio_is_undecodable(client: TestClient, clips: dict[str, Path], clip: str) -> None:
    response = await client.post("/api/transcribe", data=form(clips[clip].read_bytes(), clips[clip].name))
    await expect_error(response, 422, "UNDECODABLE_AUDIO")


async def test_unknown_language(client: TestClient, corpus: Path) -> None:
    payload = (corpus / "jfk.flac").read_bytes()
    response = await client.post("/api/transcribe", data=form(payload, "jfk.flac", language="klingon"))
    await expect_error(response, 400, "INVALID_LANGUAGE")


async def test_too_large_is_stopped_while_streaming(make_client, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    limit = 1024 * 1024
    client = await make_client(replace(settings, limits=Limits(max_upload_bytes=limit, sync_max_bytes=limit)))
    streamed = {"bytes": 0}

    async def body():  # type: ignore[no-untyped-def]
        # Chunked, so no Content-Length gives the size away: the server must count as it reads.
        boundary = b"--sayitboundary"
        yield boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'
        for _ in range(64):
            streamed["bytes"] += 64 * 1024
            yield b"RIFF" + b"\0" * (64 * 1024 - 4)
        yield b"\r\n" + boundary + b"--\r\n"

    response = await client.post(
        "/api/transcribe",
        data=body(),
        headers={"Content-Type": "multipart/form-data; boundary=sayitboundary"},
    )
    await expect_error(response, 413, "FILE_TOO_LARGE")


async def test_too_large_by_content_length_is_refused_before_reading(make_client, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(replace(settings, limits=Limits(max_upload_bytes=1024 * 1024, sync_max_bytes=1024)))
    response = await client.post("/api/transcribe", data=form(b"\0" * (3 * 1024 * 1024)))
    await expect_error(response, 413, "FILE_TOO_LARGE")


async def test_filename_with_path_parts_is_never_a_path(client: TestClient, corpus: Path, settings: Settings) -> None:
    payload = (corpus / "jfk.flac").read_bytes()
    for evil in ("../../../../tmp/sayit-evil.flac", "C:\\Windows\\..\\sayit-evil.flac"):
        response = await client.post("/api/transcribe", data=form(payload, evil, "audio/flac", language="en"))
        assert response.status == 200
        assert (await response.json())["data"]["filename"] == "sayit-evil.flac"
    assert "sayit-evil.flac" not in os.listdir("/tmp")
    assert not list(settings.data_dir.rglob("sayit-evil*"))


async def test_errors_in_korean_when_preferred(client: TestClient) -> None:
    response = await client.post(
        "/api/transcribe", data=form(b""), headers={"Accept-Language": "ko-KR,ko;q=0.9,en;q=0.8"}
    )
    body = await expect_error(response, 400, "EMPTY_FILE")
    assert body["error"]["message"] == "업로드한 파일이 비어 있습니다."
    response = await client.post("/api/transcribe", data=form(b""), headers={"Accept-Language": "en-US,ko;q=0.5"})
    assert (await response.json())["error"]["message"] == "The uploaded file is empty."


async def test_unknown_route_and_method_use_the_envelope(client: TestClient) -> None:
    await expect_error(await client.get("/api/nothing"), 404, "NOT_FOUND")
    await expect_error(await client.get("/api/transcribe"), 405, "METHOD_NOT_ALLOWED")


async def test_server_keeps_serving_after_bad_input(client: TestClient, corpus: Path, clips: dict[str, Path]) -> None:
    for clip in ("truncated", "corrupt", "text"):
        await client.post("/api/transcribe", data=form(clips[clip].read_bytes(), clips[clip].name))
    payload = (corpus / "jfk.flac").read_bytes()
    response = await client.post("/api/transcribe", data=form(payload, "jfk.flac", "audio/flac", language="en"))
    assert response.status == 200


async def test_upload_files_are_deleted_while_serving(
    client: TestClient, corpus: Path, clips: dict[str, Path], settings: Settings
) -> None:
    cases = [
        (corpus / "jfk.flac", 200),
        (corpus / "multilingual.mp3", 202),
        (clips["truncated"], 422),
        (clips["text"], 400),
    ]
    for path, status in cases:
        response = await client.post("/api/transcribe", data=form(path.read_bytes(), path.name, language="en"))
        assert response.status == status
    left: list[Path] = []
    for _ in range(100):  # releases are told to the UploadActor after the reply
        left = [p for p in settings.upload_dir.rglob("*") if p.is_file()]
        if not left:
            break
        await asyncio.sleep(0.02)
    assert left == []
