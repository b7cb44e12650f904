#!/usr/bin/env python3
"""Remove what a crash can leave behind: orphaned upload files and chunk audio of ended jobs.

    python ops/scripts/cleanup.py [--uploads data/uploads] [--older-than 3600] [--redis-url URL] [--dry-run]

Upload files are orphans when older than --older-than seconds (a request holds its file for at
most its transcription). Chunk audio is an orphan when its job no longer exists or has ended
(a finished job deletes its audio; a node that died mid-write may not have).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from sayit_actors.store import keys


def orphan_uploads(folder: Path, older_than_s: float) -> list[Path]:
    cutoff = time.time() - older_than_s
    return [p for p in folder.rglob("*") if p.is_file() and p.stat().st_mtime < cutoff] if folder.exists() else []


def orphan_chunk_audio(client: redis.Redis) -> list[bytes]:
    orphans = []
    for key in client.scan_iter(match=keys.chunk_audio("*", 0)[:-1] + "*", count=500):
        job_id = key.decode().split(":")[2]
        status = client.hget(keys.job(job_id), "status")
        ended = status is None or status.decode() in ("completed", "failed")
        if ended and client.ttl(key) == -1:  # audio with a TTL belongs to a job being created
            orphans.append(key)
    return orphans


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=Path, default=Path(os.environ.get("SAYIT_DATA_DIR", "data")) / "uploads")
    parser.add_argument("--older-than", type=float, default=3600.0, help="seconds (default 3600)")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"), help="default REDIS_URL")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    files = orphan_uploads(args.uploads, args.older_than)
    for path in files:
        if not args.dry_run:
            path.unlink(missing_ok=True)
    print(f"{'would remove' if args.dry_run else 'removed'} {len(files)} orphaned upload files in {args.uploads}")
    if args.redis_url:
        client = redis.Redis.from_url(args.redis_url)
        chunks = orphan_chunk_audio(client)
        if chunks and not args.dry_run:
            client.delete(*chunks)
        print(f"{'would remove' if args.dry_run else 'removed'} {len(chunks)} orphaned chunk audio keys")
    return 0


if __name__ == "__main__":
    sys.exit(main())
