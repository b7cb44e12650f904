"""Hostile and malformed uploads, made by the tests, sent to a real node process.

Every input gets an answer with a stable code (a 4xx, or 200 where what is left is still real
audio), and after each one the node is ready, no upload file is left behind, and its peak
memory stays within a bound above what it used after a normal transcription.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import soundfile

from sayit_actors import audio
from tests.clips import encode
from tests.processes import serve

pytestmark = pytest.mark.slow

PEAK_GROWTH_BYTES = 300 * 1024 * 1024  # above the memory after a normal transcription
IDLE_TIMEOUT_S = 2
BOUNDARY = "sayit-fuzz-boundary"
FORMATS = {  # name: (container, codec, sample rate)
    "wav": ("wav", "pcm_s16le", 16_000),
    "flac": ("flac", "flac", 16_000),
    "mp3": ("mp3", "libmp3lame", 16_000),
    "ogg": ("ogg", "libopus", 48_000),
    "m4a": ("mp4", "aac", 16_000),
    "aac": ("adts", "aac", 16_000),
    "webm": ("webm", "libopus", 48_000),
}
FAIL_4XX = {400, 408, 413, 422}
MAYBE_AUDIO = FAIL_4XX | {200}  # what is left may still be valid audio (no length in the header)


@dataclass
class Case:
    name: str
    body: bytes = b""
    expect: set[int] = field(default_factory=lambda: set(FAIL_4XX))
    codes: set[str] | None = None  # the stable codes allowed (None: any, but there must be one)
    content_type: str = f"multipart/form-data; boundary={BOUNDARY}"
    route: str = "/api/transcribe"
    raw: bytes | None = None  # a whole request of its own, sent on a raw socket
    drip: bool = False  # the raw request's body is sent a byte at a time, slower than the idle timeout


def part(name: str, payload: bytes, filename: bytes | None = None, content_type: str = "audio/wav") -> bytes:
    disposition = f'form-data; name="{name}"'.encode()
    if filename is not None:
        disposition += b'; filename="' + filename + b'"'
    head = b"--" + BOUNDARY.encode() + b"\r\nContent-Disposition: " + disposition + b"\r\n"
    if filename is not None:
        head += f"Content-Type: {content_type}\r\n".encode()
    return head + b"\r\n" + payload + b"\r\n"


def multipart(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--" + BOUNDARY.encode() + b"--\r\n"


def upload(payload: bytes, filename: bytes = b"clip", **fields: str) -> bytes:
    extra = [part(k, v.encode()) for k, v in fields.items()]
    return multipart(part("file", payload, filename), *extra)


def ogg_crc(page: bytes) -> int:
    crc = 0
    for byte in page:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def absurd_granules(ogg: bytes) -> bytes:
    """Every audio page of an Ogg stream claims a granule position near 2^62 (CRCs made valid again)."""
    data = bytearray(ogg)
    starts = [i for i in range(len(data) - 4) if data[i : i + 4] == b"OggS"]
    for n, start in enumerate(starts):
        segments = data[start + 26]
        size = 27 + segments + sum(data[start + 27 : start + 27 + segments])
        if n >= 2:  # after the two header pages
            data[start + 6 : start + 14] = struct.pack("<q", 2**62 + n)
        data[start + 22 : start + 26] = b"\0\0\0\0"
        data[start + 22 : start + 26] = struct.pack("<I", ogg_crc(bytes(data[start : start + size])))
    return bytes(data)


def wav_header(rate: int, channels: int, data_bytes: int) -> bytes:
    byte_rate = rate * channels * 2
    return (
        b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, byte_rate, channels * 2, 16)
        + b"data" + struct.pack("<I", data_bytes)
    )  # fmt: skip


def silence_flac(path: Path, hours: float) -> Path:
    """Hours of digital silence: a FLAC of about a megabyte, written in blocks (small in memory here too)."""
    rate, block = 8_000, np.zeros(8_000 * 600, np.int16)
    with soundfile.SoundFile(path, "w", samplerate=rate, channels=1, format="FLAC", subtype="PCM_16") as out:
        for _ in range(round(hours * 6)):
            out.write(block)
    return path


def cases(folder: Path, corpus: Path) -> list[Case]:
    rng = random.Random(7)
    jfk = audio.decode(corpus / "jfk.flac")
    made: list[Case] = []
    for name, (container, codec, rate) in FORMATS.items():
        good = encode(jfk, folder / f"jfk.{name}", container, codec, rate).read_bytes()
        noise = bytes(rng.getrandbits(8) for _ in range(4096))
        middle = bytearray(good)
        for i in range(len(good) // 4, len(good) * 3 // 4, 7):
            middle[i] = rng.getrandbits(8)
        made += [
            Case(f"{name}: the first tenth", upload(good[: len(good) // 10]), MAYBE_AUDIO),
            Case(f"{name}: the first 64 bytes", upload(good[:64])),
            Case(f"{name}: its magic, then noise", upload(good[:16] + noise)),
            Case(f"{name}: wrong magic", upload(bytes(12) + good[12:]), codes={"INVALID_FORMAT"}),
            Case(f"{name}: noise over its middle half", upload(bytes(middle)), MAYBE_AUDIO),
        ]
    one_hz = wav_header(1, 1, 20) + bytes(20)
    eight = (rng.random() * 0.1 * np.random.default_rng(1).standard_normal((2 * 192_000, 8))).astype(np.float32)
    eight_path = folder / "eight.wav"
    soundfile.write(eight_path, eight, 192_000, subtype="PCM_16")
    twelve_hours = silence_flac(folder / "twelve_hours.flac", 12).read_bytes()
    ogg = (folder / "jfk.ogg").read_bytes()
    body = upload(ogg)
    id3_only = b"ID3\x04\x00\x00\x00\x00\x10\x00" + bytes(2048) + bytes(4096)
    made += [
        Case("zero-length file", upload(b""), codes={"EMPTY_FILE"}),
        Case("a 1 Hz WAV", upload(one_hz)),
        Case("an 8-channel 192 kHz WAV", upload(eight_path.read_bytes(), language="en"), {200}),
        Case("a WAV header claiming 12 h over 1 s", upload(wav_header(16_000, 1, 2**31) + bytes(32_000)), MAYBE_AUDIO),
        Case("12 h of silence in a small FLAC", upload(twelve_hours), codes={"AUDIO_TOO_LONG"}),
        Case(
            "12 h of silence, language detection",
            upload(twelve_hours),
            route="/api/detect-language",
            expect=FAIL_4XX | {200},
        ),
        Case("Opus with absurd granule positions", upload(absurd_granules(ogg)), MAYBE_AUDIO),
        Case("MP3 with no frames", upload(id3_only)),
        Case(
            "two file parts",
            multipart(part("file", ogg, b"a.ogg"), part("file", ogg, b"b.ogg")),
            codes={"INVALID_REQUEST"},
        ),
        Case("a 1 MB text field", upload(ogg, language="en" * 500_000), codes={"INVALID_REQUEST"}),
        Case(
            "a thousand text fields",
            multipart(part("file", ogg, b"a.ogg"), *(part(f"f{i}", b"x") for i in range(1000))),
            codes={"INVALID_REQUEST"},
        ),
        Case("a non-UTF-8 filename", upload(ogg, filename=b"\xff\xfe\xc3(\x80.ogg", language="en"), {200}),
        Case("no file part", multipart(part("language", b"en")), codes={"FILE_REQUIRED"}),
        Case("not multipart", b'{"file": 1}', content_type="application/json", codes={"FILE_REQUIRED"}),
        Case("a broken boundary", upload(ogg).replace(BOUNDARY.encode(), b"other", 1)),
        Case("an unknown language", upload(ogg, language="xx"), codes={"INVALID_LANGUAGE"}),
        Case("a Content-Length over the limit", raw=request_head(10**10), expect={413}),
        # The parser refuses what follows the body: a 400 from it, or the connection closed.
        Case("a Content-Length shorter than the body", raw=request_head(len(body) // 2) + body, expect={0, 400}),
        Case(
            "a body that stops before its Content-Length",
            raw=request_head(len(body)) + body[: len(body) // 2],
            expect={408},  # the rest never comes: the idle timeout answers
        ),
        Case("a slow drip upload", raw=request_head(len(body)) + body, drip=True, expect={408}),
    ]
    return made


def request_head(length: int) -> bytes:
    return (
        f"POST /api/transcribe HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {length}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()


async def send_raw(case: Case, host: str) -> int:
    """The status of the node's answer to a raw request; 0 when the node only closed the connection.

    A request whose body stops early is answered by the idle timeout.
    """
    assert case.raw is not None
    name, port = host.split(":")
    reader, writer = await asyncio.open_connection(name, int(port))
    try:
        if case.drip:  # a byte, then a wait longer than the idle timeout for an answer, and again
            writer.write(case.raw[:400])
            for byte in case.raw[400:460]:
                writer.write(bytes([byte]))
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    if reply := await asyncio.wait_for(reader.read(64), IDLE_TIMEOUT_S * 1.5):
                        return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0
            return 0
        else:
            writer.write(case.raw)
            await writer.drain()
        reply = await asyncio.wait_for(reader.read(64), 60)
        return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0
    except (ConnectionError, OSError):
        return 0
    finally:
        writer.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Iterator[tuple[str, Path, int]]:
    """A real node (its URL, data folder and pid), warmed up with one normal transcription."""
    data = tmp_path_factory.mktemp("fuzz-node")
    with serve(data, SAYIT_UPLOAD_IDLE_TIMEOUT_S=str(IDLE_TIMEOUT_S), SAYIT_RESULT_CACHE="false") as (process, url):
        body = upload((corpus / "jfk.flac").read_bytes(), b"jfk.flac", language="en")
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        request = urllib.request.Request(f"{url}/api/transcribe", data=body, method="POST", headers=headers)
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.status == 200
        yield url, data, process.pid


def peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def current_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def upload_files(data: Path) -> list[Path]:
    folder = data / "uploads"
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


async def files_left(data: Path, within_s: float = 10.0) -> list[Path]:
    """Upload files still there after ``within_s`` (a request's file is released just after its answer)."""
    for _ in range(round(within_s / 0.1)):
        if not (left := upload_files(data)):
            return left
        await asyncio.sleep(0.1)
    return upload_files(data)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> list[Case]:
    return cases(tmp_path_factory.mktemp("fuzz-inputs"), corpus)


async def post(session: aiohttp.ClientSession, url: str, case: Case) -> tuple[int, str | None, str]:
    """(status, error code, what is wrong with the answer) of one multipart case."""
    try:
        headers = {"Content-Type": case.content_type}
        async with session.post(url + case.route, data=case.body, headers=headers) as response:
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, ValueError) as exc:
        return 0, None, f"no answer: {exc!r}"
    code = None if response.status == 200 else body.get("error", {}).get("code")
    return response.status, code, "" if response.status == 200 or code else f"{response.status} without a code"


