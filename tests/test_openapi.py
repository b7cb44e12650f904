"""``/openapi.json`` is kept true: routes, form fields and real responses against the document.

Every route of the app is in the document and every documented route is a route; every documented
form field is one its handler reads; each real response below validates against its documented
schema (closed objects: no undocumented field), and every documented property shows up in at
least one of them (no documented field that never appears).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis
from aiohttp.test_utils import TestClient

from config import ApiSettings, Settings
from http_edge import openai_api, transcribe
from sayit_actors.store.jobs import JobStore
from sayit_actors.store.records import Delivery, Task
from tests.conftest import wait_for_job
from tests.test_clients import read_sse, upload

pytestmark = pytest.mark.slow
TOKEN = "openapi-admin-token"
HANDLER_FIELDS = {
    "/api/transcribe": transcribe.NATIVE_FIELDS,
    "/api/detect-language": frozenset(),
    "/v1/audio/transcriptions": openai_api.TRANSCRIPTION_FIELDS,
    "/v1/audio/translations": openai_api.TRANSLATION_FIELDS,
}


@pytest.fixture
async def api(make_client, settings: Settings) -> TestClient:  # type: ignore[no-untyped-def]
    return await make_client(replace(settings, admin_token=TOKEN, api=ApiSettings(result_cache=True)))


class Checker:
    """Validates responses against the document and remembers which documented properties it saw."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.doc = document
        self.seen: set[str] = set()
        self.checked = 0

    def resolve(self, schema: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[1]
            return self.doc["components"]["schemas"][name], name
        return schema, None

    def validate(self, schema: dict[str, Any], instance: Any) -> None:
        jsonschema.validate(instance, {**schema, "components": self.doc["components"]},
                            cls=jsonschema.Draft202012Validator)  # fmt: skip

    def walk(self, schema: dict[str, Any], instance: Any, where: str) -> None:
        """Mark the documented properties ``instance`` has, following refs, unions and arrays."""
        schema, name = self.resolve(schema)
        where = name or where
        for key in ("anyOf", "oneOf"):
            for option in schema.get(key, []):
                try:
                    self.validate(option, instance)
                except jsonschema.ValidationError:
                    continue
                self.walk(option, instance, where)
        if isinstance(instance, dict):
            for prop, sub in schema.get("properties", {}).items():
                if prop in instance:
                    self.seen.add(f"{where}.{prop}")
                    self.walk(sub, instance[prop], f"{where}.{prop}")
        if isinstance(instance, list) and "items" in schema:
            for item in instance:
                self.walk(schema["items"], item, f"{where}[]")

    def documented(self) -> set[str]:
        out: set[str] = set()

        def visit(schema: dict[str, Any], where: str, stack: tuple[str, ...]) -> None:
            schema, name = self.resolve(schema)
            if name is not None:
                if name in stack:
                    return
                stack, where = (*stack, name), name
            for key in ("anyOf", "oneOf"):
                for option in schema.get(key, []):
                    visit(option, where, stack)
            for prop, sub in schema.get("properties", {}).items():
                out.add(f"{where}.{prop}")
                visit(sub, f"{where}.{prop}", stack)
            if "items" in schema:
                visit(schema["items"], f"{where}[]", stack)

        for name in self.doc["components"]["schemas"]:
            visit({"$ref": f"#/components/schemas/{name}"}, name, ())
        return out

    def response_schema(self, path: str, method: str, status: int, content_type: str) -> dict[str, Any]:
        responses = self.doc["paths"][path][method.lower()]["responses"]
        documented = responses.get(str(status)) or responses.get(f"{status // 100}XX")
        assert documented is not None, f"{method} {path} answered {status}, which is not documented"
        content = documented["content"]
        assert content_type in content, f"{method} {path} {status}: {content_type} is not documented"
        return content[content_type]["schema"]

    def check(self, path: str, method: str, status: int, content_type: str, body: Any) -> None:
        schema = self.response_schema(path, method, status, content_type)
        if content_type == "application/json":
            self.validate(schema, body)
            self.walk(schema, body, path)
        self.checked += 1

    async def call(self, client: TestClient, method: str, path: str, template: str | None = None,
                   **kwargs: Any) -> Any:  # fmt: skip
        response = await client.request(method, path, **kwargs)
        content_type = response.content_type
        body = await response.json() if content_type == "application/json" else await response.text()
        self.check(template or path, method, response.status, content_type, body)
        return response.status, body


def store(settings: Settings) -> JobStore:
    return JobStore(redis.Redis.from_url(settings.redis_url or ""), settings.queue)


def app_routes(client: TestClient) -> set[tuple[str, str]]:
    routes = set()
    for route in client.app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        routes.add((route.method.lower(), route.resource.canonical))
    return routes


async def test_every_route_is_documented_and_every_documented_route_exists(api: TestClient) -> None:
    doc = await (await api.get("/openapi.json")).json()
    jsonschema.Draft202012Validator.check_schema({"$defs": doc["components"]["schemas"]})
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert app_routes(api) == documented


async def test_documented_form_fields_are_the_handlers_fields(api: TestClient) -> None:
    doc = await (await api.get("/openapi.json")).json()
    for path, declared in HANDLER_FIELDS.items():
        schema = doc["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert set(schema["properties"]) - {"file"} == set(declared), path
        assert schema["required"] == ["file"]


async def test_real_responses_match_the_document(
    api: TestClient, corpus: Path, settings: Settings, recordings: dict[str, Path]
) -> None:
    doc = await (await api.get("/openapi.json")).json()
    checker = Checker(doc)
    jfk, long = corpus / "jfk.flac", corpus / "multilingual.mp3"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    job_path = "/api/transcribe/{job_id}"

    for path in ("/health", "/health/live", "/health/ready", "/v1/models"):
        await checker.call(api, "GET", path)
    await checker.call(api, "GET", "/admin/actors", headers=auth)
    await checker.call(api, "POST", "/admin/actors/result/restart", "/admin/actors/{name}/restart", headers=auth)
    await checker.call(api, "POST", "/api/transcribe", data=upload(jfk, language="en", wordTimestamps="true"))
    await checker.call(api, "POST", "/api/transcribe", data=upload(jfk, language="en", wordTimestamps="true"))  # cached
    await checker.call(api, "POST", "/api/transcribe", data=upload(jfk, format="srt"))
    await checker.call(api, "POST", "/api/detect-language", data=upload(jfk))
    for form in ({"response_format": "json"}, {"response_format": "text"},
                 {"response_format": "verbose_json", "timestamp_granularities[]": "word"}):  # fmt: skip
        await checker.call(api, "POST", "/v1/audio/transcriptions", data=upload(jfk, model="whisper-1", **form))
    await checker.call(api, "POST", "/v1/audio/translations", data=upload(jfk, model="whisper-1"))

    # A job: accepted, the same job again while it runs (cached), its events, its result, and a cached repeat.
    _, accepted = await checker.call(api, "POST", "/api/transcribe", data=upload(long))
    job_id = accepted["data"]["jobId"]
    status, again = await checker.call(api, "POST", "/api/transcribe", data=upload(long))
    assert status == 202 and again["data"]["jobId"] == job_id and again["data"]["cached"] is True
    await checker.call(api, "GET", f"/api/transcribe/{job_id}", job_path)
    await checker.call(api, "GET", f"/api/transcribe/{job_id}?format=vtt", job_path)
    events_schema = checker.response_schema(f"{job_path}/events", "GET", 200, "text/event-stream")
    async with api.get(f"/api/transcribe/{job_id}/events") as stream:
        async for event in read_sse(stream):
            checker.validate(events_schema, event["data"])
            checker.walk(events_schema, event["data"], "events")
    await wait_for_job(api, job_id)
    await checker.call(api, "GET", f"/api/transcribe/{job_id}", job_path)
    await checker.call(api, "POST", "/api/transcribe", data=upload(long))  # cached, completed

    # A failed job: its last chunk dead-lettered at once (long before the slots get to it).
    failing = await api.post("/api/transcribe", data=upload(recordings["long"], language="en"))
    failing_data = (await failing.json())["data"]
    failing_id = failing_data["jobId"]
    last = Task(failing_id, failing_data["chunks"] - 1, 0, 1000, "en")
    assert store(settings).fail(Delivery("0-1", last), "a test failed it")
    assert (await wait_for_job(api, failing_id))["status"] == "failed"
    await checker.call(api, "GET", f"/api/transcribe/{failing_id}", job_path)

    # Errors in both shapes.
    await checker.call(api, "GET", f"/api/transcribe/{'0' * 32}", job_path)
    await checker.call(api, "POST", "/api/transcribe", data=upload(jfk, language="fr"))
    await checker.call(api, "POST", "/v1/audio/transcriptions", data=upload(jfk, model="nope"))
    await checker.call(api, "GET", "/metrics")
    await checker.call(api, "GET", "/openapi.json")

    never_seen = sorted(checker.documented() - checker.seen)
    assert never_seen == [], f"documented but never in a real response: {never_seen}"
    assert checker.checked >= 25
