#!/usr/bin/env python3
"""Exit 0 when a SayIt node is healthy, 1 when not: for a container HEALTHCHECK or a cron job.

    python ops/scripts/healthcheck.py [--url http://127.0.0.1:3000] [--ready] [--timeout 5]

Without --ready it asks /health (Redis, the engine, every actor); with --ready only
/health/ready (Redis answers and a slot is alive), which is what a load balancer needs.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request


def _status(body: dict) -> str:
    """``status`` of /health/ready, or of /health's envelope (``{"success", "data": {"status"}}``)."""
    return str(body.get("data", body).get("status", "?"))


def check(url: str, ready: bool, timeout_s: float) -> tuple[bool, str]:
    path = "/health/ready" if ready else "/health"
    try:
        with urllib.request.urlopen(url.rstrip("/") + path, timeout=timeout_s) as response:
            return True, _status(json.load(response))
    except urllib.error.HTTPError as exc:
        try:
            status = _status(json.load(exc))
        except (ValueError, AttributeError):
            status = exc.reason
        return False, f"{exc.code} {status}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"unreachable: {getattr(exc, 'reason', exc)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--ready", action="store_true", help="ask /health/ready instead of /health")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    healthy, detail = check(args.url, args.ready, args.timeout)
    print(f"{args.url}: {'healthy' if healthy else 'UNHEALTHY'} ({detail})")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