@pytest.mark.timeout(600)
async def test_every_hostile_input_is_answered_and_the_node_survives(
    node: tuple[str, Path, int], hostile: list[Case], corpus: Path
) -> None:
    url, data, pid = node
    host = url.removeprefix("http://")
    baseline = max(current_rss(pid), peak_rss(pid))
    failures: list[str] = []
    connector = aiohttp.TCPConnector(force_close=True)  # a refused upload closes its connection
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        for case in hostile:
            started = time.monotonic()
            if case.raw is not None:
                status, code = await send_raw(case, host), None
            else:
                status, code, problem = await post(session, url, case)
                if problem:
                    failures.append(f"{case.name}: {problem}")
            if status not in case.expect:
                failures.append(f"{case.name}: status {status}, expected {sorted(case.expect)} (code {code})")
            elif case.codes is not None and status != 200 and code not in case.codes:
                failures.append(f"{case.name}: code {code}, expected {sorted(case.codes)}")
            async with session.get(url + "/health/ready") as ready:
                if ready.status != 200:
                    failures.append(f"{case.name}: the node is not ready after it: {await ready.text()}")
            if left := await files_left(data):
                failures.append(f"{case.name}: upload files left: {left}")
            print(f"{case.name}: {status} {code or ''} in {time.monotonic() - started:.1f} s")
    growth = peak_rss(pid) - baseline
    print(f"peak memory growth over {len(hostile)} inputs: {growth / 2**20:.0f} MB")
    assert growth <= PEAK_GROWTH_BYTES, f"peak memory grew by {growth / 2**20:.0f} MB"
    assert not failures, "\n".join(failures)
