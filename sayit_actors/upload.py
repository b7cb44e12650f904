"""Uploads on disk: the edge streams into ``incoming/``, the UploadActor names and owns the result.

A client's filename is kept for display only and never becomes part of a path. Files are
deleted when their request ends. Files no request holds that nobody wrote to for
``ORPHAN_AGE_S`` (left by a crash, or by a request that died before its cleanup) are swept when
the actor starts and every ``SWEEP_EVERY_S`` after, on a tick the actor has a timer send it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import unicodedata
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pykka

from sayit_actors.audio import AudioFormat, sniff_file
from sayit_actors.errors import EmptyFile, FileTooLarge, InvalidFormat
from sayit_actors.replies import Asked
from sayit_actors.supervisor import SupervisedActor, Supervisor, Told, tell_later

log = logging.getLogger(__name__)
INCOMING = "incoming"
SWEEP_EVERY_S = 300.0
ORPHAN_AGE_S = 3600.0  # a file being written is touched at each chunk, and an upload gone quiet ends far sooner


@dataclass(frozen=True)
class Upload:
    id: str
    path: Path
    filename: str
    mime: str
    size_bytes: int
    sha256: str
    format: AudioFormat


@dataclass(frozen=True)
class Accept(Asked[Upload]):
    tmp_path: Path
    filename: str
    mime: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class Release(Told):
    upload_id: str


@dataclass(frozen=True)
class Sweep:
    older_than_s: float = ORPHAN_AGE_S


@dataclass(frozen=True)
class _SweepTick(Told):
    """The periodic sweep, sent by the actor's timer."""


def display_name(filename: str | None) -> str:
    """The last path part of a client's filename, without control characters, at most 200 chars.

    Clients may percent-encode the name (RFC 7578), so it is decoded before it is cut.
    """
    name = urllib.parse.unquote(filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    return name[:200] or "upload"


class IncomingFile:
    """Streams one upload into ``incoming/`` with its hash and size; removes it on error."""

    def __init__(self, upload_dir: Path, max_bytes: int) -> None:
        folder = upload_dir / INCOMING
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{uuid.uuid4().hex}.part"
        self.size_bytes = 0
        self._max_bytes = max_bytes
        self._hash = hashlib.sha256()
        self._handle = self.path.open("wb")

    def write(self, data: bytes) -> None:
        self.size_bytes += len(data)
        if self.size_bytes > self._max_bytes:
            raise FileTooLarge(f"limit {self._max_bytes // (1024 * 1024)} MB")
        self._hash.update(data)
        self._handle.write(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        self._handle.close()

    def discard(self) -> None:
        self._handle.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> IncomingFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


class UploadActor(SupervisedActor):
    def __init__(
        self, supervisor: pykka.ActorRef[Supervisor], name: str, upload_dir: Path, sweep_every_s: float = SWEEP_EVERY_S
    ) -> None:
        super().__init__(supervisor, name)
        self.upload_dir = upload_dir
        self._live: dict[str, Path] = {}
        self._sweep_every_s = sweep_every_s
        self._timer: threading.Timer | None = None

    def on_start(self) -> None:
        (self.upload_dir / INCOMING).mkdir(parents=True, exist_ok=True)
        self._sweep(ORPHAN_AGE_S)
        self._schedule_sweep()

    def on_stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        # Requests still holding an upload end with the node: their files go with them.
        for path in self._live.values():
            path.unlink(missing_ok=True)
        self._live.clear()

    def handle(self, message: Any) -> Any:
        match message:
            case Accept():
                return self._accept(message)
            case Release(upload_id):
                path = self._live.pop(upload_id, None)
                if path is not None:
                    path.unlink(missing_ok=True)
                return None
            case Sweep(older_than_s):
                return self._sweep(older_than_s)
            case _SweepTick():
                self._schedule_sweep()  # first: a sweep that fails does not end the sweeping
                self._sweep(ORPHAN_AGE_S)
                return None
        raise TypeError(f"unexpected message {message!r}")

    def _schedule_sweep(self) -> None:
        self._timer = tell_later(self.actor_ref, _SweepTick(), self._sweep_every_s)

    def _accept(self, msg: Accept) -> Upload:
        try:
            if msg.size_bytes == 0:
                raise EmptyFile()
            fmt = sniff_file(msg.tmp_path)
            if fmt is None:
                raise InvalidFormat()
            upload_id = uuid.uuid4().hex
            path = self.upload_dir / f"{upload_id}.{fmt.value}"
            os.replace(msg.tmp_path, path)
        except BaseException:
            msg.tmp_path.unlink(missing_ok=True)
            raise
        self._live[upload_id] = path
        return Upload(upload_id, path, display_name(msg.filename), msg.mime, msg.size_bytes, msg.sha256, fmt)

    def _sweep(self, older_than_s: float) -> int:
        """Delete upload files no request holds that are older than ``older_than_s``."""
        cutoff = time.time() - older_than_s
        live = set(self._live.values())
        removed = 0
        for path in [*self.upload_dir.glob("*.*"), *(self.upload_dir / INCOMING).glob("*.part")]:
            try:
                if path.is_file() and path not in live and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        if removed:
            log.info("swept %d orphaned upload files", removed)
        return removed
