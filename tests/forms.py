"""The multipart upload every test sends: a ``file`` part and the text fields beside it."""

from __future__ import annotations

from pathlib import Path

import aiohttp


def upload(
    source: Path | bytes, filename: str | None = None, content_type: str | None = None, **fields: str
) -> aiohttp.FormData:
    """``source`` (a file, or its bytes) as the ``file`` part, named ``filename`` (default: the file's
    name, or ``clip.wav``), then ``fields`` in order."""
    data = aiohttp.FormData()
    payload = source if isinstance(source, bytes) else source.read_bytes()
    name = filename or (source.name if isinstance(source, Path) else "clip.wav")
    if content_type is None:
        data.add_field("file", payload, filename=name)
    else:
        data.add_field("file", payload, filename=name, content_type=content_type)
    for field, value in fields.items():
        data.add_field(field, value)
    return data
