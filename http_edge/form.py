"""Reading an upload request: the multipart form, streamed, with caps on its fields and its pauses.

The one ``file`` part is streamed to disk and stopped at the size limit; text fields are read
in small chunks and refused past ``MAX_FIELD_BYTES`` (at most ``MAX_FIELDS`` of them); each
read waits at most ``SAYIT_UPLOAD_IDLE_TIMEOUT_S`` for the client's next bytes (408 after).
A route that takes an upload is wrapped in ``upload_route``: admitted (rate limits, uploads in
flight) before its body is read.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import BodyPartReader, web

from config import Settings
from http_edge import limits
from http_edge.keys import ADMISSION
from sayit_actors import errors
from sayit_actors.upload import IncomingFile

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.Response]]
CHUNK_BYTES = 256 * 1024
FIELD_CHUNK_BYTES = 4096  # what a text field is read by: never more than MAX_FIELD_BYTES + this is held
MULTIPART_OVERHEAD_BYTES = 64 * 1024
MAX_FIELD_BYTES = 4096  # a prompt of a few hundred words
MAX_FIELDS = 32


@dataclass
class Form:
    """A multipart upload: the streamed file part and the text fields beside it.

    A handler reads only the fields it declares (and documents in /openapi.json); others are ignored.
    """

    file: IncomingFile
    filename: str
    mime: str
    values: dict[str, list[str]]
    declared: frozenset[str]

    def field(self, name: str, default: str = "") -> str:
        assert name in self.declared, f"{name!r} is not a declared field of this route"
        values = self.values.get(name)
        return values[-1].strip() if values else default

    def all(self, name: str) -> list[str]:
        assert name in self.declared, f"{name!r} is not a declared field of this route"
        return [v.strip() for v in self.values.get(name, [])]

    def flag(self, name: str) -> bool:
        value = self.field(name, "false").lower()
        if value not in ("true", "false", "1", "0", ""):
            raise errors.InvalidRequest(f"{name} must be true or false", param=name)
        return value in ("true", "1")


def upload_route(handler: Handler) -> Handler:
    """A route that takes an upload: one of at most SAYIT_MAX_UPLOADS_IN_FLIGHT on the node (503
    beyond), then counted against its client's rate limits (429 beyond), both before its body is
    read. Its answer, whatever it is, carries the RateLimit headers (``middlewares.add_headers``)."""

    @functools.wraps(handler)
    async def admitted(request: web.Request) -> web.Response:
        with request.app[ADMISSION].uploads.entered():
            await limits.take_upload(request)
            return await handler(request)

    return admitted


async def _within(idle_s: float, read: Awaitable[T]) -> T:
    """One read of a request body: the client's next bytes, or 408 after ``idle_s`` without any."""
    try:
        async with asyncio.timeout(idle_s):
            return await read
    except TimeoutError:
        raise errors.RequestTimeout(f"nothing came for {idle_s:g} s") from None


async def read_form(request: web.Request, settings: Settings, declared: frozenset[str]) -> Form:
    """Stream the one ``file`` part to disk (stopped at the size limit) and read the text fields.

    Each read waits at most SAYIT_UPLOAD_IDLE_TIMEOUT_S; a text field is refused as soon as it
    passes MAX_FIELD_BYTES. On any failure, a client's hang-up included, the file is deleted.
    """
    limit, idle_s = settings.limits.max_upload_bytes, settings.limits.upload_idle_timeout_s
    if request.content_length is not None and request.content_length > limit + MULTIPART_OVERHEAD_BYTES:
        raise errors.FileTooLarge(f"limit {limit // (1024 * 1024)} MB")
    if not request.content_type.startswith("multipart/"):
        raise errors.FileRequired()
    reader = await request.multipart()
    incoming: IncomingFile | None = None
    filename, mime = "", ""
    values: dict[str, list[str]] = {}
    try:
        while (part := await _within(idle_s, reader.next())) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "file":
                if incoming is not None:
                    raise errors.InvalidRequest("one file per request", param="file")
                filename, mime = part.filename or "", part.headers.get("Content-Type", "")
                incoming = IncomingFile(settings.upload_dir, limit)
                while chunk := await _within(idle_s, part.read_chunk(CHUNK_BYTES)):
                    incoming.write(chunk)
                incoming.close()
            elif part.name:
                if sum(map(len, values.values())) >= MAX_FIELDS:
                    raise errors.InvalidRequest(f"more than {MAX_FIELDS} form fields")
                values.setdefault(part.name, []).append(await _field(part, part.name, idle_s))
    except BaseException:
        if incoming is not None:
            incoming.discard()
        raise
    if incoming is None:
        raise errors.FileRequired()
    return Form(incoming, filename, mime, values, declared)


async def _field(part: BodyPartReader, name: str, idle_s: float) -> str:
    """A text field's value, read in small chunks and refused once it passes MAX_FIELD_BYTES."""
    too_long = errors.InvalidRequest(f"the field {name[:40]!r} is longer than {MAX_FIELD_BYTES} bytes", param=name[:40])
    raw = bytearray()
    while chunk := await _within(idle_s, part.read_chunk(FIELD_CHUNK_BYTES)):
        raw += chunk
        if len(raw) > MAX_FIELD_BYTES:
            raise too_long
    value = bytes(part.decode(raw))  # Content-Transfer-Encoding or Content-Encoding, if the client used one
    if len(value) > MAX_FIELD_BYTES:
        raise too_long
    return value.decode("utf-8", errors="replace")
