#!/usr/bin/env python3
"""A timestamped copy of Redis's data: ask for a snapshot, wait for it, copy the files.

    python ops/scripts/backup.py --redis-url redis://localhost:6379/0 --data-dir /var/lib/redis --out backups

--data-dir is Redis's own folder as this machine sees it (for the compose cluster, the mount of
the redis-data volume, or run it inside the container). The copy holds dump.rdb and the AOF.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import time
from pathlib import Path

import redis


def snapshot(client: redis.Redis, timeout_s: float) -> None:
    """BGSAVE, then wait until LASTSAVE (whole seconds) moves past the previous save."""
    before = client.lastsave()
    while time.time() < before.timestamp() + 1:  # a save within the same second would not show
        time.sleep(0.05)
    try:
        client.bgsave()
    except redis.ResponseError as exc:  # one already running will do
        if "in progress" not in str(exc):
            raise
    deadline = time.monotonic() + timeout_s
    while client.lastsave() <= before:
        if time.monotonic() > deadline:
            raise TimeoutError(f"Redis did not finish its snapshot within {timeout_s:.0f} s")
        time.sleep(0.2)


def backup(data_dir: Path, out: Path) -> Path:
    target = out / dt.datetime.now(dt.UTC).strftime("redis-%Y%m%dT%H%M%SZ")
    target.mkdir(parents=True)
    for name in ("dump.rdb", "appendonlydir", "appendonly.aof"):
        source = data_dir / name
        if source.is_dir():
            shutil.copytree(source, target / name)
        elif source.is_file():
            shutil.copy2(source, target / name)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://localhost:6379/0"))
    parser.add_argument("--data-dir", type=Path, required=True, help="Redis's data folder")
    parser.add_argument("--out", type=Path, default=Path("backups"))
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    snapshot(redis.Redis.from_url(args.redis_url), args.timeout)
    target = backup(args.data_dir, args.out)
    print(f"backup written to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
