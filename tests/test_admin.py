"""The admin endpoint and its CLI: list the actors, restart one gracefully, behind a bearer token."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from config import Settings
from tests.clips import normalized
from tests.conftest import wait_for_job
from tests.forms import upload
from tests.known_speech import JFK

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def admin_client(make_client, settings: Settings) -> TestClient:  # type: ignore[no-untyped-def]
    return await make_client(replace(settings, admin_token=TOKEN))


async def test_no_token_configured_means_no_admin_routes(client: TestClient) -> None:
    for response in (await client.get("/admin/actors", headers=AUTH),
                     await client.post("/admin/actors/whisper-0/restart", headers=AUTH)):  # fmt: skip
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "NOT_FOUND"


async def test_a_wrong_or_missing_token_is_401(admin_client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = await admin_client.post("/admin/actors/whisper-0/restart", headers=headers)
        assert response.status == 401 and (await response.json())["error"]["code"] == "UNAUTHORIZED"
    statuses = (await (await admin_client.get("/health")).json())["data"]["services"]["workers"]["actors"]
    assert all(a["restarts"] == 0 for a in statuses)  # nothing was restarted


async def test_list_and_unknown_actor(admin_client: TestClient) -> None:
    response = await admin_client.get("/admin/actors", headers=AUTH)
    data = (await response.json())["data"]
    assert response.status == 200 and data["node"] == {"id": "test-node", "role": "all"}
    by_name = {a["name"]: a for a in data["actors"]}
    assert by_name["whisper-0"]["kind"] == "WhisperActor" and by_name["whisper-0"]["alive"]
    assert by_name["whisper-0"]["doing"] == "idle" and by_name["whisper-0"]["startedAt"]
    assert {"upload", "duration-probe", "dispatcher", "result", "queue-consumer"} <= set(by_name)
    response = await admin_client.post("/admin/actors/nobody/restart", headers=AUTH)
    assert response.status == 404 and (await response.json())["error"]["code"] == "ACTOR_NOT_FOUND"


@pytest.mark.slow
async def test_restarting_a_busy_whisper_actor_loses_no_work(
    admin_client: TestClient, corpus: Path, caplog: pytest.LogCaptureFixture
) -> None:
    response = await admin_client.post("/api/transcribe", data=upload(corpus / "multilingual.mp3", language="auto"))
    job_id = (await response.json())["data"]["jobId"]
    busy = None
    for _ in range(300):  # wait until a slot is transcribing a chunk of the job
        actors = (await (await admin_client.get("/admin/actors", headers=AUTH)).json())["data"]["actors"]
        busy = next((a for a in actors if a["kind"] == "WhisperActor" and job_id in a["doing"]), None)
        if busy:
            break
        await asyncio.sleep(0.02)
    assert busy is not None and busy["since"]

    response = await admin_client.post(f"/admin/actors/{busy['name']}/restart", headers=AUTH)
    restarted = (await response.json())["data"]
    assert response.status == 200 and restarted["alive"] and restarted["restarts"] == 1
    assert any("admin restart of actor" in r.message and busy["name"] in r.message for r in caplog.records)

    data = await wait_for_job(admin_client, job_id)
    assert data["status"] == "completed" and [c["index"] for c in data["chunks"]] == [0, 1, 2]
    metrics = await (await admin_client.get("/metrics")).text()
    assert f'sayit_actor_restarts_total{{actor="{busy["name"]}"}} 1.0' in metrics
    response = await admin_client.post("/api/transcribe", data=upload(corpus / "jfk.flac", language="en"))
    assert response.status == 200
    assert normalized((await response.json())["data"]["transcription"]) == normalized(JFK)


async def test_the_admin_cli(admin_client: TestClient) -> None:
    url = f"http://127.0.0.1:{admin_client.server.port}"

    async def cli(*args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sayit_cli.cli", "admin", "--url", url, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await process.communicate()
        return process.returncode or 0, out.decode(), err.decode()

    code, out, _ = await cli("--token", TOKEN, "actors")
    assert code == 0 and "whisper-1" in out and "WhisperActor" in out
    code, out, _ = await cli("--token", TOKEN, "restart", "dispatcher")
    assert code == 0 and "restarts=1" in out
    code, _, err = await cli("--token", "wrong", "actors")
    assert code == 1 and "401" in err
